// cuda-bench: the CUDA path's two hot spots on their own, for the GPU benchmark
// (scripts/gpu/bench_gpu.py) and for tuning:
//   1. dequantization of a frozen weight to bf16 (cuda/dequant.hpp) for nf4 (with and without
//      double quantization), fp4 and int8 on a 4096 x 14336 matrix (Llama-3.1-8B's MLP):
//      bandwidth = (bytes read: codes and scales + bytes written: bf16) / time;
//   2. gemm() (cuda/gemm.hpp) on the matrix shapes of one training step (T tokens of a model
//      with hidden D, MLP I, key/value width KV, LoRA rank R): the frozen projections forward
//      (x W^T) and backward (dy W), the LoRA products and their weight gradients, one LM-head
//      chunk; with cuBLASLt when it loads and with the built-in WMMA kernel.
// Each measurement is timed with CUDA events around single calls after warm-up calls; the
// median of --reps calls is reported. One JSON line per measurement on stdout; progress on
// stderr.
//
//   cuda-bench [--device N] [--only dequant|gemm] [--reps N] [--warmup N]
//              [--rows R] [--cols C] [--tokens T] [--hidden D] [--intermediate I] [--kv KV]
//              [--vocab V] [--rank R] [--head-chunk N] [--no-builtin]
#include <algorithm>
#include <iterator>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/json.hpp"
#include "cuda/common.hpp"
#include "cuda/context.hpp"
#include "cuda/cuda.hpp"
#include "cuda/dequant.hpp"
#include "cuda/gemm.hpp"
#include "cuda/memory.hpp"
#include "quant/quant.hpp"

namespace {

using lora::Json;
using namespace lora::cuda;

const char* const kUsage =
    "usage: cuda-bench [--device N] [--only dequant|gemm] [--reps N] [--warmup N]\n"
    "                  [--rows R] [--cols C] [--tokens T] [--hidden D] [--intermediate I] [--kv KV]\n"
    "                  [--vocab V] [--rank R] [--head-chunk N] [--no-builtin]\n"
    "\n"
    "Dequantization bandwidth (nf4, nf4 + double quant, fp4, int8 to bf16 on an R x C matrix,\n"
    "default 4096 x 14336) and GEMM TFLOP/s on one training step's shapes (T tokens, default\n"
    "8192, of a model with hidden D 4096, MLP I 14336, key/value width KV 1024, vocabulary V\n"
    "128256, LoRA rank R 16; LM head in chunks of 1024 rows), with cuBLASLt and the built-in\n"
    "kernel. Median of --reps (default 20) event-timed calls after --warmup (default 3).\n"
    "Prints one JSON line per measurement.\n";

struct Options {
  int device = 0;
  std::string only;
  int reps = 20, warmup = 3;
  int64_t rows = 4096, cols = 14336;
  int64_t tokens = 8192, hidden = 4096, intermediate = 14336, kv = 1024, vocab = 128256, rank = 16;
  int64_t head_chunk = 1024;
  bool builtin = true;
};

int64_t positive(const char* flag, const char* v) {
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (!*v || *end || x <= 0) throw std::invalid_argument(std::string(flag) + " must be a positive integer");
  return x;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (a == "--no-builtin") {
      o.builtin = false;
      continue;
    }
    static const char* const valued[] = {"--device", "--only",   "--reps",  "--warmup",       "--rows",
                                         "--cols",   "--tokens", "--hidden", "--intermediate", "--kv",
                                         "--vocab",  "--rank",   "--head-chunk"};
    if (std::none_of(std::begin(valued), std::end(valued), [&](const char* f) { return a == f; }))
      throw std::invalid_argument("unknown argument " + a);
    if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
    const char* v = argv[++i];
    if (a == "--device") {
      char* end = nullptr;
      const long d = std::strtol(v, &end, 10);
      if (!*v || *end || d < 0 || d > 1024) throw std::invalid_argument("--device must be a GPU index");
      o.device = static_cast<int>(d);
    } else if (a == "--only") {
      o.only = v;
      if (o.only != "dequant" && o.only != "gemm") throw std::invalid_argument("--only must be dequant or gemm");
    } else if (a == "--reps") o.reps = static_cast<int>(positive("--reps", v));
    else if (a == "--warmup") o.warmup = static_cast<int>(positive("--warmup", v));
    else if (a == "--rows") o.rows = positive("--rows", v);
    else if (a == "--cols") o.cols = positive("--cols", v);
    else if (a == "--tokens") o.tokens = positive("--tokens", v);
    else if (a == "--hidden") o.hidden = positive("--hidden", v);
    else if (a == "--intermediate") o.intermediate = positive("--intermediate", v);
    else if (a == "--kv") o.kv = positive("--kv", v);
    else if (a == "--vocab") o.vocab = positive("--vocab", v);
    else if (a == "--rank") o.rank = positive("--rank", v);
    else if (a == "--head-chunk") o.head_chunk = positive("--head-chunk", v);
  }
  return o;
}

void emit(const Json& j) {
  const std::string s = j.dump() + "\n";
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

// Deterministic values in [-1, 1): fast enough for hundreds of millions of elements.
struct XorShift {
  uint64_t s;
  explicit XorShift(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  float next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<float>(static_cast<int64_t>(s >> 40) - (int64_t(1) << 23)) / static_cast<float>(1 << 23);
  }
};

uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

DeviceArray<bf16> random_bf16(size_t n, uint64_t seed) {
  std::vector<uint16_t> h(n);
  XorShift r(seed);
  for (auto& x : h) x = bf16_bits(r.next());
  DeviceArray<bf16> d(n);
  copy_to_device(d.data(), h.data(), n * 2);
  return d;
}

// Median milliseconds of `reps` single calls, each between two events on `stream`.
template <class F>
double time_median_ms(cudaStream_t stream, int warmup, int reps, F&& call) {
  for (int i = 0; i < warmup; ++i) call();
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  LORA_CUDA_CHECK(cudaEventCreate(&start));
  LORA_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(static_cast<size_t>(reps));
  for (int i = 0; i < reps; ++i) {
    LORA_CUDA_CHECK(cudaEventRecord(start, stream));
    call();
    LORA_CUDA_CHECK(cudaEventRecord(stop, stream));
    LORA_CUDA_CHECK(cudaEventSynchronize(stop));
    LORA_CUDA_CHECK(cudaEventElapsedTime(&ms[static_cast<size_t>(i)], start, stop));
  }
  LORA_CUDA_CHECK(cudaEventDestroy(start));
  LORA_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void bench_dequant(const Options& o, Context& ctx) {
  const int64_t n = o.rows * o.cols;
  std::fprintf(stderr, "cuda-bench: quantizing a %lld x %lld matrix on the host ...\n", static_cast<long long>(o.rows),
               static_cast<long long>(o.cols));
  std::vector<float> w(static_cast<size_t>(n));
  XorShift r(7);
  // Roughly normal weights (sum of uniforms) with std 0.02, like a trained projection.
  for (auto& x : w) x = 0.02f * (r.next() + r.next() + r.next());
  DeviceArray<bf16> out(static_cast<size_t>(n));
  struct Case {
    lora::QuantType type;
    bool dq;
  };
  const Case cases[] = {{lora::QuantType::NF4, false}, {lora::QuantType::NF4, true}, {lora::QuantType::FP4, false},
                        {lora::QuantType::FP4, true},  {lora::QuantType::Int8, false}, {lora::QuantType::None, false}};
  for (const Case& c : cases) {
    const lora::QuantizedMatrix hq =
        c.type == lora::QuantType::None
            ? lora::quantize_matrix(w.data(), o.rows, o.cols, c.type, 64, false, lora::DType::BF16)
            : lora::quantize_matrix(w.data(), o.rows, o.cols, c.type, 64, c.dq);
    const DeviceQuantMatrix dm = upload_quantized(hq);
    const double ms = time_median_ms(ctx.stream, o.warmup, o.reps, [&] { dequantize_to_bf16(out.data(), dm, ctx.stream); });
    const double read = static_cast<double>(dm.bytes());
    const double written = static_cast<double>(n) * 2.0;
    Json j = Json::object();
    j.set("bench", "dequant");
    j.set("type", lora::quant_name(c.type));
    j.set("double_quant", c.dq);
    j.set("rows", o.rows);
    j.set("cols", o.cols);
    j.set("block_size", static_cast<int64_t>(c.type == lora::QuantType::None ? 0 : 64));
    j.set("bytes_read", static_cast<int64_t>(read));
    j.set("bytes_written", static_cast<int64_t>(written));
    j.set("ms", ms);
    j.set("tb_per_s", (read + written) / (ms * 1e-3) / 1e12);
    emit(j);
  }
}

struct Shape {
  const char* what;
  bool trans_a, trans_b;
  int64_t M, N, K;
  GemmType c_type;
};

// The GEMMs of one training step, row-major as gemm() takes them (gemm.hpp): x is [T, in],
// a frozen weight W is [out, in] (nn.Linear), LoRA A is [r, in] and B is [out, r].
std::vector<Shape> step_shapes(const Options& o) {
  const int64_t T = o.tokens, D = o.hidden, I = o.intermediate, KV = o.kv, R = o.rank;
  std::vector<Shape> s;
  const struct {
    const char* name;
    int64_t in, out;
  } proj[] = {{"q/o_proj", D, D}, {"k/v_proj", D, KV}, {"gate/up_proj", D, I}, {"down_proj", I, D}};
  for (const auto& p : proj) {
    s.push_back({p.name, false, true, T, p.out, p.in, GemmType::BF16});    // forward: x W^T
    s.push_back({p.name, false, false, T, p.in, p.out, GemmType::BF16});   // backward: dy W
  }
  s.push_back({"lora x A^T", false, true, T, R, D, GemmType::BF16});
  s.push_back({"lora (xA) B^T", false, true, T, I, R, GemmType::BF16});
  s.push_back({"lora dB = dy^T (xA)", true, false, I, R, T, GemmType::F32});
  s.push_back({"lora dA = (dy B)^T x", true, false, R, D, T, GemmType::F32});
  s.push_back({"lm_head chunk", false, true, std::min(o.head_chunk, T), o.vocab, D, GemmType::BF16});
  s.push_back({"square 8192", false, true, 8192, 8192, 8192, GemmType::BF16});
  return s;
}

void bench_gemm(const Options& o, Context& ctx) {
  const auto shapes = step_shapes(o);
  size_t a_max = 0, b_max = 0, c_max = 0;
  for (const Shape& s : shapes) {
    a_max = std::max(a_max, static_cast<size_t>(s.M * s.K));
    b_max = std::max(b_max, static_cast<size_t>(s.K * s.N));
    c_max = std::max(c_max, static_cast<size_t>(s.M * s.N));
  }
  std::fprintf(stderr, "cuda-bench: gemm backend %s\n", gemm_backend().c_str());
  DeviceArray<bf16> A = random_bf16(a_max, 1), B = random_bf16(b_max, 2);
  DeviceArray<float> C(c_max);  // fp32 is the larger of the two output types
  const bool have_lt = gemm_backend().rfind("cublasLt", 0) == 0;
  for (const Shape& s : shapes) {
    GemmArgs g;
    g.trans_a = s.trans_a;
    g.trans_b = s.trans_b;
    g.M = s.M;
    g.N = s.N;
    g.K = s.K;
    g.A = A.data();
    g.lda = s.trans_a ? s.M : s.K;   // stored [K, M] when transposed
    g.B = B.data();
    g.ldb = s.trans_b ? s.K : s.N;   // stored [N, K] when transposed
    g.C = C.data();
    g.ldc = s.N;
    g.c_type = s.c_type;
    const double flops = 2.0 * static_cast<double>(s.M) * static_cast<double>(s.N) * static_cast<double>(s.K);
    for (int backend = 0; backend < 2; ++backend) {
      if (backend == 0 && !have_lt) continue;
      if (backend == 1 && !o.builtin) continue;
      const double ms = time_median_ms(ctx.stream, o.warmup, o.reps, [&] {
        if (backend == 0) gemm(g, ctx.stream);
        else gemm_builtin(g, ctx.stream);
      });
      Json j = Json::object();
      j.set("bench", "gemm");
      j.set("what", s.what);
      j.set("backend", backend == 0 ? "cublasLt" : "builtin");
      j.set("M", s.M);
      j.set("N", s.N);
      j.set("K", s.K);
      j.set("trans_a", s.trans_a);
      j.set("trans_b", s.trans_b);
      j.set("c", s.c_type == GemmType::F32 ? "f32" : "bf16");
      j.set("ms", ms);
      j.set("tflops", flops / (ms * 1e-3) / 1e12);
      emit(j);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    std::string why;
    const auto devices = list_devices(&why);
    if (devices.empty()) {
      std::fprintf(stderr, "cuda-bench: no CUDA GPU: %s\n", why.empty() ? "none found" : why.c_str());
      return 1;
    }
    if (o.device < 0 || o.device >= static_cast<int>(devices.size())) {
      std::fprintf(stderr, "cuda-bench: --device %d: only %zu GPU(s)\n", o.device, devices.size());
      return 2;
    }
    Context& ctx = open_device(o.device);
    Json d = Json::object();
    d.set("bench", "device");
    d.set("name", ctx.info.name);
    d.set("cc", std::to_string(ctx.info.cc_major) + "." + std::to_string(ctx.info.cc_minor));
    d.set("multiprocessors", static_cast<int64_t>(ctx.info.multiprocessors));
    d.set("memory_total", ctx.info.memory_total);
    d.set("gemm_backend", gemm_backend());
    d.set("runtime", runtime_version());
    emit(d);
    if (o.only.empty() || o.only == "dequant") bench_dequant(o, ctx);
    if (o.only.empty() || o.only == "gemm") bench_gemm(o, ctx);
    return 0;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "cuda-bench: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda-bench: %s\n", e.what());
    return 1;
  }
}
