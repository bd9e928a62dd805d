#pragma once
// The caching device allocator: every device allocation of the training path goes through
// it, so `step` events can report what the run holds (mem.used) and its high-water mark
// (mem.peak). Freed blocks are kept in size-rounded free lists and reused; when cudaMalloc
// fails the cache is released and the allocation retried once, then OutOfMemoryError
// (exit 3) is thrown with the bytes asked for and the bytes already held.
#include <cstddef>
#include <cstdint>
#include <utility>

#include "cuda/common.hpp"

namespace lora::cuda {

struct AllocatorStats {
  uint64_t used = 0;       // bytes handed out and not yet freed (rounded sizes)
  uint64_t peak = 0;       // high-water mark of `used`
  uint64_t reserved = 0;   // bytes obtained from cudaMalloc (used + cached)
  uint64_t allocations = 0, cache_hits = 0;
};

void* device_alloc(size_t bytes);      // never returns nullptr for bytes > 0 (throws instead)
// The block size device_alloc hands out (and AllocatorStats counts) for `bytes`: 512 B steps
// below 1 MiB, 2 MiB steps above; 0 for 0. Host arithmetic, for the memory estimates.
size_t allocator_size_class(size_t bytes);
void device_free(void* p);             // nullptr is a no-op
AllocatorStats allocator_stats();
void reset_peak();                     // peak = used
void release_cached();                 // cudaFree every cached block

// Pinned host memory (for offloaded activations and fast copies); throws OutOfMemoryError.
void* host_alloc_pinned(size_t bytes);
void host_free_pinned(void* p);

// An owning, movable device array of T. resize() reallocates only when growing (contents
// are not preserved); size() is the count asked for last.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) { resize(n); }
  ~DeviceArray() { device_free(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : ptr_(o.ptr_), n_(o.n_), cap_(o.cap_) { o.ptr_ = nullptr; o.n_ = o.cap_ = 0; }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      device_free(ptr_);
      ptr_ = o.ptr_; n_ = o.n_; cap_ = o.cap_;
      o.ptr_ = nullptr; o.n_ = o.cap_ = 0;
    }
    return *this;
  }
  void resize(size_t n) {
    if (n > cap_) {
      device_free(ptr_);
      ptr_ = nullptr;
      cap_ = 0;
      ptr_ = static_cast<T*>(device_alloc(n * sizeof(T)));
      cap_ = n;
    }
    n_ = n;
  }
  void reset() { device_free(ptr_); ptr_ = nullptr; n_ = cap_ = 0; }
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  bool empty() const { return n_ == 0; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0, cap_ = 0;
};

// Synchronous copies on the compute stream (for setup, tests and checkpoints).
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);

}  // namespace lora::cuda
