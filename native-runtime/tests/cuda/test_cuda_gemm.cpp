// The device GEMM (cuda/gemm.hpp) against a double-precision product of the same
// bf16-rounded inputs: every transpose combination, sizes that are not multiples of the
// tiles (1, 7, 33, 129, 1000), bf16 and fp32 C, alpha/beta, strides wider than the rows,
// base pointers that defeat the 16-byte copies, and both backends (the built-in WMMA kernel
// always, cuBLASLt when it loads). The stride padding of A and B holds NaN and that of C a
// sentinel, so a kernel that reads or writes outside the matrices fails. The argument
// checks and the cuBLASLt search list are host logic and run on every machine.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/cublaslt_loader.hpp"
#include "cuda/gemm.hpp"
#include "cuda_test_util.hpp"
#include "gemm_check.hpp"
#include "temp_dir.hpp"
#include "test.hpp"

using lora::cuda::GemmArgs;
using lora::cuda::GemmType;
using lora::cuda::bf16;
using lora_test::GemmCase;
using lora_test::GemmProblem;

namespace {

lora::cuda::DeviceArray<bf16> upload_bits(const std::vector<uint16_t>& bits) {
  lora::cuda::DeviceArray<bf16> d(bits.size());
  if (!bits.empty()) lora::cuda::copy_to_device(d.data(), bits.data(), bits.size() * 2);
  return d;
}

// Runs one case on the device through `run` and checks C (gemm_check.hpp).
void check_case(const GemmCase& c, const std::function<void(const GemmArgs&)>& run, const char* backend) {
  GemmProblem p = lora_test::make_gemm_problem(c);
  const auto dA = upload_bits(p.a_bits);
  const auto dB = upload_bits(p.b_bits);
  lora::cuda::DeviceArray<float> c_f32;
  lora::cuda::DeviceArray<bf16> c_bf16;
  void* c_base = nullptr;
  if (p.f32()) {
    c_f32 = lora_test::to_device(p.c_f32);
    c_base = c_f32.data();
  } else {
    c_bf16 = upload_bits(p.c_bf16);
    c_base = c_bf16.data();
  }
  run(lora_test::gemm_args_for(p, dA.data(), dB.data(), c_base));
  LORA_CUDA_CHECK(cudaDeviceSynchronize());
  if (p.f32())
    p.c_f32 = lora_test::to_host(c_f32);
  else
    lora::cuda::copy_to_host(p.c_bf16.data(), c_bf16.data(), p.c_bf16.size() * 2);
  lora_test::verify_gemm(p, backend);
}

// Sizes from the brief: 1, 7, 33, 129 and 1000 in every position, with exact tile multiples
// (the 16-byte copy path throughout).
std::vector<GemmCase> standard_cases() {
  return lora_test::gemm_cases({
      {1, 1, 1},        {1, 7, 33},     {7, 1, 129},     {33, 33, 7},     {129, 7, 1000},  {7, 129, 33},
      {1000, 33, 129},  {33, 1000, 7},  {129, 129, 129}, {1, 1000, 1000}, {1000, 1, 1000}, {1000, 1000, 33},
      {129, 1000, 1000}, {128, 128, 32}, {256, 256, 256}, {130, 200, 70},  {64, 64, 64},    {16, 4096, 16},
  });
}

bool cublaslt_loaded() { return lora::cuda::gemm_backend().rfind("cublasLt", 0) == 0; }

}  // namespace

TEST(cuda_gemm_builtin_matches_cpu) {
  LORA_REQUIRE_GPU();
  for (const auto& c : standard_cases())
    check_case(c, [](const GemmArgs& a) { lora::cuda::gemm_builtin(a); }, "builtin");
}

TEST(cuda_gemm_cublaslt_matches_cpu) {
  LORA_REQUIRE_GPU();
  if (!cublaslt_loaded()) {
    lora_test::skip("cuBLASLt is not in use: " + lora::cuda::gemm_backend());
    return;
  }
  for (const auto& c : standard_cases())
    check_case(c, [](const GemmArgs& a) { lora::cuda::gemm(a); }, "gemm (cuBLASLt)");
}

// gemm() itself, whichever backend it chose, on the shapes the trainer uses most.
TEST(cuda_gemm_dispatch_matches_cpu) {
  LORA_REQUIRE_GPU();
  const int64_t shapes[][3] = {{512, 576, 576}, {512, 1536, 576}, {7, 16, 576}, {576, 16, 512}, {1, 49152, 64}};
  for (const auto& s : shapes) {
    for (int t = 0; t < 4; ++t) {
      GemmCase c;
      c.M = s[0];
      c.N = s[1];
      c.K = s[2];
      c.ta = t & 1;
      c.tb = (t >> 1) & 1;
      c.c_type = t % 2 ? GemmType::F32 : GemmType::BF16;
      c.beta = t == 3 ? 1.f : 0.f;
      check_case(c, [](const GemmArgs& a) { lora::cuda::gemm(a); }, "gemm");
    }
  }
}

// On a stream other than the compute stream (cuBLASLt then plans without the shared
// workspace, which belongs to the compute stream).
TEST(cuda_gemm_on_a_side_stream) {
  LORA_REQUIRE_GPU();
  cudaStream_t side = nullptr;
  LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  for (const auto& c : lora_test::gemm_cases({{129, 1000, 1000}, {7, 33, 129}, {1000, 16, 576}})) {
    check_case(c, [side](const GemmArgs& a) { lora::cuda::gemm(a, side); }, "gemm (side stream)");
    check_case(c, [side](const GemmArgs& a) { lora::cuda::gemm_builtin(a, side); }, "builtin (side stream)");
  }
  LORA_CUDA_CHECK(cudaStreamDestroy(side));
}

// K == 0: C = beta * C (beta == 0 clears C, even where it held NaN).
TEST(cuda_gemm_k_zero_scales_c) {
  LORA_REQUIRE_GPU();
  for (float beta : {0.f, 0.5f}) {
    for (int ct = 0; ct < 2; ++ct) {
      GemmCase c;
      c.M = 33;
      c.N = 7;
      c.K = 0;
      c.pad_c = 3;
      c.beta = beta;
      c.c_type = ct ? GemmType::F32 : GemmType::BF16;
      check_case(c, [](const GemmArgs& a) { lora::cuda::gemm(a); }, "gemm");
      check_case(c, [](const GemmArgs& a) { lora::cuda::gemm_builtin(a); }, "builtin");
    }
  }
}

// More than 65535 row tiles: the built-in kernel launches in bands of rows.
TEST(cuda_gemm_builtin_tall_matrix_spans_grid_bands) {
  LORA_REQUIRE_GPU();
  GemmCase c;
  c.M = 128LL * 65535 + 200;
  c.N = 8;
  c.K = 8;
  c.c_type = GemmType::F32;
  check_case(c, [](const GemmArgs& a) { lora::cuda::gemm_builtin(a); }, "builtin");
}

// Argument errors are found before any CUDA call, so this runs without a GPU too.
TEST(cuda_gemm_rejects_bad_arguments) {
  const auto* fake = reinterpret_cast<const bf16*>(uintptr_t(4096));
  auto* fake_c = reinterpret_cast<void*>(uintptr_t(8192));
  auto base = [&] {
    GemmArgs a;
    a.M = 4;
    a.N = 5;
    a.K = 6;
    a.A = fake;
    a.lda = 6;
    a.B = fake;
    a.ldb = 5;
    a.C = fake_c;
    a.ldc = 5;
    return a;
  };
  auto expect = [](const GemmArgs& a, const std::string& word) {
    for (int which = 0; which < 2; ++which) {
      bool thrown = false;
      try {
        if (which == 0)
          lora::cuda::gemm(a);
        else
          lora::cuda::gemm_builtin(a);
      } catch (const std::invalid_argument& e) {
        thrown = true;
        if (std::string(e.what()).find(word) == std::string::npos)
          lora_test::record_failure(__FILE__, __LINE__, "message does not name " + word + ": " + e.what());
      } catch (const std::exception& e) {
        thrown = true;
        lora_test::record_failure(__FILE__, __LINE__, std::string("not invalid_argument: ") + e.what());
      }
      if (!thrown) lora_test::record_failure(__FILE__, __LINE__, "no error for a bad " + word);
    }
  };
  GemmArgs a = base();
  a.M = -1;
  expect(a, "M");
  a = base();
  a.lda = 5;  // A is [4, 6]
  expect(a, "lda");
  a = base();
  a.trans_a = true;
  a.lda = 3;  // A^T stored [6, 4]
  expect(a, "lda");
  a = base();
  a.ldb = 4;  // B is [6, 5]
  expect(a, "ldb");
  a = base();
  a.trans_b = true;
  a.ldb = 5;  // B^T stored [5, 6]
  expect(a, "ldb");
  a = base();
  a.ldc = 4;
  expect(a, "ldc");
  a = base();
  a.C = nullptr;
  expect(a, "C");
  a = base();
  a.B = nullptr;
  expect(a, "B");
  a = base();
  a.A = reinterpret_cast<const bf16*>(uintptr_t(4097));
  expect(a, "A");
  a = base();
  a.c_type = GemmType::F32;
  a.C = reinterpret_cast<void*>(uintptr_t(8194));
  expect(a, "C");

  // An empty product is a no-op that touches nothing (not even the device).
  a = base();
  a.M = 0;
  a.A = nullptr;
  a.C = nullptr;
  lora::cuda::gemm(a);
  lora::cuda::gemm_builtin(a);
}

// The cuBLASLt search list, in the order gemm.hpp documents.
TEST(cuda_cublaslt_search_order) {
  using lora::cuda::CublasLtSearchEnv;
  using lora::cuda::cublaslt_candidates;
  {
    CublasLtSearchEnv env;
    env.lora_cublaslt = "/somewhere/libcublasLt.so.13";
    env.cuda_home = "/cuda";
    const auto list = cublaslt_candidates(env);
    CHECK_EQ(list.size(), size_t(1));
    if (!list.empty()) CHECK_EQ(list[0], std::string("/somewhere/libcublasLt.so.13"));
  }
  lora_test::TempDir opt("cublaslt_opt");
  const std::string venv_site = opt.path() + "/torch/.venv/lib/python3.12/site-packages";
  std::filesystem::create_directories(venv_site);
  CublasLtSearchEnv env;
  env.cuda_home = "/cuda";
  env.home = "/home/someone";
  env.opt_root = opt.path();
  const auto list = cublaslt_candidates(env);
  auto pos = [&](const std::string& s) -> int64_t {
    for (size_t i = 0; i < list.size(); ++i)
      if (list[i] == s) return static_cast<int64_t>(i);
    lora_test::record_failure(__FILE__, __LINE__, "not in the search list: " + s);
    return -1;
  };
  CHECK(list.size() >= 3);
  if (list.size() >= 3) {
    CHECK_EQ(list[0], std::string("libcublasLt.so.13"));
    CHECK_EQ(list[1], std::string("libcublasLt.so.12"));
    CHECK_EQ(list[2], std::string("libcublasLt.so"));
  }
  const int64_t cuda_home = pos("/cuda/lib64/libcublasLt.so.13");
  const int64_t usr_local = pos("/usr/local/cuda/lib64/libcublasLt.so.13");
  const int64_t targets = pos("/usr/local/cuda/targets/x86_64-linux/lib/libcublasLt.so.12");
  const int64_t usr_lib = pos("/usr/lib/python3.8/site-packages/nvidia/cublas/lib/libcublasLt.so.12");
  const int64_t local_lib = pos("/usr/local/lib/python3.14/site-packages/nvidia/cu13/lib/libcublasLt.so.13");
  const int64_t user = pos("/home/someone/.local/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12");
  const int64_t venv = pos(venv_site + "/nvidia/cublas/lib/libcublasLt.so.13");
  pos(venv_site + "/nvidia/cu13/lib/libcublasLt.so.13");
  CHECK(2 < cuda_home && cuda_home < usr_local && usr_local < targets && targets < usr_lib && usr_lib < local_lib &&
        local_lib < user && user < venv);
  for (size_t i = 0; i < list.size(); ++i)
    for (size_t j = i + 1; j < list.size(); ++j)
      if (list[i] == list[j]) lora_test::record_failure(__FILE__, __LINE__, "listed twice: " + list[i]);

  // CUDA_HOME pointing at /usr/local/cuda adds no duplicates; without HOME, no ~/.local.
  env.cuda_home = "/usr/local/cuda";
  env.home.clear();
  const auto list2 = cublaslt_candidates(env);
  for (size_t i = 0; i < list2.size(); ++i) {
    CHECK(list2[i].find("/.local/") == std::string::npos);
    for (size_t j = i + 1; j < list2.size(); ++j)
      if (list2[i] == list2[j]) lora_test::record_failure(__FILE__, __LINE__, "listed twice: " + list2[i]);
  }

  // The GPU machines' torch environment is found where it is.
  const std::string torch_site = "/opt/torch/.venv/lib/python3.12/site-packages";
  struct stat st {};
  if (stat(torch_site.c_str(), &st) == 0) {
    const auto real = cublaslt_candidates(CublasLtSearchEnv{});
    bool found = false;
    for (const auto& s : real) found = found || s == torch_site + "/nvidia/cublas/lib/libcublasLt.so.13";
    CHECK(found);
  }
}

// A library that is missing, not a library, or not cuBLASLt is refused with the reason.
TEST(cuda_cublaslt_load_failures_are_explained) {
  using lora::cuda::load_cublaslt;
  {
    const auto lib = load_cublaslt({"/nonexistent/dir/libcublasLt.so.13"});
    CHECK(lib.handle == nullptr);
    CHECK(lib.path.empty());
    CHECK(lib.reason.find("/nonexistent/dir/libcublasLt.so.13") != std::string::npos);
    CHECK(lib.reason.find("not found") != std::string::npos);
  }
  {
    const auto lib = load_cublaslt({"libc.so.6"});
    CHECK(lib.handle == nullptr);
    CHECK(lib.reason.find("libc.so.6") != std::string::npos);
    CHECK(lib.reason.find("cublasLtCreate") != std::string::npos);
  }
  {
    lora_test::TempDir dir("cublaslt_fake");
    const std::string fake = dir / "libcublasLt.so.13";
    std::ofstream(fake) << "not an ELF file\n";
    const auto lib = load_cublaslt({"libno_such_cublaslt_for_lora.so.1", fake});
    CHECK(lib.handle == nullptr);
    CHECK(lib.reason.find(fake) != std::string::npos);
    CHECK(lib.reason.find("libno_such_cublaslt_for_lora") == std::string::npos);  // merely absent
  }
  {
    const auto lib = load_cublaslt({"libno_such_cublaslt_for_lora.so.1", "/nonexistent/libcublasLt.so"});
    CHECK(lib.handle == nullptr);
    CHECK(lib.reason.find("no libcublasLt found") != std::string::npos);
    CHECK(lib.reason.find("LORA_CUBLASLT") != std::string::npos);
  }
}

// The column-major call gemm.cpp hands cuBLASLt, evaluated with cuBLASLt's documented
// semantics (D = alpha op(A) op(B) + beta C, column-major, stride between columns), gives
// the row-major product gemm.hpp promises, for every transpose and wide strides. Host only:
// the arithmetic here is plain doubles on the host buffers the pointers name.
TEST(cuda_cublaslt_call_is_the_row_major_product) {
  const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {7, 3, 5}, {5, 7, 1}, {16, 9, 33}};
  for (const auto& s : shapes) {
    for (int t = 0; t < 4; ++t) {
      const int64_t M = s[0], N = s[1], K = s[2];
      const bool ta = t & 1, tb = (t >> 1) & 1;
      const int64_t lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 1, ldc = N + 3;
      const std::vector<float> a_store = lora_test::random_vec((ta ? K : M) * lda, 11 + t);
      const std::vector<float> b_store = lora_test::random_vec((tb ? N : K) * ldb, 12 + t);
      std::vector<float> c_store = lora_test::random_vec(M * ldc, 13 + t);
      const float alpha = 0.75f, beta = -0.5f;

      GemmArgs args;
      args.trans_a = ta;
      args.trans_b = tb;
      args.M = M;
      args.N = N;
      args.K = K;
      args.alpha = alpha;
      args.beta = beta;
      args.A = reinterpret_cast<const bf16*>(a_store.data());
      args.lda = lda;
      args.B = reinterpret_cast<const bf16*>(b_store.data());
      args.ldb = ldb;
      args.C = c_store.data();
      args.ldc = ldc;
      const lora::cuda::LtCall call = lora::cuda::column_major_call(args);

      const std::string what = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                               (ta ? " A^T" : "") + (tb ? " B^T" : "");
      // Shapes as cuBLASLt checks them.
      CHECK_EQ(call.trans_a ? call.a_cols : call.a_rows, call.m);
      CHECK_EQ(call.trans_a ? call.a_rows : call.a_cols, call.k);
      CHECK_EQ(call.trans_b ? call.b_cols : call.b_rows, call.k);
      CHECK_EQ(call.trans_b ? call.b_rows : call.b_cols, call.n);
      CHECK_EQ(call.c_rows, call.m);
      CHECK_EQ(call.c_cols, call.n);
      CHECK(call.lda >= call.a_rows && call.ldb >= call.b_rows && call.ldc >= call.c_rows);

      const auto* A = static_cast<const float*>(call.A);
      const auto* B = static_cast<const float*>(call.B);
      auto* C = static_cast<float*>(call.C);
      auto op_a = [&](int64_t i, int64_t l) { return call.trans_a ? A[l + i * call.lda] : A[i + l * call.lda]; };
      auto op_b = [&](int64_t l, int64_t j) { return call.trans_b ? B[j + l * call.ldb] : B[l + j * call.ldb]; };
      std::vector<double> d(static_cast<size_t>(call.m * call.n));
      for (int64_t j = 0; j < call.n; ++j)
        for (int64_t i = 0; i < call.m; ++i) {
          double sum = 0;
          for (int64_t l = 0; l < call.k; ++l) sum += double(op_a(i, l)) * op_b(l, j);
          d[i + j * call.m] = alpha * sum + beta * double(C[i + j * call.ldc]);
        }

      // Row-major reference straight from gemm.hpp's definition.
      double worst = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double sum = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double av = ta ? a_store[k * lda + m] : a_store[m * lda + k];
            const double bv = tb ? b_store[n * ldb + k] : b_store[k * ldb + n];
            sum += av * bv;
          }
          const double ref = alpha * sum + beta * double(c_store[m * ldc + n]);
          // cuBLASLt's D(i, j) with i = n, j = m is our C[m][n].
          worst = std::max(worst, std::fabs(d[n + m * call.m] - ref));
        }
      if (!(worst < 1e-12)) lora_test::record_failure(__FILE__, __LINE__, what + ": differs by " + std::to_string(worst));
    }
  }
}
