// The caching device allocator (memory.hpp). cudaMalloc and cudaFree synchronise the device
// and cost tens of microseconds, and a training step frees and re-asks for the same
// activation sizes every micro-batch, so freed blocks go to per-size free lists and are
// handed out again. Blocks are rounded to size classes (512 B below 1 MiB, 2 MiB above) so
// that slightly different requests (a shorter last batch) still hit the cache.
//
// Reuse is stream-ordered for free: every kernel of the step runs on the one compute
// stream, so a block freed on the host and handed out again is only touched by work queued
// after the work that used it. Memory used on the copy stream must be synchronised by its
// user before it is freed.
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/errors.hpp"
#include "cuda/context.hpp"
#include "cuda/memory.hpp"

namespace lora::cuda {

namespace {

constexpr size_t kSmallLimit = size_t(1) << 20;  // 1 MiB
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t(2) << 20;  // 2 MiB

size_t size_class(size_t bytes) {
  const size_t round = bytes < kSmallLimit ? kSmallRound : kLargeRound;
  return (bytes + round - 1) / round * round;
}

std::string gib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / double(uint64_t(1) << 30));
  return buf;
}

const char* kOomHint =
    "lower train.micro_batch or train.seq_len (raise grad_accum to keep the batch), set train.grad_checkpointing "
    "to true or compute.offload_activations to true, use quant.type nf4, or close other programs using the GPU.";

struct AllocatorState {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;  // size class -> cached blocks
  std::unordered_map<void*, size_t> live;                    // handed-out block -> size class
  AllocatorStats stats;
};

// Never destroyed: DeviceArray objects with static storage may free after main returns,
// and must not find a destroyed map.
AllocatorState& state() {
  static AllocatorState* s = new AllocatorState();
  return *s;
}

// cudaFree every cached block; the caller holds the mutex.
void release_cached_locked(AllocatorState& s) {
  for (auto& kv : s.free_lists) {
    for (void* p : kv.second) {
      // A failure here (the driver is shutting down) leaves nothing to recover.
      (void)cudaFree(p);
      s.stats.reserved -= kv.first;
    }
  }
  s.free_lists.clear();
}

cudaStream_t compute_stream_or_default() {
  try {
    return current().stream;
  } catch (const std::logic_error&) {
    return nullptr;  // no device opened: the legacy default stream
  }
}

}  // namespace

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t cls = size_class(bytes);
  if (cls < bytes) throw std::invalid_argument("device_alloc: bytes is too large (" + std::to_string(bytes) + ")");
  AllocatorState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  void* p = nullptr;
  auto it = s.free_lists.find(cls);
  if (it != s.free_lists.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    ++s.stats.cache_hits;
  } else {
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_cached_locked(s);
      p = nullptr;
      err = cudaMalloc(&p, cls);
    }
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      throw OutOfMemoryError("out of GPU memory: asked for " + gib(bytes) + " with " + gib(s.stats.used) +
                                 " already held by this run",
                             bytes, kOomHint);
    }
    if (err != cudaSuccess) throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
    s.stats.reserved += cls;
  }
  s.live.emplace(p, cls);
  ++s.stats.allocations;
  s.stats.used += cls;
  if (s.stats.used > s.stats.peak) s.stats.peak = s.stats.used;
  return p;
}

void device_free(void* p) {
  if (!p) return;
  AllocatorState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.live.find(p);
  if (it == s.live.end()) {
    // A programmer error (double free, or memory from cudaMalloc directly): keeping the
    // books intact matters more than the pointer, which is left alone.
    std::fprintf(stderr, "lora-runtime: device_free(%p): not a block of the device allocator; ignored\n", p);
    return;
  }
  const size_t cls = it->second;
  s.live.erase(it);
  s.stats.used -= cls;
  s.free_lists[cls].push_back(p);
}

size_t allocator_size_class(size_t bytes) { return bytes == 0 ? 0 : size_class(bytes); }

AllocatorStats allocator_stats() {
  AllocatorState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.stats;
}

void reset_peak() {
  AllocatorState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.stats.peak = s.stats.used;
}

void release_cached() {
  AllocatorState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  release_cached_locked(s);
}

void* host_alloc_pinned(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMallocHost(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    throw OutOfMemoryError("out of pinned host memory: asked for " + gib(bytes), bytes,
                           "set compute.offload_activations to false, or lower train.micro_batch or train.seq_len.");
  }
  if (err != cudaSuccess) throw_cuda_error(err, "cudaMallocHost", __FILE__, __LINE__);
  return p;
}

void host_free_pinned(void* p) {
  if (!p) return;
  LORA_CUDA_CHECK(cudaFreeHost(p));
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (!dst) throw std::invalid_argument("copy_to_device: dst is null");
  if (!src) throw std::invalid_argument("copy_to_device: src is null");
  const cudaStream_t stream = compute_stream_or_default();
  LORA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (!dst) throw std::invalid_argument("copy_to_host: dst is null");
  if (!src) throw std::invalid_argument("copy_to_host: src is null");
  const cudaStream_t stream = compute_stream_or_default();
  LORA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace lora::cuda
