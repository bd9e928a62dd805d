// GPT-2 (GPT2LMHeadModel): config.json, loading (Conv1D transposed, both tensor-name styles,
// quantized), the forward against an independent double-precision reference, whole-model
// LoRA gradients against finite differences, activation checkpointing, packing, PEFT target
// names (c_proj selects both projections) and the PEFT adapter layout (fan_in_fan_out).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "common/threadpool.hpp"
#include "formats/safetensors.hpp"
#include "gpt2_fixture.hpp"
#include "model/forward.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"
#include "test.hpp"
#include "train/adapter.hpp"
#include "train/data.hpp"
#include "train/run_config.hpp"

using namespace lora;
using lora_test::packed_batch;
using lora_test::randomise_b;
using lora_test::TinyGpt2Spec;

namespace {

std::string gpt2_dir(const TinyGpt2Spec& spec) {
  const std::string dir = lora_test::make_temp_dir("gpt2");
  lora_test::write_tiny_gpt2(spec, dir);
  return dir;
}

Model gpt2_model(const TinyGpt2Spec& spec, QuantType q = QuantType::None) {
  return lora_test::load_tiny_gpt2(spec, q);
}

LoraSpec gpt2_targets(int64_t r) {
  LoraSpec s;
  s.r = r;
  s.alpha = 2.0 * r;
  s.targets = arch_modules(Arch::GPT2);
  return s;
}

Json parse_json(const std::string& text) {
  Json j;
  JsonParseError err;
  if (!json_parse(text, j, err)) lora_test::record_failure(__FILE__, __LINE__, "fixture JSON: " + err.message);
  return j;
}

Batch single_doc(const std::vector<int32_t>& tokens) {
  Batch b;
  b.rows = 1;
  b.seq_len = static_cast<int64_t>(tokens.size());
  b.tokens = tokens;
  b.targets.assign(tokens.size(), -1);
  for (size_t i = 0; i + 1 < tokens.size(); ++i) b.targets[i] = tokens[i + 1];
  for (size_t i = 0; i < tokens.size(); ++i) b.pos.push_back(static_cast<int32_t>(i));
  b.doc_start.assign(tokens.size(), 0);
  return b;
}

// HF's GPT2LMHeadModel forward for one document, in double, straight from the checkpoint's
// Conv1D tensors (x W + b with W [in, out]), written without any of the runtime's ops.
// Returns the summed next-token cross-entropy.
double reference_loss(const std::string& dir, const TinyGpt2Spec& s, const std::vector<int32_t>& toks) {
  WeightStore ws(dir);
  const std::string x = s.prefix ? "transformer." : "";
  auto get = [&](const std::string& name) {
    const TensorInfo* t = ws.find(x + name);
    return ws.read_f32(x + name, t->shape);
  };
  const int64_t T = static_cast<int64_t>(toks.size()), C = s.hidden, H = s.heads, D = C / H;
  const int64_t I = s.inner ? s.inner : 4 * C, V = s.vocab;
  const auto wte = get("wte.weight"), wpe = get("wpe.weight");
  std::vector<double> h(T * C);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) h[t * C + c] = double(wte[toks[t] * C + c]) + wpe[t * C + c];
  auto layernorm = [&](const std::vector<double>& in, const std::vector<float>& w, const std::vector<float>& b) {
    std::vector<double> out(in.size());
    for (int64_t t = 0; t < T; ++t) {
      double m = 0, v = 0;
      for (int64_t c = 0; c < C; ++c) m += in[t * C + c];
      m /= C;
      for (int64_t c = 0; c < C; ++c) v += (in[t * C + c] - m) * (in[t * C + c] - m);
      const double r = 1.0 / std::sqrt(v / C + 1e-5);
      for (int64_t c = 0; c < C; ++c) out[t * C + c] = (in[t * C + c] - m) * r * w[c] + b[c];
    }
    return out;
  };
  auto conv1d = [&](const std::vector<double>& in, int64_t nin, const std::vector<float>& w,
                    const std::vector<float>& b, int64_t nout) {
    std::vector<double> out(T * nout);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < nout; ++o) {
        double acc = b[o];
        for (int64_t i = 0; i < nin; ++i) acc += in[t * nin + i] * w[i * nout + o];
        out[t * nout + o] = acc;
      }
    return out;
  };
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    const auto a_in = layernorm(h, get(p + "ln_1.weight"), get(p + "ln_1.bias"));
    const auto qkv = conv1d(a_in, C, get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias"), 3 * C);
    std::vector<double> att(T * C, 0.0);
    for (int64_t hd = 0; hd < H; ++hd)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> sc(t + 1);
        double mx = -1e300;
        for (int64_t j = 0; j <= t; ++j) {
          double d = 0;
          for (int64_t e = 0; e < D; ++e) d += qkv[t * 3 * C + hd * D + e] * qkv[j * 3 * C + C + hd * D + e];
          sc[j] = d / std::sqrt(double(D));
          mx = std::max(mx, sc[j]);
        }
        double z = 0;
        for (auto& v : sc) z += (v = std::exp(v - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t e = 0; e < D; ++e) att[t * C + hd * D + e] += sc[j] / z * qkv[j * 3 * C + 2 * C + hd * D + e];
      }
    const auto proj = conv1d(att, C, get(p + "attn.c_proj.weight"), get(p + "attn.c_proj.bias"), C);
    for (int64_t i = 0; i < T * C; ++i) h[i] += proj[i];
    const auto m_in = layernorm(h, get(p + "ln_2.weight"), get(p + "ln_2.bias"));
    auto fc = conv1d(m_in, C, get(p + "mlp.c_fc.weight"), get(p + "mlp.c_fc.bias"), I);
    for (auto& v : fc) v = 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    const auto out = conv1d(fc, I, get(p + "mlp.c_proj.weight"), get(p + "mlp.c_proj.bias"), C);
    for (int64_t i = 0; i < T * C; ++i) h[i] += out[i];
  }
  const auto hf = layernorm(h, get("ln_f.weight"), get("ln_f.bias"));
  double loss = 0;
  for (int64_t t = 0; t + 1 < T; ++t) {
    std::vector<double> logits(V);
    double mx = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      double d = 0;
      for (int64_t c = 0; c < C; ++c) d += hf[t * C + c] * wte[v * C + c];  // tied head
      logits[v] = d;
      mx = std::max(mx, d);
    }
    double z = 0;
    for (double v : logits) z += std::exp(v - mx);
    loss += mx + std::log(z) - logits[toks[t + 1]];
  }
  return loss;
}

}  // namespace

TEST(gpt2_config_maps_fields_and_defaults) {
  TinyGpt2Spec spec;
  const std::string dir = gpt2_dir(spec);
  const ModelConfig c = load_model_config(dir);
  CHECK(c.arch == Arch::GPT2);
  CHECK_EQ(std::string(arch_name(c.arch)), std::string("gpt2"));
  CHECK_EQ(c.hidden_size, int64_t(32));
  CHECK_EQ(c.intermediate_size, int64_t(128));  // n_inner null -> 4 * n_embd
  CHECK_EQ(c.num_heads, int64_t(4));
  CHECK_EQ(c.num_kv_heads, int64_t(4));
  CHECK_EQ(c.head_dim, int64_t(8));
  CHECK_EQ(c.max_position_embeddings, int64_t(32));
  CHECK(c.tie_word_embeddings);  // GPT2Config's default
  CHECK_NEAR(c.rms_norm_eps, 1e-5, 0, 1e-12);
  spec.inner = 40;
  CHECK_EQ(load_model_config(gpt2_dir(spec)).intermediate_size, int64_t(40));
}

TEST(gpt2_config_rejects_other_activations_with_a_hint) {
  TinyGpt2Spec spec;
  spec.activation = "relu";
  try {
    load_model_config(gpt2_dir(spec));
    CHECK(false);
  } catch (const InputError& e) {
    CHECK_EQ(e.field, std::string("activation_function"));
    CHECK(e.line > 1);
    CHECK(std::string(e.what()).find("relu") != std::string::npos);
    CHECK(e.hint.find("GELU") != std::string::npos);
  }
  spec.activation = "gelu_pytorch_tanh";
  CHECK(load_model_config(gpt2_dir(spec)).arch == Arch::GPT2);
}

TEST(gpt2_loads_conv1d_weights_transposed_with_or_without_prefix) {
  for (bool prefix : {true, false}) {
    TinyGpt2Spec spec;
    spec.prefix = prefix;
    spec.attn_buffers = true;  // ignored, as transformers ignores them
    const std::string dir = gpt2_dir(spec);
    const Model m = load_model(dir, QuantSettings{});
    WeightStore ws(dir);
    const std::string name = std::string(prefix ? "transformer." : "") + "h.1.attn.c_attn.weight";
    const auto stored = ws.read_f32(name, {32, 96});
    const QuantizedMatrix& W = m.layers[1].linear[kCAttn];
    CHECK_EQ(W.rows, int64_t(96));
    CHECK_EQ(W.cols, int64_t(32));
    std::vector<float> deq(96 * 32);
    dequantize_rows(W, 0, 96, deq.data());
    int mismatches = 0;
    for (int64_t i = 0; i < 32; ++i)
      for (int64_t o = 0; o < 96; ++o) mismatches += deq[o * 32 + i] != stored[i * 96 + o];
    CHECK_EQ(mismatches, 0);
    CHECK_EQ(m.layers[0].bias[kCFc].size(), size_t(128));
    CHECK_EQ(m.wpe.size(), size_t(32 * 32));
    CHECK(m.lm_head.empty());
    // Every tensor except the attention buffers: 2 embeddings, 12 per layer, ln_f's 2.
    const int64_t params = 64 * 32 + 32 * 32 + 2 * (4 * 32 + 32 * 96 + 96 + 32 * 32 + 32 + 32 * 128 + 128 + 128 * 32 + 32) +
                           2 * 32;
    CHECK_EQ(m.params_total, params);
    CHECK_EQ(inspect_model(dir).params_total, params);
  }
}

TEST(gpt2_missing_tensor_names_it) {
  TinyGpt2Spec spec;
  spec.omit = "h.1.mlp.c_fc.bias";
  try {
    load_model(gpt2_dir(spec), QuantSettings{});
    CHECK(false);
  } catch (const InputError& e) {
    CHECK_EQ(e.code, std::string("tensor_missing"));
    CHECK_EQ(e.field, std::string("transformer.h.1.mlp.c_fc.bias"));
  }
}

TEST(gpt2_forward_matches_independent_reference) {
  TinyGpt2Spec spec;
  const std::string dir = gpt2_dir(spec);
  const Model m = load_model(dir, QuantSettings{});
  const std::vector<int32_t> toks = {3, 17, 42, 8, 8, 61, 0, 29, 33, 12};
  Workspace ws;
  const double ours = forward_loss(m, nullptr, single_doc(toks), ws);
  const double ref = reference_loss(dir, spec, toks);
  CHECK(ref > 1.0);
  CHECK_NEAR(ours, ref, 1e-4, 1e-5);
}

TEST(gpt2_lora_gradients_match_finite_differences) {
  set_num_threads(2);
  TinyGpt2Spec spec;
  const Model model = gpt2_model(spec);
  LoraState lora = lora_create(model, gpt2_targets(4), 11);
  randomise_b(lora, 3);
  const Batch batch = packed_batch(spec.vocab);
  // 2 layers x 4 modules x (A, B) x 2 entries each.
  CHECK_EQ(lora_test::check_lora_gradients(model, lora, batch), 2 * 4 * 2 * 2);
}

TEST(gpt2_checkpointing_gives_identical_gradients_with_dropout) {
  TinyGpt2Spec spec;
  const Model model = gpt2_model(spec, QuantType::NF4);
  LoraSpec ls = gpt2_targets(4);
  ls.dropout = 0.2;
  LoraState a = lora_create(model, ls, 5), b = lora_create(model, ls, 5);
  randomise_b(a, 2);
  randomise_b(b, 2);
  const Batch batch = packed_batch(spec.vocab);
  Workspace w1, w2;
  const double l1 = forward_backward(model, a, batch, {3, 1, 0}, false, w1);
  const double l2 = forward_backward(model, b, batch, {3, 1, 0}, true, w2);
  CHECK_EQ(l1, l2);
  CHECK(a.grads == b.grads);
  double norm = 0;
  for (float g : a.grads) norm += double(g) * g;
  CHECK(norm > 1e-6);
}

TEST(gpt2_packing_restarts_positions_per_document) {
  TinyGpt2Spec spec;
  const Model model = gpt2_model(spec);
  const Batch packed = packed_batch(spec.vocab);
  // The second document of row 0 starts at index 7: its hidden states must equal those of
  // the document alone (learned positions from 0, attention only inside it).
  CHECK_EQ(packed.doc_start[7], 7);
  CHECK_EQ(packed.pos[7], 0);
  Workspace ws;
  std::vector<float> hp, ha;
  forward_hidden(model, nullptr, packed, ws, hp);
  forward_hidden(model, nullptr, single_doc({2, 6, 10, 14, 18}), ws, ha);
  for (int64_t i = 0; i < 5 * 32; ++i) CHECK_NEAR(hp[7 * 32 + i], ha[i], 1e-5, 1e-5);
}

TEST(gpt2_position_beyond_the_learned_table_is_refused) {
  TinyGpt2Spec spec;
  spec.positions = 8;
  const Model model = gpt2_model(spec);
  Workspace ws;
  bool threw = false;
  try {
    forward_loss(model, nullptr, single_doc({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}), ws);
  } catch (const std::invalid_argument& e) {
    threw = std::string(e.what()).find("learned positions") != std::string::npos;
  }
  CHECK(threw);
}

TEST(gpt2_quantized_load_holds_fewer_bytes_and_stays_close) {
  TinyGpt2Spec spec;
  spec.hidden = 64;
  const std::string dir = gpt2_dir(spec);
  QuantSettings none, q8, q4;
  q8.type = QuantType::Int8;
  q4.type = QuantType::NF4;
  const Model a = load_model(dir, none), b = load_model(dir, q8), c = load_model(dir, q4);
  CHECK(b.bytes_held < a.bytes_held);
  CHECK(c.bytes_held < b.bytes_held);
  const Batch batch = packed_batch(spec.vocab);
  Workspace ws;
  const double la = forward_loss(a, nullptr, batch, ws), lb = forward_loss(b, nullptr, batch, ws);
  CHECK_NEAR(lb, la, 0, 0.02);
}

TEST(gpt2_targets_follow_peft_names) {
  CHECK((modules_for_target(Arch::GPT2, "c_proj") == std::vector<int>{kAttnCProj, kMlpCProj}));
  CHECK((modules_for_target(Arch::GPT2, "attn.c_proj") == std::vector<int>{kAttnCProj}));
  CHECK((modules_for_target(Arch::GPT2, "mlp.c_proj") == std::vector<int>{kMlpCProj}));
  CHECK(modules_for_target(Arch::GPT2, "q_proj").empty());
  CHECK(modules_for_target(Arch::Llama, "c_attn").empty());
  CHECK((target_names({kCAttn, kAttnCProj, kCFc, kMlpCProj}) == std::vector<std::string>{"c_attn", "c_proj", "c_fc"}));
  CHECK((target_names({kCAttn, kMlpCProj}) == std::vector<std::string>{"c_attn", "mlp.c_proj"}));
  CHECK_EQ(module_path(3, kMlpCProj), std::string("transformer.h.3.mlp.c_proj"));

  const Json run = parse_json(R"({"v": 1, "model": "/m", "data": {"train": "t.bin"}, "lora": {"targets": ["c_attn", "c_proj"]}})");
  RunConfig rc = parse_run_config(run, "/r", "/r/run.json");
  CHECK((resolve_targets(rc, Arch::GPT2) == std::vector<int>{kCAttn, kAttnCProj, kMlpCProj}));
  try {
    resolve_targets(rc, Arch::Llama);
    CHECK(false);
  } catch (const InputError& e) {
    CHECK_EQ(e.field, std::string("lora.targets"));
    CHECK(std::string(e.what()).find("c_attn") != std::string::npos);
  }
  const Json bare = parse_json(R"({"v": 1, "model": "/m", "data": {"train": "t.bin"}})");
  CHECK(resolve_targets(parse_run_config(bare, "/r", "/r/run.json"), Arch::GPT2) == arch_modules(Arch::GPT2));
}

TEST(gpt2_adapter_has_peft_conv1d_layout_and_reads_back) {
  TinyGpt2Spec spec;
  const Model model = gpt2_model(spec);
  LoraState lora = lora_create(model, gpt2_targets(4), 21);
  randomise_b(lora, 8);
  const std::string dir = lora_test::make_temp_dir("gpt2-adapter") + "/adapter";
  write_adapter(dir, lora, "gpt2");
  SafetensorsFile st(dir + "/adapter_model.safetensors");
  CHECK_EQ(st.tensors().size(), size_t(2 * 4 * 2));
  auto shape = [&](const std::string& k) {
    const TensorInfo* t = st.find(k);
    return t ? t->shape : std::vector<int64_t>{};
  };
  CHECK((shape("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight") == std::vector<int64_t>{4, 32}));
  CHECK((shape("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight") == std::vector<int64_t>{96, 4}));
  CHECK((shape("base_model.model.transformer.h.1.attn.c_proj.lora_B.weight") == std::vector<int64_t>{32, 4}));
  CHECK((shape("base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight") == std::vector<int64_t>{128, 4}));
  CHECK((shape("base_model.model.transformer.h.1.mlp.c_proj.lora_A.weight") == std::vector<int64_t>{4, 128}));
  const Json cfg = json_parse_file(dir + "/adapter_config.json");
  CHECK(cfg.find("fan_in_fan_out")->as_bool());
  const Json& tm = *cfg.find("target_modules");
  CHECK_EQ(tm.size(), size_t(3));
  CHECK_EQ(tm.items()[1].as_string(), std::string("c_proj"));

  const LoraState back = read_adapter(dir, model);
  CHECK(back.spec.targets == lora.spec.targets);
  CHECK(back.params == lora.params);

  // An adapter for a Llama model is refused on GPT-2 with the supported names.
  lora_test::write_text(dir + "/adapter_config.json",
             R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})");
  try {
    read_adapter(dir, model);
    CHECK(false);
  } catch (const InputError& e) {
    CHECK_EQ(e.field, std::string("target_modules"));
    CHECK(e.hint.find("c_attn") != std::string::npos);
  }
}
