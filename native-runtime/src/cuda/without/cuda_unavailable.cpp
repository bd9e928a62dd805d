// The CUDA entry points of a runtime built without nvcc: no GPU is listed, and asking for
// one is an input error that says how to get a CUDA build.
#include "common/errors.hpp"
#include "cuda/cuda.hpp"
#include "train/engine.hpp"

namespace lora::cuda {

namespace {
const char* kWhy = "this lora-runtime was built without CUDA (nvcc was not found when it was compiled)";
}

bool compiled() { return false; }

std::vector<DeviceInfo> list_devices(std::string* why) {
  if (why) *why = kWhy;
  return {};
}

std::string runtime_version() { return ""; }

bool supports_model(const ModelConfig&, std::string* why) {
  if (why) *why = kWhy;
  return false;
}

std::unique_ptr<TrainEngine> make_cuda_engine(const Model&, LoraState&, const CudaTrainOptions&) {
  throw InputError("device", kWhy, "", "compute.device", 0,
                   "set compute.device to \"cpu\" or \"auto\", or rebuild the runtime on a machine with the CUDA "
                   "toolkit (nvcc on PATH): npm run build:native.");
}

uint64_t estimate_device_bytes(const Model&, const LoraState&, int64_t, bool, const CudaTrainOptions&) { return 0; }

DeviceEstimate estimate_device(const Model&, const LoraState&, int64_t, bool, const CudaTrainOptions&) { return {}; }

}  // namespace lora::cuda
