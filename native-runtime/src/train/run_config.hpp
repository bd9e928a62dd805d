#pragma once
// RUN_DIR/run.json: parsing, defaults and field-level validation. The schema, with every
// field's type, default and range, is documented in docs/run-json.md.
#include <cstdint>
#include <string>
#include <vector>

#include "model/lora.hpp"
#include "model/model.hpp"

namespace lora {

enum class Optimizer { AdamW, SGD };
enum class Schedule { Constant, Linear, Cosine };

struct RunConfig {
  std::string run_dir;         // absolute
  std::string file;            // RUN_DIR/run.json
  std::string model;           // absolute model folder
  std::string data_train;      // absolute
  std::string data_eval;       // absolute, empty when none

  // lora
  int64_t r = 16;
  int r_line = 0;                    // line of lora.r in run.json (0 when defaulted)
  double alpha = 32;
  double dropout = 0.05;
  bool rslora = false;
  std::vector<std::string> targets;  // as written (validated against the model later)
  bool targets_default = true;       // lora.targets absent: every module of the model's architecture
  int targets_line = 0;
  std::string init_adapter;          // absolute, empty when none

  // quant
  QuantSettings quant;

  // train
  int64_t seq_len = 2048;
  int64_t micro_batch = 1;
  int64_t grad_accum = 8;
  int64_t epochs = 1;
  int64_t max_steps = 0;             // 0 = from epochs
  Optimizer optimizer = Optimizer::AdamW;
  double lr = 2e-4;
  Schedule schedule = Schedule::Cosine;
  int64_t warmup_steps = 10;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;
  bool grad_checkpointing = true;
  uint64_t seed = 42;
  int64_t eval_every = 50;
  int64_t save_every = 100;
  int64_t early_stopping_patience = 0;

  // compute
  std::string device = "auto";       // "auto", "cpu" or "cuda:N" (N digits; availability is checked at run time)
  int device_line = 0;               // line of compute.device in run.json (0 when defaulted)
  // CUDA only: checkpointed layer inputs live in pinned host memory between forward and
  // backward. It moves memory, not math, so it is not part of training_hash().
  bool offload_activations = false;
  std::string dtype = "bf16";
  int64_t threads = 0;

  // The fields that change the result of training, canonically serialised and hashed:
  // a checkpoint records it so resuming with a different configuration is refused.
  uint64_t training_hash() const;
};

// Reads and validates RUN_DIR/run.json. Throws InputError with code "config_field" (field =
// JSON path such as "lora.r", file = run.json, line of the value, hint = the valid range),
// or "json_parse"/"file_read" when the file cannot be read.
RunConfig load_run_config(const std::string& run_dir);
// Same, from already-parsed JSON (tests).
RunConfig parse_run_config(const class Json& root, const std::string& run_dir, const std::string& file);

// Maps run.json's target names onto the modules of an `arch` model, as PEFT matches
// target_modules (GPT-2's "c_proj" selects attn.c_proj and mlp.c_proj); absent targets
// select all of them. Throws InputError (field "lora.targets") naming the unknown module
// and listing the model's modules (a Llama name on GPT-2 and vice versa included).
std::vector<int> resolve_targets(const RunConfig& cfg, Arch arch);

const char* optimizer_name(Optimizer o);
const char* schedule_name(Schedule s);

}  // namespace lora
