// The caching device allocator and the copies (cuda/memory.hpp): blocks are reused by size
// class, used/peak follow the rounded sizes, an impossible allocation is an
// OutOfMemoryError that leaves the allocator usable, and freeing a pointer the allocator
// did not hand out changes nothing. The last two checks need no GPU and run everywhere.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "cuda/memory.hpp"
#include "cuda_test_util.hpp"
#include "test.hpp"

using lora::cuda::AllocatorStats;
using lora::cuda::allocator_stats;
using lora::cuda::device_alloc;
using lora::cuda::device_free;

namespace {

constexpr uint64_t kMiB = uint64_t(1) << 20;

}  // namespace

TEST(cuda_allocator_reuses_freed_blocks) {
  LORA_REQUIRE_GPU();
  void* p = device_alloc(1000);
  CHECK(p != nullptr);
  device_free(p);
  const AllocatorStats before = allocator_stats();
  void* q = device_alloc(1000);
  CHECK(q == p);
  device_free(q);
  // 700 and 1000 bytes share the 1024-byte class.
  void* r = device_alloc(700);
  CHECK(r == p);
  const AllocatorStats after = allocator_stats();
  CHECK_EQ(after.cache_hits, before.cache_hits + 2);
  CHECK_EQ(after.allocations, before.allocations + 2);
  CHECK_EQ(after.reserved, before.reserved);
  device_free(r);
  CHECK(device_alloc(0) == nullptr);
}

TEST(cuda_allocator_counts_used_and_peak) {
  LORA_REQUIRE_GPU();
  lora::cuda::release_cached();
  lora::cuda::reset_peak();
  const AllocatorStats s0 = allocator_stats();
  CHECK_EQ(s0.peak, s0.used);
  CHECK_EQ(s0.reserved, s0.used);  // nothing cached after release_cached

  void* a = device_alloc(3 * kMiB);   // 2 MiB classes above 1 MiB: 4 MiB
  void* b = device_alloc(100);        // 512-byte classes below: 512
  void* c = device_alloc(kMiB - 1);   // 1 MiB
  void* d = device_alloc(kMiB);       // 2 MiB
  const uint64_t held = 4 * kMiB + 512 + kMiB + 2 * kMiB;
  AllocatorStats s = allocator_stats();
  CHECK_EQ(s.used, s0.used + held);
  CHECK_EQ(s.peak, s.used);
  CHECK_EQ(s.reserved, s0.reserved + held);

  device_free(a);
  s = allocator_stats();
  CHECK_EQ(s.used, s0.used + held - 4 * kMiB);
  CHECK_EQ(s.peak, s0.used + held);       // the high-water mark stays
  CHECK_EQ(s.reserved, s0.reserved + held);  // the block is cached, not returned
  lora::cuda::reset_peak();
  CHECK_EQ(allocator_stats().peak, s.used);

  device_free(b);
  device_free(c);
  device_free(d);
  lora::cuda::release_cached();
  s = allocator_stats();
  CHECK_EQ(s.used, s0.used);
  CHECK_EQ(s.reserved, s0.reserved);
}

TEST(cuda_allocator_oom_throws_and_recovers) {
  LORA_REQUIRE_GPU();
  void* keep = device_alloc(kMiB);
  const AllocatorStats before = allocator_stats();
  const size_t absurd = size_t(1) << 50;  // 1 PiB
  bool thrown = false;
  try {
    device_alloc(absurd);
  } catch (const lora::OutOfMemoryError& e) {
    thrown = true;
    CHECK_EQ(e.bytes_needed, uint64_t(absurd));
    CHECK(std::string(e.what()).find("GiB") != std::string::npos);
    CHECK(!e.hint.empty());
  }
  CHECK(thrown);
  const AllocatorStats after = allocator_stats();
  CHECK_EQ(after.used, before.used);
  CHECK_EQ(after.allocations, before.allocations);
  // Still usable: a fresh block, and the held one is intact.
  void* p = device_alloc(2 * kMiB);
  CHECK(p != nullptr);
  std::vector<uint8_t> pattern(kMiB, 0x5a), back(kMiB, 0);
  lora::cuda::copy_to_device(keep, pattern.data(), pattern.size());
  lora::cuda::copy_to_host(back.data(), keep, back.size());
  CHECK(back == pattern);
  device_free(p);
  device_free(keep);
}

TEST(cuda_copies_and_pinned_memory_round_trip) {
  LORA_REQUIRE_GPU();
  std::vector<float> host(12345);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.25f - 7.f;
  auto d = lora_test::to_device(host);
  CHECK(lora_test::to_host(d) == host);

  const size_t bytes = host.size() * sizeof(float);
  auto* pinned = static_cast<float*>(lora::cuda::host_alloc_pinned(bytes));
  CHECK(pinned != nullptr);
  lora::cuda::copy_to_host(pinned, d.data(), bytes);
  CHECK(std::memcmp(pinned, host.data(), bytes) == 0);
  lora::cuda::host_free_pinned(pinned);
  lora::cuda::host_free_pinned(nullptr);
  CHECK(lora::cuda::host_alloc_pinned(0) == nullptr);
}

TEST(cuda_device_array_grows_only) {
  LORA_REQUIRE_GPU();
  lora::cuda::DeviceArray<float> a(1000);
  float* p = a.data();
  a.resize(10);  // smaller: same block
  CHECK(a.data() == p);
  CHECK_EQ(a.size(), size_t(10));
  CHECK_EQ(a.bytes(), size_t(40));
  a.resize(1 << 20);
  CHECK(a.data() != nullptr);
  CHECK_EQ(a.size(), size_t(1) << 20);
  lora::cuda::DeviceArray<float> b(std::move(a));
  CHECK(a.data() == nullptr && a.empty());
  CHECK_EQ(b.size(), size_t(1) << 20);
  const uint64_t used = allocator_stats().used;
  b.reset();
  CHECK(allocator_stats().used < used);
}

// No CUDA call is involved: the books are checked before anything reaches the driver.
TEST(cuda_allocator_ignores_foreign_pointers) {
  const AllocatorStats before = allocator_stats();
  int on_stack = 0;
  device_free(&on_stack);
  device_free(nullptr);
  const AllocatorStats after = allocator_stats();
  CHECK_EQ(after.used, before.used);
  CHECK_EQ(after.reserved, before.reserved);
  CHECK_EQ(after.allocations, before.allocations);
}

// Without a GPU an allocation is an exception with the driver's reason, not a crash.
TEST(cuda_allocator_without_gpu_throws) {
  if (!lora::cuda::list_devices().empty()) {
    lora_test::skip("this machine has a GPU");
    return;
  }
  const AllocatorStats before = allocator_stats();
  bool thrown = false;
  try {
    device_alloc(1024);
  } catch (const std::exception& e) {
    thrown = true;
    CHECK(std::string(e.what()).find("cudaMalloc") != std::string::npos);
  }
  CHECK(thrown);
  CHECK_EQ(allocator_stats().used, before.used);
}
