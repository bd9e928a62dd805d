#pragma once
#include <cstdint>
namespace lora {
// logits: (T, V); targets: (T), -1 = not a target. Returns the SUM of -log softmax(logits)[target]
// over targets (double accumulation); the caller divides by the step's target count.
double cross_entropy_forward(const float* logits, const int32_t* targets, int64_t T, int64_t V);
// dlogits = scale * (softmax(logits) - onehot(target)) for target rows, 0 for others.
// May be called with dlogits == logits (in place).
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                            int64_t T, int64_t V, float scale);
}  // namespace lora
