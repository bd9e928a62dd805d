#include "ops/cross_entropy.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/threadpool.hpp"
#include "ops/vexp.hpp"

namespace lora {

namespace {

float row_max(const float* row, int64_t V) {
  float mx = row[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, row[i]);
  return mx;
}

// out[i] = exp(row[i] - mx); returns their sum (double): the stable form of log-sum-exp.
// `out` may be `row`.
double shifted_exp(float* out, const float* row, int64_t V, float mx) {
  for (int64_t i = 0; i < V; ++i) out[i] = row[i] - mx;
  return exp_inplace(out, V);
}

void check_target(int32_t target, int64_t t, int64_t V) {
  // The shard loader rejects out-of-range token ids with a file-level error; reaching here
  // with one is a programming error in the caller, so fail loudly rather than read past V.
  if (target < -1 || target >= V)
    throw std::out_of_range("cross_entropy: target " + std::to_string(target) + " at row " +
                            std::to_string(t) + " is outside [-1, " + std::to_string(V) + ")");
}

}  // namespace

double cross_entropy_forward(const float* logits, const int32_t* targets, int64_t T, int64_t V) {
  for (int64_t t = 0; t < T; ++t) check_target(targets[t], t, V);
  // Per-row losses summed afterwards in row order: the total is the same for any thread count.
  std::vector<double> row_loss(static_cast<size_t>(T), 0.0);
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    std::vector<float> scratch(static_cast<size_t>(V));
    for (int64_t t = begin; t < end; ++t) {
      if (targets[t] < 0) continue;
      const float* row = logits + t * V;
      const float mx = row_max(row, V);
      const double sum = shifted_exp(scratch.data(), row, V, mx);
      row_loss[t] = std::log(sum) + double(mx) - double(row[targets[t]]);
    }
  });
  double total = 0.0;
  for (double l : row_loss) total += l;
  return total;
}

void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                            int64_t T, int64_t V, float scale) {
  for (int64_t t = 0; t < T; ++t) check_target(targets[t], t, V);
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      float* drow = dlogits + t * V;
      const int32_t target = targets[t];
      if (target < 0) {
        std::fill(drow, drow + V, 0.f);
        continue;
      }
      // Each element is read before it is written: dlogits may be logits.
      const float* row = logits + t * V;
      const float mx = row_max(row, V);
      const double sum = shifted_exp(drow, row, V, mx);
      const float f = static_cast<float>(double(scale) / sum);
      for (int64_t i = 0; i < V; ++i) drow[i] *= f;
      drow[target] -= scale;
    }
  });
}

}  // namespace lora
