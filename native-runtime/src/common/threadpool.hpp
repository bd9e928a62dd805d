#pragma once
// A fixed pool of worker threads with a static-partition parallel_for.
// Static partitioning keeps every reduction's order fixed for a given thread count, which
// is what makes training bit-for-bit deterministic (same inputs + seed + threads).
#include <cstdint>
#include <functional>

namespace lora {

// Number of threads used by parallel_for; 0 = all hardware threads. Call once at start-up
// (and from tests); it waits for a running parallel_for to finish. num_threads() is 1 inside
// a parallel_for body, where nested calls run serially.
void set_num_threads(int n);
int num_threads();

// Runs fn(begin, end, thread_index) over [0, n) split into num_threads() contiguous chunks
// (fewer when n is small). Blocks until all chunks are done. Nested calls run serially.
// thread_index is the chunk's index in [0, num_threads()): chunk c always covers the same
// range and is run by exactly one thread, so it can index per-thread scratch or partial
// sums (which pool thread runs which chunk is decided at run time). A nested call reports
// the enclosing chunk's index.
void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end, int thread)>& fn);

}  // namespace lora
