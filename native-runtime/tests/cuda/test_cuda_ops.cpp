// The CUDA elementwise, normalisation, RoPE, activation, optimizer and dequantization ops
// against their CPU twins (src/ops, src/quant). Inputs are rounded to bf16 first where the
// GPU takes bf16, so both sides see the same values. Tolerances, from the two error sources:
//   - a bf16 output is the GPU's fp32 value v' rounded to nearest even: |bf16(v') - v'| <=
//     2^-8 |v'| (half an ulp, an ulp being at most 2^-7 of the value), so against the CPU's
//     fp32 v it is within 2^-8 |v| + (1 + 2^-8) |v' - v|: rtol 2^-8 plus the fp32 gap;
//   - the fp32 gap: the CPU sums statistics in double and the GPU in fp32 per lane then a
//     shuffle tree (relative error ~ (C/32 + 5) 2^-24 of the sum of magnitudes, < 1e-5 for
//     the row sizes here), and the libraries' exp/tanh/sincos differ by a few ulp.
// Dequantization and the pure data movements are compared bit for bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/rng.hpp"
#include "cuda/activations.hpp"
#include "cuda/adamw.hpp"
#include "cuda/dequant.hpp"
#include "cuda/elementwise.hpp"
#include "cuda/norms.hpp"
#include "cuda/rope.hpp"
#include "cuda/cuda_test_util.hpp"
#include "formats/model_config.hpp"
#include "formats/safetensors.hpp"
#include "gradcheck.hpp"
#include "ops_check.hpp"
#include "ops/adamw.hpp"
#include "ops/gelu.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"
#include "quant/quant.hpp"

using namespace lora_test;
namespace cu = lora::cuda;
using cu::bf16;
using cu::DeviceArray;

namespace {

cudaStream_t stream() { return cu::current().stream; }

// Reads n bf16 values at p (any device pointer, also one offset into an array).
std::vector<float> download_bf16(const bf16* p, size_t n) {
  std::vector<uint16_t> bits(n);
  if (n) cu::copy_to_host(bits.data(), p, n * 2);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = bf16_bits_to_f32(bits[i]);
  return out;
}
std::vector<uint16_t> download_bits(const bf16* p, size_t n) {
  std::vector<uint16_t> bits(n);
  if (n) cu::copy_to_host(bits.data(), p, n * 2);
  return bits;
}
std::vector<float> download_f32(const float* p, size_t n) {
  std::vector<float> out(n);
  if (n) cu::copy_to_host(out.data(), p, n * 4);
  return out;
}
void upload_bf16(bf16* p, const std::vector<float>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = f32_to_bf16_bits(v[i]);
  if (!v.empty()) cu::copy_to_device(p, bits.data(), bits.size() * 2);
}
void upload_f32(float* p, const std::vector<float>& v) {
  if (!v.empty()) cu::copy_to_device(p, v.data(), v.size() * 4);
}

template <class Fn>
bool throws_invalid_argument(Fn fn) {
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return true;
  } catch (...) {
    return false;
  }
  return false;
}

std::vector<float> cpu_dequant(const lora::QuantizedMatrix& m) {
  std::vector<float> out(static_cast<size_t>(m.rows * m.cols));
  lora::dequantize_rows(m, 0, m.rows, out.data());
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Host-side argument checks: these run (and must pass) on machines without a GPU, since
// every check happens before the first CUDA call.

TEST(cuda_ops_reject_bad_arguments_before_touching_the_gpu) {
  bf16* nb = nullptr;
  float* nf = nullptr;
  CHECK(throws_invalid_argument([&] { cu::rmsnorm_forward(nb, nf, nf, nf, 4, 0, 1e-5f, nullptr); }));
  CHECK(throws_invalid_argument([&] { cu::rmsnorm_forward(nb, nf, nf, nf, -1, 8, 1e-5f, nullptr); }));
  CHECK(throws_invalid_argument([&] { cu::rmsnorm_forward(nb, nf, nf, nf, 2, 8, 1e-5f, nullptr); }));  // null y
  CHECK(throws_invalid_argument([&] { cu::layernorm_backward(nf, nf, nf, nf, nf, nf, 3, 0, nullptr); }));
  CHECK(throws_invalid_argument([&] { cu::rope_forward(nb, nullptr, nf, 2, 2, 7, nullptr); }));   // odd D
  CHECK(throws_invalid_argument([&] { cu::rope_backward(nb, nullptr, nf, 2, 2, 0, nullptr); }));  // D = 0
  CHECK(throws_invalid_argument([&] { cu::dropout_forward(nb, nb, 8, 1.0f, 1, nullptr); }));      // p = 1
  CHECK(throws_invalid_argument([&] { cu::dropout_forward(nb, nb, 8, -0.1f, 1, nullptr); }));
  CHECK(throws_invalid_argument([&] { cu::dropout_backward_add(nf, nf, 8, std::nanf(""), 1, nullptr); }));
  CHECK(throws_invalid_argument([&] { cu::swiglu_forward(nb, nb, nb, -1, nullptr); }));
  CHECK(throws_invalid_argument([&] { cu::gelu_backward(nb, nb, nb, 5, nullptr); }));  // null pointers
  CHECK(throws_invalid_argument(
      [&] { cu::adamw_update(nf, nf, nf, nf, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.f, /*step=*/0, nullptr); }));
  CHECK(throws_invalid_argument([&] { (void)cu::sum_squares(nf, -2, nullptr); }));
  CHECK(throws_invalid_argument([&] { cu::gather_rows_bf16(nb, nb, nullptr, -1, 4, nullptr); }));
  CHECK(throws_invalid_argument([&] { cu::embedding_forward(nf, nullptr, nb, nullptr, nullptr, 2, 8, nullptr); }));
  // Empty inputs are no-ops, not errors, and launch nothing.
  cu::dequantize_to_bf16(nullptr, cu::DeviceQuantMatrix{}, nullptr);
  cu::rmsnorm_forward(nb, nf, nf, nf, 0, 8, 1e-5f, nullptr);
  cu::swiglu_forward(nb, nb, nb, 0, nullptr);
  cu::scale_inplace(nf, 0, 2.0f, nullptr);
  CHECK_EQ(cu::sum_squares(nf, 0, nullptr), 0.0);
}

TEST(cuda_dequant_upload_rejects_inconsistent_matrices) {
  const std::vector<float> w = checkpoint_like(10 * 16, 3);
  lora::QuantizedMatrix m = lora::quantize_matrix(w.data(), 10, 16, lora::QuantType::NF4, 64, false);
  lora::QuantizedMatrix short_codes = m;
  short_codes.raw.pop_back();
  CHECK(throws_invalid_argument([&] { cu::upload_quantized(short_codes); }));
  lora::QuantizedMatrix no_scales = m;
  no_scales.absmax.clear();
  CHECK(throws_invalid_argument([&] { cu::upload_quantized(no_scales); }));
  lora::QuantizedMatrix dq = lora::quantize_matrix(w.data(), 10, 16, lora::QuantType::Int8, 64, true);
  dq.absmax_scale.clear();
  CHECK(throws_invalid_argument([&] { cu::upload_quantized(dq); }));
  lora::QuantizedMatrix none = lora::quantize_matrix(w.data(), 10, 16, lora::QuantType::None, 0, false,
                                                     lora::DType::F16);
  none.raw.resize(none.raw.size() - 2);
  CHECK(throws_invalid_argument([&] { cu::upload_quantized(none); }));
  lora::QuantizedMatrix bad_block = m;
  bad_block.block_size = 0;
  CHECK(throws_invalid_argument([&] { cu::upload_quantized(bad_block); }));
}

// ---------------------------------------------------------------------------------------
// Dequantization: bit for bit the bf16 rounding of dequantize_rows.

TEST(cuda_dequant_matches_cpu_bit_for_bit) {
  LORA_REQUIRE_GPU();
  struct Shape {
    int64_t rows, cols;
    int block;
  };
  // 1000 x 37: the last quantization block is partial (37000 = 578 x 64 + 8); 7 x 9: an odd
  // count (the last byte holds a lone high nibble, and 63 % 8 = 7 elements go to the tail
  // kernel); blocks 48 and 40 are multiples of 8 that are no powers of two; block 36 is not
  // a multiple of 8 (the per-element kernel does everything); 600 x 64 with block 64 gives
  // 600 blocks, three double-quant groups of 256; 1000 x 37 also leaves a last warp with
  // only some of its 64 chunks.
  const Shape shapes[] = {{1000, 37, 64}, {1000, 37, 128}, {7, 9, 64},   {96, 50, 48},
                          {33, 21, 40},   {33, 21, 36},    {600, 64, 64}};
  uint32_t seed = 100;
  for (const Shape& s : shapes) {
    const std::vector<float> w = checkpoint_like(s.rows * s.cols, seed++);
    for (lora::QuantType type : {lora::QuantType::NF4, lora::QuantType::FP4, lora::QuantType::Int8}) {
      for (bool dq : {false, true}) {
        const lora::QuantizedMatrix m = lora::quantize_matrix(w.data(), s.rows, s.cols, type, s.block, dq);
        const std::vector<float> want = cpu_dequant(m);
        const cu::DeviceQuantMatrix d = cu::upload_quantized(m);
        CHECK_EQ(d.bytes(), m.bytes() - (dq ? sizeof(float) : 0));  // the host also counts absmax_mean
        const size_t n = want.size();
        std::ostringstream name;
        name << lora::quant_name(type) << (dq ? "+dq" : "") << " " << s.rows << "x" << s.cols << " block " << s.block;
        DeviceArray<bf16> out(n + 1);
        cu::dequantize_to_bf16(out.data(), d, stream());
        check_bits(name.str(), download_bits(out.data(), n), want);
        // An output one element off 16-byte alignment takes the per-element kernel.
        cu::dequantize_to_bf16(out.data() + 1, d, stream());
        check_bits(name.str() + " (unaligned out)", download_bits(out.data() + 1, n), want);
        const bf16* view = cu::weight_view(d, out.data(), stream());
        CHECK(view == out.data());
        check_bits(name.str() + " (weight_view)", download_bits(view, n), want);
      }
    }
  }
}

TEST(cuda_dequant_unquantized_from_f32_f16_bf16) {
  LORA_REQUIRE_GPU();
  const int64_t rows = 37, cols = 29;  // 1073 values: odd, and not a multiple of 16
  std::vector<float> w = random_vec(rows * cols, 7, -3.f, 3.f);
  w[0] = 1.0f + 1.0f / 256.0f;   // exactly half-way between two bf16 values: ties to even (1.0)
  w[1] = 1.0f + 3.0f / 256.0f;   // half-way, rounds up to the even neighbour
  w[2] = 70000.0f;               // beyond fp16's range when kept as F16: inf stays inf
  for (lora::DType dt : {lora::DType::F32, lora::DType::F16, lora::DType::BF16}) {
    const lora::QuantizedMatrix m = lora::quantize_matrix(w.data(), rows, cols, lora::QuantType::None, 0, false, dt);
    const std::vector<float> want = cpu_dequant(m);
    const cu::DeviceQuantMatrix d = cu::upload_quantized(m);
    CHECK_EQ(d.bytes(), uint64_t(rows * cols * 2));
    CHECK(d.codes.empty());
    // A frozen unquantized weight is used in place: weight_view hands out m.values.
    CHECK(cu::weight_view(d, nullptr, stream()) == d.values.data());
    const std::string name = std::string("none from ") + lora::dtype_name(dt);
    check_bits(name, download_bits(d.values.data(), want.size()), want);
    DeviceArray<bf16> out(want.size());
    cu::dequantize_to_bf16(out.data(), d, stream());
    check_bits(name + " (copy)", download_bits(out.data(), want.size()), want);
  }
  CHECK_EQ(f32_to_bf16_bits(w[0]), uint16_t(0x3F80));
  CHECK_EQ(f32_to_bf16_bits(w[1]), uint16_t(0x3F82));
}

// The size helper E's benchmark uses (a Llama-3-8B MLP matrix): dequantizing allocates
// nothing on the device, and the result matches the CPU on rows spread over the matrix.
TEST(cuda_dequant_large_matrix_allocates_nothing) {
  LORA_REQUIRE_GPU();
  const int64_t rows = 4096, cols = 14336, n = rows * cols;
  // Random codes and scales stand in for a quantized checkpoint (quantizing 58.7M values on
  // the CPU would dominate the test's time, and the kernel only sees the stored bytes).
  lora::QuantizedMatrix m;
  m.type = lora::QuantType::NF4;
  m.rows = rows;
  m.cols = cols;
  m.block_size = 64;
  m.double_quant = true;
  std::mt19937 rng(11);
  m.raw.resize(static_cast<size_t>(n / 2));
  for (auto& b : m.raw) b = static_cast<uint8_t>(rng());
  const int64_t blocks = n / 64;
  m.absmax_q.resize(static_cast<size_t>(blocks));
  for (auto& q : m.absmax_q) q = static_cast<uint8_t>(rng());
  m.absmax_scale.assign(static_cast<size_t>((blocks + 255) / 256), 0.0f);
  for (auto& s : m.absmax_scale) s = 1e-4f * static_cast<float>(1 + rng() % 100);
  m.absmax_mean = 0.05f;
  const cu::DeviceQuantMatrix d = cu::upload_quantized(m);
  DeviceArray<bf16> out(static_cast<size_t>(n));
  cu::synchronize();
  const cu::AllocatorStats before = cu::allocator_stats();
  cu::dequantize_to_bf16(out.data(), d, stream());
  cu::synchronize();
  const cu::AllocatorStats after = cu::allocator_stats();
  CHECK_EQ(after.used, before.used);
  CHECK_EQ(after.allocations, before.allocations);
  for (int64_t r0 : {int64_t(0), int64_t(1371), rows - 3}) {
    std::vector<float> want(static_cast<size_t>(3 * cols));
    lora::dequantize_rows(m, r0, r0 + 3, want.data());
    check_bits("nf4+dq 4096x14336 rows " + std::to_string(r0), download_bits(out.data() + r0 * cols, want.size()),
               want);
  }
}

// ---------------------------------------------------------------------------------------
// Normalisations.

namespace {
struct RowShape {
  int64_t T, C;
};
// T = 1; C = 72 (float4 path, 18 of 32 lanes busy); C = 75 (scalar path); a Llama width
// over 33 rows (the last block of 4 rows partly empty); 4097 channels (scalar, many laps).
const RowShape kRowShapes[] = {{1, 72}, {6, 75}, {33, 4096}, {3, 4097}, {9, 8}};

}  // namespace

TEST(cuda_rmsnorm_matches_cpu) {
  LORA_REQUIRE_GPU();
  uint32_t seed = 200;
  for (const RowShape& s : kRowShapes) {
    const int64_t T = s.T, C = s.C, n = T * C;
    const std::vector<float> x = random_vec(n, seed++, -2.f, 2.f);
    const std::vector<float> w = random_vec(C, seed++, 0.5f, 1.5f);
    const std::vector<float> dy = random_vec(n, seed++);
    const std::vector<float> dx0 = random_vec(n, seed++);
    const float eps = 1e-5f;
    std::vector<float> y_cpu(n), rstd_cpu(T), dx_cpu = dx0;
    lora::rmsnorm_forward(y_cpu.data(), rstd_cpu.data(), x.data(), w.data(), T, C, eps);
    lora::rmsnorm_backward(dx_cpu.data(), dy.data(), x.data(), w.data(), rstd_cpu.data(), T, C);

    auto dx = to_device(x), dw = to_device(w), ddy = to_device(dy), ddx = to_device(dx0);
    DeviceArray<bf16> y(n);
    DeviceArray<float> rstd(T);
    cu::rmsnorm_forward(y.data(), rstd.data(), dx.data(), dw.data(), T, C, eps, stream());
    cu::rmsnorm_backward(ddx.data(), ddy.data(), dx.data(), dw.data(), rstd.data(), T, C, stream());
    const std::string name = "rmsnorm T=" + std::to_string(T) + " C=" + std::to_string(C);
    check_close(name + " rstd", to_host(rstd), rstd_cpu, 0, 1e-5);
    check_close(name + " y", to_host_f32(y), y_cpu, 1e-7, kBf16Rel + 2e-5);
    // dx accumulates: compare the total, with an absolute slack of 1e-5 of the largest
    // contribution (fp32 reduction of the row's dot product vs the CPU's double).
    const double scale = max_abs_diff(dx_cpu, dx0);
    check_close(name + " dx", to_host(ddx), dx_cpu, 1e-5 * scale, 1e-5);
  }
}

TEST(cuda_layernorm_matches_cpu) {
  LORA_REQUIRE_GPU();
  uint32_t seed = 300;
  for (const RowShape& s : kRowShapes) {
    const int64_t T = s.T, C = s.C, n = T * C;
    // A mean far from zero next to a unit spread: the case the two-pass variance is for.
    const std::vector<float> x = random_vec(n, seed++, 2.f, 4.f);
    const std::vector<float> w = random_vec(C, seed++, 0.5f, 1.5f);
    const std::vector<float> b = random_vec(C, seed++, -0.5f, 0.5f);
    const std::vector<float> dy = random_vec(n, seed++);
    const std::vector<float> dx0 = random_vec(n, seed++);
    const float eps = 1e-5f;
    std::vector<float> y_cpu(n), mean_cpu(T), rstd_cpu(T), dx_cpu = dx0;
    lora::layernorm_forward(y_cpu.data(), mean_cpu.data(), rstd_cpu.data(), x.data(), w.data(), b.data(), T, C, eps);
    lora::layernorm_backward(dx_cpu.data(), dy.data(), x.data(), w.data(), mean_cpu.data(), rstd_cpu.data(), T, C);

    auto dx = to_device(x), dw = to_device(w), db = to_device(b), ddy = to_device(dy), ddx = to_device(dx0);
    DeviceArray<bf16> y(n);
    DeviceArray<float> mean(T), rstd(T);
    cu::layernorm_forward(y.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), T, C, eps, stream());
    cu::layernorm_backward(ddx.data(), ddy.data(), dx.data(), dw.data(), mean.data(), rstd.data(), T, C, stream());
    const std::string name = "layernorm T=" + std::to_string(T) + " C=" + std::to_string(C);
    // fp32 lane sums of ~C/32 values near 3 against the CPU's double: ~1e-7 relative.
    check_close(name + " mean", to_host(mean), mean_cpu, 0, 2e-6);
    // The variance is summed from (x - mean) with |x - mean| <= 1 while |x| ~ 3: a 1-ulp
    // different fp32 mean (2.4e-7) shifts every deviation alike, a 1e-6 relative effect.
    check_close(name + " rstd", to_host(rstd), rstd_cpu, 0, 2e-5);
    // y = (x - mean) rstd w + b: the fp32 gap is ~ 1e-5 of |x - mean| rstd w ~ 2, hence atol.
    check_close(name + " y", to_host_f32(y), y_cpu, 4e-5, kBf16Rel + 2e-5);
    const double scale = max_abs_diff(dx_cpu, dx0);
    check_close(name + " dx", to_host(ddx), dx_cpu, 2e-5 * scale, 1e-5);
  }
}

// ---------------------------------------------------------------------------------------
// RoPE.

TEST(cuda_rope_matches_cpu) {
  LORA_REQUIRE_GPU();
  struct Case {
    int64_t T, H, D;
    const char* scaling;
  };
  // D = 128 (pairs two at a time), D = 64 with llama3 scaling, D = 6 (half = 3: one pair
  // per thread), D = 2; H = 32 query heads and H = 8 KV heads of the same GQA layer; T = 1.
  const Case cases[] = {{5, 32, 128, ""}, {5, 8, 128, ""}, {1, 3, 64, "llama3"}, {7, 5, 6, ""}, {4, 1, 2, "linear"}};
  uint32_t seed = 400;
  for (const Case& c : cases) {
    const auto [inv_freq, pos] = rope_inputs(c.T, c.D, c.scaling);
    const int64_t n = c.T * c.H * c.D;
    for (bool backward : {false, true}) {
      const std::vector<float> x = rand_bf16(n, seed++);
      std::vector<float> want = x;
      if (backward)
        lora::rope_backward(want.data(), pos.data(), inv_freq.data(), c.T, c.H, c.D);
      else
        lora::rope_forward(want.data(), pos.data(), inv_freq.data(), c.T, c.H, c.D);
      auto d = to_device_bf16(x);
      auto dpos = to_device(pos);
      auto dfreq = to_device(inv_freq);
      if (backward)
        cu::rope_backward(d.data(), dpos.data(), dfreq.data(), c.T, c.H, c.D, stream());
      else
        cu::rope_forward(d.data(), dpos.data(), dfreq.data(), c.T, c.H, c.D, stream());
      std::ostringstream name;
      name << "rope " << (backward ? "backward" : "forward") << " T=" << c.T << " H=" << c.H << " D=" << c.D;
      // sincosf vs the CPU's double sin/cos: a few fp32 ulps of values <= sqrt(2) in size.
      check_close(name.str(), to_host_f32(d), want, 2e-6, kBf16Rel);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Activations.

TEST(cuda_swiglu_and_gelu_match_cpu) {
  LORA_REQUIRE_GPU();
  uint32_t seed = 500;
  // 4097 = 512 vector chunks + 1 tail element; 7 has no full chunk; offset 1 makes every
  // pointer misaligned, so the per-element kernel runs.
  for (int64_t n : {int64_t(4097), int64_t(7), int64_t(8)}) {
    for (int offset : {0, 1}) {
      const std::vector<float> g = rand_bf16(n, seed++, -6.f, 6.f);
      const std::vector<float> u = rand_bf16(n, seed++, -2.f, 2.f);
      const std::vector<float> dh = rand_bf16(n, seed++);
      const std::string tag = " n=" + std::to_string(n) + (offset ? " unaligned" : "");
      DeviceArray<bf16> dg_in(n + 1), du_in(n + 1), ddh(n + 1), h(n + 1), dgo(n + 1), duo(n + 1);
      upload_bf16(dg_in.data() + offset, g);
      upload_bf16(du_in.data() + offset, u);
      upload_bf16(ddh.data() + offset, dh);

      std::vector<float> h_cpu(n), dg_cpu(n), du_cpu(n);
      lora::swiglu_forward(h_cpu.data(), g.data(), u.data(), n);
      lora::swiglu_backward(dg_cpu.data(), du_cpu.data(), dh.data(), g.data(), u.data(), n);
      cu::swiglu_forward(h.data() + offset, dg_in.data() + offset, du_in.data() + offset, n, stream());
      cu::swiglu_backward(dgo.data() + offset, duo.data() + offset, ddh.data() + offset, dg_in.data() + offset,
                          du_in.data() + offset, n, stream());
      // exp to ~2 ulp on both sides; silu'(g)'s 1 - s loses a few more bits near s = 1.
      check_close("swiglu forward" + tag, download_bf16(h.data() + offset, n), h_cpu, 1e-6, kBf16Rel + 4e-6);
      check_close("swiglu backward dg" + tag, download_bf16(dgo.data() + offset, n), dg_cpu, 5e-6, kBf16Rel + 1e-5);
      check_close("swiglu backward du" + tag, download_bf16(duo.data() + offset, n), du_cpu, 1e-6, kBf16Rel + 4e-6);

      // GELU in place (h = x, dx = dh), as the GPT-2 MLP calls it.
      const std::vector<float> x = rand_bf16(n, seed++, -5.f, 5.f);
      std::vector<float> gelu_cpu(n), dgelu_cpu(n);
      lora::gelu_forward(gelu_cpu.data(), x.data(), n);
      lora::gelu_backward(dgelu_cpu.data(), dh.data(), x.data(), n);
      DeviceArray<bf16> dx(n + 1), inout(n + 1);
      upload_bf16(dx.data() + offset, x);
      upload_bf16(inout.data() + offset, x);
      cu::gelu_forward(inout.data() + offset, inout.data() + offset, n, stream());
      check_close("gelu forward in place" + tag, download_bf16(inout.data() + offset, n), gelu_cpu, 2e-6,
                  kBf16Rel + 4e-6);
      upload_bf16(inout.data() + offset, dh);
      cu::gelu_backward(inout.data() + offset, inout.data() + offset, dx.data() + offset, n, stream());
      // 1 - t^2 near |t| = 1 keeps only the absolute accuracy of tanh (~1e-7), scaled by
      // 0.5 |x| sqrt(2/pi) (1 + 3 c x^2) <= 9 at |x| = 5.
      check_close("gelu backward in place" + tag, download_bf16(inout.data() + offset, n), dgelu_cpu, 1e-5,
                  kBf16Rel + 1e-5);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Elementwise: casts, adds, biases, embeddings, gathers (exact: each is one rounding or none).

TEST(cuda_elementwise_ops_are_exact) {
  LORA_REQUIRE_GPU();
  uint32_t seed = 600;
  for (int64_t n : {int64_t(4097), int64_t(3)}) {
    for (int offset : {0, 1}) {
      const std::string tag = " n=" + std::to_string(n) + (offset ? " unaligned" : "");
      const std::vector<float> a = random_vec(n, seed++, -100.f, 100.f);
      const std::vector<float> b = rand_bf16(n, seed++, -100.f, 100.f);
      DeviceArray<float> fa(n + 1), fy(n + 1);
      DeviceArray<bf16> hb(n + 1);
      upload_f32(fa.data() + offset, a);
      upload_bf16(hb.data() + offset, b);

      cu::cast_f32_to_bf16(hb.data() + offset, fa.data() + offset, n, stream());
      check_bits("cast_f32_to_bf16" + tag, download_bits(hb.data() + offset, n), a);
      upload_bf16(hb.data() + offset, b);
      cu::cast_bf16_to_f32(fy.data() + offset, hb.data() + offset, n, stream());
      check_close("cast_bf16_to_f32" + tag, download_f32(fy.data() + offset, n), b, 0, 0);

      std::vector<float> sum(n);
      for (int64_t i = 0; i < n; ++i) sum[i] = a[i] + b[i];
      cu::add_f32_bf16(fa.data() + offset, fa.data() + offset, hb.data() + offset, n, stream());  // y = a in place
      check_close("add_f32_bf16 in place" + tag, download_f32(fa.data() + offset, n), sum, 0, 0);
    }
  }

  for (const RowShape& s : {RowShape{3, 72}, RowShape{5, 75}, RowShape{1, 4}}) {
    const int64_t T = s.T, N = s.C, n = T * N;
    const std::string tag = " T=" + std::to_string(T) + " N=" + std::to_string(N);
    const std::vector<float> y = rand_bf16(n, seed++);
    const std::vector<float> yf = random_vec(n, seed++);
    const std::vector<float> bias = random_vec(N, seed++);
    std::vector<float> want_bf(n), want_f(n);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < N; ++j) {
        want_bf[t * N + j] = y[t * N + j] + bias[j];
        want_f[t * N + j] = yf[t * N + j] + bias[j];
      }
    auto dy = to_device_bf16(y);
    auto dyf = to_device(yf);
    auto dbias = to_device(bias);
    cu::add_bias_bf16(dy.data(), dbias.data(), T, N, stream());
    check_bits("add_bias_bf16" + tag, download_bits(dy.data(), n), want_bf);
    cu::add_bias_f32(dyf.data(), dbias.data(), T, N, stream());
    check_close("add_bias_f32" + tag, to_host(dyf), want_f, 0, 0);
  }

  for (int64_t C : {int64_t(72), int64_t(75)}) {
    const int64_t V = 50, P = 40, T = 9;
    const std::string tag = " C=" + std::to_string(C);
    const std::vector<float> table = rand_bf16(V * C, seed++);
    const std::vector<float> pos_table = rand_bf16(P * C, seed++);
    const std::vector<int32_t> ids = {0, 49, 7, 7, 13, 1, 48, 2, 30};
    const std::vector<int32_t> pos = {0, 1, 2, 0, 1, 39, 3, 4, 5};
    std::vector<float> want_tok(T * C), want_gpt2(T * C);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        want_tok[t * C + c] = table[ids[t] * C + c];
        want_gpt2[t * C + c] = table[ids[t] * C + c] + pos_table[pos[t] * C + c];
      }
    auto dtable = to_device_bf16(table), dpos_table = to_device_bf16(pos_table);
    auto dids = to_device(ids), dpos = to_device(pos);
    DeviceArray<float> out(T * C);
    cu::embedding_forward(out.data(), dids.data(), dtable.data(), nullptr, nullptr, T, C, stream());
    check_close("embedding" + tag, to_host(out), want_tok, 0, 0);
    cu::embedding_forward(out.data(), dids.data(), dtable.data(), dpos.data(), dpos_table.data(), T, C, stream());
    check_close("embedding + positions" + tag, to_host(out), want_gpt2, 0, 0);

    // Gather rows of the table (C = 72 is a multiple of 8: 16-byte copies) and scatter-add
    // gradients back into distinct rows.
    const std::vector<int64_t> index = {5, 0, 49, 17, 3};
    const int64_t R = static_cast<int64_t>(index.size());
    auto dindex = to_device(index);
    DeviceArray<bf16> gathered(R * C);
    cu::gather_rows_bf16(gathered.data(), dtable.data(), dindex.data(), R, C, stream());
    std::vector<float> want_rows(R * C);
    for (int64_t i = 0; i < R; ++i)
      for (int64_t c = 0; c < C; ++c) want_rows[i * C + c] = table[index[i] * C + c];
    check_close("gather_rows_bf16" + tag, to_host_f32(gathered), want_rows, 0, 0);

    const std::vector<float> dtab0 = random_vec(V * C, seed++);
    const std::vector<float> d = random_vec(R * C, seed++);
    std::vector<float> want_scatter = dtab0;
    for (int64_t i = 0; i < R; ++i)
      for (int64_t c = 0; c < C; ++c) want_scatter[index[i] * C + c] += d[i * C + c];
    auto ddtab = to_device(dtab0), dd = to_device(d);
    cu::scatter_add_rows_f32(ddtab.data(), dd.data(), dindex.data(), R, C, stream());
    check_close("scatter_add_rows_f32" + tag, to_host(ddtab), want_scatter, 0, 0);
  }
}

// ---------------------------------------------------------------------------------------
// Dropout: the GPU drops exactly the elements ops/linear.cpp's dropout_mask drops.

TEST(cuda_dropout_matches_cpu_mask) {
  LORA_REQUIRE_GPU();
  // (T, in) = (7, 333) flattened as the CPU's linear_fwd does (mask index over T * in), and
  // a key made the way model/forward.cpp makes it (seed, stream, step, micro; layer, module).
  const int64_t T = 7, in = 333, n = T * in;
  const uint64_t key = lora::rng_key(lora::rng_key(42, 0xD0D0ull, 3, 1), 5, 2);
  for (float p : {0.05f, 0.5f, 0.0f}) {
    for (int offset : {0, 1}) {
      const std::string tag = " p=" + std::to_string(p) + (offset ? " unaligned" : "");
      std::vector<uint8_t> keep(static_cast<size_t>(n));
      lora::dropout_mask(keep.data(), n, p, key);
      const float scale = p > 0.f ? 1.0f / (1.0f - p) : 1.0f;

      DeviceArray<bf16> ones(n + 1), h(n + 1);
      upload_bf16(ones.data() + offset, std::vector<float>(static_cast<size_t>(n), 1.0f));
      cu::dropout_forward(h.data() + offset, ones.data() + offset, n, p, key, stream());
      const std::vector<float> got = download_bf16(h.data() + offset, n);
      int64_t pattern_mismatch = 0, value_mismatch = 0, kept = 0;
      const float kept_value = bf16_bits_to_f32(f32_to_bf16_bits(scale));
      for (int64_t i = 0; i < n; ++i) {
        kept += keep[i];
        if ((got[i] != 0.0f) != (keep[i] != 0)) ++pattern_mismatch;
        if (keep[i] && got[i] != kept_value) ++value_mismatch;
      }
      CHECK_EQ(pattern_mismatch, int64_t(0));
      CHECK_EQ(value_mismatch, int64_t(0));
      if (p == 0.0f) CHECK_EQ(kept, n);
      if (p == 0.5f) CHECK(kept > n / 2 - 200 && kept < n / 2 + 200);

      // Backward: dx += keep * dh / (1 - p), with the mask regenerated from the key.
      const std::vector<float> dx0 = random_vec(n, 700 + offset);
      const std::vector<float> dh = random_vec(n, 800 + offset);
      std::vector<float> want = dx0;
      for (int64_t i = 0; i < n; ++i)
        if (keep[i]) want[i] += dh[i] * scale;
      DeviceArray<float> ddx(n + 1), ddh(n + 1);
      upload_f32(ddx.data() + offset, dx0);
      upload_f32(ddh.data() + offset, dh);
      cu::dropout_backward_add(ddx.data() + offset, ddh.data() + offset, n, p, key, stream());
      const std::vector<float> gdx = download_f32(ddx.data() + offset, n);
      // Dropped elements stay bit-identical; kept ones may differ by the FMA's single rounding.
      int64_t touched_dropped = 0;
      for (int64_t i = 0; i < n; ++i)
        if (!keep[i] && gdx[i] != dx0[i]) ++touched_dropped;
      CHECK_EQ(touched_dropped, int64_t(0));
      // One rounding of |dh * scale| <= 2 (1.2e-7) where the sum nearly cancels, else 1e-6.
      check_close("dropout_backward_add" + tag, gdx, want, 3e-7, 1e-6);
    }
  }
  // Another key drops other elements.
  std::vector<uint8_t> a(1000), b(1000);
  lora::dropout_mask(a.data(), 1000, 0.5f, 1);
  lora::dropout_mask(b.data(), 1000, 0.5f, 2);
  CHECK(a != b);
}

// ---------------------------------------------------------------------------------------
// Optimizers and the gradient-norm reduction.

TEST(cuda_adamw_and_sgd_match_cpu_over_ten_steps) {
  LORA_REQUIRE_GPU();
  for (int64_t n : {int64_t(4097), int64_t(1)}) {
    std::vector<float> p_cpu = random_vec(n, 900, -0.5f, 0.5f), m_cpu(n, 0.f), v_cpu(n, 0.f);
    std::vector<float> sgd_cpu = p_cpu;
    auto p = to_device(p_cpu), sgd = to_device(p_cpu);
    DeviceArray<float> m(n), v(n), g(n);
    const std::vector<float> zeros(static_cast<size_t>(n), 0.f);
    upload_f32(m.data(), zeros);
    upload_f32(v.data(), zeros);
    const float lr = 2e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    for (int64_t step = 1; step <= 10; ++step) {
      const std::vector<float> grad = random_vec(n, 1000 + static_cast<uint32_t>(step));
      upload_f32(g.data(), grad);
      lora::adamw_update(p_cpu.data(), grad.data(), m_cpu.data(), v_cpu.data(), n, lr, beta1, beta2, eps, wd, step);
      cu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd, step, stream());
      lora::sgd_update(sgd_cpu.data(), grad.data(), n, lr, wd);
      cu::sgd_update(sgd.data(), g.data(), n, lr, wd, stream());
    }
    const std::string tag = " n=" + std::to_string(n);
    // The same fp32 formula; only FMA contraction may differ: at most one rounding (2^-24
    // relative) per operation and step. The parameter moves by <= 2e-2 in all, so its
    // roundings stay ~1e-7 of |p| (atol for a p that crosses zero); m is a decaying sum of
    // signed gradients that can nearly cancel, hence an absolute slack at the scale of
    // |0.9 m| <= 1 (ten roundings of 3e-8); v sums positive terms, two roundings per step
    // decayed by 0.999: <= 1.2e-6 relative after ten.
    check_close("adamw param" + tag, to_host(p), p_cpu, 1e-8, 1e-6);
    check_close("adamw m" + tag, to_host(m), m_cpu, 3e-7, 1e-6);
    check_close("adamw v" + tag, to_host(v), v_cpu, 0, 2e-6);
    check_close("sgd param" + tag, to_host(sgd), sgd_cpu, 1e-8, 1e-6);
  }
}

TEST(cuda_sum_squares_and_scale_match_cpu) {
  LORA_REQUIRE_GPU();
  // 1 and 3 (tail only), 4097, and one over the first pass's 1024 x 256 threads x 4 values.
  for (int64_t n : {int64_t(1), int64_t(3), int64_t(4097), int64_t((1 << 20) + 7)}) {
    const std::vector<float> x = random_vec(n, 1100 + static_cast<uint32_t>(n % 1000), -3.f, 3.f);
    const double want = lora::sum_squares(x.data(), n);
    for (int offset : {0, 1}) {
      DeviceArray<float> d(n + 1);
      upload_f32(d.data() + offset, x);
      const double got = cu::sum_squares(d.data() + offset, n, stream());
      // Every square is exact in double; only the order of the additions differs.
      CHECK_NEAR(got, want, 0, 1e-12);
      CHECK_EQ(cu::sum_squares(d.data() + offset, n, stream()), got);  // deterministic
    }
    std::vector<float> scaled = x;
    lora::scale_inplace(scaled.data(), n, 0.37f);
    auto d = to_device(x);
    cu::scale_inplace(d.data(), n, 0.37f, stream());
    check_close("scale_inplace n=" + std::to_string(n), to_host(d), scaled, 0, 0);
  }
}
