// lora_linear.cu compiled as C++ for cuda-host-tests: it launches no kernel of its own (only
// the GEMM and elementwise launchers, which the fake device provides), so the same source
// runs on the host. Including it keeps the .cu file itself a CUDA source for nvcc.
#include "cuda/lora_linear.cu"
