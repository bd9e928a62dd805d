#pragma once
// What the fake device (fake_device.cpp) lets its own tests observe.
namespace lora::cuda::fake {

// Copies enqueued on the copy stream since the program started.
int copies_deferred();

}  // namespace lora::cuda::fake
