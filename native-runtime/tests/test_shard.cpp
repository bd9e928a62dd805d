#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "formats/shard.hpp"
#include "temp_dir.hpp"
#include "test.hpp"

using namespace lora;

namespace {

TokenShard sample_shard() {
  TokenShard s;
  s.vocab_size = 100;
  s.offsets = {0, 4, 4, 7};  // three documents, the second empty
  s.tokens = {1, 2, 3, 4, 50, 60, 99};
  s.loss_mask = {1, 1, 0, 1, 0, 1, 1};
  return s;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <typename T>
void poke(std::string& bytes, size_t at, T value) {
  std::memcpy(&bytes[at], &value, sizeof value);
}

struct Err {
  std::string code, field, file, hint, message;
};

Err read_error(const std::string& path, uint32_t model_vocab = 0) {
  try {
    read_shard(path, model_vocab);
  } catch (const InputError& e) {
    return {e.code, e.field, e.file, e.hint, e.what()};
  } catch (const std::exception& e) {
    return {"<not InputError>", "", "", "", e.what()};
  }
  return {"<none>", "", "", "", ""};
}

// Byte positions in the sample shard's file (3 documents, 7 tokens).
constexpr size_t kVersionAt = 4, kVocabAt = 8, kDocsAt = 12, kTokensAt = 20, kOffsetsAt = 28;
constexpr size_t kTokenDataAt = kOffsetsAt + 4 * 8, kMaskAt = kTokenDataAt + 7 * 4;

}  // namespace

TEST(shard_round_trip_and_layout) {
  lora_test::TempDir tmp("shard");
  const std::string dir = tmp.path();
  std::string path = dir + "/train.bin";
  write_shard(path, sample_shard());
  std::string bytes = read_bytes(path);
  CHECK_EQ(bytes.size(), size_t(28 + 4 * 8 + 7 * 4 + 7));
  CHECK(bytes.compare(0, 4, "LSTK") == 0);
  uint32_t version;
  std::memcpy(&version, &bytes[kVersionAt], 4);
  CHECK_EQ(version, 1u);
  uint64_t docs;
  std::memcpy(&docs, &bytes[kDocsAt], 8);
  CHECK_EQ(docs, uint64_t(3));
  CHECK_EQ(static_cast<int>(bytes[kMaskAt + 2]), 0);
  struct stat st;
  CHECK(::stat((path + ".tmp").c_str(), &st) != 0);

  TokenShard s = read_shard(path, 100);
  CHECK_EQ(s.path, path);
  CHECK_EQ(s.vocab_size, 100u);
  CHECK_EQ(s.documents(), uint64_t(3));
  CHECK(s.offsets == sample_shard().offsets);
  CHECK(s.tokens == sample_shard().tokens);
  CHECK(s.loss_mask == sample_shard().loss_mask);
  // Targets: doc 0 tokens 1..3 -> masks 1,0,1 (token 0's mask is ignored) = 2;
  // doc 2 tokens 5..6 -> masks 1,1 = 2 (token 4 is first in its document).
  CHECK_EQ(s.target_count(), uint64_t(4));
}

TEST(shard_empty) {
  lora_test::TempDir tmp("shard");
  const std::string path = tmp / "empty.bin";
  TokenShard e;
  e.vocab_size = 10;
  e.offsets = {0};
  write_shard(path, e);
  TokenShard r = read_shard(path);
  CHECK_EQ(r.documents(), uint64_t(0));
  CHECK_EQ(r.tokens.size(), size_t(0));
  CHECK_EQ(r.target_count(), uint64_t(0));
}

TEST(shard_rejects_malformed_files) {
  lora_test::TempDir tmp("shard");
  const std::string dir = tmp.path();
  std::string good_path = dir + "/good.bin";
  write_shard(good_path, sample_shard());
  const std::string good = read_bytes(good_path);

  struct Case {
    const char* name;
    std::string bytes;
    const char* code;
    const char* field;
  };
  std::vector<Case> cases;
  auto edited = [&](auto edit) {
    std::string b = good;
    edit(b);
    return b;
  };
  cases.push_back({"magic", edited([](std::string& b) { b[0] = 'X'; }), "shard_magic", "magic"});
  cases.push_back({"text_file", std::string("{\"messages\": []}\n"), "shard_magic", "magic"});
  cases.push_back({"version", edited([](std::string& b) { poke<uint32_t>(b, kVersionAt, 2); }), "shard_version", "version"});
  cases.push_back({"tiny", std::string("LS"), "shard_truncated", "header"});
  cases.push_back({"header_only", good.substr(0, 20), "shard_truncated", "header"});
  cases.push_back({"cut_tokens", good.substr(0, kTokenDataAt + 5), "shard_truncated", "token_count"});
  cases.push_back({"cut_mask", good.substr(0, good.size() - 1), "shard_truncated", "token_count"});
  cases.push_back({"trailing", good + "xyz", "shard_truncated", "token_count"});
  // Headers that claim absurd sizes must be rejected before allocating anything.
  cases.push_back({"huge_tokens", edited([](std::string& b) { poke<uint64_t>(b, kTokensAt, uint64_t(1) << 60); }),
                   "shard_truncated", "token_count"});
  cases.push_back({"huge_docs", edited([](std::string& b) { poke<uint64_t>(b, kDocsAt, uint64_t(1) << 61); }),
                   "shard_truncated", "token_count"});
  cases.push_back({"max_docs", edited([](std::string& b) { poke<uint64_t>(b, kDocsAt, UINT64_MAX); }),
                   "shard_truncated", "token_count"});
  cases.push_back({"offset0", edited([](std::string& b) { poke<uint64_t>(b, kOffsetsAt, 1); }), "shard_offsets", "offsets[0]"});
  cases.push_back({"decreasing", edited([](std::string& b) { poke<uint64_t>(b, kOffsetsAt + 16, 3); }),
                   "shard_offsets", "offsets[2]"});
  cases.push_back({"last_offset", edited([](std::string& b) { poke<uint64_t>(b, kOffsetsAt + 24, 6); }),
                   "shard_offsets", "offsets[3]"});
  cases.push_back({"token_vocab", edited([](std::string& b) { poke<uint32_t>(b, kTokenDataAt + 5 * 4, 100); }),
                   "shard_token_range", "tokens[5]"});
  cases.push_back({"zero_vocab", edited([](std::string& b) { poke<uint32_t>(b, kVocabAt, 0); }), "shard_token_range", "vocab_size"});
  cases.push_back({"mask", edited([](std::string& b) { b[kMaskAt + 3] = 2; }), "shard_mask", "loss_mask[3]"});

  for (const auto& c : cases) {
    std::string path = dir + "/" + c.name + ".bin";
    write_bytes(path, c.bytes);
    Err e = read_error(path);
    if (e.code != c.code || e.field != c.field) {
      ::lora_test::record_failure(__FILE__, __LINE__,
                                  std::string(c.name) + ": expected " + c.code + "/" + c.field + ", got " + e.code +
                                      "/" + e.field + " (" + e.message + ")");
      continue;
    }
    CHECK_EQ(e.file, path);
    CHECK(!e.hint.empty());
    CHECK(e.message.find(path) != std::string::npos);
  }
  Err magic = read_error(dir + "/magic.bin");
  CHECK(magic.hint.find("LoRA Studio") != std::string::npos);
  Err tok = read_error(dir + "/token_vocab.bin");
  CHECK(tok.message.find("document 2") != std::string::npos);
}

TEST(shard_token_ids_checked_against_model_vocab) {
  lora_test::TempDir tmp("shard");
  const std::string path = tmp / "train.bin";
  write_shard(path, sample_shard());
  CHECK_EQ(read_shard(path, 100).tokens.size(), size_t(7));
  Err e = read_error(path, 64);  // token 99 (document 2) is outside a 64-token vocabulary
  CHECK_EQ(e.code, std::string("shard_token_range"));
  CHECK_EQ(e.field, std::string("tokens[6]"));
  CHECK(e.hint.find("another model") != std::string::npos);
}

TEST(shard_missing_file_and_write_errors) {
  lora_test::TempDir tmp("shard");
  const std::string dir = tmp.path();
  CHECK_INPUT_ERROR(read_shard(dir + "/nope.bin"), "file_read");
  CHECK_INPUT_ERROR(read_shard(dir), "file_read");
  CHECK_INPUT_ERROR(write_shard(dir + "/no/such/dir/train.bin", sample_shard()), "write_failed");
  TokenShard bad = sample_shard();
  bad.loss_mask.pop_back();
  bool threw = false;
  try {
    write_shard(dir + "/bad.bin", bad);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  struct stat st;
  CHECK(::stat((dir + "/bad.bin").c_str(), &st) != 0);
}

// Random corruption of a valid shard: read_shard either throws InputError or returns a shard
// whose invariants hold; it never crashes or allocates what the header merely claims.
TEST(shard_random_corruption_never_crashes) {
  lora_test::TempDir tmp("shard_fuzz");
  const std::string path = tmp / "train.bin";
  write_shard(path, sample_shard());
  const std::string good = read_bytes(path);
  std::mt19937 rng(99);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = good;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits && !s.empty(); ++k) {
      switch (rng() % 3) {
        case 0: s[rng() % s.size()] = static_cast<char>(rng()); break;
        case 1: s[rng() % std::min<size_t>(s.size(), 40)] = static_cast<char>(rng() % 4); break;
        case 2: s.resize(rng() % (s.size() + 1)); break;
      }
    }
    write_bytes(path, s);
    try {
      TokenShard r = read_shard(path, 100);
      bool ok = r.offsets.front() == 0 && r.offsets.back() == r.tokens.size() &&
                r.loss_mask.size() == r.tokens.size() && std::is_sorted(r.offsets.begin(), r.offsets.end());
      for (uint32_t t : r.tokens) ok = ok && t < 100 && t < r.vocab_size;
      for (uint8_t m : r.loss_mask) ok = ok && m <= 1;
      if (!ok) {
        ::lora_test::record_failure(__FILE__, __LINE__, "accepted a shard that breaks its invariants");
        return;
      }
      ++accepted;
    } catch (const InputError& e) {
      ++rejected;
      if (e.file != path) {
        ::lora_test::record_failure(__FILE__, __LINE__, "error without the file: " + std::string(e.what()));
        return;
      }
    }
  }
  CHECK(rejected > 0);
  CHECK(accepted > 0);
}
