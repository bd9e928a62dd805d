#pragma once
// Helpers for the CUDA tests: each test starts with LORA_REQUIRE_GPU(), which skips it with
// the reason when this machine has no usable GPU, and copies data through these helpers.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common.hpp"
#include "cuda/context.hpp"
#include "cuda/cuda.hpp"
#include "cuda/memory.hpp"
#include "test.hpp"

namespace lora_test {

// Opens device 0 when a supported GPU is present; else records the skip reason and returns
// false.
inline bool gpu_available() {
  static int state = -1;  // -1 unknown, 0 none, 1 ready
  static std::string reason;
  if (state < 0) {
    std::string why;
    const auto devs = lora::cuda::list_devices(&why);
    state = 0;
    if (devs.empty()) {
      reason = "no CUDA GPU on this machine (" + why + ")";
    } else if (!devs[0].supported) {
      reason = "GPU 0 (" + devs[0].name + ") is not supported: " + devs[0].note;
    } else {
      lora::cuda::open_device(0);
      state = 1;
    }
  }
  if (state == 0) skip(reason);
  return state == 1;
}

#define LORA_REQUIRE_GPU() \
  do {                     \
    if (!::lora_test::gpu_available()) return; \
  } while (0)

inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Rounds every value to bf16 (so CPU references see exactly the GPU's inputs).
inline void round_to_bf16(std::vector<float>& x) {
  for (auto& v : x) v = bf16_bits_to_f32(f32_to_bf16_bits(v));
}

template <class T>
lora::cuda::DeviceArray<T> to_device(const std::vector<T>& host) {
  lora::cuda::DeviceArray<T> d(host.size());
  if (!host.empty()) lora::cuda::copy_to_device(d.data(), host.data(), host.size() * sizeof(T));
  return d;
}
inline lora::cuda::DeviceArray<lora::cuda::bf16> to_device_bf16(const std::vector<float>& host) {
  std::vector<uint16_t> bits(host.size());
  for (size_t i = 0; i < host.size(); ++i) bits[i] = f32_to_bf16_bits(host[i]);
  lora::cuda::DeviceArray<lora::cuda::bf16> d(host.size());
  if (!host.empty()) lora::cuda::copy_to_device(d.data(), bits.data(), bits.size() * 2);
  return d;
}
template <class T>
std::vector<T> to_host(const lora::cuda::DeviceArray<T>& d) {
  std::vector<T> h(d.size());
  if (!h.empty()) lora::cuda::copy_to_host(h.data(), d.data(), h.size() * sizeof(T));
  return h;
}
inline std::vector<float> to_host_f32(const lora::cuda::DeviceArray<lora::cuda::bf16>& d) {
  std::vector<uint16_t> bits(d.size());
  if (!bits.empty()) lora::cuda::copy_to_host(bits.data(), d.data(), bits.size() * 2);
  std::vector<float> h(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) h[i] = bf16_bits_to_f32(bits[i]);
  return h;
}

// max |a - b| / (atol + rtol * |b|) over all elements: <= 1 means within tolerance.
inline double worst_ratio(const std::vector<float>& a, const std::vector<float>& b, double atol, double rtol) {
  double w = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]) / (atol + rtol * std::fabs(static_cast<double>(b[i])));
    if (!(d <= w)) w = d;  // NaN makes it NaN-large
    if (std::isnan(d)) return 1e30;
  }
  return w;
}

// Checks that fn() throws std::invalid_argument whose message contains `needle` (the CUDA
// launchers validate their arguments before any CUDA call, so this runs on every machine).
template <class Fn>
void check_invalid_argument(Fn&& fn, const std::string& needle, const char* file, int line) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(needle) == std::string::npos)
      record_failure(file, line, "message '" + std::string(e.what()) + "' does not name '" + needle + "'");
    return;
  } catch (const std::exception& e) {
    record_failure(file, line, std::string("not an invalid_argument: ") + e.what());
    return;
  }
  record_failure(file, line, "no exception for " + needle);
}
#define CHECK_INVALID_ARGUMENT(fn, needle) ::lora_test::check_invalid_argument((fn), (needle), __FILE__, __LINE__)

}  // namespace lora_test
