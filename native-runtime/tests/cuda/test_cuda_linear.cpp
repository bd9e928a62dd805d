// lora_linear on the device against its CPU twin ops/linear, on inputs rounded to bf16 so
// both sides multiply the same numbers: forward (bf16 output, and fp32 output accumulated
// into an existing residual), backward (dx, dA, dB accumulated into non-zero buffers), with
// and without bias and dropout (the same mask on both sides), odd sizes and T = 1. The
// argument checks run on every machine.
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/lora_linear.hpp"
#include "cuda_test_util.hpp"
#include "gradcheck.hpp"
#include "ops/linear.hpp"
#include "test.hpp"

using namespace lora;
using lora_test::random_vec;
using lora_test::round_to_bf16;
using lora_test::to_device;
using lora_test::to_device_bf16;
using lora_test::to_host;
using lora_test::to_host_f32;
using lora_test::worst_ratio;

namespace {

struct LinearCase {
  int64_t T, in, out, r;   // r = 0: no adapter
  bool bias;
  float dropout;
  bool f32_out;            // accumulate into an fp32 residual instead of writing bf16
};

std::string describe(const LinearCase& c) {
  return "T=" + std::to_string(c.T) + " in=" + std::to_string(c.in) + " out=" + std::to_string(c.out) +
         " r=" + std::to_string(c.r) + (c.bias ? " bias" : "") + " p=" + std::to_string(c.dropout) +
         (c.f32_out ? " f32-out" : " bf16-out");
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

void check_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                 double atol_frac, double rtol) {
  CHECK_EQ(got.size(), want.size());
  const double atol = atol_frac * std::max(1e-3, max_abs(want));
  const double w = worst_ratio(got, want, atol, rtol);
  if (!(w <= 1.0))
    lora_test::record_failure(__FILE__, __LINE__,
                              what + ": worst |gpu - cpu| / (atol + rtol |cpu|) = " + std::to_string(w));
}

// Tolerances. Both sides see identical bf16 inputs and accumulate in fp32, so the
// differences come from the GPU's bf16 intermediates, each rounded to 2^-9 relative:
//   y (bf16 out): the base product rounded to bf16, u rounded to bf16, and y rounded again
//     after the LoRA term is added: <= 3 roundings of values of y's magnitude, ~0.6%; the
//     absolute part (1% of max |y|) covers outputs that are small because terms cancel.
//   y (fp32 out): only u is rounded: the LoRA term (scale * u B^T) is off by 2^-9 relative.
//   dB = scale dy^T u: u rounded (GPU) vs fp32 (CPU): 2^-9 relative per term.
//   dA = du^T h and the LoRA part of dx: du = scale dy B rounded to bf16: 2^-9 per term.
//   dx's base part dy W: exact products, fp32 sums in another order: ~1e-6.
// A misplaced `scale` (a factor alpha / r = 2 here) or a missing term is off by >= 30%.
void run_case(const LinearCase& c, uint32_t seed) {
  const std::string name = describe(c);
  const int64_t T = c.T, in = c.in, out = c.out, r = c.r;
  auto x = random_vec(T * in, seed + 1);
  auto W = random_vec(out * in, seed + 2, -0.3f, 0.3f);
  auto bias = random_vec(out, seed + 3);
  auto A = random_vec(std::max<int64_t>(1, r * in), seed + 4, -0.3f, 0.3f);
  auto B = random_vec(std::max<int64_t>(1, out * r), seed + 5, -0.3f, 0.3f);
  auto dy = random_vec(T * out, seed + 6);
  auto resid = random_vec(T * out, seed + 7);
  auto dx0 = random_vec(T * in, seed + 8);
  auto dA0 = random_vec(A.size(), seed + 9);
  auto dB0 = random_vec(B.size(), seed + 10);
  for (auto* v : {&x, &W, &A, &B, &dy}) round_to_bf16(*v);
  const float scale = 2.0f;
  const uint64_t key = 0xC0FFEEull + seed;

  // CPU reference.
  LoraParams p;
  if (r > 0) {
    p.A = A.data();
    p.B = B.data();
    p.r = r;
    p.scale = scale;
    p.dropout = c.dropout;
  }
  std::vector<uint8_t> keep;
  if (r > 0 && c.dropout > 0) {
    keep.resize(T * in);
    dropout_mask(keep.data(), T * in, c.dropout, key);
  }
  std::vector<float> y_cpu(T * out), h_cpu(T * in), u_cpu(std::max<int64_t>(1, T * r));
  linear_forward(y_cpu.data(), x.data(), W.data(), c.bias ? bias.data() : nullptr, p, keep.empty() ? nullptr : keep.data(),
                 h_cpu.data(), u_cpu.data(), T, in, out);
  if (c.f32_out)
    for (int64_t i = 0; i < T * out; ++i) y_cpu[i] += resid[i];
  std::vector<float> dx_cpu = dx0, dA_cpu = dA0, dB_cpu = dB0;
  linear_backward(dx_cpu.data(), r > 0 ? dA_cpu.data() : nullptr, r > 0 ? dB_cpu.data() : nullptr, dy.data(),
                  W.data(), p, keep.empty() ? nullptr : keep.data(), keep.empty() ? x.data() : h_cpu.data(),
                  u_cpu.data(), T, in, out);

  // GPU.
  auto d_x = to_device_bf16(x), d_W = to_device_bf16(W), d_A = to_device_bf16(A), d_B = to_device_bf16(B),
       d_dy = to_device_bf16(dy);
  auto d_bias = to_device(bias);
  auto d_dA = to_device(dA0), d_dB = to_device(dB0), d_dx = to_device(dx0);
  cuda::DeviceArray<cuda::bf16> d_ybf(T * out), d_h(T * in), d_u(std::max<int64_t>(1, T * r)),
      d_du(std::max<int64_t>(1, T * r));
  cuda::DeviceArray<float> d_dh(T * in);
  auto d_yf = to_device(resid);

  cuda::DeviceLora dl;
  if (r > 0) {
    dl.A = d_A.data();
    dl.B = d_B.data();
    dl.dA = d_dA.data();
    dl.dB = d_dB.data();
    dl.r = r;
    dl.scale = scale;
    dl.dropout = c.dropout;
    dl.dropout_key = key;
  }
  cudaStream_t s = cuda::current().stream;
  cuda::LinearForward f;
  f.x = d_x.data();
  f.W = d_W.data();
  f.bias = c.bias ? d_bias.data() : nullptr;
  f.T = T;
  f.in = in;
  f.out = out;
  if (c.f32_out)
    f.y_f32 = d_yf.data();
  else
    f.y_bf16 = d_ybf.data();
  f.h = d_h.data();
  f.u = d_u.data();
  cuda::lora_linear_forward(f, dl, s);

  cuda::LinearBackward b;
  b.dy = d_dy.data();
  b.W = d_W.data();
  b.x = d_x.data();
  b.h = d_h.data();
  b.u = d_u.data();
  b.T = T;
  b.in = in;
  b.out = out;
  b.dx = d_dx.data();
  b.du = d_du.data();
  b.dh = d_dh.data();
  cuda::lora_linear_backward(b, dl, s);
  cuda::synchronize();

  const std::vector<float> y_gpu = c.f32_out ? to_host(d_yf) : to_host_f32(d_ybf);
  if (c.f32_out)
    check_close(name + " y", y_gpu, y_cpu, 2e-3, 4e-3);
  else
    check_close(name + " y", y_gpu, y_cpu, 1e-2, 1e-2);
  if (r > 0 && c.dropout > 0) {
    // h = drop(x) is exact in bf16 only up to the 1/(1-p) scaling's rounding.
    std::vector<float> h_ref = h_cpu;
    round_to_bf16(h_ref);
    check_close(name + " h", to_host_f32(d_h), h_ref, 1e-6, 1e-6);
  }
  check_close(name + " dx", to_host(d_dx), dx_cpu, 3e-3, 5e-3);
  if (r > 0) {
    check_close(name + " dA", to_host(d_dA), dA_cpu, 3e-3, 5e-3);
    check_close(name + " dB", to_host(d_dB), dB_cpu, 3e-3, 5e-3);
  }
}

}  // namespace

TEST(cuda_lora_linear_matches_cpu) {
  LORA_REQUIRE_GPU();
  const LinearCase cases[] = {
      {37, 70, 45, 4, true, 0.f, false},     // odd sizes, bias, bf16 output
      {37, 70, 45, 4, false, 0.25f, true},   // dropout, fp32 residual output
      {1, 33, 17, 3, true, 0.1f, false},     // one token
      {1, 64, 64, 8, false, 0.f, true},
      {9, 24, 40, 0, true, 0.f, false},      // no adapter
      {9, 24, 40, 0, false, 0.f, true},
      {130, 256, 192, 16, true, 0.05f, false},  // several tiles in every dimension
      {257, 96, 136, 7, false, 0.5f, true},
  };
  uint32_t seed = 100;
  for (const auto& c : cases) run_case(c, seed += 20);
}

// An empty micro-batch (T = 0) returns before any launch, so fake pointers are never read.
TEST(cuda_lora_linear_zero_tokens_is_a_no_op) {
  std::vector<uint16_t> storage(16);
  auto* fake = reinterpret_cast<cuda::bf16*>(storage.data());
  cuda::LinearForward f;
  f.x = fake;
  f.W = fake;
  f.T = 0;
  f.in = 3;
  f.out = 4;
  f.y_bf16 = fake;
  cuda::DeviceLora d;
  d.A = fake;
  d.B = fake;
  d.r = 2;
  f.u = fake;
  cuda::lora_linear_forward(f, d, nullptr);
  cuda::LinearBackward b;
  b.dy = fake;
  b.W = fake;
  b.x = fake;
  b.u = fake;
  b.du = fake;
  b.T = 0;
  b.in = 3;
  b.out = 4;
  cuda::lora_linear_backward(b, d, nullptr);
  for (uint16_t v : storage) CHECK_EQ(v, 0);
}

// The argument checks fire before any CUDA call, so they are exercised without a GPU.
TEST(cuda_lora_linear_rejects_bad_arguments) {
  std::vector<uint16_t> storage(64);
  auto* fake = reinterpret_cast<cuda::bf16*>(storage.data());
  std::vector<float> fstore(64);
  auto expect_invalid = [](const char* what, const std::function<void()>& fn, const std::string& needle) {
    try {
      fn();
      lora_test::record_failure(__FILE__, __LINE__, std::string(what) + ": no exception");
    } catch (const std::invalid_argument& e) {
      if (std::string(e.what()).find(needle) == std::string::npos)
        lora_test::record_failure(__FILE__, __LINE__, std::string(what) + ": message '" + e.what() +
                                                          "' does not name '" + needle + "'");
    } catch (const std::exception& e) {
      lora_test::record_failure(__FILE__, __LINE__, std::string(what) + ": wrong exception: " + e.what());
    }
  };
  cuda::LinearForward f;
  f.x = fake;
  f.W = fake;
  f.T = 2;
  f.in = 4;
  f.out = 4;
  f.y_bf16 = fake;
  f.y_f32 = fstore.data();
  expect_invalid("two outputs", [&] { cuda::lora_linear_forward(f, cuda::DeviceLora{}, nullptr); }, "y_bf16");
  f.y_f32 = nullptr;
  f.y_bf16 = nullptr;
  expect_invalid("no output", [&] { cuda::lora_linear_forward(f, cuda::DeviceLora{}, nullptr); }, "y_bf16");
  f.y_bf16 = fake;
  cuda::DeviceLora d;
  d.A = fake;
  d.B = fake;
  d.r = 2;
  d.scale = 1;
  expect_invalid("no u", [&] { cuda::lora_linear_forward(f, d, nullptr); }, "u (T, r)");
  f.u = fake;
  d.dropout = 0.2f;
  expect_invalid("no h with dropout", [&] { cuda::lora_linear_forward(f, d, nullptr); }, "h (T, in)");
  d.dropout = 1.0f;
  f.h = fake;
  expect_invalid("dropout 1", [&] { cuda::lora_linear_forward(f, d, nullptr); }, "dropout");
  d.dropout = 0.f;
  d.B = nullptr;
  expect_invalid("A without B", [&] { cuda::lora_linear_forward(f, d, nullptr); }, "lora.B");
  d.B = fake;
  d.r = 0;
  expect_invalid("r = 0", [&] { cuda::lora_linear_forward(f, d, nullptr); }, "lora.r");
  d.r = 2;

  cuda::LinearBackward b;
  b.dy = fake;
  b.W = fake;
  b.x = fake;
  b.T = 2;
  b.in = 4;
  b.out = 4;
  b.dx = fstore.data();
  b.W = nullptr;
  expect_invalid("backward dx without W", [&] { cuda::lora_linear_backward(b, d, nullptr); }, "W is required");
  b.W = fake;
  expect_invalid("backward without u", [&] { cuda::lora_linear_backward(b, d, nullptr); }, "u (T, r)");
  b.u = fake;
  expect_invalid("backward without du", [&] { cuda::lora_linear_backward(b, d, nullptr); }, "du scratch");
  b.du = fake;
  d.dropout = 0.3f;
  expect_invalid("backward dropout without h", [&] { cuda::lora_linear_backward(b, d, nullptr); }, "h (saved");
  b.h = fake;
  expect_invalid("backward dropout without dh", [&] { cuda::lora_linear_backward(b, d, nullptr); }, "dh scratch");
  b.in = 0;
  expect_invalid("in = 0", [&] { cuda::lora_linear_backward(b, d, nullptr); }, "in, out positive");
}
