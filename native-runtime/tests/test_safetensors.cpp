#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "formats/atomic_file.hpp"
#include "formats/safetensors.hpp"
#include "temp_dir.hpp"
#include "test.hpp"

using namespace lora;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A safetensors file from a literal header and data; `declared_len` overrides the length field.
std::string raw_file(const std::string& header, size_t data_bytes, uint64_t declared_len = UINT64_MAX) {
  uint64_t len = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::string s(reinterpret_cast<const char*>(&len), 8);
  s += header;
  s += std::string(data_bytes, '\x01');
  return s;
}

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Reference fp32 -> bf16: pick the nearer of the two bf16 neighbours, ties to even mantissa.
uint16_t ref_bf16(float f) {
  uint32_t b = bits_of(f);
  uint16_t lo = static_cast<uint16_t>(b >> 16);
  uint16_t hi = static_cast<uint16_t>(lo + 1);
  double dlo = bf16_to_f32(lo), dhi = bf16_to_f32(hi), d = f;
  if (std::isinf(dhi)) dhi = std::copysign(std::ldexp(1.0, 128), d);  // next step past max
  double elo = std::fabs(d - dlo), ehi = std::fabs(d - dhi);
  if (elo < ehi) return lo;
  if (ehi < elo) return hi;
  return (lo & 1) ? hi : lo;
}

struct ErrorInfo {
  std::string code, file, field, hint, message;
};

template <typename F>
ErrorInfo catch_input_error(F fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return {e.code, e.file, e.field, e.hint, e.what()};
  } catch (const std::exception& e) {
    return {"<not InputError>", "", "", "", e.what()};
  }
  return {"<none>", "", "", "", ""};
}

}  // namespace

TEST(safetensors_bf16_conversion_exact) {
  // Every finite bf16 value survives bf16 -> f32 -> bf16.
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      CHECK(std::isnan(bf16_to_f32(f32_to_bf16(f))));
      continue;
    }
    if (f32_to_bf16(f) != h) {
      CHECK_EQ(f32_to_bf16(f), static_cast<uint16_t>(h));
      break;
    }
  }
  // Ties go to the even mantissa: 1 + 2^-8 is half-way between 1 and 1 + 2^-7.
  CHECK_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), uint16_t(0x3F80));
  CHECK_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), uint16_t(0x3F82));
  CHECK_EQ(f32_to_bf16(std::numeric_limits<float>::max()), uint16_t(0x7F80));  // rounds to +inf
  CHECK_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), uint16_t(0xFF80));
  // A NaN whose payload lives only in the low 16 bits must stay NaN, not become infinity.
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(float_of(0x7F800001u)))));
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    float f = float_of(rng());
    if (std::isnan(f)) continue;
    if (f32_to_bf16(f) != ref_bf16(f)) {
      CHECK_EQ(f32_to_bf16(f), ref_bf16(f));
      break;
    }
  }
}

TEST(safetensors_f16_conversion_exact) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      CHECK((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0);
      CHECK(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    if (f32_to_f16(f) != h) {
      CHECK_EQ(f32_to_f16(f), static_cast<uint16_t>(h));
      break;
    }
  }
  CHECK_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK_EQ(f16_to_f32(0x03FF), std::ldexp(1023.0f, -24));
  CHECK_EQ(f16_to_f32(0x7BFF), 65504.0f);
  CHECK(std::isinf(f16_to_f32(0x7C00)));
  CHECK_EQ(f32_to_f16(65519.0f), uint16_t(0x7BFF));
  CHECK_EQ(f32_to_f16(65520.0f), uint16_t(0x7C00));  // tie to even rounds up to inf
  CHECK_EQ(f32_to_f16(1e10f), uint16_t(0x7C00));
  CHECK_EQ(f32_to_f16(-1e10f), uint16_t(0xFC00));
  CHECK_EQ(f32_to_f16(std::ldexp(1.0f, -25)), uint16_t(0x0000));      // tie to even -> 0
  CHECK_EQ(f32_to_f16(std::ldexp(1.0001f, -25)), uint16_t(0x0001));
  CHECK_EQ(f32_to_f16(std::ldexp(3.0f, -25)), uint16_t(0x0002));      // 1.5 units -> 2
  CHECK_EQ(f32_to_f16(std::ldexp(5.0f, -25)), uint16_t(0x0002));      // 2.5 units -> 2
  CHECK_EQ(f32_to_f16(-std::ldexp(1.0f, -30)), uint16_t(0x8000));     // underflow keeps sign
  CHECK_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), uint16_t(0x3C00));  // tie, even
  CHECK_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), uint16_t(0x3C02));
  CHECK_EQ(f32_to_f16(std::ldexp(2047.0f, -25)), uint16_t(0x0400));   // rounds up into the normals
#ifdef __FLT16_MAX__
  // The compiler's own _Float16 conversion (round to nearest even) as an independent reference.
  std::mt19937 rng(11);
  for (int i = 0; i < 200000; ++i) {
    float f = float_of(rng());
    if (i % 2) f = std::ldexp(static_cast<float>(rng() % 100000) / 1000.0f, static_cast<int>(rng() % 40) - 30);
    if (std::isnan(f)) continue;
    _Float16 ref = static_cast<_Float16>(f);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    if (f32_to_f16(f) != ref_bits) {
      CHECK_EQ(f32_to_f16(f), ref_bits);
      break;
    }
  }
#endif
}

TEST(safetensors_write_then_read_back) {
  lora_test::TempDir tmp("st_rw");
  const std::string dir = tmp.path();
  std::string path = dir + "/model.safetensors";
  std::vector<float> a(6), b(4), c(5);
  for (int i = 0; i < 6; ++i) a[i] = 0.1f * static_cast<float>(i) - 0.3f;
  for (int i = 0; i < 4; ++i) b[i] = static_cast<float>(i) + 0.5f;  // exact in bf16
  for (int i = 0; i < 5; ++i) c[i] = 1.0f / static_cast<float>(i + 1);
  write_safetensors(path,
                    {{"layer.a", DType::F32, {2, 3}, a.data()},
                     {"layer.b", DType::BF16, {4}, b.data()},
                     {"layer.c", DType::F16, {5, 1}, c.data()},
                     {"empty", DType::F32, {0, 3}, nullptr}},
                    {{"format", "pt"}, {"note", "x\"y"}});
  std::string bytes = read_bytes(path);
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK_EQ((8 + header_len) % 8, uint64_t(0));
  CHECK_EQ(bytes.size(), size_t(8 + header_len + 6 * 4 + 4 * 2 + 5 * 2));
  CHECK(bytes.compare(8, 15, "{\"__metadata__\"") == 0);
  CHECK(bytes[8 + header_len - 1] == '}' || bytes[8 + header_len - 1] == ' ');
  struct stat st;
  CHECK(::stat((path + ".tmp").c_str(), &st) != 0);  // temp file renamed away

  SafetensorsFile f(path);
  CHECK_EQ(f.tensors().size(), size_t(4));
  CHECK_EQ(f.tensors()[0].name, std::string("layer.a"));  // header order kept
  CHECK_EQ(f.metadata().at("note"), std::string("x\"y"));
  const TensorInfo* tb = f.find("layer.b");
  CHECK(tb != nullptr);
  CHECK(tb->dtype == DType::BF16);
  CHECK_EQ(tb->numel(), int64_t(4));
  CHECK_EQ(tb->end - tb->begin, uint64_t(8));
  CHECK(f.find("nope") == nullptr);

  WeightStore ws(dir);
  CHECK_EQ(ws.names().size(), size_t(4));
  CHECK_EQ(ws.total_bytes(), uint64_t(24 + 8 + 10));
  std::vector<float> ra = ws.read_f32("layer.a", {2, 3});
  for (int i = 0; i < 6; ++i) CHECK_EQ(ra[i], a[i]);
  std::vector<float> rb = ws.read_f32("layer.b", {4});
  for (int i = 0; i < 4; ++i) CHECK_EQ(rb[i], b[i]);
  std::vector<float> rc = ws.read_f32("layer.c", {5, 1});
  for (int i = 0; i < 5; ++i) CHECK_EQ(rc[i], f16_to_f32(f32_to_f16(c[i])));
  CHECK_EQ(ws.read_f32("empty", {0, 3}).size(), size_t(0));
  CHECK_INPUT_ERROR(ws.read_f32("layer.a", {3, 2}), "tensor_shape");
  CHECK_INPUT_ERROR(ws.read_f32("layer.a", {6}), "tensor_shape");
  CHECK_INPUT_ERROR(ws.read_f32("missing.weight", {1}), "tensor_missing");
  CHECK_INPUT_ERROR(ws.file_of("missing.weight"), "tensor_missing");
  ErrorInfo e = catch_input_error([&] { ws.read_f32("layer.a", {3, 2}); });
  CHECK_EQ(e.field, std::string("layer.a"));
  CHECK(e.message.find("[2, 3]") != std::string::npos);
}

TEST(safetensors_large_tensor_conversion_is_exact) {
  // Large enough to take the multi-threaded path of read_f32.
  lora_test::TempDir tmp("st_big");
  const std::string dir = tmp.path();
  const int64_t n = (int64_t(1) << 20) + 37;
  std::vector<float> w(static_cast<size_t>(n));
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (auto& x : w) x = nd(rng);
  write_safetensors(dir + "/model.safetensors", {{"w", DType::BF16, {n}, w.data()}});
  WeightStore ws(dir);
  std::vector<float> r = ws.read_f32("w", {n});
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i)
    if (r[static_cast<size_t>(i)] != bf16_to_f32(f32_to_bf16(w[static_cast<size_t>(i)]))) ++mismatches;
  CHECK_EQ(mismatches, int64_t(0));
}

TEST(safetensors_reads_reference_layout_and_unaligned_header) {
  // Header written by hand with an odd length (no padding): data starts unaligned.
  lora_test::TempDir tmp("st_ref");
  const std::string dir = tmp.path();
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"i":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}})";
  CHECK(header.size() % 8 != 0);
  uint64_t len = header.size();
  std::string s(reinterpret_cast<const char*>(&len), 8);
  s += header;
  float vals[2] = {1.5f, -2.25f};
  s.append(reinterpret_cast<const char*>(vals), 8);
  int32_t iv = 7;
  s.append(reinterpret_cast<const char*>(&iv), 4);
  write_bytes(dir + "/model.safetensors", s);
  WeightStore ws(dir);
  std::vector<float> x = ws.read_f32("x", {2});
  CHECK_EQ(x[0], 1.5f);
  CHECK_EQ(x[1], -2.25f);
  ErrorInfo e = catch_input_error([&] { ws.read_f32("i", {1}); });
  CHECK_EQ(e.code, std::string("safetensors_dtype"));
  CHECK_EQ(e.field, std::string("i"));
  CHECK(e.message.find("I32") != std::string::npos);
  int32_t got;
  std::memcpy(&got, ws.file_of("i").data(*ws.find("i")), 4);
  CHECK_EQ(got, 7);
}

TEST(safetensors_rejects_malformed_files) {
  lora_test::TempDir tmp("st_bad");
  const std::string dir = tmp.path();
  struct Case {
    const char* name;
    std::string bytes;
    const char* code;
    const char* field;
  };
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";
  std::vector<Case> cases = {
      {"short", std::string("\x10\x00\x00", 3), "safetensors_truncated", ""},
      {"len_beyond_file", raw_file("{" + ok_entry + "}", 16, 4096), "safetensors_truncated", ""},
      {"len_huge", raw_file("{}", 0, uint64_t(1) << 40), "safetensors_header", ""},
      {"len_just_over_100mb", raw_file("{}", 0, 100000001), "safetensors_header", ""},
      {"not_json", raw_file("{\"w\": [1,", 0), "safetensors_header", ""},
      {"not_object", raw_file("[1,2,3]", 0), "safetensors_header", ""},
      {"entry_not_object", raw_file(R"({"w": 3})", 0), "safetensors_header", "w"},
      {"no_offsets", raw_file(R"({"w":{"dtype":"F32","shape":[1]}})", 4), "safetensors_header", "w"},
      {"no_dtype", raw_file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4), "safetensors_header", "w"},
      {"metadata_not_string", raw_file(R"({"__metadata__":{"format":1}})", 0), "safetensors_header",
       "__metadata__.format"},
      {"unknown_dtype", raw_file(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4),
       "safetensors_dtype", "w"},
      {"negative_dim", raw_file(R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,8]}})", 8),
       "safetensors_shape", "w"},
      {"fractional_dim", raw_file(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", 8),
       "safetensors_shape", "w"},
      {"huge_shape",
       raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
       "safetensors_shape", "w"},
      {"size_mismatch", raw_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16),
       "safetensors_shape", "w"},
      {"bf16_size_mismatch", raw_file(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", 16),
       "safetensors_shape", "w"},
      {"reversed", raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8),
       "safetensors_offsets", "w"},
      {"negative_offset", raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 8),
       "safetensors_offsets", "w"},
      {"three_offsets", raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 8),
       "safetensors_offsets", "w"},
      {"past_end", raw_file("{" + ok_entry + "}", 12), "safetensors_truncated", "w"},
      {"overlap",
       raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                12),
       "safetensors_offsets", "b"},
      {"duplicate_name",
       raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                8),
       "safetensors_header", ""},
  };
  for (const auto& c : cases) {
    std::string path = dir + "/" + c.name + ".safetensors";
    write_bytes(path, c.bytes);
    ErrorInfo e = catch_input_error([&] { SafetensorsFile f(path); });
    if (e.code != c.code) {
      ::lora_test::record_failure(__FILE__, __LINE__,
                                  std::string(c.name) + ": expected " + c.code + ", got " + e.code + " (" +
                                      e.message + ")");
      continue;
    }
    CHECK_EQ(e.file, path);
    CHECK_EQ(e.field, std::string(c.field));
    CHECK(!e.hint.empty());
    CHECK(e.message.find(path) != std::string::npos);
  }
  CHECK_INPUT_ERROR(SafetensorsFile f(dir + "/does_not_exist.safetensors"), "file_read");
  CHECK_INPUT_ERROR(SafetensorsFile f(dir), "file_read");  // a directory
  // Zero-sized tensors may share an offset with others: not an overlap.
  std::string zero = dir + "/zero.safetensors";
  write_bytes(zero, raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})", 8));
  SafetensorsFile zf(zero);
  CHECK_EQ(zf.tensors().size(), size_t(2));
}

TEST(safetensors_truncated_download_is_reported) {
  lora_test::TempDir tmp("st_trunc");
  const std::string dir = tmp.path();
  std::string path = dir + "/model.safetensors";
  std::vector<float> w(1000, 0.5f);
  write_safetensors(path, {{"a", DType::F32, {10, 50}, w.data()}, {"b", DType::F32, {500}, w.data() + 500}});
  std::string bytes = read_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 100));
  ErrorInfo e = catch_input_error([&] { WeightStore ws(dir); });
  CHECK_EQ(e.code, std::string("safetensors_truncated"));
  CHECK_EQ(e.field, std::string("b"));
  CHECK(e.hint.find("re-download") != std::string::npos);
  write_bytes(path, bytes.substr(0, 20));  // cut inside the header
  CHECK_INPUT_ERROR(WeightStore ws(dir), "safetensors_truncated");
}

TEST(safetensors_sharded_index) {
  lora_test::TempDir tmp("st_shard");
  const std::string dir = tmp.path();
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6};
  write_safetensors(dir + "/model-00001-of-00002.safetensors", {{"a", DType::F32, {2, 2}, a.data()}});
  write_safetensors(dir + "/model-00002-of-00002.safetensors", {{"b", DType::BF16, {2}, b.data()}});
  const std::string index = dir + "/model.safetensors.index.json";
  write_bytes(index, R"({"metadata": {"total_size": 20}, "weight_map": {
    "a": "model-00001-of-00002.safetensors",
    "b": "model-00002-of-00002.safetensors"}})");
  {
    WeightStore ws(dir);
    CHECK_EQ(ws.names().size(), size_t(2));
    CHECK_EQ(ws.read_f32("a", {2, 2})[3], 4.0f);
    CHECK_EQ(ws.read_f32("b", {2})[1], 6.0f);
    CHECK(ws.file_of("b").path().find("00002") != std::string::npos);
    CHECK_EQ(ws.total_bytes(), uint64_t(16 + 4));
    CHECK(ws.find("a")->dtype == DType::F32);
  }

  write_bytes(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00003-of-00003.safetensors"}})");
  ErrorInfo e = catch_input_error([&] { WeightStore ws(dir); });
  CHECK_EQ(e.code, std::string("safetensors_index"));
  CHECK_EQ(e.file, index);
  CHECK(e.message.find("model-00003-of-00003.safetensors") != std::string::npos);

  write_bytes(index, R"({"weight_map": {"a": "model-00002-of-00002.safetensors"}})");
  CHECK_INPUT_ERROR(WeightStore ws(dir), "safetensors_index");  // listed in the wrong shard
  write_bytes(index, R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  CHECK_INPUT_ERROR(WeightStore ws(dir), "safetensors_index");
  write_bytes(index, R"({"weight_map": {"a": 3}})");
  CHECK_INPUT_ERROR(WeightStore ws(dir), "safetensors_index");
  write_bytes(index, R"({"metadata": {}})");
  CHECK_INPUT_ERROR(WeightStore ws(dir), "safetensors_index");
  write_bytes(index, R"({"weight_map": {}})");
  CHECK_INPUT_ERROR(WeightStore ws(dir), "safetensors_index");
  write_bytes(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors",}})");
  CHECK_INPUT_ERROR(WeightStore ws(dir), "json_parse");
  // The same tensor in two shards, the index naming only one: still resolved by the index.
  write_safetensors(dir + "/model-00002-of-00002.safetensors",
                    {{"b", DType::BF16, {2}, b.data()}, {"a", DType::F32, {2}, b.data()}});
  write_bytes(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  {
    WeightStore ws(dir);
    CHECK_EQ(ws.read_f32("a", {2, 2})[0], 1.0f);
  }
}

TEST(safetensors_missing_weights) {
  lora_test::TempDir tmp("st_none");
  const std::string dir = tmp.path();
  ErrorInfo e = catch_input_error([&] { WeightStore ws(dir); });
  CHECK_EQ(e.code, std::string("safetensors_missing"));
  CHECK(e.hint.find("model.safetensors") != std::string::npos);
  write_bytes(dir + "/pytorch_model.bin", "x");
  e = catch_input_error([&] { WeightStore ws(dir); });
  CHECK_EQ(e.code, std::string("safetensors_missing"));
  CHECK(e.hint.find("PyTorch") != std::string::npos);
  CHECK_INPUT_ERROR(WeightStore ws(dir + "/no/such/folder"), "model_missing");
}

TEST(safetensors_write_failures_are_input_errors) {
  lora_test::TempDir tmp("st_wfail");
  const std::string dir = tmp.path();
  std::vector<float> w(1 << 16, 1.0f);
  ErrorInfo e = catch_input_error(
      [&] { write_safetensors(dir + "/missing_sub/adapter.safetensors", {{"w", DType::F32, {4}, w.data()}}); });
  CHECK_EQ(e.code, std::string("write_failed"));
  CHECK_EQ(e.file, dir + "/missing_sub/adapter.safetensors");
  CHECK(!e.hint.empty());
  CHECK(write_failure_hint(ENOSPC).find("disk is full") != std::string::npos);
  CHECK(write_failure_hint(EACCES).find("not writable") != std::string::npos);

  // A write that fails half-way (file size limit, standing in for a full disk) leaves the
  // previous file intact and no temp file behind.
  std::string path = dir + "/adapter.safetensors";
  std::vector<float> old = {1, 2};
  write_safetensors(path, {{"w", DType::F32, {2}, old.data()}});
  std::string before = read_bytes(path);
  struct rlimit saved;
  getrlimit(RLIMIT_FSIZE, &saved);
  auto saved_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  setrlimit(RLIMIT_FSIZE, &small);
  e = catch_input_error([&] { write_safetensors(path, {{"w", DType::F32, {1 << 16}, w.data()}}); });
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, saved_handler);
  CHECK_EQ(e.code, std::string("write_failed"));
  CHECK_EQ(e.file, path);
  CHECK(read_bytes(path) == before);
  struct stat st;
  CHECK(::stat((path + ".tmp").c_str(), &st) != 0);
}

// Random corruption of a valid file (length field, header text, data): opening must either
// succeed with every tensor inside the data region or throw InputError; never crash.
TEST(safetensors_random_corruption_never_crashes) {
  lora_test::TempDir tmp("st_fuzz");
  const std::string path = tmp / "model.safetensors";
  std::vector<float> a(12, 0.25f), b(6, -1.0f);
  write_safetensors(path, {{"model.layers.0.mlp.up_proj.weight", DType::BF16, {3, 4}, a.data()},
                           {"model.norm.weight", DType::F32, {6}, b.data()}});
  const std::string good = read_bytes(path);
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  const char alphabet[] = "{}[]\",:0123456789-eE.FBIU \x00\xff";
  std::mt19937 rng(2025);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = good;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits; ++k) {
      switch (rng() % 5) {
        case 0: s[rng() % 8] = static_cast<char>(rng()); break;  // length field
        case 1: s[8 + rng() % header_len] = alphabet[rng() % (sizeof alphabet - 1)]; break;
        case 2: s.resize(rng() % (s.size() + 1)); break;
        case 3: s[8 + header_len + rng() % (s.size() - 8 - header_len)] = static_cast<char>(rng()); break;
        case 4: s.insert(8 + rng() % header_len, 1, alphabet[rng() % (sizeof alphabet - 1)]); break;
      }
      if (s.size() <= 8 + header_len) break;
    }
    write_bytes(path, s);
    try {
      SafetensorsFile f(path);
      for (const auto& t : f.tensors()) {
        if (t.end > s.size()) {
          ::lora_test::record_failure(__FILE__, __LINE__, "accepted a tensor past the end of the file");
          return;
        }
        volatile uint8_t sink = 0;
        for (uint64_t i = 0; i < t.end - t.begin; ++i) sink = sink ^ f.data(t)[i];
      }
      ++accepted;
    } catch (const InputError& e) {
      ++rejected;
      if (e.file != path || std::string(e.what()).empty()) {
        ::lora_test::record_failure(__FILE__, __LINE__, "error without file or message: " + std::string(e.what()));
        return;
      }
    }
  }
  CHECK(rejected > 0);
  CHECK(accepted > 0);  // e.g. data-region edits keep the file valid
}
