// CUDA errors as the runtime's exceptions: allocation failures become OutOfMemoryError
// (exit 3 with a hint), everything else a runtime_error naming the call and its place.
#include <stdexcept>

#include "common/errors.hpp"
#include "cuda/common.hpp"

namespace lora::cuda {

void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  // Reading the error clears it unless it is sticky (a kernel fault), in which case the
  // context is unusable anyway and the run must end.
  (void)cudaGetLastError();
  std::string where = std::string(file) + ":" + std::to_string(line);
  if (err == cudaErrorMemoryAllocation) {
    throw OutOfMemoryError(std::string("out of GPU memory in ") + what + " (" + where + ")", 0,
                           "lower train.micro_batch or train.seq_len (raise grad_accum to keep the batch), set "
                           "train.grad_checkpointing to true or compute.offload_activations to true, or use "
                           "quant.type nf4.");
  }
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                           ") in " + what + " at " + where);
}

}  // namespace lora::cuda
