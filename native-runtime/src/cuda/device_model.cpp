// Uploading the frozen base and the adapter to the device (see device_model.hpp).
#include "cuda/device_model.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "cuda/elementwise.hpp"

namespace lora::cuda {

uint16_t host_f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

namespace {

DeviceArray<float> upload_f32(const std::vector<float>& host) {
  DeviceArray<float> d;
  if (host.empty()) return d;
  d.resize(host.size());
  copy_to_device(d.data(), host.data(), host.size() * sizeof(float));
  return d;
}

// Converted on the host in slices, so a large embedding never needs an fp32 copy on the
// device nor a second full-size buffer on the host.
DeviceArray<bf16> upload_bf16(const std::vector<float>& host) {
  DeviceArray<bf16> d;
  if (host.empty()) return d;
  d.resize(host.size());
  constexpr size_t kSlice = size_t(1) << 22;
  std::vector<uint16_t> bits(std::min(kSlice, host.size()));
  for (size_t i0 = 0; i0 < host.size(); i0 += kSlice) {
    const size_t n = std::min(kSlice, host.size() - i0);
    for (size_t i = 0; i < n; ++i) bits[i] = host_f32_to_bf16(host[i0 + i]);
    copy_to_device(d.data() + i0, bits.data(), n * sizeof(uint16_t));
  }
  return d;
}

uint64_t matrix_device_bytes(const QuantizedMatrix& m) {
  if (m.type == QuantType::None) return static_cast<uint64_t>(m.rows * m.cols) * 2;
  return m.bytes();
}

}  // namespace

uint64_t DeviceModel::bytes() const {
  uint64_t b = embed.bytes() + lm_head.bytes() + wpe.bytes() + final_norm.bytes() + final_norm_bias.bytes() +
               inv_freq.bytes();
  for (const auto& l : layers) {
    b += l.input_norm.bytes() + l.post_norm.bytes() + l.input_norm_bias.bytes() + l.post_norm_bias.bytes();
    for (int m = 0; m < kNumModules; ++m) b += l.linear[m].bytes() + l.bias[m].bytes();
  }
  return b;
}

uint64_t device_model_bytes(const Model& model) {
  auto f32 = [](const std::vector<float>& v) { return static_cast<uint64_t>(v.size()) * 4; };
  auto b16 = [](const std::vector<float>& v) { return static_cast<uint64_t>(v.size()) * 2; };
  uint64_t b = b16(model.embed) + b16(model.lm_head) + b16(model.wpe) + f32(model.final_norm) +
               f32(model.final_norm_bias) + f32(model.inv_freq);
  for (const auto& l : model.layers) {
    b += f32(l.input_norm) + f32(l.post_norm) + f32(l.input_norm_bias) + f32(l.post_norm_bias);
    for (int m : arch_modules(model.cfg.arch)) b += matrix_device_bytes(l.linear[m]) + f32(l.bias[m]);
  }
  return b;
}

uint64_t device_model_allocated_bytes(const Model& model) {
  auto f32 = [](const std::vector<float>& v) { return uint64_t(allocator_size_class(v.size() * 4)); };
  auto b16 = [](const std::vector<float>& v) { return uint64_t(allocator_size_class(v.size() * 2)); };
  auto linear = [](const QuantizedMatrix& m) -> uint64_t {
    if (m.type == QuantType::None) return allocator_size_class(static_cast<size_t>(m.rows * m.cols) * 2);
    // upload_quantized's arrays: the codes, and fp32 absmax or uint8 absmax + fp32 scales.
    return allocator_size_class(m.raw.size()) + allocator_size_class(m.absmax.size() * 4) +
           allocator_size_class(m.absmax_q.size()) + allocator_size_class(m.absmax_scale.size() * 4);
  };
  uint64_t b = b16(model.embed) + b16(model.lm_head) + b16(model.wpe) + f32(model.final_norm) +
               f32(model.final_norm_bias) + (model.cfg.arch != Arch::GPT2 ? f32(model.inv_freq) : 0);
  for (const auto& l : model.layers) {
    b += f32(l.input_norm) + f32(l.post_norm) + f32(l.input_norm_bias) + f32(l.post_norm_bias);
    for (int m : arch_modules(model.cfg.arch)) b += linear(l.linear[m]) + f32(l.bias[m]);
  }
  return b;
}

DeviceModel upload_model(const Model& model) {
  DeviceModel d;
  d.host = &model;
  d.embed = upload_bf16(model.embed);
  d.lm_head = upload_bf16(model.lm_head);
  d.wpe = upload_bf16(model.wpe);
  d.final_norm = upload_f32(model.final_norm);
  d.final_norm_bias = upload_f32(model.final_norm_bias);
  if (model.cfg.arch != Arch::GPT2) d.inv_freq = upload_f32(model.inv_freq);
  d.layers.resize(model.layers.size());
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const LayerWeights& hw = model.layers[l];
    DeviceLayer& dl = d.layers[l];
    dl.input_norm = upload_f32(hw.input_norm);
    dl.post_norm = upload_f32(hw.post_norm);
    dl.input_norm_bias = upload_f32(hw.input_norm_bias);
    dl.post_norm_bias = upload_f32(hw.post_norm_bias);
    for (int m : arch_modules(model.cfg.arch)) {
      const QuantizedMatrix& w = hw.linear[m];
      if (w.rows != model.module_out(m) || w.cols != model.module_in(m))
        throw std::invalid_argument("upload_model: layer " + std::to_string(l) + " " + module_name(m) +
                                    " has shape [" + std::to_string(w.rows) + ", " + std::to_string(w.cols) +
                                    "], expected [" + std::to_string(model.module_out(m)) + ", " +
                                    std::to_string(model.module_in(m)) + "]");
      dl.linear[m] = upload_quantized(w);
      dl.bias[m] = upload_f32(hw.bias[m]);
    }
  }
  return d;
}

DeviceLora DeviceLoraState::module(int64_t layer, int mod, bool with_grads) {
  DeviceLora d;
  if (!targeted(layer, mod)) return d;
  const LoraSlot& s = host->slot(layer, mod);
  d.A = params_bf16.data() + s.a;
  d.B = params_bf16.data() + s.b;
  if (with_grads) {
    d.dA = grads.data() + s.a;
    d.dB = grads.data() + s.b;
  }
  d.r = host->spec.r;
  d.scale = host->scale;
  return d;
}

void DeviceLoraState::refresh_bf16(cudaStream_t stream) {
  if (params.empty()) return;
  cast_f32_to_bf16(params_bf16.data(), params.data(), count(), stream);
}

DeviceLoraState upload_lora(const LoraState& lora, cudaStream_t stream) {
  DeviceLoraState d;
  d.host = &lora;
  const size_t n = lora.params.size();
  if (n == 0) return d;
  d.params.resize(n);
  d.grads.resize(n);
  d.m.resize(n);
  d.v.resize(n);
  d.params_bf16.resize(n);
  copy_to_device(d.params.data(), lora.params.data(), n * sizeof(float));
  LORA_CUDA_CHECK(cudaMemsetAsync(d.grads.data(), 0, n * sizeof(float), stream));
  LORA_CUDA_CHECK(cudaMemsetAsync(d.m.data(), 0, n * sizeof(float), stream));
  LORA_CUDA_CHECK(cudaMemsetAsync(d.v.data(), 0, n * sizeof(float), stream));
  d.refresh_bf16(stream);
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return d;
}

}  // namespace lora::cuda
