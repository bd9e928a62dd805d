// PEFT adapter export/import: key names, shapes, dtypes, adapter_config.json fields, and
// every malformed adapter rejected with the file and key named.
#include <cstring>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "formats/safetensors.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"
#include "model_fixture.hpp"
#include "test.hpp"
#include "train/adapter.hpp"

using namespace lora;

namespace {

struct Fixture {
  std::string model_dir;
  Model model;
  LoraState lora;
  Fixture(std::vector<int> targets = {kQProj, kVProj, kDownProj}) {
    model_dir = lora_test::make_temp_dir("adapter-model");
    lora_test::write_tiny_model(lora_test::TinyModelSpec{}, model_dir);
    model = load_model(model_dir, QuantSettings{});
    LoraSpec s;
    s.r = 4;
    s.alpha = 8;
    s.dropout = 0.05;
    s.targets = targets;
    lora = lora_create(model, s, 77);
    for (size_t i = 0; i < lora.params.size(); ++i) lora.params[i] = 0.001f * static_cast<float>(i % 1000) - 0.3f;
  }
};

}  // namespace

TEST(adapter_export_matches_peft_layout) {
  Fixture f;
  const std::string dir = lora_test::make_temp_dir("adapter") + "/out";
  write_adapter(dir, f.lora, f.model_dir);
  SafetensorsFile st(dir + "/adapter_model.safetensors");
  CHECK_EQ(st.tensors().size(), size_t(2 * 3 * 2));
  const TensorInfo* qa = st.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  const TensorInfo* db = st.find("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight");
  CHECK(qa && db);
  if (qa && db) {
    CHECK(qa->dtype == DType::F32);
    CHECK(qa->shape == (std::vector<int64_t>{4, 32}));
    CHECK(db->shape == (std::vector<int64_t>{32, 4}));
    float first;
    std::memcpy(&first, st.data(*qa), 4);
    CHECK_EQ(first, f.lora.params[f.lora.slot(0, kQProj).a]);
  }
  CHECK(st.find("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight") == nullptr);
  for (const auto& t : st.tensors()) CHECK(t.name.find(".default") == std::string::npos);

  const Json c = json_parse_file(dir + "/adapter_config.json");
  CHECK_EQ(c.find("peft_type")->as_string(), std::string("LORA"));
  CHECK_EQ(c.find("task_type")->as_string(), std::string("CAUSAL_LM"));
  CHECK_EQ(c.find("r")->as_int(), 4);
  CHECK(c.find("lora_alpha")->is_integer());
  CHECK_EQ(c.find("lora_alpha")->as_int(), 8);
  CHECK_NEAR(c.find("lora_dropout")->as_number(), 0.05, 1e-12, 0);
  CHECK_EQ(c.find("bias")->as_string(), std::string("none"));
  CHECK_EQ(c.find("use_rslora")->as_bool(), false);
  CHECK_EQ(c.find("use_dora")->as_bool(), false);
  CHECK_EQ(c.find("fan_in_fan_out")->as_bool(), false);
  CHECK(c.find("modules_to_save")->is_null());
  CHECK_EQ(c.find("inference_mode")->as_bool(), true);
  CHECK_EQ(c.find("base_model_name_or_path")->as_string(), f.model_dir);
  const auto& tm = c.find("target_modules")->items();
  CHECK_EQ(tm.size(), size_t(3));
  CHECK_EQ(tm[0].as_string(), std::string("q_proj"));
  CHECK_EQ(tm[2].as_string(), std::string("down_proj"));
}

TEST(adapter_round_trips_exactly) {
  Fixture f;
  const std::string dir = lora_test::make_temp_dir("adapter");
  write_adapter(dir, f.lora, f.model_dir);
  const LoraState back = read_adapter(dir, f.model);
  CHECK(back.params == f.lora.params);
  CHECK_EQ(back.spec.r, 4);
  CHECK_EQ(back.spec.alpha, 8.0);
  CHECK(back.spec.targets == f.lora.spec.targets);
  CHECK_EQ(back.scale, f.lora.scale);
  // init_adapter: into a fresh layout with the same r and targets.
  LoraState fresh = lora_create(f.model, f.lora.spec, 1);
  load_adapter_into(dir, f.model, fresh, "/r/run.json");
  CHECK(fresh.params == f.lora.params);
  LoraSpec other = f.lora.spec;
  other.r = 2;
  LoraState wrong_r = lora_create(f.model, other, 1);
  CHECK_INPUT_ERROR(load_adapter_into(dir, f.model, wrong_r, "/r/run.json"), "config_field");
  other = f.lora.spec;
  other.targets = {kQProj};
  LoraState wrong_t = lora_create(f.model, other, 1);
  CHECK_INPUT_ERROR(load_adapter_into(dir, f.model, wrong_t, "/r/run.json"), "config_field");
}

TEST(adapter_malformed_is_rejected_with_key) {
  Fixture f;
  const std::string good = lora_test::make_temp_dir("adapter");
  write_adapter(good, f.lora, f.model_dir);
  const std::string cfg = lora_test::read_text(good + "/adapter_config.json");
  auto copy_cfg = [&](const std::string& dir) { lora_test::write_text(dir + "/adapter_config.json", cfg); };

  // A tensor is missing.
  {
    const std::string dir = lora_test::make_temp_dir("adapter");
    copy_cfg(dir);
    std::vector<TensorToWrite> t;
    std::vector<float> a(4 * 32, 0.f);
    t.push_back({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType::F32, {4, 32}, a.data()});
    write_safetensors(dir + "/adapter_model.safetensors", t);
    try {
      read_adapter(dir, f.model);
      CHECK(false);
    } catch (const InputError& e) {
      CHECK_EQ(e.code, std::string("adapter_invalid"));
      CHECK_EQ(e.field, std::string("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"));
      CHECK(e.file.find("adapter_model.safetensors") != std::string::npos);
    }
  }
  // A wrong shape, an unknown key, a layer the model lacks.
  for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", {4, 31}},
           {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", {4, 32}},
           {"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", {4, 32}},
           {"base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", {4, 32}}}) {
    const std::string dir = lora_test::make_temp_dir("adapter");
    copy_cfg(dir);
    std::vector<float> data(shape[0] * shape[1], 0.f);
    write_safetensors(dir + "/adapter_model.safetensors", {{name, DType::F32, shape, data.data()}});
    try {
      read_adapter(dir, f.model);
      CHECK(false);
    } catch (const InputError& e) {
      CHECK_EQ(e.code, std::string("adapter_invalid"));
      CHECK_EQ(e.field, name);
    }
  }
  // adapter_config.json problems.
  {
    const std::string dir = lora_test::make_temp_dir("adapter");
    lora_test::write_text(dir + "/adapter_config.json", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"qkv\"]}");
    try {
      read_adapter(dir, f.model);
      CHECK(false);
    } catch (const InputError& e) {
      CHECK_EQ(e.field, std::string("target_modules"));
      CHECK_EQ(e.line, 1);
    }
    lora_test::write_text(dir + "/adapter_config.json", "{\"peft_type\": \"LORA\", \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}");
    CHECK_INPUT_ERROR(read_adapter(dir, f.model), "adapter_invalid");
    CHECK_INPUT_ERROR(read_adapter(dir + "/nope", f.model), "adapter_invalid");
  }
}
