#pragma once
// Checkpoints: RUN_DIR/checkpoints/step-N/ = the PEFT adapter + state.bin.
// state.bin (little-endian): magic "LSCK", u32 version, u64 config hash, u64 step,
// u64 epoch, u64 position (step within the epoch), u64 tokens seen, f64 elapsed seconds,
// u64 parameter count n, f32 params[n], f32 adam_m[n], f32 adam_v[n],
// u8 has_best, f64 best eval loss, u64 best step, u64 evals since best, [f32 best[n]],
// u64 FNV-1a checksum of everything before it (detects a torn or corrupted file).
// A checkpoint is built in checkpoints/.tmp-step-N/ and renamed into place, so a folder
// named step-N is always complete.
#include <cstdint>
#include <string>
#include <vector>

#include "model/lora.hpp"

namespace lora {

struct TrainState {
  uint64_t step = 0;          // optimizer steps completed
  uint64_t epoch = 0, position = 0;
  uint64_t tokens_seen = 0;
  double elapsed_s = 0;
  std::vector<float> m, v;    // optimizer moments (AdamW); zeros for SGD
  bool has_best = false;
  double best_loss = 0;
  uint64_t best_step = 0;
  uint64_t evals_since_best = 0;
  std::vector<float> best_params;
};

// Writes checkpoints/step-<state.step>/ and returns its path. Throws InputError
// (write_failed) and leaves no partial step-N folder behind on failure.
std::string write_checkpoint(const std::string& run_dir, const LoraState& lora, const TrainState& state,
                             uint64_t config_hash, const std::string& base_model);

// The newest complete checkpoint folder, or "" when there is none. Folders whose
// state.bin is unreadable are skipped; their reasons are appended to `skipped`.
std::string find_latest_checkpoint(const std::string& run_dir, std::vector<std::string>* skipped = nullptr);

// Restores params and state. Throws InputError when the file is corrupt, the parameter
// count differs, or config_hash differs (the run.json changed since the checkpoint).
void read_checkpoint(const std::string& dir, LoraState& lora, TrainState& state, uint64_t config_hash,
                     const std::string& run_file);

}  // namespace lora
