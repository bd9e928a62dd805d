// Causal, document-masked, grouped-query attention on one packed row.
// Work is split into items that each own their outputs, so no two threads ever add into the
// same value and every sum runs in a fixed order: the results are identical for any thread
// count. Queries (and, in the backward, keys) are paired t with T-1-t in one item, because
// under a causal mask early queries see few keys and late ones many: pairs even the load.
#include "ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/threadpool.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace lora {

namespace {

float dot(const float* a, const float* b, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  const __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float sum = _mm_cvtss_f32(s);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
#else
  // Four independent partial sums let the compiler vectorise without reassociating.
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
#endif
}

// y += a * x
inline void axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Item i of a paired sweep over [0, T): the index itself and its mirror T-1-i (once when
// they coincide).
inline int64_t paired_count(int64_t T) { return (T + 1) / 2; }

template <typename Fn>
inline void for_pair(int64_t i, int64_t T, Fn fn) {
  fn(i);
  if (T - 1 - i != i) fn(T - 1 - i);
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const int32_t* doc_start, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t group = Hq / Hkv;
  const int64_t pairs = paired_count(T);
  parallel_for(Hq * pairs, [&](int64_t begin, int64_t end, int) {
    std::vector<float> scores(static_cast<size_t>(T));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / pairs;
      const int64_t hk = h / group;
      for_pair(item % pairs, T, [&](int64_t t) {
        const float* qt = q + (t * Hq + h) * D;
        float* ot = out + (t * Hq + h) * D;
        const int64_t j0 = doc_start[t];
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = j0; j <= t; ++j) {
          const float s = dot(qt, k + (j * Hkv + hk) * D, D) * scale;
          scores[j] = s;
          mx = std::max(mx, s);
        }
        float sum = 0.f;
        for (int64_t j = j0; j <= t; ++j) {
          scores[j] = std::exp(scores[j] - mx);
          sum += scores[j];
        }
        const float inv = 1.0f / sum;
        std::fill(ot, ot + D, 0.f);
        for (int64_t j = j0; j <= t; ++j) axpy(ot, scores[j] * inv, v + (j * Hkv + hk) * D, D);
        lse[h * T + t] = mx + std::log(sum);
      });
    }
  });
}

// With P = softmax(S), S = scale * q k^T, O = P v:
//   dv_j = sum_t P_tj dO_t
//   dS_tj = P_tj (dO_t . v_j - delta_t),   delta_t = dO_t . O_t
//   dq_t = scale * sum_j dS_tj k_j,        dk_j = scale * sum_t dS_tj q_t
// Pass 1 owns dq (one item per query); pass 2 owns dk and dv (one item per key and kv head,
// summing over the group's query heads in head order). P is recomputed from the saved lse
// in both passes rather than stored.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                        const float* lse, const float* q, const float* k, const float* v,
                        const int32_t* doc_start, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t group = Hq / Hkv;
  const int64_t pairs = paired_count(T);
  std::vector<float> delta(static_cast<size_t>(Hq * T));

  parallel_for(Hq * pairs, [&](int64_t begin, int64_t end, int) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / pairs;
      const int64_t hk = h / group;
      for_pair(item % pairs, T, [&](int64_t t) {
        const float* qt = q + (t * Hq + h) * D;
        const float* dot_ = dout + (t * Hq + h) * D;
        float* dqt = dq + (t * Hq + h) * D;
        const float l = lse[h * T + t];
        const float dl = dot(dot_, out + (t * Hq + h) * D, D);
        delta[h * T + t] = dl;
        std::fill(dqt, dqt + D, 0.f);
        for (int64_t j = doc_start[t]; j <= t; ++j) {
          const float* kj = k + (j * Hkv + hk) * D;
          const float p = std::exp(dot(qt, kj, D) * scale - l);
          const float ds = p * (dot(dot_, v + (j * Hkv + hk) * D, D) - dl);
          axpy(dqt, ds * scale, kj, D);
        }
      });
    }
  });

  parallel_for(Hkv * pairs, [&](int64_t begin, int64_t end, int) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hk = item / pairs;
      for_pair(item % pairs, T, [&](int64_t j) {
        const float* kj = k + (j * Hkv + hk) * D;
        const float* vj = v + (j * Hkv + hk) * D;
        float* dkj = dk + (j * Hkv + hk) * D;
        float* dvj = dv + (j * Hkv + hk) * D;
        std::fill(dkj, dkj + D, 0.f);
        std::fill(dvj, dvj + D, 0.f);
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          for (int64_t t = j; t < T; ++t) {
            if (doc_start[t] > j) continue;
            const float* qt = q + (t * Hq + h) * D;
            const float* dot_ = dout + (t * Hq + h) * D;
            const float p = std::exp(dot(qt, kj, D) * scale - lse[h * T + t]);
            const float ds = p * (dot(dot_, vj, D) - delta[h * T + t]);
            axpy(dvj, p, dot_, D);
            axpy(dkj, ds * scale, qt, D);
          }
        }
      });
    }
  });
}

}  // namespace lora
