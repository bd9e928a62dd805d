#pragma once
// One CUDA device in use by this process: selected once, with the stream every kernel and
// GEMM of the training step runs on, a side stream for activation offload, and the
// device's properties read once (SM count, shared memory per block, L2).
#include "cuda/common.hpp"
#include "cuda/cuda.hpp"

namespace lora::cuda {

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;       // compute stream
  cudaStream_t copy_stream = nullptr;  // host<->device copies overlapped with compute
  cudaDeviceProp prop{};
  DeviceInfo info;
};

// Selects `device` (cudaSetDevice), creates the streams and returns the process-wide context.
// Throws InputError (code "device") naming the device when it does not exist or is older
// than kMinComputeMajor. Calling it again with the same index returns the same context.
Context& open_device(int device);
// The context opened by open_device; throws std::logic_error when none is.
Context& current();
void synchronize();   // the compute stream

// Device memory as the driver sees it (NVML through dlopen of libnvidia-ml when present,
// else cudaMemGetInfo): used and total bytes of the whole GPU, all processes included.
struct DeviceMemory {
  uint64_t used = 0, total = 0;
};
DeviceMemory device_memory(int device);

}  // namespace lora::cuda
