#pragma once
// Shared by the kernel headers (src/cuda/*_kernels.cuh) that both nvcc and a host test build
// compile (tests/cuda/emu_shim.hpp runs them on the CPU).
//
// LORA_KERNEL_ABI names an inline namespace that differs between the two builds. Without
// it, the host-side launch function nvcc generates for a kernel and the same kernel compiled as a plain host
// function (the emulator) would carry one mangled name; templates are weak symbols, so the
// linker would keep one of the two in runtime-tests, and a real launch could end up running
// the emulation on device pointers.
#if defined(__CUDACC__)
#define LORA_KERNEL_ABI device_build
#define LORA_UNROLL _Pragma("unroll")
#else
#define LORA_KERNEL_ABI host_emulation
#define LORA_UNROLL
#endif
