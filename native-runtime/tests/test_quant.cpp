#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/threadpool.hpp"
#include "formats/safetensors.hpp"
#include "quant/quant.hpp"
#include "test.hpp"

using namespace lora;

namespace {

std::vector<float> dequant_all(const QuantizedMatrix& m) {
  std::vector<float> out(static_cast<size_t>(m.rows * m.cols));
  dequantize_rows(m, 0, m.rows, out.data());
  return out;
}

std::vector<float> random_weights(int64_t n, uint32_t seed, float stddev = 0.02f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, stddev);
  std::vector<float> w(static_cast<size_t>(n));
  for (auto& x : w) x = nd(rng);
  // A few outliers, as real checkpoints have, so blocks have very different scales.
  for (int64_t i = 0; i < n; i += 997) w[static_cast<size_t>(i)] *= 20.0f;
  return w;
}

// The largest half-gap between neighbouring code values: with the nearest-code rule, a
// normalised value in [-1, 1] is at most this far from its code.
double max_half_gap(const float* code) {
  std::vector<float> c(code, code + 16);
  std::sort(c.begin(), c.end());
  double g = 0;
  for (int i = 0; i + 1 < 16; ++i) g = std::max(g, 0.5 * (double(c[i + 1]) - double(c[i])));
  return g;
}

// Per-block absmax computed independently of the quantizer.
std::vector<float> block_absmax_ref(const std::vector<float>& w, int bs) {
  std::vector<float> a((w.size() + bs - 1) / bs, 0.0f);
  for (size_t i = 0; i < w.size(); ++i) a[i / bs] = std::max(a[i / bs], std::fabs(w[i]));
  return a;
}

int nibble(const QuantizedMatrix& m, int64_t i) {
  uint8_t b = m.raw[static_cast<size_t>(i / 2)];
  return (i % 2 == 0) ? (b >> 4) : (b & 15);
}

}  // namespace

TEST(quant_nf4_code_values_exact) {
  // QLoRA paper appendix E / bitsandbytes csrc/kernels.cu, as float32.
  const float expected[16] = {-1.0f,
                              -0.6961928009986877f,
                              -0.5250730514526367f,
                              -0.39491748809814453f,
                              -0.28444138169288635f,
                              -0.18477343022823334f,
                              -0.09105003625154495f,
                              0.0f,
                              0.07958029955625534f,
                              0.16093020141124725f,
                              0.24611230194568634f,
                              0.33791524171829224f,
                              0.44070982933044434f,
                              0.5626170039176941f,
                              0.7229568362236023f,
                              1.0f};
  const float* c = nf4_code();
  for (int i = 0; i < 16; ++i) {
    uint32_t a, b;
    std::memcpy(&a, &c[i], 4);
    std::memcpy(&b, &expected[i], 4);
    CHECK_EQ(a, b);
  }
  for (int i = 0; i + 1 < 16; ++i) CHECK(c[i] < c[i + 1]);
  CHECK_EQ(c[7], 0.0f);
}

TEST(quant_fp4_code_layout) {
  // bitsandbytes' fp4: bit 3 sign; magnitude of bits 2..0 = {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12.
  const double magnitude[8] = {0, 0.0625, 8, 12, 4, 6, 2, 3};
  const float* c = fp4_code();
  for (int i = 0; i < 16; ++i) {
    double want = (i & 8 ? -1.0 : 1.0) * magnitude[i & 7] / 12.0;
    CHECK_NEAR(c[i], want, 1e-7, 1e-7);
    CHECK_EQ(std::signbit(c[i]), (i & 8) != 0);
  }
  CHECK_EQ(c[3], 1.0f);
  CHECK_EQ(c[11], -1.0f);
}

TEST(quant_names) {
  QuantType t;
  for (QuantType q : {QuantType::None, QuantType::NF4, QuantType::FP4, QuantType::Int8}) {
    CHECK(quant_from_name(quant_name(q), t));
    CHECK(t == q);
  }
  CHECK(!quant_from_name("nf3", t));
  CHECK(!quant_from_name("NF4", t));
  CHECK_EQ(std::string(quant_name(QuantType::NF4)), std::string("nf4"));
}

TEST(quant_nibble_order_hand_built) {
  // absmax 1: the values are code values, so the codes are known: 15, 0, 7, 13, 8.
  const float w[5] = {1.0f, -1.0f, 0.0f, 0.5626170039176941f, 0.07958029955625534f};
  QuantizedMatrix m = quantize_matrix(w, 1, 5, QuantType::NF4, 64, false);
  CHECK_EQ(m.raw.size(), size_t(3));
  CHECK_EQ(int(m.raw[0]), 0xF0);  // element 0 in the high nibble, element 1 in the low
  CHECK_EQ(int(m.raw[1]), 0x7D);
  CHECK_EQ(int(m.raw[2]), 0x80);  // odd count: the last element alone in a high nibble
  CHECK_EQ(m.absmax.size(), size_t(1));
  CHECK_EQ(m.absmax[0], 1.0f);
  std::vector<float> dq = dequant_all(m);
  for (int i = 0; i < 5; ++i) CHECK_EQ(dq[i], w[i]);
  // Reading a single row range that starts on a low nibble.
  const float w2[6] = {1.0f, -1.0f, 0.0f, 0.5626170039176941f, -0.5250730514526367f, 0.7229568362236023f};
  QuantizedMatrix m2 = quantize_matrix(w2, 2, 3, QuantType::NF4, 64, false);
  float row1[3];
  dequantize_rows(m2, 1, 2, row1);
  CHECK_EQ(row1[0], w2[3]);
  CHECK_EQ(row1[1], w2[4]);
  CHECK_EQ(row1[2], w2[5]);
  CHECK_EQ(int(m2.raw[1]), 0x7D);
  CHECK_EQ(int(m2.raw[2]), 0x2E);
}

TEST(quant_every_code_value_round_trips_exactly) {
  for (QuantType type : {QuantType::NF4, QuantType::FP4}) {
    const float* code = type == QuantType::NF4 ? nf4_code() : fp4_code();
    // Scaled by a power of two, so w = code * absmax is exact in fp32.
    for (float scale : {1.0f, 0.25f, 8.0f}) {
      std::vector<float> w(16);
      for (int i = 0; i < 16; ++i) w[i] = code[i] * scale;
      QuantizedMatrix m = quantize_matrix(w.data(), 4, 4, type, 16, false);
      CHECK_EQ(m.absmax[0], scale);
      std::vector<float> dq = dequant_all(m);
      for (int i = 0; i < 16; ++i) {
        CHECK_EQ(dq[i], w[i]);
        // The code is the element's own index (FP4's -0 maps to +0, the same value).
        if (!(type == QuantType::FP4 && i == 8)) CHECK_EQ(nibble(m, i), i);
      }
    }
  }
  // int8 with absmax 127: every integer in [-127, 127] is a code and comes back exactly.
  std::vector<float> w(255);
  for (int i = 0; i < 255; ++i) w[i] = static_cast<float>(i - 127);
  QuantizedMatrix m = quantize_matrix(w.data(), 1, 255, QuantType::Int8, 255, false);
  std::vector<float> dq = dequant_all(m);
  for (int i = 0; i < 255; ++i) {
    CHECK_EQ(dq[i], w[i]);
    CHECK_EQ(int(static_cast<int8_t>(m.raw[i])), i - 127);
  }
}

TEST(quant_ties_are_deterministic) {
  // Exactly half-way between NF4 codes 7 (0.0) and 8: the lower code wins.
  const float mid = 0.5f * nf4_code()[8];
  const float w[2] = {1.0f, mid};
  QuantizedMatrix m = quantize_matrix(w, 1, 2, QuantType::NF4, 64, false);
  CHECK_EQ(nibble(m, 1), 7);
  const float above[2] = {1.0f, std::nextafter(mid, 1.0f)};
  CHECK_EQ(nibble(quantize_matrix(above, 1, 2, QuantType::NF4, 64, false), 1), 8);
  // All-zero blocks quantize to the code of zero with absmax 0.
  std::vector<float> zeros(100, 0.0f);
  for (QuantType t : {QuantType::NF4, QuantType::FP4, QuantType::Int8}) {
    for (bool dq : {false, true}) {
      QuantizedMatrix z = quantize_matrix(zeros.data(), 10, 10, t, 64, dq);
      for (float v : dequant_all(z)) CHECK_EQ(v, 0.0f);
    }
  }
}

// Per element |w - dq(q(w))| <= absmax_block * max_half_gap: the normalised value w/absmax
// lies in [-1, 1], the code book spans [-1, 1] (both ends are codes), so the nearest code is
// at most half of the widest gap away; scaling back by absmax multiplies the error by
// absmax. The 1e-6 * absmax slack covers the fp32 rounding of w/absmax and code*absmax.
// Stronger: the chosen code must be the nearest one (no other code is closer).
TEST(quant_4bit_random_round_trip_error_bounds) {
  const int64_t rows = 37, cols = 129;  // odd sizes: partial last block, rows start mid-byte
  for (QuantType type : {QuantType::NF4, QuantType::FP4}) {
    for (int bs : {64, 32, 128}) {
      std::vector<float> w = random_weights(rows * cols, 5u + static_cast<uint32_t>(bs));
      QuantizedMatrix m = quantize_matrix(w.data(), rows, cols, type, bs, false);
      const float* code = type == QuantType::NF4 ? nf4_code() : fp4_code();
      const double gap = max_half_gap(code);
      std::vector<float> ref_absmax = block_absmax_ref(w, bs);
      CHECK_EQ(m.absmax.size(), ref_absmax.size());
      CHECK(m.absmax == ref_absmax);
      std::vector<float> dq = dequant_all(m);
      int bad = 0;
      for (size_t i = 0; i < w.size(); ++i) {
        const double a = ref_absmax[i / bs];
        const double err = std::fabs(double(w[i]) - double(dq[i]));
        if (err > a * gap + 1e-6 * a) ++bad;
        for (int j = 0; j < 16; ++j)
          if (std::fabs(double(w[i]) - double(code[j]) * a) + 1e-6 * a < err) ++bad;
      }
      CHECK_EQ(bad, 0);
    }
  }
  CHECK_NEAR(max_half_gap(nf4_code()), (1.0 - 0.6961928009986877) / 2, 1e-7, 0);  // between -1 and the next code
  CHECK_NEAR(max_half_gap(fp4_code()), (1.0 - 8.0 / 12.0) / 2, 1e-7, 0);
}

// int8: q = round(127 w / a), dq = q a / 127, so |w - dq| = (a / 127) |127 w / a - q| <= a / 254.
TEST(quant_int8_error_bound) {
  const int64_t rows = 19, cols = 77;
  std::vector<float> w = random_weights(rows * cols, 99);
  QuantizedMatrix m = quantize_matrix(w.data(), rows, cols, QuantType::Int8, 64, false);
  CHECK_EQ(m.raw.size(), w.size());
  std::vector<float> ref_absmax = block_absmax_ref(w, 64);
  std::vector<float> dq = dequant_all(m);
  int bad = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double a = ref_absmax[i / 64];
    if (std::fabs(double(w[i]) - double(dq[i])) > a / 254.0 + 1e-6 * a) ++bad;
  }
  CHECK_EQ(bad, 0);
}

// Double quantization: each group of 256 absmax values is coded as mean + (q - 128) * step
// with step = maxdev / 127, maxdev = max |absmax - mean| over the group, and q the rounded
// (absmax - mean) / step. Rounding moves a value by at most step / 2 = maxdev / 254. The
// weight error then grows by at most |delta absmax| * max|code| = |delta absmax|.
TEST(quant_double_quant_error_bounds) {
  const int64_t rows = 300, cols = 200;  // 60000 elements, 938 blocks of 64: 4 groups, the last partial
  std::vector<float> w = random_weights(rows * cols, 2024);
  QuantizedMatrix plain = quantize_matrix(w.data(), rows, cols, QuantType::NF4, 64, false);
  QuantizedMatrix m = quantize_matrix(w.data(), rows, cols, QuantType::NF4, 64, true);
  CHECK(m.double_quant);
  CHECK(m.absmax.empty());
  CHECK_EQ(m.absmax_q.size(), size_t(938));
  CHECK_EQ(m.absmax_scale.size(), size_t(4));
  CHECK(m.raw == plain.raw);  // the 4-bit codes do not depend on how absmax is stored

  const std::vector<float> a = block_absmax_ref(w, 64);
  double mean = 0;
  for (float x : a) mean += x;
  mean /= static_cast<double>(a.size());
  CHECK_NEAR(m.absmax_mean, mean, 1e-7, 1e-6);

  std::vector<float> dq = dequant_all(m);
  int bad_absmax = 0, bad_weight = 0;
  const double gap = max_half_gap(nf4_code());
  for (size_t g = 0; g * 256 < a.size(); ++g) {
    double maxdev = 0;
    for (size_t b = g * 256; b < std::min(a.size(), (g + 1) * 256); ++b) maxdev = std::max(maxdev, std::fabs(a[b] - mean));
    const double bound = maxdev / 254.0 + 1e-6 * (maxdev + std::fabs(mean));
    for (size_t b = g * 256; b < std::min(a.size(), (g + 1) * 256); ++b) {
      // The block's absmax element quantizes to code +-1, so its dequantized value is +-absmax'.
      size_t arg = b * 64;
      for (size_t i = b * 64; i < std::min(w.size(), (b + 1) * 64); ++i)
        if (std::fabs(w[i]) > std::fabs(w[arg])) arg = i;
      const double absmax_dq = std::fabs(double(dq[arg]));
      const double delta = std::fabs(absmax_dq - a[b]);
      if (delta > bound) ++bad_absmax;
      for (size_t i = b * 64; i < std::min(w.size(), (b + 1) * 64); ++i) {
        const double err = std::fabs(double(w[i]) - double(dq[i]));
        if (err > a[b] * gap + delta + 1e-6 * a[b]) ++bad_weight;
      }
    }
  }
  CHECK_EQ(bad_absmax, 0);
  CHECK_EQ(bad_weight, 0);
}

TEST(quant_bytes_accounting) {
  const int64_t rows = 256, cols = 256, n = rows * cols;
  std::vector<float> w = random_weights(n, 1);
  QuantizedMatrix nf4 = quantize_matrix(w.data(), rows, cols, QuantType::NF4, 64, false);
  CHECK_EQ(nf4.bytes(), uint64_t(n / 2 + (n / 64) * 4));
  CHECK_NEAR(double(nf4.bytes()) / double(n), 0.5 + 4.0 / 64.0, 1e-12, 0);
  QuantizedMatrix nf4dq = quantize_matrix(w.data(), rows, cols, QuantType::NF4, 64, true);
  // codes + 1 byte per block + one fp32 step per 256 blocks + the mean
  CHECK_EQ(nf4dq.bytes(), uint64_t(n / 2 + n / 64 + 4 * 4 + 4));
  CHECK(nf4dq.bytes() < nf4.bytes());
  CHECK_NEAR(double(nf4dq.bytes()) / double(n), 0.5 + 1.0 / 64.0, 1e-3, 0);
  QuantizedMatrix i8 = quantize_matrix(w.data(), rows, cols, QuantType::Int8, 64, false);
  CHECK_EQ(i8.bytes(), uint64_t(n + (n / 64) * 4));
  QuantizedMatrix none = quantize_matrix(w.data(), rows, cols, QuantType::None, 64, false, DType::BF16);
  CHECK_EQ(none.bytes(), uint64_t(n * 2));
  // Odd size: the last partial block still has an absmax, the last byte a lone high nibble.
  QuantizedMatrix odd = quantize_matrix(w.data(), 3, 37, QuantType::NF4, 64, false);
  CHECK_EQ(odd.bytes(), uint64_t(56 + 2 * 4));
}

TEST(quant_row_ranges_match_full_dequantization) {
  const int64_t rows = 11, cols = 37;  // 407 elements: rows start at odd offsets and mid-block
  std::vector<float> w = random_weights(rows * cols, 77);
  for (QuantType type : {QuantType::NF4, QuantType::FP4, QuantType::Int8}) {
    for (bool dq : {false, true}) {
      QuantizedMatrix m = quantize_matrix(w.data(), rows, cols, type, 64, dq);
      std::vector<float> full = dequant_all(m);
      int mismatches = 0;
      // Independent reference from the stored fields: code value (or int8 step) times the
      // block's absmax, itself rebuilt from the double-quant fields when those are used.
      for (int64_t i = 0; i < rows * cols; ++i) {
        const int64_t b = i / 64;
        const float a = dq ? std::fma(static_cast<float>(int(m.absmax_q[b]) - 128), m.absmax_scale[b / 256],
                                      m.absmax_mean)
                           : m.absmax[b];
        float want;
        if (type == QuantType::Int8)
          want = static_cast<float>(static_cast<int8_t>(m.raw[i])) * (a / 127.0f);
        else
          want = (type == QuantType::NF4 ? nf4_code() : fp4_code())[nibble(m, i)] * a;
        if (full[static_cast<size_t>(i)] != want) ++mismatches;
      }
      for (int64_t r0 = 0; r0 < rows; ++r0) {
        for (int64_t r1 = r0; r1 <= rows; r1 += 3) {
          std::vector<float> part(static_cast<size_t>((r1 - r0) * cols) + 1, -123.0f);
          dequantize_rows(m, r0, r1, part.data());
          for (int64_t i = 0; i < (r1 - r0) * cols; ++i)
            if (part[static_cast<size_t>(i)] != full[static_cast<size_t>(r0 * cols + i)]) ++mismatches;
          if (part.back() != -123.0f) ++mismatches;  // no write past the range
        }
      }
      CHECK_EQ(mismatches, 0);
    }
  }
  QuantizedMatrix m = quantize_matrix(w.data(), rows, cols, QuantType::NF4, 64, false);
  bool threw = false;
  try {
    float dummy[1];
    dequantize_rows(m, 5, rows + 1, dummy);
  } catch (const std::out_of_range&) {
    threw = true;
  }
  CHECK(threw);
}

TEST(quant_threads_do_not_change_results) {
  const int64_t rows = 512, cols = 520;  // large enough for the parallel paths
  std::vector<float> w = random_weights(rows * cols, 8);
  const int saved = num_threads();
  for (QuantType type : {QuantType::NF4, QuantType::FP4, QuantType::Int8}) {
    set_num_threads(1);
    QuantizedMatrix a = quantize_matrix(w.data(), rows, cols, type, 64, true);
    std::vector<float> da = dequant_all(a);
    set_num_threads(4);
    QuantizedMatrix b = quantize_matrix(w.data(), rows, cols, type, 64, true);
    std::vector<float> db = dequant_all(b);
    std::vector<float> dab = dequant_all(a);
    CHECK(a.raw == b.raw);
    CHECK(a.absmax_q == b.absmax_q);
    CHECK(a.absmax_scale == b.absmax_scale);
    CHECK(da == db);
    CHECK(da == dab);
  }
  set_num_threads(saved);
}

TEST(quant_none_keeps_checkpoint_dtype) {
  const int64_t rows = 3, cols = 5;
  std::vector<float> w = random_weights(rows * cols, 3, 1.0f);
  QuantizedMatrix f32 = quantize_matrix(w.data(), rows, cols, QuantType::None, 64, false, DType::F32);
  CHECK(f32.stored_dtype == DType::F32);
  CHECK(dequant_all(f32) == w);
  QuantizedMatrix bf = quantize_matrix(w.data(), rows, cols, QuantType::None, 64, false, DType::BF16);
  QuantizedMatrix hf = quantize_matrix(w.data(), rows, cols, QuantType::None, 64, false, DType::F16);
  std::vector<float> dbf = dequant_all(bf), dhf = dequant_all(hf);
  for (size_t i = 0; i < w.size(); ++i) {
    CHECK_EQ(dbf[i], bf16_to_f32(f32_to_bf16(w[i])));
    CHECK_EQ(dhf[i], f16_to_f32(f32_to_f16(w[i])));
  }
  // wrap_unquantized keeps the exact checkpoint bytes.
  std::vector<uint16_t> raw(w.size());
  for (size_t i = 0; i < w.size(); ++i) raw[i] = f32_to_bf16(w[i]);
  QuantizedMatrix wrapped =
      wrap_unquantized(reinterpret_cast<const uint8_t*>(raw.data()), DType::BF16, rows, cols);
  CHECK(wrapped.type == QuantType::None);
  CHECK_EQ(wrapped.bytes(), uint64_t(w.size() * 2));
  CHECK(std::memcmp(wrapped.raw.data(), raw.data(), raw.size() * 2) == 0);
  std::vector<float> dw(w.size());
  dequantize_rows(wrapped, 1, 3, dw.data());
  for (int64_t i = 0; i < 2 * cols; ++i) CHECK_EQ(dw[static_cast<size_t>(i)], bf16_to_f32(raw[static_cast<size_t>(cols + i)]));
}
