#include "ops/embedding.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

#include "common/threadpool.hpp"

namespace lora {

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t T, int64_t C) {
  // Token ids are validated against the vocabulary when a shard is loaded; a negative id here
  // is a caller bug, caught before it becomes an out-of-bounds read.
  for (int64_t t = 0; t < T; ++t)
    if (ids[t] < 0)
      throw std::out_of_range("embedding: negative token id " + std::to_string(ids[t]) + " at row " +
                              std::to_string(t));
  parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t)
      std::memcpy(out + t * C, table + int64_t(ids[t]) * C, sizeof(float) * C);
  });
}

// Split over channels, not tokens: two tokens with the same id add into the same row, so
// each thread owns a slice of columns and walks the tokens in order (race-free and
// deterministic).
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t C) {
  parallel_for(C, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = 0; t < T; ++t) {
      float* row = dtable + int64_t(ids[t]) * C;
      const float* g = dout + t * C;
      for (int64_t c = begin; c < end; ++c) row[c] += g[c];
    }
  });
}

}  // namespace lora
