// Device discovery and the device context (cuda/cuda.hpp, cuda/context.hpp). On a machine
// without a driver or GPU, list_devices answers empty with the reason and open_device is an
// input error for compute.device; with a GPU, each listed device is described and the
// context is opened once.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/errors.hpp"
#include "cuda/context.hpp"
#include "cuda/cuda.hpp"
#include "cuda/memory.hpp"
#include "cuda_test_util.hpp"
#include "test.hpp"

TEST(cuda_build_reports_itself) {
  CHECK(lora::cuda::compiled());
  const std::string v = lora::cuda::runtime_version();
  CHECK_EQ(v, std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10));
}

TEST(cuda_list_devices_never_throws) {
  std::string why = "stale";
  const auto devices = lora::cuda::list_devices(&why);
  (void)lora::cuda::list_devices(nullptr);
  if (devices.empty()) {
    CHECK(!why.empty());
    CHECK(why != "stale");
    return;
  }
  CHECK(why.empty());
  for (size_t i = 0; i < devices.size(); ++i) {
    const auto& d = devices[i];
    CHECK_EQ(d.index, static_cast<int>(i));
    CHECK(!d.name.empty());
    CHECK(d.cc_major > 0);
    CHECK(d.multiprocessors > 0);
    CHECK(d.memory_total > 0);
    CHECK(d.memory_free <= d.memory_total);
    CHECK_EQ(d.supported, d.cc_major >= lora::cuda::kMinComputeMajor);
    CHECK_EQ(d.note.empty(), d.supported);
    if (!d.supported) CHECK(d.note.find("compute capability") != std::string::npos);
  }
}

// A device index that does not exist names compute.device, with or without a GPU.
TEST(cuda_open_device_rejects_missing_devices) {
  for (int index : {-1, 1000}) {
    bool thrown = false;
    try {
      lora::cuda::open_device(index);
    } catch (const lora::InputError& e) {
      thrown = true;
      CHECK_EQ(e.code, std::string("device"));
      CHECK_EQ(e.field, std::string("compute.device"));
      CHECK(!e.hint.empty());
      if (!lora::cuda::list_devices().empty())
        CHECK(std::string(e.what()).find("cuda:" + std::to_string(index)) != std::string::npos);
    } catch (const std::exception& e) {
      lora_test::record_failure(__FILE__, __LINE__, std::string("not an InputError: ") + e.what());
      thrown = true;
    }
    CHECK(thrown);
  }
}

TEST(cuda_without_gpu_has_no_context) {
  if (!lora::cuda::list_devices().empty()) {
    lora_test::skip("this machine has a GPU");
    return;
  }
  CHECK_INPUT_ERROR(lora::cuda::open_device(0), "device");
  bool thrown = false;
  try {
    lora::cuda::current();
  } catch (const std::logic_error&) {
    thrown = true;
  }
  CHECK(thrown);
}

TEST(cuda_open_device_once) {
  LORA_REQUIRE_GPU();
  lora::cuda::Context& a = lora::cuda::open_device(0);
  lora::cuda::Context& b = lora::cuda::open_device(0);
  CHECK(&a == &b);
  CHECK(&lora::cuda::current() == &a);
  CHECK_EQ(a.device, 0);
  CHECK(a.stream != nullptr);
  CHECK(a.copy_stream != nullptr);
  CHECK(a.stream != a.copy_stream);
  CHECK(a.prop.major >= lora::cuda::kMinComputeMajor);
  CHECK(a.prop.multiProcessorCount > 0);
  CHECK_EQ(a.info.name, std::string(a.prop.name));
  CHECK(a.info.supported);
  lora::cuda::synchronize();
  int current = -1;
  LORA_CUDA_CHECK(cudaGetDevice(&current));
  CHECK_EQ(current, 0);
}

// device_memory sees the whole GPU (NVML or cudaMemGetInfo) and this process's allocations.
TEST(cuda_device_memory_sees_allocations) {
  LORA_REQUIRE_GPU();
  size_t free_bytes = 0, total_bytes = 0;
  LORA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const auto m0 = lora::cuda::device_memory(0);
  CHECK(m0.total > 0);
  CHECK(m0.used <= m0.total);
  CHECK(m0.total >= total_bytes / 10 * 9 && m0.total <= total_bytes / 10 * 11);

  lora::cuda::release_cached();
  const uint64_t bytes = uint64_t(512) << 20;
  void* p = lora::cuda::device_alloc(bytes);
  const auto m1 = lora::cuda::device_memory(0);
  // Other processes may allocate or free meanwhile; a quarter of the block is the margin.
  CHECK(m1.used >= m0.used + bytes / 4 * 3);
  lora::cuda::device_free(p);
  lora::cuda::release_cached();
}
