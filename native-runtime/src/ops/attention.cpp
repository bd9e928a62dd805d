// Causal, document-masked, grouped-query attention on one packed row, in blocks of 64
// queries (or keys) so that the score and value products run through the GEMM kernels:
// a block's scores against every key it may see form one (64 x R) matrix, R <= T, which is
// all the scratch a thread needs; no (T x T) matrix is ever held.
//
// Work items own their outputs (forward and dq: a query block of one head; dk and dv: a key
// block of one kv head, summing the group's query heads in order), so no two threads add
// into the same value and every sum runs in a fixed order: the results are identical for
// any thread count. Block i is paired with block nb-1-i in one item, because under a causal
// mask early query blocks see few keys and late ones many.
#include "ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/threadpool.hpp"
#include "ops/matmul.hpp"
#include "ops/vexp.hpp"

namespace lora {

namespace {

constexpr int64_t kBlock = 64;

// The packer guarantees these; checking costs O(T) and turns a packing bug into a clear
// error instead of reads outside the row.
void check_layout(const int32_t* doc_start, int64_t T, int64_t Hq, int64_t Hkv) {
  if (Hkv <= 0 || Hq % Hkv != 0)
    throw std::invalid_argument("attention: " + std::to_string(Hq) + " query heads are not a multiple of " +
                                std::to_string(Hkv) + " key/value heads");
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = doc_start[t];
    if (s < 0 || s > t || (t > 0 && s < doc_start[t - 1]))
      throw std::invalid_argument("attention: doc_start[" + std::to_string(t) + "] = " + std::to_string(s) +
                                  " is not a document start (need 0 <= doc_start[t] <= t, non-decreasing)");
  }
}

// (T, H, D) -> (H, T, D): each head's rows contiguous, as the GEMMs want them.
void to_head_major(float* dst, const float* src, int64_t T, int64_t H, int64_t D) {
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t h = 0; h < H; ++h)
        std::copy(src + (t * H + h) * D, src + (t * H + h + 1) * D, dst + (h * T + t) * D);
  });
}

// Rows [t0, t0 + n) of head h of a head-major (H, T, D) block back into (T, H, D).
void scatter_rows(float* dst, const float* rows, int64_t t0, int64_t n, int64_t h, int64_t H, int64_t D) {
  for (int64_t i = 0; i < n; ++i) std::copy(rows + i * D, rows + (i + 1) * D, dst + ((t0 + i) * H + h) * D);
}

template <typename Fn>
void for_block_pair(int64_t i, int64_t nb, Fn fn) {
  fn(i);
  if (nb - 1 - i != i) fn(nb - 1 - i);
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const int32_t* doc_start, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  if (T <= 0) return;
  check_layout(doc_start, T, Hq, Hkv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t group = Hq / Hkv;
  std::vector<float> qc(static_cast<size_t>(Hq * T * D)), kc(static_cast<size_t>(Hkv * T * D)),
      vc(static_cast<size_t>(Hkv * T * D));
  to_head_major(qc.data(), q, T, Hq, D);
  to_head_major(kc.data(), k, T, Hkv, D);
  to_head_major(vc.data(), v, T, Hkv, D);
  const int64_t nb = (T + kBlock - 1) / kBlock;
  const int64_t pairs = (nb + 1) / 2;

  parallel_for(Hq * pairs, [&](int64_t begin, int64_t end, int) {
    std::vector<float> p(static_cast<size_t>(kBlock * T)), ob(static_cast<size_t>(kBlock * D));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / pairs, hk = h / group;
      for_block_pair(item % pairs, nb, [&](int64_t blk) {
        const int64_t t0 = blk * kBlock, bq = std::min(kBlock, T - t0);
        // Keys this block may see: from its first document's start to its last query.
        const int64_t j_lo = doc_start[t0], R = t0 + bq - j_lo;
        // p: (bq, R) = scale * Q_blk . K[j_lo : t0 + bq]^T
        matmul_nt(p.data(), qc.data() + (h * T + t0) * D, kc.data() + (hk * T + j_lo) * D, bq, R, D, scale);
        for (int64_t i = 0; i < bq; ++i) {
          const int64_t t = t0 + i;
          float* row = p.data() + i * R;
          const int64_t a = doc_start[t] - j_lo, b = t - j_lo;  // allowed columns [a, b]
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = a; j <= b; ++j) mx = std::max(mx, row[j]);
          for (int64_t j = a; j <= b; ++j) row[j] -= mx;
          const float sum = static_cast<float>(exp_inplace(row + a, b - a + 1));
          const float inv = 1.0f / sum;
          std::fill(row, row + a, 0.f);
          for (int64_t j = a; j <= b; ++j) row[j] *= inv;
          std::fill(row + b + 1, row + R, 0.f);
          lse[h * T + t] = mx + std::log(sum);
        }
        // ob: (bq, D) = P . V[j_lo : t0 + bq]
        matmul_nn(ob.data(), p.data(), vc.data() + (hk * T + j_lo) * D, bq, D, R);
        scatter_rows(out, ob.data(), t0, bq, h, Hq, D);
      });
    }
  });
}

// With P = softmax(S), S = scale * q k^T, O = P v:
//   dv_j = sum_t P_tj dO_t
//   dS_tj = P_tj (dO_t . v_j - delta_t),   delta_t = dO_t . O_t
//   dq_t = scale * sum_j dS_tj k_j,        dk_j = scale * sum_t dS_tj q_t
// Pass 1 owns dq (query blocks); pass 2 owns dk and dv (key blocks, the group's query heads
// in head order). P is recomputed from the saved lse in both passes rather than stored.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                        const float* lse, const float* q, const float* k, const float* v,
                        const int32_t* doc_start, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
  if (T <= 0) return;
  check_layout(doc_start, T, Hq, Hkv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t group = Hq / Hkv;
  std::vector<float> qc(static_cast<size_t>(Hq * T * D)), dc(static_cast<size_t>(Hq * T * D)),
      kc(static_cast<size_t>(Hkv * T * D)), vc(static_cast<size_t>(Hkv * T * D));
  to_head_major(qc.data(), q, T, Hq, D);
  to_head_major(dc.data(), dout, T, Hq, D);
  to_head_major(kc.data(), k, T, Hkv, D);
  to_head_major(vc.data(), v, T, Hkv, D);
  std::vector<float> delta(static_cast<size_t>(Hq * T));
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t h = 0; h < Hq; ++h) {
        const float* a = dout + (t * Hq + h) * D;
        const float* b = out + (t * Hq + h) * D;
        double s = 0.0;
        for (int64_t c = 0; c < D; ++c) s += double(a[c]) * b[c];
        delta[h * T + t] = static_cast<float>(s);
      }
  });
  const int64_t nb = (T + kBlock - 1) / kBlock;
  const int64_t pairs = (nb + 1) / 2;

  // Pass 1: dq.
  parallel_for(Hq * pairs, [&](int64_t begin, int64_t end, int) {
    std::vector<float> p(static_cast<size_t>(kBlock * T)), dp(static_cast<size_t>(kBlock * T)),
        dqb(static_cast<size_t>(kBlock * D));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / pairs, hk = h / group;
      for_block_pair(item % pairs, nb, [&](int64_t blk) {
        const int64_t t0 = blk * kBlock, bq = std::min(kBlock, T - t0);
        const int64_t j_lo = doc_start[t0], R = t0 + bq - j_lo;
        const float* kr = kc.data() + (hk * T + j_lo) * D;
        matmul_nt(p.data(), qc.data() + (h * T + t0) * D, kr, bq, R, D, scale);
        matmul_nt(dp.data(), dc.data() + (h * T + t0) * D, vc.data() + (hk * T + j_lo) * D, bq, R, D);
        for (int64_t i = 0; i < bq; ++i) {
          const int64_t t = t0 + i;
          float* ds = dp.data() + i * R;
          float* s = p.data() + i * R;
          const int64_t a = doc_start[t] - j_lo, b = t - j_lo;
          const float l = lse[h * T + t], dl = delta[h * T + t];
          for (int64_t j = a; j <= b; ++j) s[j] -= l;
          exp_inplace(s + a, b - a + 1);
          std::fill(ds, ds + a, 0.f);
          for (int64_t j = a; j <= b; ++j) ds[j] = s[j] * (ds[j] - dl);
          std::fill(ds + b + 1, ds + R, 0.f);
        }
        // dq_blk: (bq, D) = scale * dS . K[j_lo : t0 + bq]
        matmul_nn(dqb.data(), dp.data(), kr, bq, D, R, scale);
        scatter_rows(dq, dqb.data(), t0, bq, h, Hq, D);
      });
    }
  });

  // Pass 2: dk, dv. Key block [j0, j1) is seen by queries t >= j0 whose document starts at or
  // before j1 - 1: with doc_start non-decreasing, the range [j0, t_end).
  parallel_for(Hkv * pairs, [&](int64_t begin, int64_t end, int) {
    std::vector<float> pt(static_cast<size_t>(kBlock * T)), dst(static_cast<size_t>(kBlock * T)),
        dkb(static_cast<size_t>(kBlock * D)), dvb(static_cast<size_t>(kBlock * D));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hk = item / pairs;
      for_block_pair(item % pairs, nb, [&](int64_t blk) {
        const int64_t j0 = blk * kBlock, bk = std::min(kBlock, T - j0), j1 = j0 + bk;
        int64_t t_end = j0;
        while (t_end < T && doc_start[t_end] <= j1 - 1) ++t_end;
        const int64_t Rq = t_end - j0;
        const float* kb = kc.data() + (hk * T + j0) * D;
        const float* vb = vc.data() + (hk * T + j0) * D;
        std::fill(dkb.begin(), dkb.end(), 0.f);
        std::fill(dvb.begin(), dvb.end(), 0.f);
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          const float* qr = qc.data() + (h * T + j0) * D;
          const float* dr = dc.data() + (h * T + j0) * D;
          // pt: (bk, Rq) = scale * K_blk . Q[j0 : t_end]^T, i.e. S transposed; dst likewise dP^T.
          matmul_nt(pt.data(), kb, qr, bk, Rq, D, scale);
          matmul_nt(dst.data(), vb, dr, bk, Rq, D);
          const float* lse_h = lse + h * T + j0;
          const float* delta_h = delta.data() + h * T + j0;
          for (int64_t jj = 0; jj < bk; ++jj) {
            const int64_t j = j0 + jj;
            float* prow = pt.data() + jj * Rq;
            float* drow = dst.data() + jj * Rq;
            // Queries that see key j: from j itself to the end of j's document.
            int64_t last = jj;
            while (last + 1 < Rq && doc_start[j0 + last + 1] <= j) ++last;
            std::fill(prow, prow + jj, 0.f);
            std::fill(drow, drow + jj, 0.f);
            for (int64_t ii = jj; ii <= last; ++ii) prow[ii] -= lse_h[ii];
            exp_inplace(prow + jj, last - jj + 1);
            for (int64_t ii = jj; ii <= last; ++ii) drow[ii] = prow[ii] * (drow[ii] - delta_h[ii]);
            std::fill(prow + last + 1, prow + Rq, 0.f);
            std::fill(drow + last + 1, drow + Rq, 0.f);
          }
          // dv_blk += P^T . dO[j0 : t_end];  dk_blk += scale * dS^T . Q[j0 : t_end]
          matmul_nn(dvb.data(), pt.data(), dr, bk, D, Rq, 1.0f, /*accumulate=*/true);
          matmul_nn(dkb.data(), dst.data(), qr, bk, D, Rq, scale, /*accumulate=*/true);
        }
        scatter_rows(dk, dkb.data(), j0, bk, hk, Hkv, D);
        scatter_rows(dv, dvb.data(), j0, bk, hk, Hkv, D);
      });
    }
  });
}

}  // namespace lora
