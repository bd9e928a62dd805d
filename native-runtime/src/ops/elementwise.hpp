#pragma once
// Element-wise passes over n values, split across the pool when large enough to pay for
// the hand-off. Internal to ops/. Each element is processed once, by one thread, so the
// results do not depend on the thread count.
#include <cstdint>

#include "common/threadpool.hpp"

namespace lora {

// Below this size an element-wise pass is cheaper inline than through the pool.
constexpr int64_t kElementwiseParallelMin = 1 << 15;

// fn(begin, end) over [0, n).
template <typename Fn>
void elementwise(int64_t n, const Fn& fn) {
  if (n < kElementwiseParallelMin) {
    fn(int64_t(0), n);
    return;
  }
  parallel_for(n, [&](int64_t begin, int64_t end, int) { fn(begin, end); });
}

}  // namespace lora
