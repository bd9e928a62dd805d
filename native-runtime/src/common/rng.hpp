#pragma once
// Counter-based randomness: every random number is a pure function of (seed, stream, index),
// so dropout masks and initialisations can be regenerated exactly on recomputation and
// after resume, without storing generator state.
#include <cstdint>

// Callable from CUDA kernels too, so the GPU regenerates the CPU's dropout masks bit for bit.
#ifdef __CUDACC__
#define LORA_HOST_DEVICE __host__ __device__
#else
#define LORA_HOST_DEVICE
#endif

namespace lora {

LORA_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Mixes several integers into one key.
LORA_HOST_DEVICE inline uint64_t rng_key(uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0) {
  return splitmix64(splitmix64(splitmix64(splitmix64(a) ^ b) ^ c) ^ d);
}

// Uniform float in [0, 1) for element `i` of the stream named by `key`.
LORA_HOST_DEVICE inline float rng_uniform(uint64_t key, uint64_t i) {
  return static_cast<float>(splitmix64(key ^ splitmix64(i)) >> 40) * (1.0f / 16777216.0f);
}

}  // namespace lora
