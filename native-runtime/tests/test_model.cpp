// The Llama-family model: whole-model LoRA gradients against finite differences, activation
// checkpointing, packing, tied embeddings, Qwen2 biases, and loading errors.
#include <algorithm>
#include <cstring>

#include "common/errors.hpp"
#include "common/threadpool.hpp"
#include "model/forward.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"
#include "model_fixture.hpp"
#include "test.hpp"
#include "train/data.hpp"

using namespace lora;
using lora_test::packed_batch;
using lora_test::randomise_b;
using lora_test::TinyModelSpec;
using lora_test::load_tiny_model;

namespace {


LoraSpec all_targets(int64_t r, double dropout = 0.0) {
  LoraSpec s;
  s.r = r;
  s.alpha = 2.0 * r;
  s.dropout = dropout;
  for (int m : arch_modules(Arch::Llama)) s.targets.push_back(m);
  return s;
}


}  // namespace

TEST(model_lora_gradients_match_finite_differences) {
  set_num_threads(2);
  TinyModelSpec spec;
  const Model model = load_tiny_model(spec);
  LoraState lora = lora_create(model, all_targets(4), 11);
  randomise_b(lora, 3);
  CHECK(lora_test::check_lora_gradients(model, lora, packed_batch(spec.vocab)) >= 4 * static_cast<int>(lora.spec.targets.size()));
}

TEST(model_qwen2_bias_tied_gradients_match_finite_differences) {
  TinyModelSpec spec;
  spec.architecture = "Qwen2ForCausalLM";
  spec.tied = true;
  const Model model = load_tiny_model(spec);
  CHECK(!model.layers[0].bias[kQProj].empty());
  CHECK(!model.layers[0].bias[kVProj].empty());
  CHECK(model.layers[0].bias[kOProj].empty());
  CHECK(model.lm_head.empty());
  LoraSpec ls = all_targets(2);
  ls.rslora = true;
  LoraState lora = lora_create(model, ls, 5);
  CHECK_NEAR(lora.scale, 4.0 / std::sqrt(2.0), 1e-6, 0);
  randomise_b(lora, 4);
  CHECK(lora_test::check_lora_gradients(model, lora, packed_batch(spec.vocab)) >= 4 * static_cast<int>(lora.spec.targets.size()));
}

TEST(model_qkv_bias_changes_output) {
  // The bias is really applied: zeroing it changes the loss.
  TinyModelSpec spec;
  spec.architecture = "Qwen2ForCausalLM";
  Model model = load_tiny_model(spec);
  const Batch b = packed_batch(spec.vocab);
  Workspace ws;
  const double with = forward_loss(model, nullptr, b, ws);
  for (auto& lw : model.layers) std::fill(lw.bias[kQProj].begin(), lw.bias[kQProj].end(), 0.f);
  const double without = forward_loss(model, nullptr, b, ws);
  CHECK(std::fabs(with - without) > 1e-4);
}

TEST(model_checkpointing_is_bit_identical) {
  set_num_threads(2);
  TinyModelSpec spec;
  const Model model = load_tiny_model(spec);
  LoraState a = lora_create(model, all_targets(4, 0.2), 9);
  randomise_b(a, 1);
  LoraState b = a;
  const Batch batch = packed_batch(spec.vocab);
  Workspace w1, w2;
  const double l1 = forward_backward(model, a, batch, {42, 3, 1}, false, w1);
  const double l2 = forward_backward(model, b, batch, {42, 3, 1}, true, w2);
  CHECK(l1 == l2);
  CHECK(a.grads.size() == b.grads.size());
  CHECK(std::memcmp(a.grads.data(), b.grads.data(), a.grads.size() * sizeof(float)) == 0);
  // Different dropout keys give different gradients: the masks are really in use.
  LoraState c = a;
  std::fill(c.grads.begin(), c.grads.end(), 0.f);
  std::fill(a.grads.begin(), a.grads.end(), 0.f);
  forward_backward(model, a, batch, {42, 3, 1}, true, w1);
  forward_backward(model, c, batch, {42, 4, 1}, true, w2);
  CHECK(std::memcmp(a.grads.data(), c.grads.data(), a.grads.size() * sizeof(float)) != 0);
}

TEST(model_packing_equals_documents_alone) {
  TinyModelSpec spec;
  const Model model = load_tiny_model(spec);
  LoraState lora = lora_create(model, all_targets(4), 2);
  randomise_b(lora, 8);
  const std::vector<uint32_t> d1 = {1, 5, 9, 13, 17}, d2 = {4, 8, 12, 16, 20, 24};
  auto batch_of = [&](const std::vector<std::vector<uint32_t>>& docs, int64_t T) {
    PackedRows rows = pack_shard(lora_test::make_shard(docs, spec.vocab), T);
    std::vector<int64_t> ids(rows.rows);
    for (int64_t i = 0; i < rows.rows; ++i) ids[i] = i;
    return gather_rows(rows, ids.data(), rows.rows);
  };
  const Batch packed = batch_of({d1, d2}, 11);
  CHECK_EQ(packed.rows, 1);
  const Batch alone1 = batch_of({d1}, 5), alone2 = batch_of({d2}, 6);
  Workspace ws;
  std::vector<float> hp, h1, h2;
  forward_hidden(model, &lora, packed, ws, hp);
  forward_hidden(model, &lora, alone1, ws, h1);
  forward_hidden(model, &lora, alone2, ws, h2);
  const int64_t C = spec.hidden;
  double worst = 0;
  for (int64_t i = 0; i < 5 * C; ++i) worst = std::max(worst, double(std::fabs(hp[i] - h1[i])));
  for (int64_t i = 0; i < 6 * C; ++i) worst = std::max(worst, double(std::fabs(hp[5 * C + i] - h2[i])));
  CHECK(worst < 1e-5);
  const double lp = forward_loss(model, &lora, packed, ws);
  const double ls = forward_loss(model, &lora, alone1, ws) + forward_loss(model, &lora, alone2, ws);
  CHECK_NEAR(lp, ls, 1e-5, 1e-5);
  // Without the document mask the second document would see the first: positions and
  // masking matter, so a one-document row holding both differs.
  const Batch joined = batch_of({{1, 5, 9, 13, 17, 4, 8, 12, 16, 20, 24}}, 11);
  std::vector<float> hj;
  forward_hidden(model, &lora, joined, ws, hj);
  double diff = 0;
  for (int64_t i = 5 * C; i < 11 * C; ++i) diff = std::max(diff, double(std::fabs(hj[i] - hp[i])));
  CHECK(diff > 1e-3);
}

TEST(model_tied_embeddings_use_the_embedding_matrix) {
  TinyModelSpec spec;
  spec.tied = true;
  const Model tied = load_tiny_model(spec);
  CHECK(tied.lm_head.empty());
  CHECK(tied.lm_head_weight() == tied.embed.data());
  Model untied = tied;
  untied.cfg.tie_word_embeddings = false;
  untied.lm_head = tied.embed;
  const Batch b = packed_batch(spec.vocab);
  Workspace ws;
  CHECK(forward_loss(tied, nullptr, b, ws) == forward_loss(untied, nullptr, b, ws));
  untied.lm_head[0] += 1.0f;
  for (float& x : untied.lm_head) x *= 1.5f;
  CHECK(forward_loss(tied, nullptr, b, ws) != forward_loss(untied, nullptr, b, ws));
}

TEST(model_quantized_load_reports_bytes_and_stays_close) {
  TinyModelSpec spec;
  spec.hidden = 64;
  spec.intermediate = 128;
  spec.heads = 4;
  spec.kv_heads = 2;
  const std::string dir = lora_test::make_temp_dir("quant");
  lora_test::write_tiny_model(spec, dir);
  const Model full = load_model(dir, QuantSettings{QuantType::None, 64, false});
  const Model nf4 = load_model(dir, QuantSettings{QuantType::NF4, 64, true});
  const Model i8 = load_model(dir, QuantSettings{QuantType::Int8, 64, false});
  CHECK_EQ(full.bytes_disk, nf4.bytes_disk);
  CHECK(nf4.bytes_held < full.bytes_held);
  CHECK(i8.bytes_held < full.bytes_held);
  CHECK(nf4.bytes_held < i8.bytes_held);
  const Batch b = packed_batch(spec.vocab);
  Workspace ws;
  const double count = b.target_count();
  const double lf = forward_loss(full, nullptr, b, ws) / count;
  const double l8 = forward_loss(i8, nullptr, b, ws) / count;
  const double l4 = forward_loss(nf4, nullptr, b, ws) / count;
  CHECK_NEAR(l8, lf, 0.02, 0);
  CHECK_NEAR(l4, lf, 0.3, 0);
  CHECK(l4 != lf);
}

TEST(model_bf16_checkpoint_loads) {
  TinyModelSpec spec;
  spec.bf16 = true;
  const Model m = load_tiny_model(spec);
  CHECK_EQ(m.dtype, std::string("BF16"));
  CHECK(m.layers[0].linear[kQProj].stored_dtype == DType::BF16);
  Workspace ws;
  const double l = forward_loss(m, nullptr, packed_batch(spec.vocab), ws);
  CHECK(std::isfinite(l) && l > 0);
}

TEST(model_load_errors_name_the_tensor) {
  const std::string d1 = lora_test::make_temp_dir("bad");
  TinyModelSpec s1;
  s1.omit = "model.layers.1.mlp.up_proj.weight";
  lora_test::write_tiny_model(s1, d1);
  try {
    load_model(d1, QuantSettings{});
    CHECK(false);
  } catch (const InputError& e) {
    CHECK_EQ(e.code, std::string("tensor_missing"));
    CHECK_EQ(e.field, s1.omit);
  }
  const std::string d2 = lora_test::make_temp_dir("bad");
  TinyModelSpec s2;
  s2.misshape = "model.layers.0.self_attn.k_proj.weight";
  lora_test::write_tiny_model(s2, d2);
  try {
    inspect_model(d2);
    CHECK(false);
  } catch (const InputError& e) {
    CHECK_EQ(e.code, std::string("tensor_shape"));
    CHECK_EQ(e.field, s2.misshape);
    CHECK(e.file.find("model.safetensors") != std::string::npos);
  }
  const std::string d3 = lora_test::make_temp_dir("bad");
  TinyModelSpec s3;
  s3.omit = "lm_head.weight";
  lora_test::write_tiny_model(s3, d3);
  CHECK_INPUT_ERROR(load_model(d3, QuantSettings{}), "tensor_missing");
}

TEST(lora_init_matches_peft) {
  TinyModelSpec spec;
  const Model model = load_tiny_model(spec);
  LoraSpec ls = all_targets(4);
  const LoraState a = lora_create(model, ls, 123), b = lora_create(model, ls, 123), c = lora_create(model, ls, 124);
  CHECK(a.params == b.params);
  CHECK(a.params != c.params);
  for (int64_t l = 0; l < a.layers; ++l)
    for (int m : ls.targets) {
      const LoraSlot& s = a.slot(l, m);
      const float bound = 1.0f / std::sqrt(float(s.in));
      float lo = 0, hi = 0;
      for (int64_t i = 0; i < ls.r * s.in; ++i) {
        lo = std::min(lo, a.params[s.a + i]);
        hi = std::max(hi, a.params[s.a + i]);
      }
      CHECK(lo >= -bound && hi <= bound);
      CHECK(hi > 0.5f * bound && lo < -0.5f * bound);  // spread over the range
      for (int64_t i = 0; i < s.out * ls.r; ++i) CHECK(a.params[s.b + i] == 0.f);
    }
  CHECK_NEAR(a.scale, 2.0, 1e-7, 0);
  LoraSpec big = all_targets(spec.kv_heads * (spec.hidden / spec.heads) + 1);
  CHECK_INPUT_ERROR(lora_create(model, big, 1), "config_field");
  LoraSpec only_q;
  only_q.r = 4;
  only_q.targets = {kQProj};
  const LoraState q = lora_create(model, only_q, 1);
  CHECK(q.slot(0, kQProj).a >= 0 && q.slot(0, kVProj).a < 0);
  CHECK_EQ(static_cast<int64_t>(q.params.size()), spec.layers * (4 * spec.hidden + spec.hidden * 4));
}
