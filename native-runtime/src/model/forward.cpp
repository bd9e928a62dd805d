#include "model/forward.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/rng.hpp"
#include "ops/attention.hpp"
#include "ops/cross_entropy.hpp"
#include "ops/embedding.hpp"
#include "ops/gelu.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/matmul.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"

namespace lora {

int64_t Batch::target_count() const {
  int64_t n = 0;
  for (int32_t t : targets) n += t >= 0;
  return n;
}

namespace {

template <class T>
T* sized(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) != n) v.resize(n);
  return v.data();
}

template <class T>
T* zeroed(std::vector<T>& v, int64_t n) {
  v.assign(n, T(0));
  return v.data();
}

// Everything one pass over a batch needs.
struct Pass {
  const Model& model;
  const LoraState* lora;   // null: the base model alone
  LoraState* grads;        // null: no backward
  const Batch& batch;
  Workspace& ws;
  bool dropout;            // training pass: LoRA dropout active
  uint64_t key_base;
  int64_t N, C, T, Hq, Hkv, D, I;
  float eps;

  Pass(const Model& m, const LoraState* l, LoraState* g, const Batch& b, Workspace& w, bool drop, uint64_t key)
      : model(m), lora(l), grads(g), batch(b), ws(w), dropout(drop), key_base(key) {
    N = b.rows * b.seq_len;
    T = b.seq_len;
    C = m.cfg.hidden_size;
    Hq = m.cfg.num_heads;
    Hkv = m.cfg.num_kv_heads;
    D = m.cfg.head_dim;
    I = m.cfg.intermediate_size;
    eps = static_cast<float>(m.cfg.rms_norm_eps);
  }

  const float* weight(int64_t layer, int module) {
    const QuantizedMatrix& W = model.layers[layer].linear[module];
    // An unquantized fp32 checkpoint is used in place: copying it would only cost bandwidth.
    if (W.type == QuantType::None && W.stored_dtype == DType::F32 &&
        W.raw.size() == static_cast<size_t>(W.rows * W.cols) * sizeof(float))
      return reinterpret_cast<const float*>(W.raw.data());
    float* w = sized(ws.w, model.max_linear_numel());
    dequantize_rows(W, 0, W.rows, w);
    return w;
  }

  bool has_lora(int64_t layer, int module) const { return lora && lora->slot(layer, module).a >= 0; }
  bool dropout_on(int64_t layer, int module) const {
    return dropout && has_lora(layer, module) && lora->spec.dropout > 0;
  }

  LoraParams lora_params(int64_t layer, int module) const {
    LoraParams p;
    if (!has_lora(layer, module)) return p;
    const LoraSlot& s = lora->slot(layer, module);
    p.A = lora->params.data() + s.a;
    p.B = lora->params.data() + s.b;
    p.r = lora->spec.r;
    p.scale = lora->scale;
    p.dropout = dropout_on(layer, module) ? static_cast<float>(lora->spec.dropout) : 0.f;
    return p;
  }

  // y: (N, out) = linear(x: (N, in)) for module `m` of layer `l`.
  void linear_fwd(int64_t l, int m, const float* x, float* y, LayerActs& a) {
    const int64_t in = model.module_in(m), out = model.module_out(m);
    const float* W = weight(l, m);
    LoraParams p = lora_params(l, m);
    uint8_t* keep = nullptr;
    float* h = nullptr;
    float* u = nullptr;
    if (p.A) {
      u = sized(a.lora_u[m], N * p.r);
      if (p.dropout > 0) {
        keep = sized(a.keep[m], N * in);
        h = sized(a.lora_h[m], N * in);
        dropout_mask(keep, N * in, p.dropout, rng_key(key_base, static_cast<uint64_t>(l), static_cast<uint64_t>(m)));
      }
    }
    const auto& bias = model.layers[l].bias[m];
    linear_forward(y, x, W, bias.empty() ? nullptr : bias.data(), p, keep, h, u, N, in, out);
  }

  // dx (N, in) += the input gradient of module `m`; LoRA gradients into grads.
  void linear_bwd(int64_t l, int m, float* dx, const float* dy, const float* x, const LayerActs& a) {
    const int64_t in = model.module_in(m), out = model.module_out(m);
    const float* W = weight(l, m);
    LoraParams p = lora_params(l, m);
    const uint8_t* keep = nullptr;
    const float* h = x;
    const float* u = nullptr;
    float* dA = nullptr;
    float* dB = nullptr;
    if (p.A) {
      u = a.lora_u[m].data();
      if (p.dropout > 0) {
        keep = a.keep[m].data();
        h = a.lora_h[m].data();
      }
      const LoraSlot& s = lora->slot(l, m);
      dA = grads->grads.data() + s.a;
      dB = grads->grads.data() + s.b;
    }
    linear_backward(dx, dA, dB, dy, W, p, keep, h, u, N, in, out);
  }

  // out (N, C) = decoder layer l applied to x (N, C); activations saved into `a`.
  void layer_forward(int64_t l, const float* x, float* out, LayerActs& a) {
    const LayerWeights& lw = model.layers[l];
    const int64_t Dq = Hq * D, Dkv = Hkv * D;
    float* xn = sized(a.xn, N * C);
    float* q = sized(a.q, N * Dq);
    float* k = sized(a.k, N * Dkv);
    float* v = sized(a.v, N * Dkv);
    float* att = sized(a.att, N * Dq);
    float* lse = sized(a.lse, N * Hq);
    float* x1 = sized(a.x1, N * C);
    float* xn2 = sized(a.xn2, N * C);
    float* g = sized(a.g, N * I);
    float* u = sized(a.u, N * I);
    float* hs = sized(a.hs, N * I);

    rmsnorm_forward(xn, sized(a.rstd1, N), x, lw.input_norm.data(), N, C, eps);
    linear_fwd(l, kQProj, xn, q, a);
    linear_fwd(l, kKProj, xn, k, a);
    linear_fwd(l, kVProj, xn, v, a);
    rope_forward(q, batch.pos.data(), model.inv_freq.data(), N, Hq, D);
    rope_forward(k, batch.pos.data(), model.inv_freq.data(), N, Hkv, D);
    for (int64_t b = 0; b < batch.rows; ++b) {
      attention_forward(att + b * T * Dq, lse + b * Hq * T, q + b * T * Dq, k + b * T * Dkv, v + b * T * Dkv,
                        batch.doc_start.data() + b * T, T, Hq, Hkv, D);
    }
    linear_fwd(l, kOProj, att, x1, a);
    for (int64_t i = 0; i < N * C; ++i) x1[i] += x[i];
    rmsnorm_forward(xn2, sized(a.rstd2, N), x1, lw.post_norm.data(), N, C, eps);
    linear_fwd(l, kGateProj, xn2, g, a);
    linear_fwd(l, kUpProj, xn2, u, a);
    swiglu_forward(hs, g, u, N * I);
    linear_fwd(l, kDownProj, hs, out, a);
    for (int64_t i = 0; i < N * C; ++i) out[i] += x1[i];
  }

  // dx (N, C) = gradient w.r.t. the layer's input x, given dout w.r.t. its output. dx may
  // be null for the first layer: the embeddings are frozen, so nothing needs it.
  void layer_backward(int64_t l, const float* x, const LayerActs& a, const float* dout, float* dx) {
    const LayerWeights& lw = model.layers[l];
    const int64_t Dq = Hq * D, Dkv = Hkv * D;
    float* dx1 = sized(ws.dx1, N * C);
    std::memcpy(dx1, dout, sizeof(float) * N * C);
    float* dhs = zeroed(ws.dhs, N * I);
    linear_bwd(l, kDownProj, dhs, dout, a.hs.data(), a);
    float* dg = sized(ws.dg, N * I);
    float* du = sized(ws.du, N * I);
    swiglu_backward(dg, du, dhs, a.g.data(), a.u.data(), N * I);
    float* dxn = zeroed(ws.dxn, N * C);
    linear_bwd(l, kGateProj, dxn, dg, a.xn2.data(), a);
    linear_bwd(l, kUpProj, dxn, du, a.xn2.data(), a);
    rmsnorm_backward(dx1, dxn, a.x1.data(), lw.post_norm.data(), a.rstd2.data(), N, C);

    float* datt = zeroed(ws.datt, N * Dq);
    linear_bwd(l, kOProj, datt, dx1, a.att.data(), a);
    float* dq = sized(ws.dq, N * Dq);
    float* dk = sized(ws.dk, N * Dkv);
    float* dv = sized(ws.dv, N * Dkv);
    for (int64_t b = 0; b < batch.rows; ++b) {
      attention_backward(dq + b * T * Dq, dk + b * T * Dkv, dv + b * T * Dkv, datt + b * T * Dq,
                         a.att.data() + b * T * Dq, a.lse.data() + b * Hq * T, a.q.data() + b * T * Dq,
                         a.k.data() + b * T * Dkv, a.v.data() + b * T * Dkv, batch.doc_start.data() + b * T, T,
                         Hq, Hkv, D);
    }
    rope_backward(dq, batch.pos.data(), model.inv_freq.data(), N, Hq, D);
    rope_backward(dk, batch.pos.data(), model.inv_freq.data(), N, Hkv, D);
    float* dxn_qkv = dx ? dxn : nullptr;
    if (dx) std::fill(dxn, dxn + N * C, 0.f);
    linear_bwd(l, kQProj, dxn_qkv, dq, a.xn.data(), a);
    linear_bwd(l, kKProj, dxn_qkv, dk, a.xn.data(), a);
    linear_bwd(l, kVProj, dxn_qkv, dv, a.xn.data(), a);
    if (!dx) return;
    std::memcpy(dx, dx1, sizeof(float) * N * C);
    rmsnorm_backward(dx, dxn, x, lw.input_norm.data(), a.rstd1.data(), N, C);
  }

  // GPT-2's pre-LN block: out (N, C) = layer l applied to x (N, C); activations into `a`.
  void gpt2_layer_forward(int64_t l, const float* x, float* out, LayerActs& a) {
    const LayerWeights& lw = model.layers[l];
    float* xn = sized(a.xn, N * C);
    float* qkv = sized(ws.qkv, N * 3 * C);
    float* q = sized(a.q, N * C);
    float* k = sized(a.k, N * C);
    float* v = sized(a.v, N * C);
    float* att = sized(a.att, N * C);
    float* lse = sized(a.lse, N * Hq);
    float* x1 = sized(a.x1, N * C);
    float* xn2 = sized(a.xn2, N * C);
    float* g = sized(a.g, N * I);
    float* hs = sized(a.hs, N * I);

    layernorm_forward(xn, sized(a.mean1, N), sized(a.rstd1, N), x, lw.input_norm.data(), lw.input_norm_bias.data(), N,
                      C, eps);
    linear_fwd(l, kCAttn, xn, qkv, a);
    // c_attn's output per token is [q | k | v]; attention wants each as its own (T, H, D).
    for (int64_t i = 0; i < N; ++i) {
      std::memcpy(q + i * C, qkv + i * 3 * C, sizeof(float) * C);
      std::memcpy(k + i * C, qkv + i * 3 * C + C, sizeof(float) * C);
      std::memcpy(v + i * C, qkv + i * 3 * C + 2 * C, sizeof(float) * C);
    }
    for (int64_t b = 0; b < batch.rows; ++b) {
      attention_forward(att + b * T * C, lse + b * Hq * T, q + b * T * C, k + b * T * C, v + b * T * C,
                        batch.doc_start.data() + b * T, T, Hq, Hq, D);
    }
    linear_fwd(l, kAttnCProj, att, x1, a);
    for (int64_t i = 0; i < N * C; ++i) x1[i] += x[i];
    layernorm_forward(xn2, sized(a.mean2, N), sized(a.rstd2, N), x1, lw.post_norm.data(), lw.post_norm_bias.data(), N,
                      C, eps);
    linear_fwd(l, kCFc, xn2, g, a);
    gelu_forward(hs, g, N * I);
    linear_fwd(l, kMlpCProj, hs, out, a);
    for (int64_t i = 0; i < N * C; ++i) out[i] += x1[i];
  }

  // GPT-2's block backward; dx may be null for the first layer, as in layer_backward.
  void gpt2_layer_backward(int64_t l, const float* x, const LayerActs& a, const float* dout, float* dx) {
    const LayerWeights& lw = model.layers[l];
    float* dx1 = sized(ws.dx1, N * C);
    std::memcpy(dx1, dout, sizeof(float) * N * C);
    float* dhs = zeroed(ws.dhs, N * I);
    linear_bwd(l, kMlpCProj, dhs, dout, a.hs.data(), a);
    float* dg = sized(ws.dg, N * I);
    gelu_backward(dg, dhs, a.g.data(), N * I);
    float* dxn = zeroed(ws.dxn, N * C);
    linear_bwd(l, kCFc, dxn, dg, a.xn2.data(), a);
    layernorm_backward(dx1, dxn, a.x1.data(), lw.post_norm.data(), a.mean2.data(), a.rstd2.data(), N, C);

    float* datt = zeroed(ws.datt, N * C);
    linear_bwd(l, kAttnCProj, datt, dx1, a.att.data(), a);
    float* dq = sized(ws.dq, N * C);
    float* dk = sized(ws.dk, N * C);
    float* dv = sized(ws.dv, N * C);
    for (int64_t b = 0; b < batch.rows; ++b) {
      attention_backward(dq + b * T * C, dk + b * T * C, dv + b * T * C, datt + b * T * C, a.att.data() + b * T * C,
                         a.lse.data() + b * Hq * T, a.q.data() + b * T * C, a.k.data() + b * T * C,
                         a.v.data() + b * T * C, batch.doc_start.data() + b * T, T, Hq, Hq, D);
    }
    float* dqkv = sized(ws.dqkv, N * 3 * C);
    for (int64_t i = 0; i < N; ++i) {
      std::memcpy(dqkv + i * 3 * C, dq + i * C, sizeof(float) * C);
      std::memcpy(dqkv + i * 3 * C + C, dk + i * C, sizeof(float) * C);
      std::memcpy(dqkv + i * 3 * C + 2 * C, dv + i * C, sizeof(float) * C);
    }
    if (dx) std::fill(dxn, dxn + N * C, 0.f);
    linear_bwd(l, kCAttn, dx ? dxn : nullptr, dqkv, a.xn.data(), a);
    if (!dx) return;
    std::memcpy(dx, dx1, sizeof(float) * N * C);
    layernorm_backward(dx, dxn, x, lw.input_norm.data(), a.mean1.data(), a.rstd1.data(), N, C);
  }

  bool gpt2() const { return model.cfg.arch == Arch::GPT2; }

  void any_layer_forward(int64_t l, const float* x, float* out, LayerActs& a) {
    if (gpt2())
      gpt2_layer_forward(l, x, out, a);
    else
      layer_forward(l, x, out, a);
  }

  // Runs all layers and the final norm; keeps per-layer activations when `keep_all`.
  void forward_layers(bool keep_all) {
    const int64_t L = model.cfg.num_layers;
    ws.xs.resize(L + 1);
    for (auto& x : ws.xs) sized(x, N * C);
    ws.acts.resize(keep_all ? L : 1);
    embedding_forward(ws.xs[0].data(), batch.tokens.data(), model.embed.data(), N, C);
    if (gpt2()) {
      // Learned positions, indexed by the per-document position so that packing leaves each
      // document's activations as if it were alone.
      const int64_t P = model.cfg.max_position_embeddings;
      float* x0 = ws.xs[0].data();
      for (int64_t i = 0; i < N; ++i) {
        const int32_t p = batch.pos[i];
        if (p < 0 || p >= P)
          throw std::invalid_argument("position " + std::to_string(p) + " is outside GPT-2's " + std::to_string(P) +
                                      " learned positions");
        const float* row = model.wpe.data() + p * C;
        for (int64_t c = 0; c < C; ++c) x0[i * C + c] += row[c];
      }
    }
    for (int64_t l = 0; l < L; ++l)
      any_layer_forward(l, ws.xs[l].data(), ws.xs[l + 1].data(), ws.acts[keep_all ? l : 0]);
    if (gpt2())
      layernorm_forward(sized(ws.xf, N * C), sized(ws.meanf, N), sized(ws.rstdf, N), ws.xs[L].data(),
                        model.final_norm.data(), model.final_norm_bias.data(), N, C, eps);
    else
      rmsnorm_forward(sized(ws.xf, N * C), sized(ws.rstdf, N), ws.xs[L].data(), model.final_norm.data(), N, C, eps);
  }

  // Summed cross-entropy over the target tokens; with backward, fills ws.dxf.
  double head(bool backward) {
    const int64_t V = model.cfg.vocab_size;
    const float* W = model.lm_head_weight();
    auto& index = ws.head_index;
    index.clear();
    for (int64_t i = 0; i < N; ++i)
      if (batch.targets[i] >= 0) index.push_back(i);
    if (backward) zeroed(ws.dxf, N * C);
    // About 16 MiB of logits per chunk: large enough for efficient GEMMs, small enough
    // that a 150k vocabulary does not multiply the activation memory.
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(1024, (int64_t(16) << 20) / (V * 4)));
    double loss = 0;
    for (size_t c0 = 0; c0 < index.size(); c0 += chunk) {
      const int64_t n = std::min<int64_t>(chunk, index.size() - c0);
      float* in = sized(ws.head_in, n * C);
      int32_t* tg = sized(ws.head_targets, n);
      for (int64_t i = 0; i < n; ++i) {
        std::memcpy(in + i * C, ws.xf.data() + index[c0 + i] * C, sizeof(float) * C);
        tg[i] = batch.targets[index[c0 + i]];
      }
      float* logits = sized(ws.head_logits, n * V);
      matmul_nt(logits, in, W, n, V, C);
      loss += cross_entropy_forward(logits, tg, n, V);
      if (!backward) continue;
      cross_entropy_backward(logits, logits, tg, n, V, 1.0f);
      float* dh = sized(ws.head_dx, n * C);
      matmul_nn(dh, logits, W, n, C, V);
      for (int64_t i = 0; i < n; ++i) std::memcpy(ws.dxf.data() + index[c0 + i] * C, dh + i * C, sizeof(float) * C);
    }
    return loss;
  }

  void backward_layers(bool checkpointing) {
    const int64_t L = model.cfg.num_layers;
    float* dx = zeroed(ws.dx, N * C);
    if (gpt2())
      layernorm_backward(dx, ws.dxf.data(), ws.xs[L].data(), model.final_norm.data(), ws.meanf.data(),
                         ws.rstdf.data(), N, C);
    else
      rmsnorm_backward(dx, ws.dxf.data(), ws.xs[L].data(), model.final_norm.data(), ws.rstdf.data(), N, C);
    float* dnext = sized(ws.dx_next, N * C);
    for (int64_t l = L - 1; l >= 0; --l) {
      LayerActs& a = ws.acts[checkpointing ? 0 : l];
      if (checkpointing) any_layer_forward(l, ws.xs[l].data(), sized(ws.recompute_out, N * C), a);
      if (gpt2())
        gpt2_layer_backward(l, ws.xs[l].data(), a, dx, l > 0 ? dnext : nullptr);
      else
        layer_backward(l, ws.xs[l].data(), a, dx, l > 0 ? dnext : nullptr);
      std::swap(dx, dnext);
    }
  }
};

bool batch_ok(const Model& model, const Batch& b) {
  const int64_t n = b.rows * b.seq_len;
  return n > 0 && static_cast<int64_t>(b.tokens.size()) == n && static_cast<int64_t>(b.targets.size()) == n &&
         static_cast<int64_t>(b.pos.size()) == n && static_cast<int64_t>(b.doc_start.size()) == n;
}

}  // namespace

uint64_t workspace_bytes(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing) {
  const ModelConfig& c = model.cfg;
  const int64_t C = c.hidden_size, I = c.intermediate_size, Dq = c.num_heads * c.head_dim,
                Dkv = c.num_kv_heads * c.head_dim, L = c.num_layers;
  // Per token, in floats: one layer's saved activations (see LayerActs) ...
  int64_t per_layer = 4 * C + 2 * Dq + 2 * Dkv + 3 * I + c.num_heads + 2;
  for (int m : lora.spec.targets) {
    per_layer += lora.spec.r;
    if (lora.spec.dropout > 0) per_layer += model.module_in(m) + (model.module_in(m) + 3) / 4;  // h + keep bytes
  }
  // ... the layer inputs, the backward scratch and the final norm.
  int64_t backward = 5 * C + 3 * Dq + 2 * Dkv + 3 * I;
  // GPT-2: LayerNorm means, and the fused qkv output and its gradient.
  if (c.arch == Arch::GPT2) backward += 6 * C + 3;
  const int64_t per_token = per_layer * (checkpointing ? 2 : L) + (L + 1) * C + backward + 2 * C;
  const int64_t V = c.vocab_size;
  const int64_t head = std::min<int64_t>(1024, std::max<int64_t>(1, (int64_t(16) << 20) / (V * 4))) * (V + 2 * C);
  return static_cast<uint64_t>(per_token * tokens + head + model.max_linear_numel()) * sizeof(float);
}

double forward_backward(const Model& model, LoraState& lora, const Batch& batch, const DropoutKey& key,
                        bool checkpointing, Workspace& ws) {
  if (!batch_ok(model, batch)) return 0;
  const uint64_t key_base = rng_key(key.seed, 0xD0D0ull /* dropout stream */, key.step, key.micro);
  Pass p(model, &lora, &lora, batch, ws, true, key_base);
  p.forward_layers(!checkpointing);
  const double loss = p.head(true);
  p.backward_layers(checkpointing);
  return loss;
}

double forward_loss(const Model& model, const LoraState* lora, const Batch& batch, Workspace& ws) {
  if (!batch_ok(model, batch)) return 0;
  Pass p(model, lora, nullptr, batch, ws, false, 0);
  p.forward_layers(false);
  return p.head(false);
}

void forward_hidden(const Model& model, const LoraState* lora, const Batch& batch, Workspace& ws,
                    std::vector<float>& out) {
  out.clear();
  if (!batch_ok(model, batch)) return;
  Pass p(model, lora, nullptr, batch, ws, false, 0);
  p.forward_layers(false);
  out = ws.xf;
}

}  // namespace lora
