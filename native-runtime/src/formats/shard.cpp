#include "formats/shard.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "common/errors.hpp"
#include "formats/atomic_file.hpp"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards are little-endian; this code reads them with fread into native integers"
#endif

namespace lora {

namespace {

constexpr char kMagic[4] = {'L', 'S', 'T', 'K'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kHeaderBytes = 4 + 4 + 4 + 8 + 8;

const char* const kHintRetokenize = "re-create the shard by tokenizing the dataset again with LoRA Studio";

// The document that holds token `i` (offsets are validated and non-decreasing).
uint64_t document_of(const std::vector<uint64_t>& offsets, uint64_t i) {
  auto it = std::upper_bound(offsets.begin(), offsets.end(), i);
  return static_cast<uint64_t>(it - offsets.begin()) - 1;
}

class ShardFile {
 public:
  explicit ShardFile(const std::string& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) {
      int e = errno;
      throw InputError("file_read", "cannot open token shard " + path + ": " + std::strerror(e), path, "", 0,
                       e == ENOENT ? "check the path; shards are written when the dataset is tokenized"
                                   : "check the file's permissions");
    }
    struct stat st;
    if (::fstat(fileno(f_), &st) != 0 || !S_ISREG(st.st_mode)) {
      std::fclose(f_);
      f_ = nullptr;
      throw InputError("file_read", path + " is not a regular file", path, "", 0, "point at a token shard (.bin)");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~ShardFile() {
    if (f_) std::fclose(f_);
  }
  ShardFile(const ShardFile&) = delete;
  ShardFile& operator=(const ShardFile&) = delete;

  uint64_t size() const { return size_; }

  // Reads exactly n bytes; a short read means the file shrank or is unreadable.
  void read(void* dst, uint64_t n, const char* field) {
    if (n == 0) return;
    if (std::fread(dst, 1, static_cast<size_t>(n), f_) != n) {
      bool io_error = std::ferror(f_) != 0;
      throw InputError(io_error ? "file_read" : "shard_truncated",
                       path_ + ": could not read " + field + (io_error ? ": I/O error" : ": unexpected end of file"),
                       path_, field, 0, io_error ? "check the disk and the file's permissions" : kHintRetokenize);
    }
  }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace

uint64_t TokenShard::target_count() const {
  uint64_t n = 0;
  for (size_t d = 0; d + 1 < offsets.size(); ++d)
    for (uint64_t i = offsets[d] + 1; i < offsets[d + 1] && i < loss_mask.size(); ++i) n += loss_mask[i] ? 1 : 0;
  return n;
}

TokenShard read_shard(const std::string& path, uint32_t model_vocab) {
  ShardFile file(path);
  const uint64_t size = file.size();
  if (size >= 4) {
    char magic[4];
    file.read(magic, 4, "magic");
    if (std::memcmp(magic, kMagic, 4) != 0)
      throw InputError("shard_magic", path + ": not a LoRA Studio token shard (magic is not \"LSTK\")", path,
                       "magic", 0, "pass a .bin shard written by LoRA Studio's tokenizer, not a raw dataset or another tool's file");
  }
  if (size < kHeaderBytes)
    throw InputError("shard_truncated",
                     path + ": file is " + std::to_string(size) + " bytes, shorter than the " +
                         std::to_string(kHeaderBytes) + "-byte shard header",
                     path, "header", 0, kHintRetokenize);
  uint32_t version = 0;
  TokenShard shard;
  shard.path = path;
  uint64_t documents = 0, token_count = 0;
  file.read(&version, 4, "version");
  if (version != kVersion)
    throw InputError("shard_version",
                     path + ": shard format version " + std::to_string(version) + " is not supported (expected " +
                         std::to_string(kVersion) + ")",
                     path, "version", 0,
                     "the shard was written by a different LoRA Studio version: " + std::string(kHintRetokenize));
  file.read(&shard.vocab_size, 4, "vocab_size");
  file.read(&documents, 8, "document_count");
  file.read(&token_count, 8, "token_count");
  if (shard.vocab_size == 0)
    throw InputError("shard_token_range", path + ": vocab_size is 0", path, "vocab_size", 0, kHintRetokenize);

  // Check that the counts match the file size before allocating anything: a corrupt header
  // may claim 2^60 tokens.
  uint64_t offsets_bytes = 0, tokens_bytes = 0, expected = 0;
  bool overflow = documents == UINT64_MAX || __builtin_mul_overflow(documents + 1, uint64_t(8), &offsets_bytes) ||
                  __builtin_mul_overflow(token_count, uint64_t(5), &tokens_bytes) ||
                  __builtin_add_overflow(kHeaderBytes, offsets_bytes, &expected) ||
                  __builtin_add_overflow(expected, tokens_bytes, &expected);
  const std::string counts = std::to_string(documents) + " documents and " + std::to_string(token_count) + " tokens";
  if (overflow || expected > size)
    throw InputError("shard_truncated",
                     path + ": the header announces " + counts + (overflow ? "" : " (" + std::to_string(expected) + " bytes)") +
                         ", but the file has only " + std::to_string(size) + " bytes",
                     path, "token_count", 0,
                     "the file is truncated or its header is corrupt: " + std::string(kHintRetokenize));
  if (expected < size)
    throw InputError("shard_truncated",
                     path + ": the header announces " + counts + " (" + std::to_string(expected) +
                         " bytes), but the file has " + std::to_string(size - expected) + " extra bytes",
                     path, "token_count", 0,
                     "the header's counts do not match the data: " + std::string(kHintRetokenize));

  shard.offsets.resize(static_cast<size_t>(documents + 1));
  file.read(shard.offsets.data(), offsets_bytes, "offsets");
  if (shard.offsets[0] != 0)
    throw InputError("shard_offsets", path + ": offsets[0] is " + std::to_string(shard.offsets[0]) + ", expected 0",
                     path, "offsets[0]", 0, kHintRetokenize);
  for (uint64_t d = 1; d <= documents; ++d) {
    if (shard.offsets[d] < shard.offsets[d - 1])
      throw InputError("shard_offsets",
                       path + ": offsets[" + std::to_string(d) + "] = " + std::to_string(shard.offsets[d]) +
                           " is smaller than offsets[" + std::to_string(d - 1) + "] = " +
                           std::to_string(shard.offsets[d - 1]),
                       path, "offsets[" + std::to_string(d) + "]", 0, kHintRetokenize);
  }
  if (shard.offsets[documents] != token_count)
    throw InputError("shard_offsets",
                     path + ": offsets[" + std::to_string(documents) + "] = " +
                         std::to_string(shard.offsets[documents]) + " but the token count is " +
                         std::to_string(token_count),
                     path, "offsets[" + std::to_string(documents) + "]", 0, kHintRetokenize);

  shard.tokens.resize(static_cast<size_t>(token_count));
  file.read(shard.tokens.data(), token_count * 4, "tokens");
  for (uint64_t i = 0; i < token_count; ++i) {
    const uint32_t t = shard.tokens[i];
    if (t >= shard.vocab_size)
      throw InputError("shard_token_range",
                       path + ": tokens[" + std::to_string(i) + "] (document " +
                           std::to_string(document_of(shard.offsets, i)) + ") is " + std::to_string(t) +
                           ", outside the shard's vocab_size " + std::to_string(shard.vocab_size),
                       path, "tokens[" + std::to_string(i) + "]", 0, "the shard is corrupt: " + std::string(kHintRetokenize));
    if (model_vocab > 0 && t >= model_vocab)
      throw InputError("shard_token_range",
                       path + ": tokens[" + std::to_string(i) + "] (document " +
                           std::to_string(document_of(shard.offsets, i)) + ") is " + std::to_string(t) +
                           ", but the model's vocabulary has only " + std::to_string(model_vocab) + " tokens",
                       path, "tokens[" + std::to_string(i) + "]", 0,
                       "the shard was tokenized for another model: tokenize the dataset again with this model's tokenizer");
  }

  shard.loss_mask.resize(static_cast<size_t>(token_count));
  file.read(shard.loss_mask.data(), token_count, "loss_mask");
  for (uint64_t i = 0; i < token_count; ++i) {
    if (shard.loss_mask[i] > 1)
      throw InputError("shard_mask",
                       path + ": loss_mask[" + std::to_string(i) + "] is " + std::to_string(shard.loss_mask[i]) +
                           "; mask values must be 0 or 1",
                       path, "loss_mask[" + std::to_string(i) + "]", 0, kHintRetokenize);
  }
  return shard;
}

void write_shard(const std::string& path, const TokenShard& shard) {
  // An inconsistent TokenShard is a bug in the caller, and writing it would produce a file
  // that read_shard rejects later, far from the cause.
  if (shard.offsets.empty() || shard.offsets.front() != 0 || shard.offsets.back() != shard.tokens.size() ||
      shard.loss_mask.size() != shard.tokens.size() || !std::is_sorted(shard.offsets.begin(), shard.offsets.end()))
    throw std::invalid_argument("write_shard: offsets, tokens and loss_mask are inconsistent for " + path);
  const uint64_t documents = shard.offsets.size() - 1;
  const uint64_t token_count = shard.tokens.size();
  AtomicFileWriter out(path);
  out.write(kMagic, 4);
  out.write(&kVersion, 4);
  out.write(&shard.vocab_size, 4);
  out.write(&documents, 8);
  out.write(&token_count, 8);
  out.write(shard.offsets.data(), shard.offsets.size() * 8);
  if (token_count) {
    out.write(shard.tokens.data(), token_count * 4);
    out.write(shard.loss_mask.data(), token_count);
  }
  out.commit();
}

}  // namespace lora
