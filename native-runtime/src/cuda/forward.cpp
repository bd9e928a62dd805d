// The decoder on the device, twin of model/forward.cpp (see forward.hpp). Each function
// below mirrors the CPU function of the same name; the differences are only where the GPU
// wants them: bf16 copies of fp32 values right before a GEMM reads them, a residual
// gradient updated in place, and target rows gathered before the LM head.
#include "cuda/forward.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/rng.hpp"
#include "cuda/activations.hpp"
#include "cuda/attention.hpp"
#include "cuda/context.hpp"
#include "cuda/dequant.hpp"
#include "cuda/elementwise.hpp"
#include "cuda/lora_linear.hpp"
#include "cuda/norms.hpp"
#include "cuda/rope.hpp"

namespace lora::cuda {

DeviceWorkspace::~DeviceWorkspace() {
  // Destructors must not throw: errors here (a context already torn down) are ignored.
  if (host_xs) {
    if (!ev_stored.empty() || !ev_loaded.empty()) (void)cudaDeviceSynchronize();
    host_free_pinned(host_xs);
  }
  for (auto* list : {&ev_stored, &ev_loaded, &ev_ready})
    for (cudaEvent_t e : *list) (void)cudaEventDestroy(e);
  if (head_ws) lm_head_workspace_destroy(head_ws);
}

namespace {

// What one pass needs allocated.
struct Shape {
  int64_t rows = 0, T = 0, N = 0, n_targets = 0;
  bool backward = false;   // forward_backward (else forward only)
  bool keep_all = false;   // every layer's activations kept (backward without checkpointing)
  bool offload = false;    // checkpointed layer inputs live on the host
  bool dropout = false;    // LoRA dropout active
  bool with_lora = false;
};

int64_t xs_count(const Model& m, const Shape& s) {
  // A forward-only pass and an offloaded one ping-pong between two layer inputs.
  return s.backward && !s.offload ? m.cfg.num_layers + 1 : 2;
}

// Every device buffer of the workspace with its element count for `s`. The same list
// allocates (forward_backward) and counts (device_workspace_bytes), so the estimate is the
// allocation.
template <class Visitor>
void visit_buffers(DeviceWorkspace& ws, const Model& model, const LoraState* lora, const Shape& s, Visitor&& v) {
  const ModelConfig& c = model.cfg;
  const bool gpt2 = c.arch == Arch::GPT2;
  const int64_t N = s.N, C = c.hidden_size, I = c.intermediate_size, Hq = c.num_heads, Hkv = c.num_kv_heads,
                D = c.head_dim, Dq = Hq * D, Dkv = Hkv * D, n = s.n_targets;
  v(ws.tokens, N);
  v(ws.pos, N);
  v(ws.doc_start, N);
  v(ws.head_targets, n);
  v(ws.head_index, n);
  ws.xs.resize(xs_count(model, s));
  for (auto& x : ws.xs) v(x, N * C);
  ws.acts.resize(s.keep_all ? c.num_layers : 1);
  int64_t max_in = 0;
  for (auto& a : ws.acts) {
    v(a.xn, N * C);
    v(a.q, N * Dq);
    v(a.k, N * Dkv);
    v(a.v, N * Dkv);
    v(a.att, N * Dq);
    v(a.lse, N * Hq);
    v(a.x1, N * C);
    v(a.xn2, N * C);
    v(a.rstd1, N);
    v(a.rstd2, N);
    if (gpt2) {
      v(a.mean1, N);
      v(a.mean2, N);
    } else {
      v(a.u, N * I);
    }
    v(a.g, N * I);
    v(a.hs, N * I);
    if (!s.with_lora) continue;
    for (int m : lora->spec.targets) {
      v(a.lora_u[m], N * lora->spec.r);
      if (s.dropout) v(a.lora_h[m], N * model.module_in(m));
      max_in = std::max(max_in, model.module_in(m));
    }
  }
  bool quantized = false;
  for (const auto& l : model.layers)
    for (int m : arch_modules(c.arch)) quantized = quantized || l.linear[m].type != QuantType::None;
  if (quantized) v(ws.w_scratch, model.max_linear_numel());
  v(ws.xf, N * C);
  v(ws.rstdf, N);
  if (gpt2) {
    v(ws.meanf, N);
    v(ws.qkv, N * 3 * C);
  }
  v(ws.head_x, n * C);
  if (!s.backward) return;
  if (!s.keep_all) v(ws.recompute_out, N * C);
  const int64_t wide = std::max(I, Dq);
  v(ws.dres, N * C);
  v(ws.dxn, N * C);
  v(ws.dtmp, N * wide);
  v(ws.dy_bf, N * C);
  v(ws.dtmp_bf, N * wide);
  v(ws.dg, N * I);
  if (!gpt2) v(ws.du, N * I);
  v(ws.dq, N * Dq);
  v(ws.dk, N * Dkv);
  v(ws.dv, N * Dkv);
  if (gpt2) v(ws.dqkv, N * 3 * C);
  if (s.with_lora) {
    v(ws.lora_du, N * lora->spec.r);
    if (s.dropout) v(ws.lora_dh, N * max_in);
  }
  v(ws.attn_ws, static_cast<int64_t>(attention_backward_workspace(s.rows, s.T, Hq, Hkv, D)));
  v(ws.head_dx, n * C);
}

struct Allocate {
  template <class T>
  void operator()(DeviceArray<T>& a, int64_t n) {
    a.resize(static_cast<size_t>(n));
  }
};

// The caching allocator's `used` counts size classes (memory.cpp), so the estimate does too.
uint64_t allocator_rounded(uint64_t bytes) { return allocator_size_class(static_cast<size_t>(bytes)); }

// Counts what Allocate would allocate in `ws` (never allocated itself), sorted by the
// buffer's place in the workspace.
struct Count {
  const DeviceWorkspace& ws;
  WorkspaceBytes parts;

  template <class T>
  static bool within(const void* p, const std::vector<T>& list) {
    if (list.empty()) return false;
    const auto* b = reinterpret_cast<const char*>(list.data());
    const auto* c = static_cast<const char*>(p);
    return c >= b && c < b + list.size() * sizeof(T);
  }

  template <class T>
  void operator()(DeviceArray<T>& a, int64_t n) {
    if (n <= 0) return;
    const uint64_t b = allocator_rounded(static_cast<uint64_t>(n) * sizeof(T));
    const void* p = &a;
    if (within(p, ws.xs))
      parts.layer_inputs += b;
    else if (within(p, ws.acts))
      parts.activations += b;
    else if (p == &ws.w_scratch)
      parts.dequant += b;
    else if (p == &ws.head_x || p == &ws.head_dx || p == &ws.head_targets || p == &ws.head_index)
      parts.lm_head += b;
    else
      parts.scratch += b;
  }
};

// The LM-head workspace is opaque (cross_entropy.cu): it holds min(chunk, n) rows of fp32
// logits padded to a multiple of 8 (its bf16 gradients overwrite them in place), a loss per
// row and one fp64 total.
uint64_t lm_head_bytes(const Model& model, int64_t n_targets, int64_t chunk) {
  const int64_t rows = std::max<int64_t>(1, std::min(n_targets, chunk));
  const int64_t ld = (model.cfg.vocab_size + 7) / 8 * 8;
  return allocator_rounded(static_cast<uint64_t>(rows) * ld * 4) + allocator_rounded(static_cast<uint64_t>(rows) * 4) +
         allocator_rounded(8);
}

bool batch_ok(const Batch& b) {
  const int64_t n = b.rows * b.seq_len;
  return n > 0 && static_cast<int64_t>(b.tokens.size()) == n && static_cast<int64_t>(b.targets.size()) == n &&
         static_cast<int64_t>(b.pos.size()) == n && static_cast<int64_t>(b.doc_start.size()) == n;
}

// An id outside the tables would be an out-of-bounds read on the device (a fault that ends
// the process's CUDA context), so the host checks what the CPU path checks, and more.
void check_batch(const Model& model, const Batch& b) {
  const int64_t V = model.cfg.vocab_size, P = model.cfg.max_position_embeddings;
  const bool gpt2 = model.cfg.arch == Arch::GPT2;
  for (size_t i = 0; i < b.tokens.size(); ++i) {
    if (b.tokens[i] < 0 || b.tokens[i] >= V)
      throw std::out_of_range("embedding: token id " + std::to_string(b.tokens[i]) + " at row " +
                              std::to_string(i) + " is outside [0, " + std::to_string(V) + ")");
    if (b.targets[i] < -1 || b.targets[i] >= V)
      throw std::out_of_range("cross_entropy: target " + std::to_string(b.targets[i]) + " at row " +
                              std::to_string(i) + " is outside [-1, " + std::to_string(V) + ")");
    if (gpt2 && (b.pos[i] < 0 || b.pos[i] >= P))
      throw std::invalid_argument("position " + std::to_string(b.pos[i]) + " is outside GPT-2's " +
                                  std::to_string(P) + " learned positions");
    const int64_t in_row = static_cast<int64_t>(i) % b.seq_len;
    if (b.doc_start[i] < 0 || b.doc_start[i] > in_row)
      throw std::invalid_argument("doc_start " + std::to_string(b.doc_start[i]) + " at row " + std::to_string(i) +
                                  " is outside [0, " + std::to_string(in_row) + "]");
    // The attention kernels take a query tile's key range from its first query's doc_start,
    // which is right only when documents are contiguous (doc_start never decreases in a row).
    if (in_row > 0 && b.doc_start[i] < b.doc_start[i - 1])
      throw std::invalid_argument("doc_start decreases at row " + std::to_string(i) +
                                  ": documents in a packed row must be contiguous");
  }
}

class Pass {
 public:
  Pass(const DeviceModel& dm, DeviceLoraState* lora, const Batch& batch, const ForwardOptions& opt,
       DeviceWorkspace& ws, bool backward, bool dropout, uint64_t key_base)
      : dm_(dm), model_(*dm.host), lora_(lora), batch_(batch), opt_(opt), ws_(ws), ctx_(current()),
        stream_(ctx_.stream), backward_(backward), dropout_(dropout), key_base_(key_base) {
    const ModelConfig& c = model_.cfg;
    rows_ = batch.rows;
    T_ = batch.seq_len;
    N_ = rows_ * T_;
    C_ = c.hidden_size;
    Hq_ = c.num_heads;
    Hkv_ = c.num_kv_heads;
    D_ = c.head_dim;
    I_ = c.intermediate_size;
    L_ = c.num_layers;
    V_ = c.vocab_size;
    eps_ = static_cast<float>(c.rms_norm_eps);
    gpt2_ = c.arch == Arch::GPT2;
  }

  // Uploads the batch and sizes the workspace.
  void prepare(bool checkpointing) {
    ws_.host_index.clear();
    ws_.host_targets.clear();
    for (int64_t i = 0; i < N_; ++i) {
      if (batch_.targets[i] < 0) continue;
      ws_.host_index.push_back(i);
      ws_.host_targets.push_back(batch_.targets[i]);
    }
    Shape s;
    s.rows = rows_;
    s.T = T_;
    s.N = N_;
    s.n_targets = static_cast<int64_t>(ws_.host_index.size());
    s.backward = backward_;
    s.keep_all = backward_ && !checkpointing;
    s.offload = backward_ && checkpointing && opt_.offload_activations && L_ > 1;
    s.dropout = dropout_ && lora_ && lora_->host->spec.dropout > 0;
    s.with_lora = lora_ && !lora_->host->spec.targets.empty() && lora_->count() > 0;
    shape_ = s;
    visit_buffers(ws_, model_, lora_ ? lora_->host : nullptr, s, Allocate{});
    if (!ws_.head_ws) ws_.head_ws = lm_head_workspace_create();
    if (s.offload) prepare_offload();

    copy_to_device(ws_.tokens.data(), batch_.tokens.data(), N_ * sizeof(int32_t));
    copy_to_device(ws_.pos.data(), batch_.pos.data(), N_ * sizeof(int32_t));
    copy_to_device(ws_.doc_start.data(), batch_.doc_start.data(), N_ * sizeof(int32_t));
    if (s.n_targets > 0) {
      copy_to_device(ws_.head_index.data(), ws_.host_index.data(), s.n_targets * sizeof(int64_t));
      copy_to_device(ws_.head_targets.data(), ws_.host_targets.data(), s.n_targets * sizeof(int32_t));
    }
  }

  int64_t n_targets() const { return shape_.n_targets; }

  // Runs the layers and the final norm; keeps every layer's activations when keep_all.
  void forward_layers() {
    embedding_forward(x_in(0), ws_.tokens.data(), dm_.embed.data(), ws_.pos.data(),
                      gpt2_ ? dm_.wpe.data() : nullptr, N_, C_, stream_);
    for (int64_t l = 0; l < L_; ++l) {
      if (shape_.offload) {
        // Layer l's input goes to the host while layer l runs; the last one stays (its slot
        // is never overwritten, and backward starts with it).
        if (l < L_ - 1) store_input(l);
        // The output slot held layer l-1's input: wait until that copy has left it.
        if (l >= 1) LORA_CUDA_CHECK(cudaStreamWaitEvent(stream_, ws_.ev_stored[l - 1], 0));
      }
      layer_forward(l, x_in(l), x_in(l + 1), ws_.acts[shape_.keep_all ? l : 0]);
    }
    const float* xL = x_in(L_);
    if (gpt2_)
      layernorm_forward(ws_.xf.data(), ws_.meanf.data(), ws_.rstdf.data(), xL, dm_.final_norm.data(),
                        dm_.final_norm_bias.data(), N_, C_, eps_, stream_);
    else
      rmsnorm_forward(ws_.xf.data(), ws_.rstdf.data(), xL, dm_.final_norm.data(), N_, C_, eps_, stream_);
  }

  // Summed cross-entropy over the targets; with backward, leaves d(loss)/d(final norm
  // output) in ws.dxn (N, C), zero at the other rows.
  double head() {
    const int64_t n = shape_.n_targets;
    if (n == 0) return 0.0;
    gather_rows_bf16(ws_.head_x.data(), ws_.xf.data(), ws_.head_index.data(), n, C_, stream_);
    LmHeadArgs a;
    a.x = ws_.head_x.data();
    a.targets = ws_.head_targets.data();
    a.W = dm_.lm_head_weight();
    a.n = n;
    a.C = C_;
    a.V = V_;
    a.grad_scale = 1.f;
    a.dx = backward_ ? ws_.head_dx.data() : nullptr;
    a.chunk = std::max<int64_t>(1, opt_.lm_head_chunk);
    const double loss = lm_head_cross_entropy(a, ws_.head_ws, stream_);
    if (backward_) {
      zero(ws_.dxn.data(), N_ * C_);
      scatter_add_rows_f32(ws_.dxn.data(), ws_.head_dx.data(), ws_.head_index.data(), n, C_, stream_);
    }
    return loss;
  }

  void backward_layers() {
    float* dres = ws_.dres.data();
    zero(dres, N_ * C_);
    const float* xL = x_in(L_);
    if (gpt2_)
      layernorm_backward(dres, ws_.dxn.data(), xL, dm_.final_norm.data(), ws_.meanf.data(), ws_.rstdf.data(), N_,
                         C_, stream_);
    else
      rmsnorm_backward(dres, ws_.dxn.data(), xL, dm_.final_norm.data(), ws_.rstdf.data(), N_, C_, stream_);
    for (int64_t l = L_ - 1; l >= 0; --l) {
      if (shape_.offload) {
        // Layer l-1's input comes back into the slot that held layer l+1's input (or the
        // last output), whose readers are all enqueued; layer l's input must be back.
        if (l >= 1) load_input(l - 1);
        if (l < L_ - 1) LORA_CUDA_CHECK(cudaStreamWaitEvent(stream_, ws_.ev_loaded[l], 0));
      }
      DeviceLayerActs& a = ws_.acts[shape_.keep_all ? l : 0];
      // The single set of activations still holds the last layer's from the forward.
      if (!shape_.keep_all && l != L_ - 1) layer_forward(l, x_in(l), ws_.recompute_out.data(), a);
      layer_backward(l, x_in(l), a, dres, l > 0);
    }
  }

 private:
  float* x_in(int64_t l) {
    return static_cast<int64_t>(ws_.xs.size()) == L_ + 1 ? ws_.xs[l].data() : ws_.xs[l % 2].data();
  }

  void zero(void* p, int64_t count, size_t elem = sizeof(float)) {
    if (count > 0) LORA_CUDA_CHECK(cudaMemsetAsync(p, 0, static_cast<size_t>(count) * elem, stream_));
  }
  void copy_f32(float* dst, const float* src, int64_t count) {
    LORA_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * sizeof(float), cudaMemcpyDeviceToDevice,
                                    stream_));
  }
  // Copies a (N, width) column block between row-major bf16 matrices of different widths
  // (GPT-2's fused [q | k | v] rows and the separate q, k, v).
  void copy_cols(bf16* dst, int64_t dst_width, const bf16* src, int64_t src_width, int64_t width) {
    LORA_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_width * sizeof(bf16), src, src_width * sizeof(bf16),
                                      width * sizeof(bf16), N_, cudaMemcpyDeviceToDevice, stream_));
  }

  void prepare_offload() {
    const size_t floats = static_cast<size_t>(L_) * N_ * C_;
    if (ws_.host_xs_floats < floats) {
      // Copies of the previous pass may still read or write the old buffer.
      LORA_CUDA_CHECK(cudaStreamSynchronize(ctx_.copy_stream));
      host_free_pinned(ws_.host_xs);
      ws_.host_xs = nullptr;
      ws_.host_xs_floats = 0;
      ws_.host_xs = static_cast<float*>(host_alloc_pinned(floats * sizeof(float)));
      ws_.host_xs_floats = floats;
    }
    for (auto* list : {&ws_.ev_stored, &ws_.ev_loaded, &ws_.ev_ready}) {
      while (static_cast<int64_t>(list->size()) < L_) {
        cudaEvent_t e;
        LORA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        list->push_back(e);
      }
    }
  }

  float* host_input(int64_t l) { return ws_.host_xs + static_cast<size_t>(l) * N_ * C_; }

  void store_input(int64_t l) {
    LORA_CUDA_CHECK(cudaEventRecord(ws_.ev_ready[l], stream_));
    LORA_CUDA_CHECK(cudaStreamWaitEvent(ctx_.copy_stream, ws_.ev_ready[l], 0));
    LORA_CUDA_CHECK(cudaMemcpyAsync(host_input(l), x_in(l), static_cast<size_t>(N_) * C_ * sizeof(float),
                                    cudaMemcpyDeviceToHost, ctx_.copy_stream));
    LORA_CUDA_CHECK(cudaEventRecord(ws_.ev_stored[l], ctx_.copy_stream));
  }

  void load_input(int64_t l) {
    LORA_CUDA_CHECK(cudaEventRecord(ws_.ev_ready[l], stream_));
    LORA_CUDA_CHECK(cudaStreamWaitEvent(ctx_.copy_stream, ws_.ev_ready[l], 0));
    LORA_CUDA_CHECK(cudaMemcpyAsync(x_in(l), host_input(l), static_cast<size_t>(N_) * C_ * sizeof(float),
                                    cudaMemcpyHostToDevice, ctx_.copy_stream));
    LORA_CUDA_CHECK(cudaEventRecord(ws_.ev_loaded[l], ctx_.copy_stream));
  }

  const bf16* weight(int64_t l, int m) {
    return weight_view(dm_.layers[l].linear[m], ws_.w_scratch.data(), stream_);
  }

  DeviceLora adapter(int64_t l, int m) {
    if (!lora_) return DeviceLora{};
    DeviceLora d = lora_->module(l, m, backward_);
    if (d.A && shape_.dropout) {
      d.dropout = static_cast<float>(lora_->host->spec.dropout);
      // The CPU's key for this layer and module (model/forward.cpp linear_fwd).
      d.dropout_key = rng_key(key_base_, static_cast<uint64_t>(l), static_cast<uint64_t>(m));
    }
    return d;
  }

  // y (N, out) = linear(x (N, in)): bf16 output, or fp32 added into y_f32.
  void linear_fwd(int64_t l, int m, const bf16* x, bf16* y_bf16, float* y_f32, DeviceLayerActs& a) {
    const DeviceLora d = adapter(l, m);
    LinearForward f;
    f.x = x;
    f.W = weight(l, m);
    f.bias = dm_.bias(l, m);
    f.T = N_;
    f.in = model_.module_in(m);
    f.out = model_.module_out(m);
    f.y_bf16 = y_bf16;
    f.y_f32 = y_f32;
    if (d.A) {
      f.u = a.lora_u[m].data();
      if (d.dropout > 0) f.h = a.lora_h[m].data();
    }
    lora_linear_forward(f, d, stream_);
  }

  // dx (N, in) += the input gradient of module m (dx may be null); LoRA gradients accumulate.
  void linear_bwd(int64_t l, int m, float* dx, const bf16* dy, const bf16* x, DeviceLayerActs& a) {
    const DeviceLora d = adapter(l, m);
    if (!dx && !d.A) return;
    LinearBackward b;
    b.dy = dy;
    // Without dx (the first layer's q/k/v) the frozen weight is not read: no dequantization.
    b.W = dx ? weight(l, m) : nullptr;
    b.x = x;
    b.T = N_;
    b.in = model_.module_in(m);
    b.out = model_.module_out(m);
    b.dx = dx;
    if (d.A) {
      b.u = a.lora_u[m].data();
      b.du = ws_.lora_du.data();
      if (d.dropout > 0) {
        b.h = a.lora_h[m].data();
        b.dh = ws_.lora_dh.data();
      }
    }
    lora_linear_backward(b, d, stream_);
  }

  void attention_fwd(DeviceLayerActs& a, int64_t Hkv) {
    attention_forward(a.att.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), ws_.doc_start.data(), rows_,
                      T_, Hq_, Hkv, D_, stream_);
  }
  void attention_bwd(DeviceLayerActs& a, int64_t Hkv) {
    attention_backward(ws_.dq.data(), ws_.dk.data(), ws_.dv.data(), ws_.dtmp_bf.data(), a.att.data(), a.lse.data(),
                       a.q.data(), a.k.data(), a.v.data(), ws_.doc_start.data(), rows_, T_, Hq_, Hkv, D_,
                       ws_.attn_ws.data(), stream_);
  }

  void layer_forward(int64_t l, const float* x, float* out, DeviceLayerActs& a) {
    if (gpt2_)
      gpt2_layer_forward(l, x, out, a);
    else
      llama_layer_forward(l, x, out, a);
  }
  void layer_backward(int64_t l, const float* x, DeviceLayerActs& a, float* dres, bool need_dx) {
    if (gpt2_)
      gpt2_layer_backward(l, x, a, dres, need_dx);
    else
      llama_layer_backward(l, x, a, dres, need_dx);
  }

  // out (N, C) = decoder layer l applied to x (N, C); activations saved into `a`.
  void llama_layer_forward(int64_t l, const float* x, float* out, DeviceLayerActs& a) {
    const DeviceLayer& lw = dm_.layers[l];
    rmsnorm_forward(a.xn.data(), a.rstd1.data(), x, lw.input_norm.data(), N_, C_, eps_, stream_);
    linear_fwd(l, kQProj, a.xn.data(), a.q.data(), nullptr, a);
    linear_fwd(l, kKProj, a.xn.data(), a.k.data(), nullptr, a);
    linear_fwd(l, kVProj, a.xn.data(), a.v.data(), nullptr, a);
    rope_forward(a.q.data(), ws_.pos.data(), dm_.inv_freq.data(), N_, Hq_, D_, stream_);
    rope_forward(a.k.data(), ws_.pos.data(), dm_.inv_freq.data(), N_, Hkv_, D_, stream_);
    attention_fwd(a, Hkv_);
    copy_f32(a.x1.data(), x, N_ * C_);
    linear_fwd(l, kOProj, a.att.data(), nullptr, a.x1.data(), a);
    rmsnorm_forward(a.xn2.data(), a.rstd2.data(), a.x1.data(), lw.post_norm.data(), N_, C_, eps_, stream_);
    linear_fwd(l, kGateProj, a.xn2.data(), a.g.data(), nullptr, a);
    linear_fwd(l, kUpProj, a.xn2.data(), a.u.data(), nullptr, a);
    swiglu_forward(a.hs.data(), a.g.data(), a.u.data(), N_ * I_, stream_);
    copy_f32(out, a.x1.data(), N_ * C_);
    linear_fwd(l, kDownProj, a.hs.data(), nullptr, out, a);
  }

  // dres (N, C): on entry d(loss)/d(layer output), on return d(loss)/d(layer input) (when
  // need_dx; the first layer's input gradient is not needed, the embeddings being frozen).
  // The residual connections make both the sum of dres and the norms' input gradients, so
  // it is updated in place.
  void llama_layer_backward(int64_t l, const float* x, DeviceLayerActs& a, float* dres, bool need_dx) {
    const DeviceLayer& lw = dm_.layers[l];
    const int64_t Dq = Hq_ * D_;
    cast_f32_to_bf16(ws_.dy_bf.data(), dres, N_ * C_, stream_);
    zero(ws_.dtmp.data(), N_ * I_);
    linear_bwd(l, kDownProj, ws_.dtmp.data(), ws_.dy_bf.data(), a.hs.data(), a);
    cast_f32_to_bf16(ws_.dtmp_bf.data(), ws_.dtmp.data(), N_ * I_, stream_);
    swiglu_backward(ws_.dg.data(), ws_.du.data(), ws_.dtmp_bf.data(), a.g.data(), a.u.data(), N_ * I_, stream_);
    zero(ws_.dxn.data(), N_ * C_);
    linear_bwd(l, kGateProj, ws_.dxn.data(), ws_.dg.data(), a.xn2.data(), a);
    linear_bwd(l, kUpProj, ws_.dxn.data(), ws_.du.data(), a.xn2.data(), a);
    rmsnorm_backward(dres, ws_.dxn.data(), a.x1.data(), lw.post_norm.data(), a.rstd2.data(), N_, C_, stream_);

    cast_f32_to_bf16(ws_.dy_bf.data(), dres, N_ * C_, stream_);
    zero(ws_.dtmp.data(), N_ * Dq);
    linear_bwd(l, kOProj, ws_.dtmp.data(), ws_.dy_bf.data(), a.att.data(), a);
    cast_f32_to_bf16(ws_.dtmp_bf.data(), ws_.dtmp.data(), N_ * Dq, stream_);
    attention_bwd(a, Hkv_);
    rope_backward(ws_.dq.data(), ws_.pos.data(), dm_.inv_freq.data(), N_, Hq_, D_, stream_);
    rope_backward(ws_.dk.data(), ws_.pos.data(), dm_.inv_freq.data(), N_, Hkv_, D_, stream_);
    float* dxn = need_dx ? ws_.dxn.data() : nullptr;
    if (need_dx) zero(dxn, N_ * C_);
    linear_bwd(l, kQProj, dxn, ws_.dq.data(), a.xn.data(), a);
    linear_bwd(l, kKProj, dxn, ws_.dk.data(), a.xn.data(), a);
    linear_bwd(l, kVProj, dxn, ws_.dv.data(), a.xn.data(), a);
    if (need_dx)
      rmsnorm_backward(dres, dxn, x, lw.input_norm.data(), a.rstd1.data(), N_, C_, stream_);
  }

  // GPT-2's pre-LN block: out (N, C) = layer l applied to x (N, C).
  void gpt2_layer_forward(int64_t l, const float* x, float* out, DeviceLayerActs& a) {
    const DeviceLayer& lw = dm_.layers[l];
    layernorm_forward(a.xn.data(), a.mean1.data(), a.rstd1.data(), x, lw.input_norm.data(),
                      lw.input_norm_bias.data(), N_, C_, eps_, stream_);
    linear_fwd(l, kCAttn, a.xn.data(), ws_.qkv.data(), nullptr, a);
    // c_attn's output per token is [q | k | v]; attention wants each as its own (N, H, D).
    copy_cols(a.q.data(), C_, ws_.qkv.data(), 3 * C_, C_);
    copy_cols(a.k.data(), C_, ws_.qkv.data() + C_, 3 * C_, C_);
    copy_cols(a.v.data(), C_, ws_.qkv.data() + 2 * C_, 3 * C_, C_);
    attention_fwd(a, Hq_);
    copy_f32(a.x1.data(), x, N_ * C_);
    linear_fwd(l, kAttnCProj, a.att.data(), nullptr, a.x1.data(), a);
    layernorm_forward(a.xn2.data(), a.mean2.data(), a.rstd2.data(), a.x1.data(), lw.post_norm.data(),
                      lw.post_norm_bias.data(), N_, C_, eps_, stream_);
    linear_fwd(l, kCFc, a.xn2.data(), a.g.data(), nullptr, a);
    gelu_forward(a.hs.data(), a.g.data(), N_ * I_, stream_);
    copy_f32(out, a.x1.data(), N_ * C_);
    linear_fwd(l, kMlpCProj, a.hs.data(), nullptr, out, a);
  }

  void gpt2_layer_backward(int64_t l, const float* x, DeviceLayerActs& a, float* dres, bool need_dx) {
    const DeviceLayer& lw = dm_.layers[l];
    cast_f32_to_bf16(ws_.dy_bf.data(), dres, N_ * C_, stream_);
    zero(ws_.dtmp.data(), N_ * I_);
    linear_bwd(l, kMlpCProj, ws_.dtmp.data(), ws_.dy_bf.data(), a.hs.data(), a);
    cast_f32_to_bf16(ws_.dtmp_bf.data(), ws_.dtmp.data(), N_ * I_, stream_);
    gelu_backward(ws_.dg.data(), ws_.dtmp_bf.data(), a.g.data(), N_ * I_, stream_);
    zero(ws_.dxn.data(), N_ * C_);
    linear_bwd(l, kCFc, ws_.dxn.data(), ws_.dg.data(), a.xn2.data(), a);
    layernorm_backward(dres, ws_.dxn.data(), a.x1.data(), lw.post_norm.data(), a.mean2.data(), a.rstd2.data(), N_,
                       C_, stream_);

    cast_f32_to_bf16(ws_.dy_bf.data(), dres, N_ * C_, stream_);
    zero(ws_.dtmp.data(), N_ * C_);
    linear_bwd(l, kAttnCProj, ws_.dtmp.data(), ws_.dy_bf.data(), a.att.data(), a);
    cast_f32_to_bf16(ws_.dtmp_bf.data(), ws_.dtmp.data(), N_ * C_, stream_);
    attention_bwd(a, Hq_);
    copy_cols(ws_.dqkv.data(), 3 * C_, ws_.dq.data(), C_, C_);
    copy_cols(ws_.dqkv.data() + C_, 3 * C_, ws_.dk.data(), C_, C_);
    copy_cols(ws_.dqkv.data() + 2 * C_, 3 * C_, ws_.dv.data(), C_, C_);
    float* dxn = need_dx ? ws_.dxn.data() : nullptr;
    if (need_dx) zero(dxn, N_ * C_);
    linear_bwd(l, kCAttn, dxn, ws_.dqkv.data(), a.xn.data(), a);
    if (need_dx)
      layernorm_backward(dres, dxn, x, lw.input_norm.data(), a.mean1.data(), a.rstd1.data(), N_, C_, stream_);
  }

  const DeviceModel& dm_;
  const Model& model_;
  DeviceLoraState* lora_;
  const Batch& batch_;
  const ForwardOptions& opt_;
  DeviceWorkspace& ws_;
  Context& ctx_;
  cudaStream_t stream_;
  bool backward_, dropout_;
  uint64_t key_base_;
  Shape shape_;
  int64_t rows_ = 0, T_ = 0, N_ = 0, C_ = 0, Hq_ = 0, Hkv_ = 0, D_ = 0, I_ = 0, L_ = 0, V_ = 0;
  float eps_ = 0;
  bool gpt2_ = false;
};

}  // namespace

double forward_backward(const DeviceModel& model, DeviceLoraState& lora, const Batch& batch, const DropoutKey& key,
                        bool checkpointing, const ForwardOptions& opt, DeviceWorkspace& ws) {
  if (!batch_ok(batch)) return 0;
  check_batch(*model.host, batch);
  // The CPU's dropout stream for this micro-batch (model/forward.cpp forward_backward).
  const uint64_t key_base = rng_key(key.seed, 0xD0D0ull /* dropout stream */, key.step, key.micro);
  Pass p(model, &lora, batch, opt, ws, /*backward=*/true, /*dropout=*/true, key_base);
  p.prepare(checkpointing);
  // Without targets the loss is 0 and every gradient is 0: nothing to accumulate.
  if (p.n_targets() == 0) return 0;
  p.forward_layers();
  const double loss = p.head();
  p.backward_layers();
  return loss;
}

double forward_loss(const DeviceModel& model, DeviceLoraState* lora, const Batch& batch, const ForwardOptions& opt,
                    DeviceWorkspace& ws) {
  if (!batch_ok(batch)) return 0;
  check_batch(*model.host, batch);
  Pass p(model, lora, batch, opt, ws, /*backward=*/false, /*dropout=*/false, 0);
  p.prepare(false);
  if (p.n_targets() == 0) return 0;
  p.forward_layers();
  return p.head();
}

// Device bytes of one forward+backward over `tokens` tokens, all of them targets (the
// worst case), in one row: exactly the buffers visit_buffers allocates, plus the LM-head
// workspace. Per token that is, in bytes (Dq = heads * head_dim, Dkv = kv_heads * head_dim):
//   saved activations, per kept layer (L without checkpointing, 1 with):
//     2C (xn) + 2Dq (q) + 4Dkv (k, v) + 2Dq (att) + 4Hq (lse) + 4C (x1) + 2C (xn2) + 8 (rstd)
//     + 6I (g, u, hs; GPT-2: 4I + 8 for g, hs and the means)
//     + per targeted module 2r (u) + 2 in (h, with dropout)
//   layer inputs: 4C * (L + 1), or 4C * 2 with offload;
//   backward scratch: 4C (dres) + 4C (dxn) + 6 max(I, Dq) (dtmp fp32 + bf16) + 2C (dy)
//     + 4I (dg, du; GPT-2 2I) + 2Dq + 4Dkv (dq, dk, dv) + 2r (du) + 4 max_in (dh, dropout)
//     + 4C (recompute output, checkpointing);
//   final norm 2C + 4 (GPT-2 + 4), GPT-2's fused qkv and its gradient 12C, batch 12, target
//   rows 12 + 2C + 4C;
// plus the attention backward's workspace, one dequantized weight (2 * max_linear_numel,
// quantized bases only) and the LM head's min(chunk, tokens) x (4V + 4), V padded to 8;
// every buffer rounded up to the allocator's size class.
WorkspaceBytes device_workspace_parts(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing,
                                      const ForwardOptions& opt) {
  if (tokens <= 0) return {};
  Shape s;
  s.rows = 1;
  s.T = tokens;
  s.N = tokens;
  s.n_targets = tokens;
  s.backward = true;
  s.keep_all = !checkpointing;
  s.offload = checkpointing && opt.offload_activations && model.cfg.num_layers > 1;
  s.dropout = lora.spec.dropout > 0;
  s.with_lora = !lora.spec.targets.empty() && !lora.params.empty();
  DeviceWorkspace sizing;  // never allocated: the visitor only counts
  Count count{sizing, {}};
  visit_buffers(sizing, model, &lora, s, count);
  count.parts.lm_head += lm_head_bytes(model, tokens, std::max<int64_t>(1, opt.lm_head_chunk));
  return count.parts;
}

uint64_t device_workspace_bytes(const Model& model, const LoraState& lora, int64_t tokens, bool checkpointing,
                                const ForwardOptions& opt) {
  return device_workspace_parts(model, lora, tokens, checkpointing, opt).total();
}

}  // namespace lora::cuda
