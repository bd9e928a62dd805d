// runtime-bench: the runtime's GEMMs (matmul_nt/nn/tn) against OpenBLAS's cblas_sgemm on the
// same shapes, the same thread count, in the same run. OpenBLAS is a yardstick only: it is
// loaded with dlopen when present and the runtime never links it.
//
//   runtime-bench [--threads N] [--tokens T] [--rank R] [--shapes LIST] [--rounds N]
//                 [--min-time S] [--json]
//
// Without --shapes it times every GEMM of one training step of a ~23M-parameter Llama
// (hidden 512, MLP 1536, 6 layers, 8 query / 4 kv heads, vocabulary 8192) with LoRA rank R
// on all seven projections, T tokens per step. LIST is `kind:MxNxK[@count]` items separated
// by commas or semicolons, kind one of nt, nn, tn (see ops/matmul.hpp), e.g.
// `nt:256x512x512@12,nn:256x512x1536@6`. The overall figures weight each shape by count,
// i.e. they are a step's achieved GFLOP/s when the list is the step's GEMMs.
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/threadpool.hpp"
#include "ops/matmul.hpp"

namespace {

using lora::matmul_nn;
using lora::matmul_nt;
using lora::matmul_tn;

// --- OpenBLAS, loaded at run time -------------------------------------------------------

enum CblasOrder { kRowMajor = 101 };
enum CblasTranspose { kNoTrans = 111, kTrans = 112 };
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
using SetThreadsFn = void (*)(int);
using GetStringFn = char* (*)();

struct OpenBlas {
  void* handle = nullptr;
  std::string path;
  SgemmFn sgemm = nullptr;
  SetThreadsFn set_threads = nullptr;
  GetStringFn config = nullptr;
  GetStringFn corename = nullptr;
  std::string load_errors;

  bool load() {
    std::vector<std::string> candidates = {"libopenblas.so.0", "libopenblas.so"};
    if (const char* env = std::getenv("LORA_OPENBLAS")) candidates.push_back(env);
    for (const auto& c : candidates) {
      handle = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!handle) {
        load_errors += "  " + c + ": " + dlerror() + "\n";
        continue;
      }
      sgemm = reinterpret_cast<SgemmFn>(dlsym(handle, "cblas_sgemm"));
      if (!sgemm) {
        load_errors += "  " + c + ": no cblas_sgemm symbol\n";
        dlclose(handle);
        handle = nullptr;
        continue;
      }
      set_threads = reinterpret_cast<SetThreadsFn>(dlsym(handle, "openblas_set_num_threads"));
      config = reinterpret_cast<GetStringFn>(dlsym(handle, "openblas_get_config"));
      corename = reinterpret_cast<GetStringFn>(dlsym(handle, "openblas_get_corename"));
      path = c;
      return true;
    }
    return false;
  }

  // Row-major C = op(A) op(B) in the runtime's three layouts.
  void run(const std::string& kind, float* C, const float* A, const float* B, int M, int N, int K) const {
    if (kind == "nt") {
      sgemm(kRowMajor, kNoTrans, kTrans, M, N, K, 1.f, A, K, B, K, 0.f, C, N);
    } else if (kind == "nn") {
      sgemm(kRowMajor, kNoTrans, kNoTrans, M, N, K, 1.f, A, K, B, N, 0.f, C, N);
    } else {
      sgemm(kRowMajor, kTrans, kNoTrans, M, N, K, 1.f, A, M, B, N, 0.f, C, N);
    }
  }
};

// --- shapes ---------------------------------------------------------------------------------

struct Shape {
  std::string kind;  // nt | nn | tn
  int64_t M, N, K;
  int64_t count;
  double flops() const { return 2.0 * double(M) * double(N) * double(K); }
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "runtime-bench: %s\n", message.c_str());
  std::fprintf(stderr,
               "usage: runtime-bench [--threads N] [--tokens T] [--rank R] [--shapes LIST] [--rounds N]"
               " [--min-time S] [--json]\n"
               "  LIST: kind:MxNxK[@count] items separated by ',' or ';', kind = nt | nn | tn,\n"
               "        e.g. nt:256x512x512@12,nn:256x512x1536@6\n");
  std::exit(2);
}

std::vector<Shape> parse_shapes(const std::string& list) {
  std::vector<Shape> shapes;
  std::string item;
  std::stringstream ss(list);
  while (std::getline(ss, item, ',')) {
    std::stringstream inner(item);
    std::string part;
    while (std::getline(inner, part, ';')) {
      part.erase(0, part.find_first_not_of(" \t\n"));
      part.erase(part.find_last_not_of(" \t\n") + 1);
      if (part.empty()) continue;
      Shape s{};
      char kind[8] = {};
      long long m = 0, n = 0, k = 0, count = 1;
      int consumed = 0;
      const int fields = std::sscanf(part.c_str(), "%2[a-z]:%lldx%lldx%lld%n", kind, &m, &n, &k, &consumed);
      if (fields != 4)
        usage_error("cannot read shape '" + part + "': expected kind:MxNxK[@count]");
      const std::string rest = part.substr(static_cast<size_t>(consumed));
      if (!rest.empty() && std::sscanf(rest.c_str(), "@%lld", &count) != 1)
        usage_error("cannot read the count in '" + part + "': expected @N after the dimensions");
      s.kind = kind;
      if (s.kind != "nt" && s.kind != "nn" && s.kind != "tn")
        usage_error("unknown kind '" + s.kind + "' in '" + part + "': use nt, nn or tn");
      if (m <= 0 || n <= 0 || k <= 0 || count <= 0 || m > (1 << 20) || n > (1 << 20) || k > (1 << 20))
        usage_error("dimensions and count in '" + part + "' must be positive (and below 2^20)");
      s.M = m;
      s.N = n;
      s.K = k;
      s.count = count;
      shapes.push_back(s);
    }
  }
  if (shapes.empty()) usage_error("--shapes lists no shape");
  return shapes;
}

// Every GEMM of one training step (forward, then backward without weight gradients for the
// frozen base) of the default bench model, merged by shape.
std::vector<Shape> training_step_shapes(int64_t T, int64_t r) {
  const int64_t C = 512, I = 1536, layers = 6, kv = 256, V = 8192;
  const int64_t modules[7][2] = {{C, C}, {C, kv}, {C, kv}, {C, C}, {C, I}, {C, I}, {I, C}};
  std::map<std::string, Shape> merged;
  auto add = [&](const char* kind, int64_t M, int64_t N, int64_t K, int64_t count) {
    const std::string key = std::string(kind) + ":" + std::to_string(M) + "x" + std::to_string(N) + "x" +
                            std::to_string(K);
    auto it = merged.find(key);
    if (it == merged.end()) {
      merged[key] = Shape{kind, M, N, K, count};
    } else {
      it->second.count += count;
    }
  };
  for (const auto& m : modules) {
    const int64_t in = m[0], out = m[1];
    add("nt", T, out, in, layers);  // y = x W^T
    add("nt", T, r, in, layers);    // u = x A^T
    add("nt", T, out, r, layers);   // y += s u B^T
    add("nn", T, in, out, layers);  // dx = dy W
    add("tn", out, r, T, layers);   // dB = s dy^T u
    add("nn", T, r, out, layers);   // du = s dy B
    add("tn", r, in, T, layers);    // dA = du^T x
    add("nn", T, in, r, layers);    // dx += du A
  }
  add("nt", T, V, C, 1);  // logits
  add("nn", T, C, V, 1);  // d hidden from d logits
  std::vector<Shape> shapes;
  for (auto& kv_pair : merged) shapes.push_back(kv_pair.second);
  std::sort(shapes.begin(), shapes.end(), [](const Shape& a, const Shape& b) { return a.flops() > b.flops(); });
  return shapes;
}

// --- machine --------------------------------------------------------------------------------

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

// --- timing ---------------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;

// Best time per call over `rounds` rounds of at least `min_time` seconds each: the minimum
// is the figure least disturbed by other processes on a shared machine.
template <typename Fn>
double best_seconds_per_call(Fn fn, double min_time) {
  fn();  // warm-up: packing buffers, page faults, thread start
  int64_t calls = 0;
  const auto t0 = Clock::now();
  double elapsed = 0;
  do {
    fn();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (elapsed < min_time);
  return elapsed / double(calls);
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0;
  int64_t tokens = 256, rank = 16;
  int rounds = 3;
  double min_time = 0.1;
  bool json = false;
  std::string shape_list;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--threads") {
        threads = std::stoi(value());
      } else if (a == "--tokens") {
        tokens = std::stoll(value());
      } else if (a == "--rank") {
        rank = std::stoll(value());
      } else if (a == "--shapes") {
        shape_list = value();
      } else if (a == "--rounds") {
        rounds = std::stoi(value());
      } else if (a == "--min-time") {
        min_time = std::stod(value());
      } else if (a == "--json") {
        json = true;
      } else if (a == "--help" || a == "-h") {
        usage_error("benchmark of the runtime's GEMMs against OpenBLAS");
      } else {
        usage_error("unknown argument '" + a + "'");
      }
    } catch (const std::logic_error&) {
      usage_error("the value of " + a + " is not a number");
    }
  }
  if (threads < 0 || tokens <= 0 || rank <= 0 || rounds <= 0 || !(min_time > 0))
    usage_error("--threads must be >= 0 and --tokens, --rank, --rounds, --min-time > 0");

  lora::set_num_threads(threads);
  threads = lora::num_threads();
  const std::vector<Shape> shapes =
      shape_list.empty() ? training_step_shapes(tokens, rank) : parse_shapes(shape_list);

  OpenBlas blas;
  const bool have_blas = blas.load();
  if (have_blas && blas.set_threads) blas.set_threads(threads);

  std::printf("LoRA Studio GEMM benchmark\n");
  std::printf("machine: %s, %u hardware threads; threads used: %d\n", cpu_model().c_str(),
              std::thread::hardware_concurrency(), threads);
  std::printf("ours:    %s\n", lora::matmul_kernel_name());
  if (have_blas) {
    std::printf("peer:    OpenBLAS from %s%s%s%s%s\n", blas.path.c_str(), blas.config ? ": " : "",
                blas.config ? blas.config() : "", blas.corename ? ", core " : "",
                blas.corename ? blas.corename() : "");
    if (!blas.set_threads)
      std::printf("         (no openblas_set_num_threads: OpenBLAS uses its own thread count)\n");
  } else {
    std::printf("peer:    OpenBLAS not found, only our GFLOP/s are printed. Tried:\n%s"
                "         Install it with `apt-get install libopenblas-dev` (Debian/Ubuntu), or point\n"
                "         LORA_OPENBLAS at a libopenblas shared library.\n",
                blas.load_errors.c_str());
  }
  std::printf("workload: %s; best of %d rounds of >= %.2f s per shape\n\n",
              shape_list.empty() ? ("one training step, " + std::to_string(tokens) + " tokens, LoRA r=" +
                                    std::to_string(rank) + " on q,k,v,o,gate,up,down")
                                       .c_str()
                                 : "shapes from --shapes",
              rounds, min_time);
  std::printf("%-4s %6s %6s %6s %6s %12s %12s %7s\n", "kind", "M", "N", "K", "count", "ours GF/s",
              "OpenBLAS GF/s", "ratio");

  std::mt19937 gen(7);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  double total_flops = 0, our_time = 0, blas_time = 0;
  double worst_diff = 0;
  std::string json_rows;
  for (const Shape& s : shapes) {
    const size_t a_size = size_t(s.M * s.K), b_size = size_t(s.N * s.K), c_size = size_t(s.M * s.N);
    std::vector<float> A(a_size), B(b_size), C(c_size), Cb(c_size);
    for (auto& x : A) x = dist(gen);
    for (auto& x : B) x = dist(gen);
    auto ours = [&] {
      if (s.kind == "nt") {
        matmul_nt(C.data(), A.data(), B.data(), s.M, s.N, s.K);
      } else if (s.kind == "nn") {
        matmul_nn(C.data(), A.data(), B.data(), s.M, s.N, s.K);
      } else {
        matmul_tn(C.data(), A.data(), B.data(), s.M, s.N, s.K);
      }
    };
    auto peer = [&] {
      blas.run(s.kind, Cb.data(), A.data(), B.data(), int(s.M), int(s.N), int(s.K));
    };
    double t_ours = 1e30, t_blas = 1e30;
    for (int round = 0; round < rounds; ++round) {
      t_ours = std::min(t_ours, best_seconds_per_call(ours, min_time));
      if (have_blas) {
        // OpenBLAS's workers busy-wait for a while after each call; let them park so they do
        // not steal cycles from ours (and ours from them) on the next measurement.
        std::this_thread::sleep_for(std::chrono::milliseconds(150));
        t_blas = std::min(t_blas, best_seconds_per_call(peer, min_time));
        std::this_thread::sleep_for(std::chrono::milliseconds(150));
      }
    }
    const double gf_ours = s.flops() / t_ours / 1e9;
    total_flops += s.flops() * double(s.count);
    our_time += t_ours * double(s.count);
    if (have_blas) {
      blas_time += t_blas * double(s.count);
      // Sanity check that both computed the same product (fp32 rounding differs a little).
      double diff = 0, scale = 0;
      for (size_t i = 0; i < c_size; ++i) {
        diff = std::max(diff, double(std::fabs(C[i] - Cb[i])));
        scale = std::max(scale, double(std::fabs(Cb[i])));
      }
      worst_diff = std::max(worst_diff, diff / std::max(scale, 1e-30));
      const double gf_blas = s.flops() / t_blas / 1e9;
      std::printf("%-4s %6lld %6lld %6lld %6lld %12.1f %12.1f %7.2f\n", s.kind.c_str(), (long long)s.M,
                  (long long)s.N, (long long)s.K, (long long)s.count, gf_ours, gf_blas, gf_ours / gf_blas);
    } else {
      std::printf("%-4s %6lld %6lld %6lld %6lld %12.1f %12s %7s\n", s.kind.c_str(), (long long)s.M,
                  (long long)s.N, (long long)s.K, (long long)s.count, gf_ours, "-", "-");
    }
    std::fflush(stdout);
    char row[256];
    std::snprintf(row, sizeof row, "%s{\"kind\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"count\":%lld,"
                  "\"ours_gflops\":%.3f,\"openblas_gflops\":%.3f}",
                  json_rows.empty() ? "" : ",", s.kind.c_str(), (long long)s.M, (long long)s.N,
                  (long long)s.K, (long long)s.count, gf_ours,
                  have_blas ? s.flops() / t_blas / 1e9 : 0.0);
    json_rows += row;
  }

  const double overall_ours = total_flops / our_time / 1e9;
  std::printf("\noverall (each shape weighted by its count, %.3g GFLOP in all): ours %.1f GFLOP/s", total_flops / 1e9,
              overall_ours);
  double overall_blas = 0;
  if (have_blas) {
    overall_blas = total_flops / blas_time / 1e9;
    std::printf(", OpenBLAS %.1f GFLOP/s, ratio %.2f\n", overall_blas, overall_ours / overall_blas);
    std::printf("largest difference between the two results: %.2e of the largest |C| entry\n", worst_diff);
  } else {
    std::printf("\n");
  }
  if (json) {
    std::printf("{\"v\":1,\"cpu\":\"%s\",\"threads\":%d,\"kernel\":\"%s\",\"openblas\":%s,"
                "\"ours_gflops\":%.3f,\"openblas_gflops\":%.3f,\"ratio\":%.4f,\"shapes\":[%s]}\n",
                json_escape(cpu_model()).c_str(), threads, json_escape(lora::matmul_kernel_name()).c_str(),
                have_blas ? ("\"" + json_escape(blas.path) + "\"").c_str() : "null", overall_ours,
                overall_blas, have_blas ? overall_ours / overall_blas : 0.0, json_rows.c_str());
  }
  return 0;
}
