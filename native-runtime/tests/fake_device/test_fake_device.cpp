// The fake device's own guarantees, without which cuda-host-tests could pass for the wrong
// reason: copy-stream work stays invisible until the compute stream waits for it, and the
// model's offload really goes through the copy stream (so its event waits are exercised).
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda/common.hpp"
#include "cuda/context.hpp"
#include "cuda/device_model.hpp"
#include "cuda/forward.hpp"
#include "cuda/memory.hpp"
#include "cuda_test_util.hpp"
#include "fake_device.hpp"
#include "model/lora.hpp"
#include "model_fixture.hpp"
#include "test.hpp"

using namespace lora;

TEST(fake_device_copy_stream_waits_for_an_event) {
  LORA_REQUIRE_GPU();
  cuda::Context& ctx = cuda::current();
  std::vector<int32_t> src(64, 7), dst(64, 0);
  cudaEvent_t done;
  LORA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  LORA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), 64 * 4, cudaMemcpyDeviceToHost, ctx.copy_stream));
  LORA_CUDA_CHECK(cudaEventRecord(done, ctx.copy_stream));
  CHECK_EQ(dst[0], 0);  // not landed: nothing waited yet
  LORA_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream, done, 0));
  CHECK_EQ(dst[0], 7);
  CHECK_EQ(dst[63], 7);
  // A copy after the event stays pending through a wait on that event.
  src.assign(64, 9);
  LORA_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), 64 * 4, cudaMemcpyDeviceToHost, ctx.copy_stream));
  LORA_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream, done, 0));
  CHECK_EQ(dst[0], 7);
  LORA_CUDA_CHECK(cudaStreamSynchronize(ctx.copy_stream));
  CHECK_EQ(dst[0], 9);
  LORA_CUDA_CHECK(cudaEventDestroy(done));
}

TEST(fake_device_offload_uses_the_copy_stream) {
  LORA_REQUIRE_GPU();
  lora_test::TinyModelSpec spec;
  spec.layers = 3;
  const Model model = lora_test::load_tiny_model(spec, QuantType::None, "fake-device");
  LoraSpec ls;
  ls.r = 4;
  ls.alpha = 8;
  ls.targets = arch_modules(model.cfg.arch);
  LoraState lora = lora_create(model, ls, 2);
  const Batch batch = lora_test::packed_batch(spec.vocab);
  cuda::DeviceModel dm = cuda::upload_model(model);
  cuda::DeviceLoraState dl = cuda::upload_lora(lora, cuda::current().stream);
  auto copies_of = [&](bool offload) {
    cuda::ForwardOptions opt;
    opt.offload_activations = offload;
    const int before = cuda::fake::copies_deferred();
    cuda::DeviceWorkspace ws;
    cuda::forward_backward(dm, dl, batch, {5, 1, 0}, true, opt, ws);
    cuda::synchronize();
    return cuda::fake::copies_deferred() - before;
  };
  CHECK_EQ(copies_of(false), 0);
  // Every layer input but the last (which stays on the device) goes out and comes back.
  CHECK_EQ(copies_of(true), 2 * (spec.layers - 1));
}
