// What this CUDA build offers (cuda.hpp): the GPUs the driver reports and whether each can
// train. list_devices never throws: the `devices` command, the hello event and the CPU
// fallback all call it on machines that may have no driver at all.
#include <exception>
#include <string>
#include <vector>

#include "cuda/attention.hpp"
#include "cuda/context.hpp"
#include "cuda/cuda.hpp"
#include "formats/model_config.hpp"

namespace lora::cuda {

bool compiled() { return true; }

bool supports_model(const ModelConfig& cfg, std::string* why) {
  if (attention_supports_head_dim(cfg.head_dim)) return true;
  if (why)
    *why = "the CUDA attention kernels need a head size that is a multiple of 8 up to 256; this model's is " +
           std::to_string(cfg.head_dim);
  return false;
}

std::string runtime_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
}

namespace {

std::vector<DeviceInfo> list_devices_or_throw(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) {
      if (err == cudaErrorInsufficientDriver) {
        *why = "the NVIDIA driver is missing or older than this runtime's CUDA " + runtime_version() + " needs (" +
               cudaGetErrorString(err) + ")";
      } else if (err == cudaErrorNoDevice) {
        *why = std::string("no CUDA-capable device was found (") + cudaGetErrorString(err) + ")";
      } else {
        *why = std::string("the CUDA driver could not be queried: ") + cudaGetErrorName(err) + " (" +
               cudaGetErrorString(err) + ")";
      }
    }
    return {};
  }
  if (count == 0) {
    if (why) *why = "the NVIDIA driver reports no CUDA device";
    return {};
  }
  std::vector<DeviceInfo> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      (void)cudaGetLastError();
      continue;
    }
    DeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    d.multiprocessors = prop.multiProcessorCount;
    const DeviceMemory mem = device_memory(i);
    d.memory_total = mem.total ? mem.total : prop.totalGlobalMem;
    d.memory_free = mem.total >= mem.used ? mem.total - mem.used : 0;
    d.supported = prop.major >= kMinComputeMajor;
    if (!d.supported) {
      d.note = "compute capability " + std::to_string(prop.major) + "." + std::to_string(prop.minor) +
               " is older than " + std::to_string(kMinComputeMajor) +
               ".0 (bf16 tensor cores); training runs on the CPU";
    }
    out.push_back(std::move(d));
  }
  if (out.empty() && why) *why = "the NVIDIA driver lists " + std::to_string(count) + " device(s) but none answered";
  return out;
}

}  // namespace

std::vector<DeviceInfo> list_devices(std::string* why) {
  if (why) why->clear();
  try {
    return list_devices_or_throw(why);
  } catch (const std::exception& e) {
    if (why) *why = e.what();
    return {};
  }
}

}  // namespace lora::cuda
