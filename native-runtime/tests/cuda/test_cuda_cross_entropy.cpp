// CUDA cross-entropy (cuda/cross_entropy) against the CPU twins: the per-row kernel against
// ops/cross_entropy, and the fused LM head against the CPU's chunked head computed here
// (logits = x W^T of the bf16-rounded inputs, ops cross-entropy, dx = dlogits W).
//
// Tolerances (u = 2^-8, bf16's unit roundoff):
//  - loss: fp32 on the GPU (online max/sum over up to 512 values per thread, then a tree
//    over the block) against fp32 logits with a double sum on the CPU; the log-sum-exp
//    differs by ~1e-6 relative to the sum, i.e. ~1e-5 absolute: checked at 2e-4 per row.
//  - dlogits are stored as bf16 (at most u relative), on top of the exp differences above
//    (~1e-5 relative): checked at 2u relative, and 1e-6 * scale absolute for p - 1 with p
//    within a few fp32 ulps of 1 (both sides round p to fp32 before subtracting).
//  - dx = dlogits W accumulates bf16-rounded dlogits (each off by <= u relative) in fp32:
//    |error| <= u * sum_v |dlogit_v W_vc| + fp32 noise; checked per element at twice that.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/cross_entropy.hpp"
#include "cuda_test_util.hpp"
#include "ops/cross_entropy.hpp"

using namespace lora_test;

namespace {

std::vector<float> normal(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

// The rows kernel on (n, V) logits against ops/cross_entropy, with and without dlogits.
void check_rows(int64_t n, int64_t V, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> logits = normal(static_cast<size_t>(n * V), 3.0f, rng);
  std::vector<int32_t> targets(static_cast<size_t>(n));
  std::uniform_int_distribution<int32_t> tid(0, static_cast<int32_t>(V - 1));
  for (auto& t : targets) t = tid(rng);
  // Row 0: one logit far above the rest (a confident prediction, softmax ~ one-hot), and
  // the target elsewhere; row 1 (when present): the target is that confident logit.
  logits[static_cast<size_t>(V / 2)] = 40.f;
  if (n > 1) {
    logits[static_cast<size_t>(V + V - 1)] = 35.f;
    targets[1] = static_cast<int32_t>(V - 1);
  }

  auto d_logits = to_device(logits);
  auto d_targets = to_device(targets);
  lora::cuda::DeviceArray<float> loss(static_cast<size_t>(n)), loss_only(static_cast<size_t>(n));
  lora::cuda::DeviceArray<lora::cuda::bf16> dl(static_cast<size_t>(n * V));
  lora::cuda::cross_entropy_rows(loss.data(), dl.data(), d_logits.data(), d_targets.data(), n, V, scale, nullptr);
  lora::cuda::cross_entropy_rows(loss_only.data(), nullptr, d_logits.data(), d_targets.data(), n, V, scale, nullptr);
  const std::vector<float> loss_gpu = to_host(loss), loss_only_gpu = to_host(loss_only), dl_gpu = to_host_f32(dl);
  CHECK(loss_gpu == loss_only_gpu);
  // The logits are an input: untouched.
  CHECK(to_host(d_logits) == logits);

  for (int64_t r = 0; r < n; ++r) {
    const double ref = lora::cross_entropy_forward(logits.data() + r * V, targets.data() + r, 1, V);
    if (!(std::fabs(loss_gpu[static_cast<size_t>(r)] - ref) <= 2e-4 + 1e-5 * std::fabs(ref)))
      record_failure(__FILE__, __LINE__,
                     "loss row " + std::to_string(r) + " (V=" + std::to_string(V) +
                         "): " + std::to_string(loss_gpu[static_cast<size_t>(r)]) + " vs " + std::to_string(ref));
  }
  std::vector<float> dl_ref(logits.size());
  lora::cross_entropy_backward(dl_ref.data(), logits.data(), targets.data(), n, V, scale);
  const double w = worst_ratio(dl_gpu, dl_ref, 1e-6 * std::fabs(scale), 2.0 / 256);
  if (!(w <= 1.0))
    record_failure(__FILE__, __LINE__,
                   "dlogits (n=" + std::to_string(n) + " V=" + std::to_string(V) +
                       "): worst ratio " + std::to_string(w));
}

struct HeadCase {
  int64_t n, C, V, chunk;
  float grad_scale;
};

// CPU reference of the fused head: summed loss, and dx = grad_scale * (softmax - onehot) W.
void cpu_head(const HeadCase& c, const std::vector<float>& x, const std::vector<float>& W,
              const std::vector<int32_t>& targets, double& loss, std::vector<float>& dx,
              std::vector<double>& dx_bound) {
  std::vector<float> logits(static_cast<size_t>(c.n * c.V));
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t v = 0; v < c.V; ++v) {
      double s = 0;
      for (int64_t k = 0; k < c.C; ++k) s += double(x[size_t(i * c.C + k)]) * W[size_t(v * c.C + k)];
      logits[size_t(i * c.V + v)] = static_cast<float>(s);
    }
  loss = lora::cross_entropy_forward(logits.data(), targets.data(), c.n, c.V);
  std::vector<float> dl(logits.size());
  lora::cross_entropy_backward(dl.data(), logits.data(), targets.data(), c.n, c.V, c.grad_scale);
  dx.assign(static_cast<size_t>(c.n * c.C), 0.f);
  dx_bound.assign(dx.size(), 0.0);
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t k = 0; k < c.C; ++k) {
      double s = 0, a = 0;
      for (int64_t v = 0; v < c.V; ++v) {
        const double t = double(dl[size_t(i * c.V + v)]) * W[size_t(v * c.C + k)];
        s += t;
        a += std::fabs(t);
      }
      dx[size_t(i * c.C + k)] = static_cast<float>(s);
      dx_bound[size_t(i * c.C + k)] = 2.0 * (a / 256 + 1e-6 * std::fabs(c.grad_scale));
    }
}

void check_head(const HeadCase& c, lora::cuda::LmHeadWorkspace* ws, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> x = normal(static_cast<size_t>(c.n * c.C), 1.0f, rng);
  // Logits of standard deviation ~2.5: a spread-out but not flat softmax.
  std::vector<float> W = normal(static_cast<size_t>(c.V * c.C), 2.5f / std::sqrt(float(c.C)), rng);
  round_to_bf16(x);
  round_to_bf16(W);
  std::vector<int32_t> targets(static_cast<size_t>(c.n));
  std::uniform_int_distribution<int32_t> tid(0, static_cast<int32_t>(c.V - 1));
  for (auto& t : targets) t = tid(rng);
  targets[0] = static_cast<int32_t>(c.V - 1);  // the last (unpadded) logit column

  double loss_ref = 0;
  std::vector<float> dx_ref;
  std::vector<double> bound;
  cpu_head(c, x, W, targets, loss_ref, dx_ref, bound);

  auto d_x = to_device_bf16(x), d_W = to_device_bf16(W);
  auto d_t = to_device(targets);
  std::vector<float> junk(static_cast<size_t>(c.n * c.C), 1e6f);
  auto d_dx = to_device(junk);  // must be overwritten
  lora::cuda::LmHeadArgs a;
  a.x = d_x.data();
  a.targets = d_t.data();
  a.W = d_W.data();
  a.n = c.n;
  a.C = c.C;
  a.V = c.V;
  a.grad_scale = c.grad_scale;
  a.dx = d_dx.data();
  a.chunk = c.chunk;
  const double loss = lora::cuda::lm_head_cross_entropy(a, ws, nullptr);
  const std::string what = "n=" + std::to_string(c.n) + " C=" + std::to_string(c.C) + " V=" + std::to_string(c.V) +
                           " chunk=" + std::to_string(c.chunk);
  if (!(std::fabs(loss - loss_ref) <= 2e-4 * c.n + 1e-5 * std::fabs(loss_ref)))
    record_failure(__FILE__, __LINE__,
                   "loss (" + what + "): " + std::to_string(loss) + " vs " + std::to_string(loss_ref));

  const std::vector<float> dx = to_host(d_dx);
  int bad = 0;
  for (size_t i = 0; i < dx.size(); ++i) {
    if (std::fabs(double(dx[i]) - dx_ref[i]) <= bound[i]) continue;
    if (bad++ == 0)
      record_failure(__FILE__, __LINE__,
                     "dx (" + what + ") element " + std::to_string(i) + ": " + std::to_string(dx[i]) + " vs " +
                         std::to_string(dx_ref[i]) + " (bound " + std::to_string(bound[i]) + ")");
  }
  CHECK_EQ(bad, 0);

  // Loss only: the same sum, and dx untouched.
  a.dx = nullptr;
  const double loss2 = lora::cuda::lm_head_cross_entropy(a, ws, nullptr);
  CHECK_NEAR(loss2, loss, 1e-9 * std::fabs(loss), 0);
}

}  // namespace

TEST(cuda_cross_entropy_rows_vs_cpu) {
  LORA_REQUIRE_GPU();
  check_rows(4, 1, 1.0f, 1);  // a single class: loss 0, gradient 0
  check_rows(3, 5, 0.5f, 2);
  check_rows(7, 1001, 1.0f / 37, 3);
  check_rows(5, 32000, 1.0f, 4);
  check_rows(3, 262147, 2.0f, 5);  // past 256k: 512 values per thread and a partial stride
}

// n not a multiple of the chunk, an odd vocabulary (padded row stride), chunks growing the
// workspace between calls, and one chunk larger than n.
TEST(cuda_lm_head_cross_entropy_vs_cpu) {
  LORA_REQUIRE_GPU();
  lora::cuda::LmHeadWorkspace* ws = lora::cuda::lm_head_workspace_create();
  try {
    check_head({37, 64, 1001, 8, 1.0f}, ws, 11);
    check_head({37, 64, 1001, 16, 0.25f}, ws, 12);
    check_head({5, 136, 513, 1024, 1.0f / 5}, ws, 13);
    check_head({33, 256, 32000, 16, 1.0f}, ws, 14);
  } catch (...) {
    lora::cuda::lm_head_workspace_destroy(ws);
    throw;
  }
  lora::cuda::lm_head_workspace_destroy(ws);
}

// Argument checks run before any CUDA call, so they are tested on every machine.
TEST(cuda_cross_entropy_rejects_bad_arguments) {
  using lora::cuda::cross_entropy_rows;
  CHECK_INVALID_ARGUMENT([] { cross_entropy_rows(nullptr, nullptr, nullptr, nullptr, 4, 0, 1.f, nullptr); }, "V = 0");
  CHECK_INVALID_ARGUMENT([] { cross_entropy_rows(nullptr, nullptr, nullptr, nullptr, -1, 10, 1.f, nullptr); }, "n = -1");
  CHECK_INVALID_ARGUMENT([] { cross_entropy_rows(nullptr, nullptr, nullptr, nullptr, 2, 10, 1.f, nullptr); }, "loss is null");
  cross_entropy_rows(nullptr, nullptr, nullptr, nullptr, 0, 10, 1.f, nullptr);  // nothing to do

  lora::cuda::LmHeadWorkspace* ws = lora::cuda::lm_head_workspace_create();
  lora::cuda::LmHeadArgs a;
  a.n = 3;
  a.C = 8;
  a.V = 10;
  CHECK_INVALID_ARGUMENT([&] { lora::cuda::lm_head_cross_entropy(a, nullptr, nullptr); }, "ws is null");
  CHECK_INVALID_ARGUMENT([&] { lora::cuda::lm_head_cross_entropy(a, ws, nullptr); }, "x is null");
  a.chunk = 0;
  CHECK_INVALID_ARGUMENT([&] { lora::cuda::lm_head_cross_entropy(a, ws, nullptr); }, "chunk = 0");
  a.chunk = 4;
  a.V = -2;
  CHECK_INVALID_ARGUMENT([&] { lora::cuda::lm_head_cross_entropy(a, ws, nullptr); }, "V = -2");
  a.V = 10;
  a.C = 0;
  CHECK_INVALID_ARGUMENT([&] { lora::cuda::lm_head_cross_entropy(a, ws, nullptr); }, "C = 0");
  a.C = 8;
  a.n = -5;
  CHECK_INVALID_ARGUMENT([&] { lora::cuda::lm_head_cross_entropy(a, ws, nullptr); }, "n = -5");
  a.n = 0;  // no targets: zero loss, nothing launched
  CHECK_EQ(lora::cuda::lm_head_cross_entropy(a, ws, nullptr), 0.0);
  lora::cuda::lm_head_workspace_destroy(ws);
}
