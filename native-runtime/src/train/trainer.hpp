#pragma once
// `lora-runtime train`: the whole run, from run.json to RUN_DIR/adapter/.
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/cuda.hpp"
#include "train/events.hpp"

namespace lora {

constexpr const char* kRuntimeVersion = "0.1.0";
constexpr int kProtocolVersion = 1;

// Where a run (or `eval`) computes: compute.device resolved against the GPUs of this machine.
struct DeviceChoice {
  bool cuda = false;
  cuda::DeviceInfo gpu;   // the GPU, when cuda
  std::string why_cpu;    // for "auto" resolved to the CPU: why no GPU was taken
};

// Where the device request was written, for the error about a device that cannot be used:
// run.json's compute.device (file, line) or eval's --device.
struct DeviceOrigin {
  std::string file, field;
  int64_t line = 0;
};

// "cpu" is the CPU; "auto" the first supported GPU, else the CPU with why_cpu set; "cuda:N"
// GPU N, or InputError code "device" (field and file of `origin`) saying what was found, when
// the build has no CUDA, there is no GPU N, or it is older than cuda::kMinComputeMajor. Any
// other string is an InputError too. Pure (the GPU list is an argument), so it is tested
// without a GPU.
DeviceChoice choose_device(const std::string& device, bool cuda_built, const std::vector<cuda::DeviceInfo>& gpus,
                           const std::string& why_none, const DeviceOrigin& origin);
// choose_device over cuda::compiled() and cuda::list_devices().
DeviceChoice select_device(const std::string& device, const DeviceOrigin& origin);

struct TrainProgress {
  int64_t step = 0;   // optimizer steps completed, for the `done` event after a failure
};

// Runs (or with `resume`, continues) the training described by RUN_DIR/run.json, emitting
// events through `events` (which it points at RUN_DIR/events.jsonl). Returns the exit code
// for a normal end (0, also when stopped on request); throws InputError, OutOfMemoryError,
// std::bad_alloc or other exceptions for main() to report.
int run_train(const std::string& run_dir, bool resume, EventSink& events, TrainProgress& progress);

// `lora-runtime eval`: the mean loss of the model (with an optional PEFT adapter) over the
// targets of a shard, packed as for training, without dropout.
struct EvalOptions {
  std::string model, adapter, data;
  std::string quant = "none";
  int64_t seq_len = 0;      // 0: the longest document (capped at max_position_embeddings)
  int64_t micro_batch = 1;
  std::string device = "auto";   // as compute.device: auto, cpu or cuda:N
};
struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;       // target tokens scored
  int64_t documents_split = 0;
};
// Throws InputError for bad inputs (the model, the adapter, the shard, --quant or --device).
EvalResult run_eval(const EvalOptions& opt);

}  // namespace lora
