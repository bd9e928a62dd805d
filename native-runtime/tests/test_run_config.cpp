// run.json validation: defaults, and one invalid value per field giving that field's name,
// the file and the line of the value.
#include <string>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "cuda/cuda.hpp"
#include "model_fixture.hpp"
#include "test.hpp"
#include "train/run_config.hpp"

using namespace lora;

namespace {

const char* kMinimal = "{\"v\": 1, \"model\": \"/models/tiny\", \"data\": {\"train\": \"data/train.bin\"}}";

Json parse(const std::string& text) {
  Json j;
  JsonParseError err;
  if (!json_parse(text, j, err)) lora_test::record_failure(__FILE__, __LINE__, "fixture JSON: " + err.message);
  return j;
}

// Replaces the "section" object (or a top-level key) in the minimal config with `value`.
std::string with(const std::string& section, const std::string& body) {
  std::string base = kMinimal;
  base.pop_back();
  return base + ",\n \"" + section + "\": " + body + "}";
}

// Expects a config_field error for `field`; returns the error's line.
int64_t expect_field(const std::string& text, const std::string& field) {
  try {
    parse_run_config(parse(text), "/runs/r1", "/runs/r1/run.json");
    lora_test::record_failure(__FILE__, __LINE__, "no error for " + field);
  } catch (const InputError& e) {
    if (e.code != "config_field" || e.field != field)
      lora_test::record_failure(__FILE__, __LINE__, "for " + field + " got code " + e.code + " field " + e.field + ": " + e.what());
    if (e.file != "/runs/r1/run.json") lora_test::record_failure(__FILE__, __LINE__, "file: " + e.file);
    if (e.hint.empty()) lora_test::record_failure(__FILE__, __LINE__, "no hint for " + field);
    return e.line;
  }
  return -1;
}

}  // namespace

TEST(run_config_defaults_and_paths) {
  const RunConfig c = parse_run_config(parse(kMinimal), "/runs/r1", "/runs/r1/run.json");
  CHECK_EQ(c.model, std::string("/models/tiny"));
  CHECK_EQ(c.data_train, std::string("/runs/r1/data/train.bin"));
  CHECK(c.data_eval.empty());
  CHECK_EQ(c.r, 16);
  CHECK_EQ(c.alpha, 32.0);
  CHECK_EQ(c.targets.size(), size_t(7));
  CHECK(c.quant.type == QuantType::NF4);
  CHECK(c.quant.double_quant);
  CHECK_EQ(c.quant.block_size, 64);
  CHECK_EQ(c.seq_len, 2048);
  CHECK_EQ(c.grad_accum, 8);
  CHECK(c.optimizer == Optimizer::AdamW);
  CHECK(c.schedule == Schedule::Cosine);
  CHECK_EQ(c.max_steps, 0);
  CHECK_EQ(c.early_stopping_patience, 0);
  CHECK(c.grad_checkpointing);
  CHECK_EQ(c.seed, uint64_t(42));
  CHECK_EQ(c.threads, 0);
}

TEST(run_config_full_example_parses) {
  const std::string text = R"({
  "v": 1,
  "model": "model",
  "data": { "train": "data/train.bin", "eval": "data/eval.bin" },
  "lora": { "r": 8, "alpha": 16, "dropout": 0.1, "rslora": true, "targets": ["q_proj", "v_proj"], "init_adapter": null },
  "quant": { "type": "none", "double_quant": false, "block_size": 128 },
  "train": { "seq_len": 256, "micro_batch": 2, "grad_accum": 4, "epochs": 3, "max_steps": 50,
             "optimizer": "sgd", "lr": 0.01, "schedule": "linear", "warmup_steps": 0,
             "weight_decay": 0.01, "max_grad_norm": 0, "grad_checkpointing": false,
             "seed": 7, "eval_every": 5, "save_every": 0, "early_stopping_patience": 2 },
  "compute": { "device": "cpu", "dtype": "fp32", "threads": 2 },
  "meta": { "name": "anything the extension wants" }
})";
  const RunConfig c = parse_run_config(parse(text), "/runs/r2/", "/runs/r2/run.json");
  CHECK_EQ(c.model, std::string("/runs/r2/model"));
  CHECK_EQ(c.data_eval, std::string("/runs/r2/data/eval.bin"));
  CHECK_EQ(c.r, 8);
  CHECK(c.rslora);
  CHECK_EQ(c.targets.size(), size_t(2));
  CHECK(c.quant.type == QuantType::None);
  CHECK_EQ(c.quant.block_size, 128);
  CHECK_EQ(c.max_steps, 50);
  CHECK(c.optimizer == Optimizer::SGD);
  CHECK(c.schedule == Schedule::Linear);
  CHECK_EQ(c.early_stopping_patience, 2);
  CHECK_EQ(c.threads, 2);
  CHECK(!c.grad_checkpointing);
  // The hash covers training settings but not eval/save cadence.
  RunConfig d = c;
  d.save_every = 10;
  CHECK_EQ(c.training_hash(), d.training_hash());
  d.lr = 0.02;
  CHECK(c.training_hash() != d.training_hash());
}

TEST(run_config_each_invalid_field_is_named) {
  CHECK_EQ(expect_field("{\"model\": \"m\", \"data\": {\"train\": \"t\"}}", "v"), 1);
  expect_field("{\"v\": 2, \"model\": \"m\", \"data\": {\"train\": \"t\"}}", "v");
  expect_field("{\"v\": 1, \"data\": {\"train\": \"t\"}}", "model");
  expect_field("{\"v\": 1, \"model\": 5, \"data\": {\"train\": \"t\"}}", "model");
  expect_field("{\"v\": 1, \"model\": \"m\"}", "data");
  expect_field("{\"v\": 1, \"model\": \"m\", \"data\": {}}", "data.train");
  expect_field("{\"v\": 1, \"model\": \"m\", \"data\": {\"train\": \"t\", \"eval\": 3}}", "data.eval");
  expect_field("{\"v\": 1, \"model\": \"m\", \"data\": {\"train\": \"t\", \"test\": \"x\"}}", "data.test");
  expect_field(with("lora", "{\"r\": 0}"), "lora.r");
  expect_field(with("lora", "{\"r\": 4.5}"), "lora.r");
  expect_field(with("lora", "{\"r\": \"8\"}"), "lora.r");
  expect_field(with("lora", "{\"alpha\": 0}"), "lora.alpha");
  expect_field(with("lora", "{\"dropout\": 1}"), "lora.dropout");
  expect_field(with("lora", "{\"dropout\": -0.1}"), "lora.dropout");
  expect_field(with("lora", "{\"rslora\": \"yes\"}"), "lora.rslora");
  expect_field(with("lora", "{\"targets\": []}"), "lora.targets");
  expect_field(with("lora", "{\"targets\": \"q_proj\"}"), "lora.targets");
  expect_field(with("lora", "{\"targets\": [\"q_proj\", \"q_proj\"]}"), "lora.targets");
  expect_field(with("lora", "{\"init_adapter\": 1}"), "lora.init_adapter");
  expect_field(with("lora", "{\"rank\": 8}"), "lora.rank");
  expect_field(with("quant", "{\"type\": \"nf8\"}"), "quant.type");
  expect_field(with("quant", "{\"double_quant\": 1}"), "quant.double_quant");
  expect_field(with("quant", "{\"block_size\": 100}"), "quant.block_size");
  expect_field(with("quant", "{\"block_size\": 8}"), "quant.block_size");
  expect_field(with("train", "{\"seq_len\": 1}"), "train.seq_len");
  expect_field(with("train", "{\"micro_batch\": 0}"), "train.micro_batch");
  expect_field(with("train", "{\"grad_accum\": -1}"), "train.grad_accum");
  expect_field(with("train", "{\"epochs\": 0}"), "train.epochs");
  expect_field(with("train", "{\"max_steps\": 0}"), "train.max_steps");
  expect_field(with("train", "{\"optimizer\": \"adam\"}"), "train.optimizer");
  expect_field(with("train", "{\"lr\": 0}"), "train.lr");
  expect_field(with("train", "{\"lr\": -1e-4}"), "train.lr");
  expect_field(with("train", "{\"schedule\": \"step\"}"), "train.schedule");
  expect_field(with("train", "{\"warmup_steps\": -5}"), "train.warmup_steps");
  expect_field(with("train", "{\"weight_decay\": -0.1}"), "train.weight_decay");
  expect_field(with("train", "{\"max_grad_norm\": -1}"), "train.max_grad_norm");
  expect_field(with("train", "{\"grad_checkpointing\": null}"), "train.grad_checkpointing");
  expect_field(with("train", "{\"seed\": -1}"), "train.seed");
  expect_field(with("train", "{\"eval_every\": 1.5}"), "train.eval_every");
  expect_field(with("train", "{\"save_every\": -2}"), "train.save_every");
  expect_field(with("train", "{\"early_stopping_patience\": -1}"), "train.early_stopping_patience");
  expect_field(with("train", "{\"early_stopping_patience\": 2}"), "train.early_stopping_patience");  // no eval set
  expect_field(with("train", "{\"learning_rate\": 1e-4}"), "train.learning_rate");
  expect_field(with("compute", "{\"device\": \"gpu\"}"), "compute.device");
  expect_field(with("compute", "{\"device\": \"cuda:x\"}"), "compute.device");
  expect_field(with("compute", "{\"device\": \"cuda:12345\"}"), "compute.device");
  // Only a build without CUDA can refuse cuda:N here; a CUDA build asks the driver at run
  // time (test_device_select.cpp).
  if (!cuda::compiled()) expect_field(with("compute", "{\"device\": \"cuda:0\"}"), "compute.device");
  expect_field(with("compute", "{\"offload_activations\": 1}"), "compute.offload_activations");
  expect_field(with("compute", "{\"offload_activation\": true}"), "compute.offload_activation");
  expect_field(with("compute", "{\"dtype\": \"int4\"}"), "compute.dtype");
  expect_field(with("compute", "{\"threads\": -1}"), "compute.threads");
  expect_field(with("compute", "[1]"), "compute");
  expect_field(with("extra", "{}"), "extra");
}

TEST(run_config_compute_device_and_offload) {
  RunConfig c = parse_run_config(parse(kMinimal), "/runs/r1", "/runs/r1/run.json");
  CHECK_EQ(c.device, std::string("auto"));
  CHECK_EQ(c.device_line, 0);
  CHECK(!c.offload_activations);
  const std::string text = "{\"v\": 1, \"model\": \"/m\", \"data\": {\"train\": \"t.bin\"},\n"
                           " \"compute\": {\"offload_activations\": true,\n  \"device\": \"cpu\"}}";
  const RunConfig o = parse_run_config(parse(text), "/runs/r1", "/runs/r1/run.json");
  CHECK(o.offload_activations);
  CHECK_EQ(o.device, std::string("cpu"));
  CHECK_EQ(o.device_line, 3);
  // Offloading moves activations, not math: a run may resume with it switched.
  RunConfig p = o;
  p.offload_activations = false;
  p.device = "auto";
  CHECK_EQ(p.training_hash(), o.training_hash());
  if (cuda::compiled()) {
    const RunConfig g = parse_run_config(parse(with("compute", "{\"device\": \"cuda:1\"}")), "/r", "/r/run.json");
    CHECK_EQ(g.device, std::string("cuda:1"));
    CHECK_EQ(g.device_line, 2);
  }
  const int64_t line = expect_field(with("compute", "{\n  \"offload_activations\": \"yes\"}"), "compute.offload_activations");
  CHECK_EQ(line, 3);
}

TEST(run_config_error_line_points_at_the_value) {
  const std::string text = "{\n  \"v\": 1,\n  \"model\": \"m\",\n  \"data\": {\"train\": \"t\"},\n  \"lora\": {\n    \"r\": 16,\n    \"alpha\": -3\n  }\n}";
  CHECK_EQ(expect_field(text, "lora.alpha"), 7);
}

TEST(run_config_targets_resolve_against_the_model) {
  RunConfig c = parse_run_config(parse(with("lora", "{\"targets\": [\"v_proj\", \"q_proj\"]}")), "/r", "/r/run.json");
  const auto t = resolve_targets(c, Arch::Llama);
  CHECK_EQ(t.size(), size_t(2));
  CHECK_EQ(t[0], int(kQProj));
  CHECK_EQ(t[1], int(kVProj));
  c.targets.push_back("lm_head_proj");
  try {
    resolve_targets(c, Arch::Llama);
    CHECK(false);
  } catch (const InputError& e) {
    CHECK_EQ(e.field, std::string("lora.targets"));
    CHECK(e.hint.find("gate_proj") != std::string::npos);
    CHECK(std::string(e.what()).find("lm_head_proj") != std::string::npos);
  }
}

TEST(run_config_missing_file) {
  const std::string dir = lora_test::make_temp_dir("runcfg");
  CHECK_INPUT_ERROR(load_run_config(dir), "file_read");
  lora_test::write_text(dir + "/run.json", "{\"v\": 1,\n \"model\": }");
  CHECK_INPUT_ERROR(load_run_config(dir), "json_parse");
  lora_test::write_text(dir + "/run.json", kMinimal);
  CHECK_EQ(load_run_config(dir).data_train, dir + "/data/train.bin");
}
