#pragma once
#include <cstdint>
namespace lora {
// out: (T, C) = table[ids[t]]; table: (V, C).
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t T, int64_t C);
// dtable[ids[t]] += dout[t] (for modules_to_save / tests; the base embedding is frozen).
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t C);
}  // namespace lora
