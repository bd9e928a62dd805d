#pragma once
// Tiny random Llama-family models written to a temp folder in HF format (config.json +
// model.safetensors), for the model, adapter and trainer tests. Deterministic from a seed.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/rng.hpp"
#include "formats/safetensors.hpp"
#include "formats/shard.hpp"
#include "model/forward.hpp"
#include "model/lora.hpp"
#include "test.hpp"
#include "train/data.hpp"
#include "train/files.hpp"

namespace lora_test {

struct TinyModelSpec {
  std::string architecture = "LlamaForCausalLM";
  int64_t layers = 2, hidden = 32, intermediate = 48, heads = 4, kv_heads = 2, vocab = 64;
  bool tied = false;
  bool attention_bias = false;   // Qwen2 always has q/k/v biases
  bool bf16 = false;             // store weights as BF16 instead of F32
  uint64_t seed = 7;
  // Tensors to leave out or to give a wrong shape (bad-input tests).
  std::string omit;
  std::string misshape;
};

// Removes every folder made by make_temp_dir when the test binary exits (keep them for
// debugging with LORA_KEEP_TEST_DIRS=1).
struct TempDirs {
  std::vector<std::string> dirs;
  ~TempDirs() {
    if (std::getenv("LORA_KEEP_TEST_DIRS")) return;
    for (const auto& d : dirs) lora::remove_tree(d);
  }
};
inline TempDirs& temp_dirs() {
  static TempDirs t;
  return t;
}

inline std::string make_temp_dir(const std::string& tag) {
  std::string t = "/tmp/lora-test-" + tag + "-XXXXXX";
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back(0);
  const char* d = mkdtemp(buf.data());
  if (!d) return std::string();
  temp_dirs().dirs.push_back(d);
  return std::string(d);
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Weights uniform in +-scale, from the counter-based RNG keyed by (seed, tensor index).
inline std::vector<float> random_tensor(uint64_t seed, uint64_t which, int64_t n, float scale, float offset = 0.f) {
  std::vector<float> v(n);
  const uint64_t key = lora::rng_key(seed, 0xF1Full, which);
  for (int64_t i = 0; i < n; ++i) v[i] = offset + scale * (2.f * lora::rng_uniform(key, i) - 1.f);
  return v;
}

inline std::string write_tiny_model(const TinyModelSpec& s, const std::string& dir) {
  const int64_t D = s.hidden / s.heads;
  const bool qwen = s.architecture == "Qwen2ForCausalLM";
  char cfg[1024];
  std::snprintf(cfg, sizeof cfg,
                "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n  \"hidden_size\": %lld,\n"
                "  \"intermediate_size\": %lld,\n  \"num_hidden_layers\": %lld,\n  \"num_attention_heads\": %lld,\n"
                "  \"num_key_value_heads\": %lld,\n  \"vocab_size\": %lld,\n  \"max_position_embeddings\": 256,\n"
                "  \"rms_norm_eps\": 1e-5,\n  \"rope_theta\": 10000.0,\n  \"tie_word_embeddings\": %s,\n"
                "  \"attention_bias\": %s,\n  \"torch_dtype\": \"%s\"\n}\n",
                s.architecture.c_str(), qwen ? "qwen2" : "llama", (long long)s.hidden, (long long)s.intermediate,
                (long long)s.layers, (long long)s.heads, (long long)s.kv_heads, (long long)s.vocab,
                s.tied ? "true" : "false", s.attention_bias ? "true" : "false", s.bf16 ? "bfloat16" : "float32");
  write_text(dir + "/config.json", cfg);

  std::vector<std::vector<float>> store;
  std::vector<lora::TensorToWrite> tensors;
  store.reserve(256);
  uint64_t which = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float offset = 0.f) {
    ++which;
    if (name == s.omit) return;
    if (name == s.misshape) shape[0] += 1;
    int64_t n = 1;
    for (auto d : shape) n *= d;
    store.push_back(random_tensor(s.seed, which, n, scale, offset));
    tensors.push_back({name, s.bf16 ? lora::DType::BF16 : lora::DType::F32, shape, store.back().data()});
  };
  const float wl = 1.0f / std::sqrt(static_cast<float>(s.hidden));
  add("model.embed_tokens.weight", {s.vocab, s.hidden}, 1.0f);
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    add(p + ".input_layernorm.weight", {s.hidden}, 0.1f, 1.0f);
    add(p + ".post_attention_layernorm.weight", {s.hidden}, 0.1f, 1.0f);
    add(p + ".self_attn.q_proj.weight", {s.heads * D, s.hidden}, 2 * wl);
    add(p + ".self_attn.k_proj.weight", {s.kv_heads * D, s.hidden}, 2 * wl);
    add(p + ".self_attn.v_proj.weight", {s.kv_heads * D, s.hidden}, 2 * wl);
    add(p + ".self_attn.o_proj.weight", {s.hidden, s.heads * D}, wl);
    if (qwen || s.attention_bias) {
      add(p + ".self_attn.q_proj.bias", {s.heads * D}, 0.2f);
      add(p + ".self_attn.k_proj.bias", {s.kv_heads * D}, 0.2f);
      add(p + ".self_attn.v_proj.bias", {s.kv_heads * D}, 0.2f);
      if (!qwen) add(p + ".self_attn.o_proj.bias", {s.hidden}, 0.2f);
    }
    add(p + ".mlp.gate_proj.weight", {s.intermediate, s.hidden}, 2 * wl);
    add(p + ".mlp.up_proj.weight", {s.intermediate, s.hidden}, 2 * wl);
    add(p + ".mlp.down_proj.weight", {s.hidden, s.intermediate}, 1.0f / std::sqrt(static_cast<float>(s.intermediate)));
  }
  add("model.norm.weight", {s.hidden}, 0.1f, 1.0f);
  if (!s.tied) add("lm_head.weight", {s.vocab, s.hidden}, 2 * wl);
  lora::write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

// Writes the tiny Llama-family model to a fresh temporary folder and loads it, quantized as
// `q` says (block 64, double quantization whenever quantized, as training runs use).
inline lora::Model load_tiny_model(const TinyModelSpec& spec, lora::QuantType q = lora::QuantType::None,
                                   const std::string& tag = "model") {
  const std::string dir = make_temp_dir(tag);
  write_tiny_model(spec, dir);
  lora::QuantSettings qs;
  qs.type = q;
  qs.block_size = 64;
  qs.double_quant = q != lora::QuantType::None;
  return lora::load_model(dir, qs);
}

// A shard from explicit documents; mask 1 everywhere except each document's first token.
inline lora::TokenShard make_shard(const std::vector<std::vector<uint32_t>>& docs, uint32_t vocab) {
  lora::TokenShard s;
  s.vocab_size = vocab;
  s.offsets.push_back(0);
  for (const auto& d : docs) {
    for (size_t i = 0; i < d.size(); ++i) {
      s.tokens.push_back(d[i]);
      s.loss_mask.push_back(i == 0 ? 0 : 1);
    }
    s.offsets.push_back(s.tokens.size());
  }
  return s;
}

// Gives every LoRA B matrix non-zero values, so that the gradients of A are non-zero too.
inline void randomise_b(lora::LoraState& lora, uint64_t seed) {
  for (int64_t l = 0; l < lora.layers; ++l)
    for (int m : lora.spec.targets) {
      const lora::LoraSlot& s = lora.slot(l, m);
      auto v = random_tensor(seed, l * 16 + m, s.out * lora.spec.r, 0.3f);
      std::copy(v.begin(), v.end(), lora.params.begin() + s.b);
    }
}

// Two rows of 12 tokens; the first row packs two documents, the second holds one and padding.
inline lora::Batch packed_batch(int64_t vocab) {
  const auto shard = make_shard({{1, 5, 9, 13, 17, 21, 25}, {2, 6, 10, 14, 18}, {3, 7, 11, 15, 19, 23, 27, 31}},
                                static_cast<uint32_t>(vocab));
  lora::PackedRows rows = lora::pack_shard(shard, 12);
  std::vector<int64_t> ids(rows.rows);
  for (int64_t i = 0; i < rows.rows; ++i) ids[i] = i;
  return lora::gather_rows(rows, ids.data(), rows.rows);
}

// Checks dL/dparam (L = mean loss over targets) for the largest-gradient entries of A and
// B of every targeted module of the first layer and the last, against central differences.
// fp32 tolerance: with h = 1e-2 the truncation error is O(h^2) ~ 1e-4 relative and the
// rounding noise of a mean loss of ~4 is ~1e-6 / 2h ~ 5e-5, so 2e-3 absolute + 3% relative
// is loose enough for rounding and tight enough to catch a wrong or missing term.
// Returns how many entries were checked; the gradients are left in lora.grads.
inline int check_lora_gradients(const lora::Model& model, lora::LoraState& lora, const lora::Batch& batch) {
  using namespace lora;
  Workspace ws;
  const double count = static_cast<double>(batch.target_count());
  std::fill(lora.grads.begin(), lora.grads.end(), 0.f);
  forward_backward(model, lora, batch, {1, 0, 0}, false, ws);
  int checked = 0;
  for (int64_t l : {int64_t(0), lora.layers - 1}) {
    for (int m : lora.spec.targets) {
      const LoraSlot& s = lora.slot(l, m);
      for (int64_t base : {s.a, s.b}) {
        const int64_t n = base == s.a ? lora.spec.r * s.in : s.out * lora.spec.r;
        int64_t best = base;
        for (int64_t i = base; i < base + n; ++i)
          if (std::fabs(lora.grads[i]) > std::fabs(lora.grads[best])) best = i;
        for (int64_t i : {best, base + n / 3}) {
          const float saved = lora.params[i];
          const float h = 1e-2f;
          lora.params[i] = saved + h;
          const double lp = forward_loss(model, &lora, batch, ws) / count;
          lora.params[i] = saved - h;
          const double lm = forward_loss(model, &lora, batch, ws) / count;
          lora.params[i] = saved;
          const double fd = (lp - lm) / (2.0 * h);
          const double an = lora.grads[i] / count;
          CHECK_NEAR(an, fd, 2e-3, 3e-2);
          ++checked;
        }
      }
    }
  }
  double norm = 0;
  for (float g : lora.grads) norm += double(g) * g;
  CHECK(norm > 1e-6);  // the check above is not vacuous
  return checked;
}

}  // namespace lora_test
