#pragma once
// cuda-host-tests' stand-in for CUDA's bf16 type: the 16 stored bits (tests/fake_device/).
#include <cstdint>
struct __nv_bfloat16 {
  uint16_t x;
};
