#pragma once
// Token shard (*.bin, little-endian), written by src/core (TypeScript), read here:
//   magic "LSTK", u32 version (1), u32 vocab size, u64 document count, u64 token count,
//   u64 offsets[documents + 1], u32 tokens[token count], u8 loss_mask[token count].
// offsets[0] == 0, offsets are non-decreasing, offsets[documents] == token count.
// loss_mask[i] == 1: token i is a training target (predicted from the tokens before it in
// its document). The first token of a document is never a target, whatever its mask says.
#include <cstdint>
#include <string>
#include <vector>

namespace lora {

struct TokenShard {
  std::string path;
  uint32_t vocab_size = 0;
  std::vector<uint64_t> offsets;   // documents + 1
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> loss_mask;

  uint64_t documents() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  // Number of tokens that are targets (mask 1 and not first in their document).
  uint64_t target_count() const;
};

// Reads and validates a shard. Throws InputError naming the file and field for: wrong magic
// (hint: not a LoRA Studio token shard), unknown version, truncated file, sizes that don't
// add up, offsets out of order, a token id >= vocab size, or >= model_vocab when
// model_vocab > 0 (hint: the shard was tokenized for another model), mask values other than 0/1.
TokenShard read_shard(const std::string& path, uint32_t model_vocab = 0);

// Writes a shard (used by tests and tools); atomic temp-file + rename.
void write_shard(const std::string& path, const TokenShard& shard);

}  // namespace lora
