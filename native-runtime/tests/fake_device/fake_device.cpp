// The fake device of cuda-host-tests: every launcher of src/cuda/*.hpp that the model's
// orchestration (lora_linear.cu, device_model.cpp, forward.cpp, engine.cpp) calls, computed
// on the host with the CPU ops and rounded to bf16 wherever the GPU kernels store bf16, plus
// the few CUDA runtime calls those files make (include/cuda_runtime.h).
//
// Streams: work on the compute stream runs when it is enqueued. Work on the copy stream (the
// activation offload) is queued and runs only when the compute stream waits on an event
// recorded after it, or at a synchronisation, so an offload or prefetch without its
// cudaStreamWaitEvent reads or leaves stale data, which the tests see as wrong results.
// Kernels or memsets enqueued on the copy stream are refused, as are unknown events and
// pointers. Fresh device memory is filled with 0xFF bytes (NaN in fp32 and bf16), so a
// buffer read before it is written poisons the results.
//
// What it cannot check: the kernels themselves (their emulated tests and the GPU tests do),
// the GPU's floating point, real concurrency between streams beyond the ordering above, and
// the caching allocator's reuse of memory.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "common/rng.hpp"
#include "cuda/activations.hpp"
#include "cuda/adamw.hpp"
#include "cuda/attention.hpp"
#include "cuda/common.hpp"
#include "cuda/context.hpp"
#include "cuda/cross_entropy.hpp"
#include "cuda/cuda.hpp"
#include "cuda/dequant.hpp"
#include "cuda/elementwise.hpp"
#include "cuda/gemm.hpp"
#include "cuda/memory.hpp"
#include "cuda/norms.hpp"
#include "cuda/rope.hpp"
#include "fake_device.hpp"
#include "ops/adamw.hpp"
#include "ops/attention.hpp"
#include "ops/cross_entropy.hpp"
#include "ops/gelu.hpp"
#include "ops/layernorm.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"

struct FakeStream {
  int id;
};
struct FakeEvent {
  int id;
  bool copy_pending = false;
};
static FakeStream g_compute{0}, g_copy{1};
static std::deque<std::pair<FakeEvent*, std::function<void()>>> g_copy_queue;  // event marker or op
static std::set<FakeEvent*> g_events;
static int g_copies_deferred = 0;

static void run_copy_queue_until(FakeEvent* e) {
  while (!g_copy_queue.empty()) {
    auto item = std::move(g_copy_queue.front());
    g_copy_queue.pop_front();
    if (item.first) {
      item.first->copy_pending = false;
      if (item.first == e) return;
    } else {
      item.second();
    }
  }
}

cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s) {
  if (s == &g_copy) throw std::logic_error("memset on the copy stream");
  std::memset(p, v, n);
  return 0;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t st) {
  if (st == &g_copy) {
    ++g_copies_deferred;
    g_copy_queue.push_back({nullptr, [=] { std::memcpy(d, s, n); }});
  } else {
    std::memcpy(d, s, n);
  }
  return 0;
}
cudaError_t cudaMemcpy2DAsync(void* d, size_t dp, const void* s, size_t sp, size_t w, size_t h, cudaMemcpyKind,
                              cudaStream_t st) {
  if (st == &g_copy) throw std::logic_error("2D copy on the copy stream");
  if (w > dp || w > sp) throw std::logic_error("2D copy wider than a pitch");
  for (size_t r = 0; r < h; ++r) std::memcpy(static_cast<char*>(d) + r * dp, static_cast<const char*>(s) + r * sp, w);
  return 0;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  static int n = 0;
  *e = new FakeEvent{++n};
  g_events.insert(*e);
  return 0;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!g_events.erase(e)) throw std::logic_error("destroying an unknown event");
  // Its marker leaves the queue; the copies before it run, as they would have on a GPU.
  if (e->copy_pending) run_copy_queue_until(e);
  delete e;
  return 0;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!g_events.count(e)) throw std::logic_error("recording an unknown event");
  if (s == &g_copy) {
    e->copy_pending = true;
    g_copy_queue.push_back({e, {}});
  } else {
    e->copy_pending = false;  // compute work is done when enqueued
  }
  return 0;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  if (!g_events.count(e)) throw std::logic_error("waiting on an unknown event");
  if (s == &g_compute && e->copy_pending) run_copy_queue_until(e);
  return 0;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (s == &g_copy) run_copy_queue_until(nullptr);
  return 0;
}
cudaError_t cudaDeviceSynchronize() {
  run_copy_queue_until(nullptr);
  return 0;
}
cudaError_t cudaGetLastError() { return 0; }
const char* cudaGetErrorName(cudaError_t) { return "cudaErrorFake"; }
const char* cudaGetErrorString(cudaError_t) { return "fake device error"; }

namespace lora::cuda {

namespace {
float b2f(bf16 b) {
  uint32_t u = static_cast<uint32_t>(b.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
bf16 f2b(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  bf16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    b.x = static_cast<uint16_t>((u >> 16) | 0x40);
    return b;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  b.x = static_cast<uint16_t>(u >> 16);
  return b;
}
std::vector<float> tof(const bf16* p, int64_t n) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = b2f(p[i]);
  return v;
}
void tob(bf16* p, const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = f2b(v[i]);
}
void check_stream(cudaStream_t s) {
  if (s == &g_copy) throw std::logic_error("kernel on the copy stream");
}

struct Alloc {
  std::map<void*, size_t> live;
  AllocatorStats st;
} g_alloc;
// The real allocator's size classes (memory.cpp), so mem.used and the estimates agree as on a GPU.
size_t size_class(size_t bytes) {
  const size_t round = bytes < (size_t(1) << 20) ? 512 : (size_t(2) << 20);
  return (bytes + round - 1) / round * round;
}
std::unique_ptr<Context> g_ctx;
}  // namespace

void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("fake CUDA error in ") + what);
}

bool compiled() { return true; }
// The fake runs attention with the CPU twin, which takes any head size.
bool supports_model(const ModelConfig&, std::string*) { return true; }
std::vector<DeviceInfo> list_devices(std::string*) {
  DeviceInfo d;
  d.index = 0;
  d.name = "Fake device (host)";
  d.cc_major = 9;
  d.cc_minor = 0;
  d.multiprocessors = 132;
  d.memory_total = uint64_t(80) << 30;
  d.memory_free = d.memory_total;
  d.supported = true;
  return {d};
}
std::string runtime_version() { return "fake device"; }

Context& open_device(int device) {
  if (device != 0)
    throw InputError("device", "the fake device has only device 0", "", "compute.device", 0, "");
  if (!g_ctx) {
    g_ctx = std::make_unique<Context>();
    g_ctx->device = 0;
    g_ctx->stream = &g_compute;
    g_ctx->copy_stream = &g_copy;
    g_ctx->info = list_devices()[0];
  }
  return *g_ctx;
}
Context& current() {
  if (!g_ctx) throw std::logic_error("no device open");
  return *g_ctx;
}
void synchronize() {}
DeviceMemory device_memory(int) { return {g_alloc.st.used + (uint64_t(500) << 20), uint64_t(80) << 30}; }

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = std::malloc(bytes);
  std::memset(p, 0xFF, bytes);  // NaN-ish garbage: reading uninitialised memory shows
  g_alloc.live[p] = size_class(bytes);
  g_alloc.st.used += size_class(bytes);
  g_alloc.st.peak = std::max(g_alloc.st.peak, g_alloc.st.used);
  g_alloc.st.allocations++;
  return p;
}
void device_free(void* p) {
  if (!p) return;
  auto it = g_alloc.live.find(p);
  if (it == g_alloc.live.end()) throw std::logic_error("device_free of an unknown pointer");
  g_alloc.st.used -= it->second;
  g_alloc.live.erase(it);
  std::free(p);
}
size_t allocator_size_class(size_t bytes) { return bytes == 0 ? 0 : size_class(bytes); }
AllocatorStats allocator_stats() { return g_alloc.st; }
void reset_peak() { g_alloc.st.peak = g_alloc.st.used; }
void release_cached() {}
void* host_alloc_pinned(size_t bytes) { return std::malloc(bytes); }
void host_free_pinned(void* p) { std::free(p); }
void copy_to_device(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void copy_to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

void gemm(const GemmArgs& a, cudaStream_t stream) {
  check_stream(stream);
  if (a.M < 0 || a.N < 0 || a.K < 0) throw std::invalid_argument("gemm: negative");
  const int64_t a_cols = a.trans_a ? a.M : a.K, b_cols = a.trans_b ? a.K : a.N;
  if (a.lda < a_cols || a.ldb < b_cols || a.ldc < a.N) throw std::invalid_argument("gemm: ld");
  for (int64_t i = 0; i < a.M; ++i) {
    for (int64_t j = 0; j < a.N; ++j) {
      float acc = 0;
      for (int64_t k = 0; k < a.K; ++k) {
        const float x = b2f(a.trans_a ? a.A[k * a.lda + i] : a.A[i * a.lda + k]);
        const float y = b2f(a.trans_b ? a.B[j * a.ldb + k] : a.B[k * a.ldb + j]);
        acc += x * y;
      }
      float r = a.alpha * acc;
      if (a.c_type == GemmType::F32) {
        float* c = static_cast<float*>(a.C) + i * a.ldc + j;
        if (a.beta != 0.f) r += a.beta * *c;
        *c = r;
      } else {
        bf16* c = static_cast<bf16*>(a.C) + i * a.ldc + j;
        if (a.beta != 0.f) r += a.beta * b2f(*c);
        *c = f2b(r);
      }
    }
  }
}
std::string gemm_backend() { return "fake device (host GEMM)"; }
void gemm_builtin(const GemmArgs& a, cudaStream_t s) { gemm(a, s); }

void cast_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t s) {
  check_stream(s);
  tob(out, in, n);
}
void cast_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t s) {
  check_stream(s);
  for (int64_t i = 0; i < n; ++i) out[i] = b2f(in[i]);
}
void add_f32_bf16(float* y, const float* a, const bf16* b, int64_t n, cudaStream_t) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b2f(b[i]);
}
void add_bias_bf16(bf16* y, const float* bias, int64_t T, int64_t N, cudaStream_t) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < N; ++j) y[t * N + j] = f2b(b2f(y[t * N + j]) + bias[j]);
}
void add_bias_f32(float* y, const float* bias, int64_t T, int64_t N, cudaStream_t) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < N; ++j) y[t * N + j] += bias[j];
}
void embedding_forward(float* out, const int32_t* ids, const bf16* table, const int32_t* pos, const bf16* pos_table,
                       int64_t T, int64_t C, cudaStream_t) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c)
      out[t * C + c] = b2f(table[int64_t(ids[t]) * C + c]) + (pos_table ? b2f(pos_table[int64_t(pos[t]) * C + c]) : 0.f);
}
void dropout_forward(bf16* h, const bf16* x, int64_t n, float p, uint64_t key, cudaStream_t) {
  if (!(p >= 0 && p < 1)) throw std::invalid_argument("dropout p");
  const float s = p > 0 ? 1.f / (1.f - p) : 1.f;
  for (int64_t i = 0; i < n; ++i) h[i] = f2b(rng_uniform(key, i) >= p ? b2f(x[i]) * s : 0.f);
}
void dropout_backward_add(float* dx, const float* dh, int64_t n, float p, uint64_t key, cudaStream_t) {
  const float s = p > 0 ? 1.f / (1.f - p) : 1.f;
  for (int64_t i = 0; i < n; ++i)
    if (rng_uniform(key, i) >= p) dx[i] += dh[i] * s;
}
void gather_rows_bf16(bf16* out, const bf16* in, const int64_t* index, int64_t n, int64_t C, cudaStream_t) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * C, in + index[i] * C, C * 2);
}
void scatter_add_rows_f32(float* dx, const float* d, const int64_t* index, int64_t n, int64_t C, cudaStream_t) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c) dx[index[i] * C + c] += d[i * C + c];
}

void rmsnorm_forward(bf16* y, float* rstd, const float* x, const float* w, int64_t T, int64_t C, float eps,
                     cudaStream_t) {
  std::vector<float> yf(T * C);
  lora::rmsnorm_forward(yf.data(), rstd, x, w, T, C, eps);
  tob(y, yf.data(), T * C);
}
void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w, const float* rstd, int64_t T,
                      int64_t C, cudaStream_t) {
  lora::rmsnorm_backward(dx, dy, x, w, rstd, T, C);
}
void layernorm_forward(bf16* y, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t T,
                       int64_t C, float eps, cudaStream_t) {
  std::vector<float> yf(T * C);
  lora::layernorm_forward(yf.data(), mean, rstd, x, w, b, T, C, eps);
  tob(y, yf.data(), T * C);
}
void layernorm_backward(float* dx, const float* dy, const float* x, const float* w, const float* mean,
                        const float* rstd, int64_t T, int64_t C, cudaStream_t) {
  lora::layernorm_backward(dx, dy, x, w, mean, rstd, T, C);
}
void rope_forward(bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D, cudaStream_t) {
  auto f = tof(x, T * H * D);
  lora::rope_forward(f.data(), pos, inv_freq, T, H, D);
  tob(x, f.data(), T * H * D);
}
void rope_backward(bf16* x, const int32_t* pos, const float* inv_freq, int64_t T, int64_t H, int64_t D, cudaStream_t) {
  auto f = tof(x, T * H * D);
  lora::rope_backward(f.data(), pos, inv_freq, T, H, D);
  tob(x, f.data(), T * H * D);
}
void swiglu_forward(bf16* h, const bf16* g, const bf16* u, int64_t n, cudaStream_t) {
  auto gf = tof(g, n), uf = tof(u, n);
  std::vector<float> hf(n);
  lora::swiglu_forward(hf.data(), gf.data(), uf.data(), n);
  tob(h, hf.data(), n);
}
void swiglu_backward(bf16* dg, bf16* du, const bf16* dh, const bf16* g, const bf16* u, int64_t n, cudaStream_t) {
  if (dg == g || dg == u || du == g || du == u) throw std::invalid_argument("swiglu_backward aliasing");
  auto gf = tof(g, n), uf = tof(u, n), dhf = tof(dh, n);
  std::vector<float> a(n), b(n);
  lora::swiglu_backward(a.data(), b.data(), dhf.data(), gf.data(), uf.data(), n);
  tob(dg, a.data(), n);
  tob(du, b.data(), n);
}
void gelu_forward(bf16* h, const bf16* x, int64_t n, cudaStream_t) {
  auto xf = tof(x, n);
  std::vector<float> hf(n);
  lora::gelu_forward(hf.data(), xf.data(), n);
  tob(h, hf.data(), n);
}
void gelu_backward(bf16* dx, const bf16* dh, const bf16* x, int64_t n, cudaStream_t) {
  auto xf = tof(x, n), dhf = tof(dh, n);
  std::vector<float> d(n);
  lora::gelu_backward(d.data(), dhf.data(), xf.data(), n);
  tob(dx, d.data(), n);
}

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start,
                       int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, cudaStream_t) {
  const int64_t Dq = Hq * D, Dkv = Hkv * D;
  for (int64_t b = 0; b < rows; ++b) {
    auto qf = tof(q + b * T * Dq, T * Dq), kf = tof(k + b * T * Dkv, T * Dkv), vf = tof(v + b * T * Dkv, T * Dkv);
    std::vector<float> o(T * Dq);
    lora::attention_forward(o.data(), lse + b * Hq * T, qf.data(), kf.data(), vf.data(), doc_start + b * T, T, Hq,
                            Hkv, D);
    tob(out + b * T * Dq, o.data(), T * Dq);
  }
}
size_t attention_backward_workspace(int64_t rows, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  return size_t(rows * T * Hq * D) * 4 + size_t(rows * Hq * T) * 4;
}
void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse,
                        const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, int64_t rows, int64_t T,
                        int64_t Hq, int64_t Hkv, int64_t D, void* workspace, cudaStream_t) {
  if (!workspace) throw std::invalid_argument("attention_backward: workspace");
  std::memset(workspace, 0, attention_backward_workspace(rows, T, Hq, Hkv, D));
  const int64_t Dq = Hq * D, Dkv = Hkv * D;
  for (int64_t b = 0; b < rows; ++b) {
    auto qf = tof(q + b * T * Dq, T * Dq), kf = tof(k + b * T * Dkv, T * Dkv), vf = tof(v + b * T * Dkv, T * Dkv);
    auto of = tof(out + b * T * Dq, T * Dq), dof = tof(dout + b * T * Dq, T * Dq);
    std::vector<float> a(T * Dq), c(T * Dkv), d(T * Dkv);
    lora::attention_backward(a.data(), c.data(), d.data(), dof.data(), of.data(), lse + b * Hq * T, qf.data(),
                             kf.data(), vf.data(), doc_start + b * T, T, Hq, Hkv, D);
    tob(dq + b * T * Dq, a.data(), T * Dq);
    tob(dk + b * T * Dkv, c.data(), T * Dkv);
    tob(dv + b * T * Dkv, d.data(), T * Dkv);
  }
}

struct LmHeadWorkspace {
  DeviceArray<float> logits, row_loss;
  DeviceArray<double> total;
};
LmHeadWorkspace* lm_head_workspace_create() { return new LmHeadWorkspace; }
void lm_head_workspace_destroy(LmHeadWorkspace* ws) { delete ws; }
double lm_head_cross_entropy(const LmHeadArgs& a, LmHeadWorkspace* ws, cudaStream_t) {
  if (a.n == 0) return 0;
  const int64_t chunk = std::min(a.chunk, a.n), ld = (a.V + 7) / 8 * 8;
  ws->logits.resize(chunk * ld);
  ws->row_loss.resize(chunk);
  ws->total.resize(1);
  double loss = 0;
  for (int64_t c0 = 0; c0 < a.n; c0 += chunk) {
    const int64_t m = std::min(chunk, a.n - c0);
    std::vector<float> lg(m * a.V);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t v = 0; v < a.V; ++v) {
        float acc = 0;
        for (int64_t c = 0; c < a.C; ++c) acc += b2f(a.x[(c0 + i) * a.C + c]) * b2f(a.W[v * a.C + c]);
        lg[i * a.V + v] = acc;
      }
    for (int64_t i = 0; i < m; ++i)
      if (a.targets[c0 + i] < 0 || a.targets[c0 + i] >= a.V) throw std::out_of_range("fake lm_head_cross_entropy: target out of range");
    loss += lora::cross_entropy_forward(lg.data(), a.targets + c0, m, a.V);
    if (!a.dx) continue;
    lora::cross_entropy_backward(lg.data(), lg.data(), a.targets + c0, m, a.V, a.grad_scale);
    for (auto& x : lg) x = b2f(f2b(x));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < a.C; ++c) {
        float acc = 0;
        for (int64_t v = 0; v < a.V; ++v) acc += lg[i * a.V + v] * b2f(a.W[v * a.C + c]);
        a.dx[(c0 + i) * a.C + c] = acc;
      }
  }
  return loss;
}

uint64_t DeviceQuantMatrix::bytes() const { return values.bytes() + codes.bytes() + absmax.bytes(); }
DeviceQuantMatrix upload_quantized(const QuantizedMatrix& m) {
  DeviceQuantMatrix d;
  d.type = m.type;
  d.rows = m.rows;
  d.cols = m.cols;
  std::vector<float> f(m.rows * m.cols);
  dequantize_rows(m, 0, m.rows, f.data());
  d.values.resize(f.size());
  tob(d.values.data(), f.data(), f.size());
  return d;
}
void dequantize_to_bf16(bf16* out, const DeviceQuantMatrix& m, cudaStream_t) {
  std::memcpy(out, m.values.data(), m.rows * m.cols * 2);
}
const bf16* weight_view(const DeviceQuantMatrix& m, bf16* scratch, cudaStream_t s) {
  if (m.type == QuantType::None) return m.values.data();
  if (!scratch) throw std::invalid_argument("weight_view: scratch");
  dequantize_to_bf16(scratch, m, s);
  return scratch;
}

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int64_t step, cudaStream_t) {
  lora::adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}
void sgd_update(float* param, const float* grad, int64_t n, float lr, float wd, cudaStream_t) {
  lora::sgd_update(param, grad, n, lr, wd);
}
double sum_squares(const float* x, int64_t n, cudaStream_t) { return lora::sum_squares(x, n); }
void scale_inplace(float* x, int64_t n, float s, cudaStream_t) { lora::scale_inplace(x, n, s); }

}  // namespace lora::cuda

int lora::cuda::fake::copies_deferred() { return g_copies_deferred; }
