#pragma once
// `lora-runtime train`: the whole run, from run.json to RUN_DIR/adapter/.
#include <cstdint>
#include <string>

#include "train/events.hpp"

namespace lora {

constexpr const char* kRuntimeVersion = "0.1.0";
constexpr int kProtocolVersion = 1;

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
};
struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;       // target tokens scored
  int64_t documents_split = 0;
};
// Throws InputError for bad inputs (the model, the adapter, the shard, or --quant).
EvalResult run_eval(const EvalOptions& opt);

}  // namespace lora
