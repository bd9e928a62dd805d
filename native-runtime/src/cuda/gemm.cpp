// GEMM dispatch (gemm.hpp): cuBLASLt when it can be loaded, the built-in WMMA kernel
// (gemm_wmma.cu) otherwise. cuBLASLt is loaded with dlopen so the runtime has no link-time
// dependency on it and starts on machines where it is absent; the small part of its C API
// used here is declared below with the values of cublasLt.h / cublas_api.h /
// library_types.h (CUDA 12 and 13 share them).
#include <dlfcn.h>
#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/context.hpp"
#include "cuda/cublaslt_loader.hpp"
#include "cuda/gemm.hpp"
#include "cuda/gemm_args.hpp"
#include "cuda/memory.hpp"

namespace lora::cuda {

// ---- argument checks ---------------------------------------------------------------------

void validate_gemm_args(const GemmArgs& a, const char* who) {
  auto fail = [&](const std::string& what) { throw std::invalid_argument(std::string(who) + ": " + what); };
  if (a.M < 0) fail("M is negative (" + std::to_string(a.M) + ")");
  if (a.N < 0) fail("N is negative (" + std::to_string(a.N) + ")");
  if (a.K < 0) fail("K is negative (" + std::to_string(a.K) + ")");
  if (a.M == 0 || a.N == 0) return;
  if (!a.C) fail("C is null");
  if (a.ldc < a.N) fail("ldc (" + std::to_string(a.ldc) + ") is less than N (" + std::to_string(a.N) + ")");
  const size_t c_size = a.c_type == GemmType::F32 ? 4 : 2;
  if (reinterpret_cast<uintptr_t>(a.C) % c_size) fail("C is not aligned to its element size");
  if (a.K == 0) return;
  if (!a.A) fail("A is null");
  if (!a.B) fail("B is null");
  const int64_t a_cols = a.trans_a ? a.M : a.K;
  const int64_t b_cols = a.trans_b ? a.K : a.N;
  if (a.lda < a_cols)
    fail("lda (" + std::to_string(a.lda) + ") is less than " + std::to_string(a_cols) + ", the columns of stored A");
  if (a.ldb < b_cols)
    fail("ldb (" + std::to_string(a.ldb) + ") is less than " + std::to_string(b_cols) + ", the columns of stored B");
  if (reinterpret_cast<uintptr_t>(a.A) % 2) fail("A is not aligned to 2 bytes");
  if (reinterpret_cast<uintptr_t>(a.B) % 2) fail("B is not aligned to 2 bytes");
}

// ---- where cuBLASLt is looked for ----------------------------------------------------------

namespace {

const char* const kSonames[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::vector<std::string> glob_dirs(const std::string& pattern) {
  std::vector<std::string> out;
  glob_t g{};
  if (glob(pattern.c_str(), GLOB_ONLYDIR | GLOB_NOSORT, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  }
  globfree(&g);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

CublasLtSearchEnv cublaslt_search_env() {
  CublasLtSearchEnv env;
  env.lora_cublaslt = env_or_empty("LORA_CUBLASLT");
  env.cuda_home = env_or_empty("CUDA_HOME");
  env.home = env_or_empty("HOME");
  return env;
}

std::vector<std::string> cublaslt_candidates(const CublasLtSearchEnv& env) {
  // A named file is the user's decision: trying others after it fails would hide the failure.
  if (!env.lora_cublaslt.empty()) return {env.lora_cublaslt};

  std::vector<std::string> out;
  auto add = [&out](const std::string& path) {
    if (std::find(out.begin(), out.end(), path) == out.end()) out.push_back(path);
  };
  for (const char* name : kSonames) add(name);

  std::vector<std::string> toolkit_dirs;
  if (!env.cuda_home.empty()) toolkit_dirs.push_back(env.cuda_home + "/lib64");
  toolkit_dirs.push_back("/usr/local/cuda/lib64");
  toolkit_dirs.push_back("/usr/local/cuda/targets/x86_64-linux/lib");
  for (const auto& dir : toolkit_dirs)
    for (const char* name : kSonames) add(dir + "/" + name);

  // The nvidia-cublas wheels (pip install nvidia-cublas-cu12, or torch's dependencies):
  // cu12 wheels put libcublasLt.so.12 in nvidia/cublas/lib, CUDA 13 ones use nvidia/cu13/lib.
  std::vector<std::string> site_dirs;
  std::vector<std::string> prefixes = {"/usr/lib", "/usr/local/lib"};
  if (!env.home.empty()) prefixes.push_back(env.home + "/.local/lib");
  for (const auto& prefix : prefixes) {
    for (int minor = 8; minor <= 14; ++minor) {
      const std::string py = prefix + "/python3." + std::to_string(minor);
      site_dirs.push_back(py + "/site-packages");
      site_dirs.push_back(py + "/dist-packages");  // Debian's name for the same folder
    }
  }
  for (const auto& dir : glob_dirs(env.opt_root + "/*/.venv/lib/python3.*/site-packages")) site_dirs.push_back(dir);
  for (const auto& site : site_dirs) {
    for (const char* sub : {"/nvidia/cublas/lib/", "/nvidia/cu13/lib/"}) {
      add(site + sub + "libcublasLt.so.13");
      add(site + sub + "libcublasLt.so.12");
    }
  }
  return out;
}

std::vector<std::string> cublaslt_candidates() { return cublaslt_candidates(cublaslt_search_env()); }

const std::vector<const char*>& cublaslt_symbols() {
  static const std::vector<const char*> symbols = {
      "cublasLtCreate",
      "cublasLtGetVersion",
      "cublasLtMatmulDescCreate",
      "cublasLtMatmulDescSetAttribute",
      "cublasLtMatmulDescDestroy",
      "cublasLtMatrixLayoutCreate",
      "cublasLtMatrixLayoutDestroy",
      "cublasLtMatmulPreferenceCreate",
      "cublasLtMatmulPreferenceSetAttribute",
      "cublasLtMatmulPreferenceDestroy",
      "cublasLtMatmulAlgoGetHeuristic",
      "cublasLtMatmul",
  };
  return symbols;
}

CublasLtLibrary load_cublaslt(const std::vector<std::string>& candidates) {
  CublasLtLibrary lib;
  std::string refused;
  for (const auto& path : candidates) {
    const bool bare_name = path.find('/') == std::string::npos;
    // A path that is not there is only a place looked at, not a failure worth reporting.
    if (!bare_name && access(path.c_str(), F_OK) != 0) continue;
    dlerror();
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* err = dlerror();
      const std::string msg = err ? err : "dlopen failed";
      // For a bare soname, "No such file" only means the loader path does not have it.
      if (bare_name && msg.find("No such file") != std::string::npos) continue;
      refused += (refused.empty() ? "" : "; ") + path + ": " + msg;
      continue;
    }
    const char* missing = nullptr;
    for (const char* sym : cublaslt_symbols()) {
      if (!dlsym(h, sym)) {
        missing = sym;
        break;
      }
    }
    if (missing) {
      refused += (refused.empty() ? "" : "; ") + path + ": has no " + missing + " (not cuBLASLt, or too old)";
      dlclose(h);
      continue;
    }
    lib.handle = h;
    lib.path = path;
    return lib;
  }
  if (!refused.empty()) {
    lib.reason = refused;
  } else if (candidates.size() == 1) {
    lib.reason = candidates[0] + " was not found";
  } else {
    lib.reason = "no libcublasLt found (looked on the loader path, in the CUDA toolkit and in Python wheels; set "
                 "LORA_CUBLASLT to the library file)";
  }
  return lib;
}

LtCall column_major_call(const GemmArgs& a) {
  LtCall c;
  c.m = a.N;
  c.n = a.M;
  c.k = a.K;
  // Stored B is [K, N] (or [N, K] when trans_b): column-major [N, K] (or [K, N]); op(B)^T
  // is [N, K], so it is taken as is (or transposed).
  c.trans_a = a.trans_b;
  c.A = a.B;
  c.a_rows = a.trans_b ? a.K : a.N;
  c.a_cols = a.trans_b ? a.N : a.K;
  c.lda = a.ldb;
  // Stored A is [M, K] (or [K, M] when trans_a): column-major [K, M] (or [M, K]); op(A)^T
  // is [K, M].
  c.trans_b = a.trans_a;
  c.B = a.A;
  c.b_rows = a.trans_a ? a.M : a.K;
  c.b_cols = a.trans_a ? a.K : a.M;
  c.ldb = a.lda;
  c.C = a.C;
  c.c_rows = a.N;
  c.c_cols = a.M;
  c.ldc = a.ldc;
  return c;
}

// ---- the cuBLASLt API, as declared by cublasLt.h -------------------------------------------

namespace {

using cublasStatus_t = int;  // CUBLAS_STATUS_SUCCESS = 0
constexpr cublasStatus_t kCublasSuccess = 0;
struct cublasLtContext;
using cublasLtHandle_t = cublasLtContext*;
struct cublasLtMatmulDescOpaque;
using cublasLtMatmulDesc_t = cublasLtMatmulDescOpaque*;
struct cublasLtMatrixLayoutOpaque;
using cublasLtMatrixLayout_t = cublasLtMatrixLayoutOpaque*;
struct cublasLtMatmulPreferenceOpaque;
using cublasLtMatmulPreference_t = cublasLtMatmulPreferenceOpaque*;
struct cublasLtMatmulAlgo_t {
  uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};

// cublasComputeType_t (cublas_api.h)
constexpr int kCublasCompute32F = 68;  // CUBLAS_COMPUTE_32F
// cudaDataType_t (library_types.h, which the CUDA runtime headers include)
static_assert(CUDA_R_32F == 0 && CUDA_R_16BF == 14, "library_types.h values");
// cublasOperation_t (cublas_api.h)
constexpr int32_t kCublasOpN = 0, kCublasOpT = 1;
// cublasLtMatmulDescAttributes_t (cublasLt.h); both int32_t-valued
constexpr int kDescTransA = 3, kDescTransB = 4;  // CUBLASLT_MATMUL_DESC_TRANSA / _TRANSB
// cublasLtMatmulPreferenceAttributes_t (cublasLt.h)
constexpr int kPrefMaxWorkspaceBytes = 1;  // uint64_t
constexpr int kPrefReductionSchemeMask = 3;  // uint32_t
constexpr int kPrefMinAlignmentA = 5, kPrefMinAlignmentB = 6, kPrefMinAlignmentC = 7,
              kPrefMinAlignmentD = 8;  // uint32_t each
// cublasLtReductionScheme_t (cublasLt.h): how split-K partial sums are combined
constexpr uint32_t kReductionComputeType = 2;  // CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
constexpr uint32_t kReductionAll = 7;          // CUBLASLT_REDUCTION_SCHEME_MASK

struct LtApi {
  cublasStatus_t (*create)(cublasLtHandle_t*);
  size_t (*get_version)();
  cublasStatus_t (*desc_create)(cublasLtMatmulDesc_t*, int, int);
  cublasStatus_t (*desc_set)(cublasLtMatmulDesc_t, int, const void*, size_t);
  cublasStatus_t (*desc_destroy)(cublasLtMatmulDesc_t);
  cublasStatus_t (*layout_create)(cublasLtMatrixLayout_t*, int, uint64_t, uint64_t, int64_t);
  cublasStatus_t (*layout_destroy)(cublasLtMatrixLayout_t);
  cublasStatus_t (*pref_create)(cublasLtMatmulPreference_t*);
  cublasStatus_t (*pref_set)(cublasLtMatmulPreference_t, int, const void*, size_t);
  cublasStatus_t (*pref_destroy)(cublasLtMatmulPreference_t);
  cublasStatus_t (*heuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,
                              cublasLtMatmulHeuristicResult_t*, int*);
  cublasStatus_t (*matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void*, const void*, cublasLtMatrixLayout_t,
                           const void*, cublasLtMatrixLayout_t, const void*, const void*, cublasLtMatrixLayout_t,
                           void*, cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t);
};

template <class F>
void resolve(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
}

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// What cuBLASLt's heuristic needs to know about one call; plans are kept per key.
struct PlanKey {
  bool trans_a, trans_b;
  int64_t M, N, K, lda, ldb, ldc;
  GemmType c_type;
  uint32_t align_a, align_b, align_c;
  bool workspace;
  bool operator<(const PlanKey& o) const {
    return std::tie(trans_a, trans_b, M, N, K, lda, ldb, ldc, c_type, align_a, align_b, align_c, workspace) <
           std::tie(o.trans_a, o.trans_b, o.M, o.N, o.K, o.lda, o.ldb, o.ldc, o.c_type, o.align_a, o.align_b,
                    o.align_c, o.workspace);
  }
};

struct Plan {
  bool usable = false;  // false: this shape runs on the built-in kernel
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t layout_a = nullptr, layout_b = nullptr, layout_c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace_size = 0;
};

struct Backend {
  bool lt = false;
  std::string description;
  LtApi api{};
  cublasLtHandle_t handle = nullptr;
  std::mutex mu;  // guards plans and workspace
  std::map<PlanKey, Plan> plans;
  void* workspace = nullptr;
};

Backend& backend() {
  static Backend* b = [] {
    auto* be = new Backend();
    size_t version = 0;
    const std::string forced = env_or_empty("LORA_GEMM");
    if (forced == "builtin") {
      be->description = "builtin wmma (LORA_GEMM=builtin)";
    } else {
      CublasLtLibrary lib = load_cublaslt(cublaslt_candidates());
      if (!lib.handle) {
        be->description = "builtin wmma (" + lib.reason + ")";
      } else {
        LtApi& a = be->api;
        resolve(lib.handle, "cublasLtCreate", a.create);
        resolve(lib.handle, "cublasLtGetVersion", a.get_version);
        resolve(lib.handle, "cublasLtMatmulDescCreate", a.desc_create);
        resolve(lib.handle, "cublasLtMatmulDescSetAttribute", a.desc_set);
        resolve(lib.handle, "cublasLtMatmulDescDestroy", a.desc_destroy);
        resolve(lib.handle, "cublasLtMatrixLayoutCreate", a.layout_create);
        resolve(lib.handle, "cublasLtMatrixLayoutDestroy", a.layout_destroy);
        resolve(lib.handle, "cublasLtMatmulPreferenceCreate", a.pref_create);
        resolve(lib.handle, "cublasLtMatmulPreferenceSetAttribute", a.pref_set);
        resolve(lib.handle, "cublasLtMatmulPreferenceDestroy", a.pref_destroy);
        resolve(lib.handle, "cublasLtMatmulAlgoGetHeuristic", a.heuristic);
        resolve(lib.handle, "cublasLtMatmul", a.matmul);
        const cublasStatus_t st = a.create(&be->handle);
        if (st != kCublasSuccess) {
          be->description = "builtin wmma (cublasLtCreate from " + lib.path + " failed with status " +
                            std::to_string(st) + ")";
        } else {
          be->lt = true;
          be->description = "cublasLt (" + lib.path + ")";
          version = a.get_version();
        }
      }
    }
    if (version)
      std::fprintf(stderr, "lora-runtime: GEMM backend: %s, version %zu\n", be->description.c_str(), version);
    else
      std::fprintf(stderr, "lora-runtime: GEMM backend: %s\n", be->description.c_str());
    return be;
  }();
  return *b;
}

uint32_t pointer_alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && (v % align)) align /= 2;
  return align;
}

void destroy_plan(const LtApi& api, Plan& p) {
  if (p.layout_a) api.layout_destroy(p.layout_a);
  if (p.layout_b) api.layout_destroy(p.layout_b);
  if (p.layout_c) api.layout_destroy(p.layout_c);
  if (p.desc) api.desc_destroy(p.desc);
  p = Plan{};
}

Plan make_plan(Backend& be, const PlanKey& k, const LtCall& call) {
  const LtApi& api = be.api;
  Plan p;
  bool ok = api.desc_create(&p.desc, kCublasCompute32F, CUDA_R_32F) == kCublasSuccess;
  const int32_t op_a = call.trans_a ? kCublasOpT : kCublasOpN;
  const int32_t op_b = call.trans_b ? kCublasOpT : kCublasOpN;
  ok = ok && api.desc_set(p.desc, kDescTransA, &op_a, sizeof op_a) == kCublasSuccess;
  ok = ok && api.desc_set(p.desc, kDescTransB, &op_b, sizeof op_b) == kCublasSuccess;
  const int c_type = k.c_type == GemmType::F32 ? CUDA_R_32F : CUDA_R_16BF;
  ok = ok && api.layout_create(&p.layout_a, CUDA_R_16BF, call.a_rows, call.a_cols, call.lda) == kCublasSuccess;
  ok = ok && api.layout_create(&p.layout_b, CUDA_R_16BF, call.b_rows, call.b_cols, call.ldb) == kCublasSuccess;
  ok = ok && api.layout_create(&p.layout_c, c_type, call.c_rows, call.c_cols, call.ldc) == kCublasSuccess;
  cublasLtMatmulPreference_t pref = nullptr;
  ok = ok && api.pref_create(&pref) == kCublasSuccess;
  if (ok) {
    const uint64_t ws = k.workspace ? kWorkspaceBytes : 0;
    // The heuristic assumes 256-byte aligned matrices unless told otherwise, and may pick
    // vectorised kernels that misread a view into the middle of a tensor.
    const uint32_t al_a = pointer_alignment(call.A), al_b = pointer_alignment(call.B),
                   al_c = pointer_alignment(call.C);
    // A split-K product with a bf16 C may otherwise add its partial sums in bf16 (in place
    // or in an output-type workspace), losing the fp32 accumulation the contract promises.
    const uint32_t reduction = k.c_type == GemmType::BF16 ? kReductionComputeType : kReductionAll;
    ok = api.pref_set(pref, kPrefMaxWorkspaceBytes, &ws, sizeof ws) == kCublasSuccess &&
         api.pref_set(pref, kPrefReductionSchemeMask, &reduction, sizeof reduction) == kCublasSuccess &&
         api.pref_set(pref, kPrefMinAlignmentA, &al_a, sizeof al_a) == kCublasSuccess &&
         api.pref_set(pref, kPrefMinAlignmentB, &al_b, sizeof al_b) == kCublasSuccess &&
         api.pref_set(pref, kPrefMinAlignmentC, &al_c, sizeof al_c) == kCublasSuccess &&
         api.pref_set(pref, kPrefMinAlignmentD, &al_c, sizeof al_c) == kCublasSuccess;
  }
  if (ok) {
    std::array<cublasLtMatmulHeuristicResult_t, 4> results{};
    int returned = 0;
    ok = api.heuristic(be.handle, p.desc, p.layout_a, p.layout_b, p.layout_c, p.layout_c, pref,
                       static_cast<int>(results.size()), results.data(), &returned) == kCublasSuccess;
    bool found = false;
    for (int i = 0; ok && i < returned && !found; ++i) {
      if (results[i].state == kCublasSuccess && results[i].workspaceSize <= (k.workspace ? kWorkspaceBytes : 0)) {
        p.algo = results[i].algo;
        p.workspace_size = results[i].workspaceSize;
        found = true;
      }
    }
    ok = ok && found;
  }
  if (pref) api.pref_destroy(pref);
  if (!ok) {
    destroy_plan(api, p);
    return p;
  }
  p.usable = true;
  return p;
}

cudaStream_t compute_stream_or_default() {
  try {
    return current().stream;
  } catch (const std::logic_error&) {
    return nullptr;
  }
}

std::string shape_text(const GemmArgs& a) {
  return "M=" + std::to_string(a.M) + " N=" + std::to_string(a.N) + " K=" + std::to_string(a.K) +
         (a.trans_a ? " A^T" : "") + (a.trans_b ? " B^T" : "");
}

// Runs `a` through cuBLASLt; false when this shape is left to the built-in kernel.
bool gemm_cublaslt(Backend& be, const GemmArgs& a, cudaStream_t stream, bool on_compute_stream) {
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (a.M > kIntMax || a.N > kIntMax || a.K > kIntMax || a.lda > kIntMax || a.ldb > kIntMax || a.ldc > kIntMax)
    return false;
  const PlanKey key{a.trans_a, a.trans_b, a.M, a.N, a.K, a.lda, a.ldb, a.ldc, a.c_type,
                    pointer_alignment(a.A), pointer_alignment(a.B), pointer_alignment(a.C),
                    // The one workspace belongs to the compute stream: a GEMM on another
                    // stream could run at the same time and share it.
                    on_compute_stream};
  const LtCall call = column_major_call(a);
  std::lock_guard<std::mutex> lock(be.mu);
  auto it = be.plans.find(key);
  if (it == be.plans.end()) {
    it = be.plans.emplace(key, make_plan(be, key, call)).first;
    if (!it->second.usable)
      std::fprintf(stderr, "lora-runtime: cuBLASLt has no algorithm for GEMM %s; using the built-in kernel for it\n",
                   shape_text(a).c_str());
  }
  Plan& p = it->second;
  if (!p.usable) return false;
  if (p.workspace_size > 0 && !be.workspace) be.workspace = device_alloc(kWorkspaceBytes);
  const cublasStatus_t st =
      be.api.matmul(be.handle, p.desc, &a.alpha, call.A, p.layout_a, call.B, p.layout_b, &a.beta, call.C, p.layout_c,
                    call.C, p.layout_c, &p.algo, p.workspace_size ? be.workspace : nullptr, p.workspace_size, stream);
  if (st != kCublasSuccess) {
    std::fprintf(stderr, "lora-runtime: cublasLtMatmul failed with status %d for GEMM %s; using the built-in kernel for it\n",
                 st, shape_text(a).c_str());
    destroy_plan(be.api, p);
    return false;
  }
  return true;
}

}  // namespace

std::string gemm_backend() { return backend().description; }

void gemm(const GemmArgs& args, cudaStream_t stream) {
  validate_gemm_args(args, "gemm");
  if (args.M == 0 || args.N == 0) return;
  const cudaStream_t compute = compute_stream_or_default();
  if (!stream) stream = compute;
  Backend& be = backend();
  // K == 0 leaves C = beta * C, which the built-in kernel does without a special case.
  if (be.lt && args.K > 0 && gemm_cublaslt(be, args, stream, stream == compute)) return;
  gemm_builtin(args, stream);
}

}  // namespace lora::cuda
