#pragma once
// Errors are values at the boundary: every problem with an input file or the run config
// becomes an InputError, which main() turns into an `error` event and exit code 2.
// Programmer errors use assert; out-of-memory becomes exit code 3.
#include <cstdint>
#include <stdexcept>
#include <string>

namespace lora {

enum ExitCode : int {
  kExitOk = 0,
  kExitInternal = 1,
  kExitBadInput = 2,
  kExitOutOfMemory = 3,
};

struct InputError : std::runtime_error {
  std::string code;   // machine-readable, e.g. "safetensors_truncated", "config_field"
  std::string file;   // the file at fault (absolute or as given), may be empty
  std::string field;  // JSON path or tensor name, e.g. "lora.r", "model.layers.0.mlp.up_proj.weight"
  int64_t line = 0;   // 1-based line in `file` when known, else 0
  std::string hint;   // what the user should do about it

  InputError(std::string code_, std::string message, std::string file_ = {},
             std::string field_ = {}, int64_t line_ = 0, std::string hint_ = {})
      : std::runtime_error(std::move(message)), code(std::move(code_)), file(std::move(file_)),
        field(std::move(field_)), line(line_), hint(std::move(hint_)) {}
};

// Raised when an allocation for the model, activations or optimizer fails.
struct OutOfMemoryError : std::runtime_error {
  uint64_t bytes_needed = 0;
  std::string hint;
  OutOfMemoryError(std::string message, uint64_t needed, std::string hint_)
      : std::runtime_error(std::move(message)), bytes_needed(needed), hint(std::move(hint_)) {}
};

}  // namespace lora
