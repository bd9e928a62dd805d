#pragma once
// Tiny random GPT-2 models (GPT2LMHeadModel) in HF format: config.json as transformers
// writes it and Conv1D-layout weights ([in, out]), deterministic from a seed.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "model_fixture.hpp"

namespace lora_test {

struct TinyGpt2Spec {
  int64_t layers = 2, hidden = 32, heads = 4, vocab = 64, positions = 32;
  int64_t inner = 0;             // 0 writes "n_inner": null (4 * hidden)
  bool prefix = true;            // "transformer." tensor names (GPT2LMHeadModel) or bare (GPT2Model)
  bool attn_buffers = false;     // also write the legacy attn.bias / attn.masked_bias buffers
  bool bf16 = false;
  std::string activation = "gelu_new";
  uint64_t seed = 9;
  std::string omit;              // a tensor to leave out (bad-input tests)
};

inline std::string write_tiny_gpt2(const TinyGpt2Spec& s, const std::string& dir) {
  const int64_t inner = s.inner ? s.inner : 4 * s.hidden;
  char cfg[1400];
  std::snprintf(cfg, sizeof cfg,
                "{\n  \"activation_function\": \"%s\",\n  \"architectures\": [\"GPT2LMHeadModel\"],\n"
                "  \"attn_pdrop\": 0.1,\n  \"bos_token_id\": %lld,\n  \"embd_pdrop\": 0.1,\n  \"eos_token_id\": %lld,\n"
                "  \"initializer_range\": 0.02,\n  \"layer_norm_epsilon\": 1e-05,\n  \"model_type\": \"gpt2\",\n"
                "  \"n_ctx\": %lld,\n  \"n_embd\": %lld,\n  \"n_head\": %lld,\n  \"n_inner\": %s,\n  \"n_layer\": %lld,\n"
                "  \"n_positions\": %lld,\n  \"reorder_and_upcast_attn\": false,\n  \"resid_pdrop\": 0.1,\n"
                "  \"scale_attn_by_inverse_layer_idx\": false,\n  \"scale_attn_weights\": true,\n"
                "  \"torch_dtype\": \"%s\",\n  \"use_cache\": true,\n  \"vocab_size\": %lld\n}\n",
                s.activation.c_str(), (long long)(s.vocab - 1), (long long)(s.vocab - 1), (long long)s.positions,
                (long long)s.hidden, (long long)s.heads, s.inner ? std::to_string(s.inner).c_str() : "null",
                (long long)s.layers, (long long)s.positions, s.bf16 ? "bfloat16" : "float32", (long long)s.vocab);
  write_text(dir + "/config.json", cfg);

  std::vector<std::vector<float>> store;
  std::vector<lora::TensorToWrite> tensors;
  store.reserve(512);
  uint64_t which = 0;
  const std::string x = s.prefix ? "transformer." : "";
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float offset = 0.f) {
    ++which;
    if (name == x + s.omit) return;
    int64_t n = 1;
    for (auto d : shape) n *= d;
    store.push_back(random_tensor(s.seed, which, n, scale, offset));
    tensors.push_back({name, s.bf16 ? lora::DType::BF16 : lora::DType::F32, shape, store.back().data()});
  };
  const float wl = 1.0f / std::sqrt(static_cast<float>(s.hidden));
  add(x + "wte.weight", {s.vocab, s.hidden}, 1.0f);
  add(x + "wpe.weight", {s.positions, s.hidden}, 0.5f);
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = x + "h." + std::to_string(l);
    add(p + ".ln_1.weight", {s.hidden}, 0.1f, 1.0f);
    add(p + ".ln_1.bias", {s.hidden}, 0.1f);
    add(p + ".attn.c_attn.weight", {s.hidden, 3 * s.hidden}, 2 * wl);
    add(p + ".attn.c_attn.bias", {3 * s.hidden}, 0.2f);
    add(p + ".attn.c_proj.weight", {s.hidden, s.hidden}, wl);
    add(p + ".attn.c_proj.bias", {s.hidden}, 0.1f);
    add(p + ".ln_2.weight", {s.hidden}, 0.1f, 1.0f);
    add(p + ".ln_2.bias", {s.hidden}, 0.1f);
    add(p + ".mlp.c_fc.weight", {s.hidden, inner}, 2 * wl);
    add(p + ".mlp.c_fc.bias", {inner}, 0.1f);
    add(p + ".mlp.c_proj.weight", {inner, s.hidden}, 1.0f / std::sqrt(static_cast<float>(inner)));
    add(p + ".mlp.c_proj.bias", {s.hidden}, 0.1f);
    if (s.attn_buffers) {
      add(p + ".attn.bias", {1, 1, s.positions, s.positions}, 1.0f);
      add(p + ".attn.masked_bias", {1}, 1.0f);
    }
  }
  add(x + "ln_f.weight", {s.hidden}, 0.1f, 1.0f);
  add(x + "ln_f.bias", {s.hidden}, 0.1f);
  lora::write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

// The tiny GPT-2 in a fresh temporary folder, loaded (quantized as `q` says, double
// quantization whenever quantized).
inline lora::Model load_tiny_gpt2(const TinyGpt2Spec& spec, lora::QuantType q = lora::QuantType::None,
                                  const std::string& tag = "gpt2") {
  const std::string dir = make_temp_dir(tag);
  write_tiny_gpt2(spec, dir);
  lora::QuantSettings qs;
  qs.type = q;
  qs.double_quant = q != lora::QuantType::None;
  return lora::load_model(dir, qs);
}

}  // namespace lora_test
