// `lora-runtime merge`: the delta kernel on exactly representable values, the merged weights
// of a whole tiny model against W0 + scale * B A computed here in double, untouched tensors
// carried over bit for bit, GPT-2's transposed Conv1D weights, and refusals (mismatched adapter, non-empty --out).
#include <cmath>
#include <cstring>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "formats/safetensors.hpp"
#include "gpt2_fixture.hpp"
#include "model/logits.hpp"
#include "model/lora.hpp"
#include "model/merge.hpp"
#include "model/model.hpp"
#include "model_fixture.hpp"
#include "test.hpp"
#include "train/adapter.hpp"
#include "train/files.hpp"

using namespace lora;

namespace {

struct MergeFixture {
  std::string model_dir, adapter_dir;
  Model model;
  LoraState lora;
  explicit MergeFixture(bool rslora = false) {
    const std::string root = lora_test::make_temp_dir("merge");
    model_dir = root + "/base";
    adapter_dir = root + "/adapter";
    lora::make_dirs(model_dir);
    lora_test::TinyModelSpec spec;
    spec.bf16 = true;  // a bf16 base merged in f32 must widen exactly before adding the delta
    lora_test::write_tiny_model(spec, model_dir);
    model = load_model(model_dir, QuantSettings{});
    LoraSpec s;
    s.r = 4;
    s.alpha = 8;
    s.rslora = rslora;
    s.targets = {kQProj, kVProj, kDownProj};
    lora = lora_create(model, s, 5);
    // B non-zero, so every adapted module really changes.
    for (size_t i = 0; i < lora.params.size(); ++i) lora.params[i] = 0.002f * static_cast<float>(i % 397) - 0.4f;
    write_adapter(adapter_dir, lora, model_dir);
  }
};

}  // namespace

TEST(merge_delta_exact_on_representable_values) {
  // w[2,3] += 0.5 * b[2,2] . a[2,3]; small integers keep every product and sum exact in fp32.
  float w[6] = {1, 2, 3, 4, 5, 6};
  const float a[6] = {1, 0, 2, -1, 3, 1};
  const float b[4] = {2, 1, -3, 4};
  merge_lora_delta(w, a, b, 2, 3, 2, 0.5f);
  // b.a = [[2*1+1*-1, 2*0+1*3, 2*2+1*1], [-3*1+4*-1, -3*0+4*3, -3*2+4*1]] = [[1, 3, 5], [-7, 12, -2]]
  const float want[6] = {1.5f, 3.5f, 5.5f, 0.5f, 11.f, 5.f};
  for (int i = 0; i < 6; ++i) CHECK_EQ(w[i], want[i]);
}

TEST(merge_f32_weights_equal_w0_plus_scaled_ba) {
  for (bool rslora : {false, true}) {
    MergeFixture f(rslora);
    MergeOptions o;
    o.model = f.model_dir;
    o.adapter = f.adapter_dir;
    o.out = lora_test::make_temp_dir("merge-out") + "/merged";
    o.dtype = DType::F32;
    const MergeResult r = merge_adapter(o);
    CHECK_EQ(r.merged_modules, f.model.cfg.num_layers * 3);
    CHECK_EQ(r.shards, 1);
    CHECK_EQ(r.dtype, std::string("f32"));
    const double scale = rslora ? 8.0 / 2.0 : 8.0 / 4.0;
    CHECK_NEAR(f.lora.scale, scale, 0, 0);

    SafetensorsFile merged(o.out + "/model.safetensors");
    const WeightStore base(f.model_dir);
    CHECK_EQ(merged.tensors().size(), base.names().size());
    for (const std::string& name : base.names()) {
      const TensorInfo* t = merged.find(name);
      CHECK(t != nullptr);
      if (!t) continue;
      CHECK(t->dtype == DType::F32);
      CHECK(t->shape == base.find(name)->shape);
      const std::vector<float> w0 = base.read_f32(name, t->shape);
      std::vector<float> got(w0.size());
      std::memcpy(got.data(), merged.data(*t), got.size() * sizeof(float));
      int64_t layer = -1;
      int module = -1;
      for (int64_t l = 0; l < f.model.cfg.num_layers; ++l)
        for (int m = 0; m < kNumModules; ++m)
          if (name == module_path(l, m) + ".weight") layer = l, module = m;
      if (layer < 0 || !f.lora.targeted(module)) {
        // Not adapted: the bf16 value widened to f32, bit for bit.
        CHECK(std::memcmp(got.data(), w0.data(), got.size() * sizeof(float)) == 0);
        continue;
      }
      const LoraSlot& s = f.lora.slot(layer, module);
      const float* A = f.lora.params.data() + s.a;
      const float* B = f.lora.params.data() + s.b;
      double worst = 0;
      for (int64_t o2 = 0; o2 < s.out; ++o2)
        for (int64_t i = 0; i < s.in; ++i) {
          double d = 0;
          for (int64_t k = 0; k < f.lora.spec.r; ++k) d += static_cast<double>(B[o2 * f.lora.spec.r + k]) * A[k * s.in + i];
          const double want = w0[o2 * s.in + i] + scale * d;
          worst = std::max(worst, std::fabs(got[o2 * s.in + i] - want) / std::max(1.0, std::fabs(want)));
        }
      // Four fp32 products and one add, each rounded: a few ulps of values of order 1.
      CHECK(worst < 1e-6);
    }
  }
}

TEST(merge_bf16_rounds_the_merged_f32_value) {
  MergeFixture f;
  MergeOptions o;
  o.model = f.model_dir;
  o.adapter = f.adapter_dir;
  const std::string root = lora_test::make_temp_dir("merge-bf16");
  o.out = root + "/f32";
  o.dtype = DType::F32;
  merge_adapter(o);
  o.out = root + "/bf16";
  o.dtype = DType::BF16;
  merge_adapter(o);
  SafetensorsFile a(root + "/f32/model.safetensors"), b(root + "/bf16/model.safetensors");
  for (const TensorInfo& t : a.tensors()) {
    const TensorInfo* u = b.find(t.name);
    CHECK(u != nullptr && u->dtype == DType::BF16);
    if (!u) continue;
    for (int64_t i = 0; i < t.numel(); ++i) {
      float x;
      uint16_t h;
      std::memcpy(&x, a.data(t) + 4 * i, 4);
      std::memcpy(&h, b.data(*u) + 2 * i, 2);
      if (h != f32_to_bf16(x)) {
        CHECK_EQ(h, f32_to_bf16(x));
        break;
      }
    }
  }
}

TEST(merge_sharded_index_lists_every_tensor) {
  MergeFixture f;
  MergeOptions o;
  o.model = f.model_dir;
  o.adapter = f.adapter_dir;
  o.out = lora_test::make_temp_dir("merge-shards") + "/merged";
  o.dtype = DType::F32;
  o.shard_bytes = 8000;
  const MergeResult r = merge_adapter(o);
  CHECK(r.shards > 2);
  CHECK(!path_exists(o.out + "/model.safetensors"));
  // The sharded folder loads through the same index reader the runtime uses for HF models.
  const WeightStore merged(o.out);
  const WeightStore base(f.model_dir);
  CHECK(merged.names() == base.names());
  CHECK_EQ(merged.total_bytes(), r.bytes);
}

TEST(merge_refuses_mismatched_adapter_and_nonempty_out) {
  MergeFixture f;
  const std::string root = lora_test::make_temp_dir("merge-bad");
  // An adapter whose r disagrees with its tensors' shapes.
  const std::string bad = root + "/bad-adapter";
  make_dirs(bad);
  lora_test::write_text(bad + "/adapter_model.safetensors", lora_test::read_text(f.adapter_dir + "/adapter_model.safetensors"));
  Json cfg = json_parse_file(f.adapter_dir + "/adapter_config.json");
  cfg.set("r", 2);
  lora_test::write_text(bad + "/adapter_config.json", cfg.dump(true));
  MergeOptions o;
  o.model = f.model_dir;
  o.adapter = bad;
  o.out = root + "/out";
  CHECK_INPUT_ERROR(merge_adapter(o), "adapter_invalid");
  CHECK(!path_exists(o.out));

  o.adapter = f.adapter_dir;
  make_dirs(o.out);
  lora_test::write_text(o.out + "/keep", "x");
  CHECK_INPUT_ERROR(merge_adapter(o), "out_exists");
  CHECK(path_exists(o.out + "/keep"));
  o.force = true;
  merge_adapter(o);
  CHECK(!path_exists(o.out + "/keep"));
  CHECK(path_exists(o.out + "/model.safetensors"));
  CHECK(path_exists(o.out + "/config.json"));
}

TEST(merge_gpt2_conv1d_weights_give_the_logits_of_base_plus_adapter) {
  // Conv1D weights are stored [in, out]: a merge that forgot to transpose the delta would
  // fail the shape-free element comparison below through the logits.
  for (bool prefix : {true, false}) {
    const std::string root = lora_test::make_temp_dir("merge-gpt2");
    lora_test::TinyGpt2Spec spec;
    spec.prefix = prefix;
    spec.attn_buffers = true;
    make_dirs(root + "/base");
    lora_test::write_tiny_gpt2(spec, root + "/base");
    const Model base = load_model(root + "/base", QuantSettings{});
    LoraSpec s;
    s.r = 4;
    s.alpha = 8;
    s.targets = arch_modules(Arch::GPT2);
    LoraState lora = lora_create(base, s, 3);
    for (size_t i = 0; i < lora.params.size(); ++i) lora.params[i] = 0.003f * static_cast<float>(i % 211) - 0.3f;
    write_adapter(root + "/adapter", lora, root + "/base");
    MergeOptions o;
    o.model = root + "/base";
    o.adapter = root + "/adapter";
    o.out = root + "/merged";
    o.dtype = DType::F32;
    const MergeResult r = merge_adapter(o);
    CHECK_EQ(r.merged_modules, spec.layers * 4);
    const Model merged = load_model(o.out, QuantSettings{});
    const std::vector<int32_t> tokens = {1, 7, 3, 60, 22, 9, 41, 5};
    const std::vector<float> want = compute_logits(base, &lora, tokens, false);
    const std::vector<float> got = compute_logits(merged, nullptr, tokens, false);
    const std::vector<float> plain = compute_logits(base, nullptr, tokens, false);
    CHECK_EQ(got.size(), want.size());
    double worst = 0, effect = 0;
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::fabs(got[i] - want[i])));
      effect = std::max(effect, static_cast<double>(std::fabs(plain[i] - want[i])));
    }
    CHECK(effect > 1e-2);
    CHECK(worst < 1e-4);
  }
}
