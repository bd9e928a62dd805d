#include "formats/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "common/threadpool.hpp"
#include "formats/atomic_file.hpp"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors and token shards are little-endian; this code reads them with memcpy"
#endif

namespace lora {

namespace {

// The reference implementation refuses headers above 100 MB; a larger value means the
// file is not safetensors (or is corrupt), and trusting it would allocate that much.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

const char* const kHintRedownload = "the file may be truncated or corrupted: re-download it";
const char* const kHintRegenerate =
    "the file is not valid safetensors: re-download it or re-export it with the safetensors library";

bool dtype_from_name(const std::string& s, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F64", DType::F64},
      {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16},   {"I8", DType::I8},
      {"U8", DType::U8},   {"BOOL", DType::BOOL},
  };
  for (const auto& e : table) {
    if (s == e.first) {
      out = e.second;
      return true;
    }
  }
  return false;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

}  // namespace

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64: return 8;
    case DType::F32:
    case DType::I32: return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16: return 2;
    case DType::I8:
    case DType::U8:
    case DType::BOOL: return 1;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------
// Conversions. Bit-level so they are exact and do not depend on the FPU's rounding mode.

float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: truncating could clear every mantissa bit and turn it into infinity.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      // Subnormal half: renormalise into an fp32 normal (always representable).
      uint32_t e = 113;  // the fp32 biased exponent of 2^-14
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --e;
      }
      bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf or NaN (payload kept)
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) {
    if (x == 0x7F800000u) return sign | 0x7C00u;
    return static_cast<uint16_t>(sign | 0x7E00u | ((x >> 13) & 0x3FFu));  // quiet NaN
  }
  // 65520 is half-way between 65504 (the largest half) and 65536; ties-to-even goes up.
  if (x >= 0x477FF000u) return sign | 0x7C00u;
  if (x >= 0x38800000u) {  // >= 2^-14: a normal half
    uint32_t h = ((((x >> 23) - 127 + 15) << 10)) | ((x & 0x7FFFFFu) >> 13);
    uint32_t rem = x & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
    return static_cast<uint16_t>(sign | h);
  }
  // 2^-25 is half-way between 0 and the smallest subnormal 2^-24; ties-to-even gives 0.
  if (x <= 0x33000000u) return sign;
  // Subnormal half: count units of 2^-24.
  uint32_t mant = (x & 0x7FFFFFu) | 0x800000u;
  uint32_t shift = 126u - (x >> 23);  // 14..24
  uint32_t q = mant >> shift;
  uint32_t rem = mant & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

// ---------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    int e = errno;
    throw InputError("file_read", "cannot open " + path + ": " + std::strerror(e), path, "", 0,
                     e == ENOENT ? "check that the model folder contains this file (download it again if needed)"
                                 : "check the file's permissions");
  }
  try {
    struct stat st;
    if (::fstat(fd_, &st) != 0)
      throw InputError("file_read", "cannot stat " + path + ": " + std::strerror(errno), path, "", 0,
                       "check the file's permissions");
    if (!S_ISREG(st.st_mode))
      throw InputError("file_read", path + " is not a regular file", path, "", 0,
                       "point at a .safetensors file");
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    if (file_size < 8)
      throw InputError("safetensors_truncated",
                       path + ": file is " + std::to_string(file_size) +
                           " bytes, too short for a safetensors header",
                       path, "", 0, kHintRedownload);
    map_size_ = static_cast<size_t>(file_size);
    void* m = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (m == MAP_FAILED) {
      map_size_ = 0;
      throw InputError("file_read", "cannot memory-map " + path + ": " + std::strerror(errno), path, "", 0,
                       "check that the file is on a local or mmap-capable file system");
    }
    map_ = static_cast<const uint8_t*>(m);
    // The fd is not needed once mapped; sharded models would otherwise hold many open.
    ::close(fd_);
    fd_ = -1;

    uint64_t header_len;
    std::memcpy(&header_len, map_, 8);
    if (header_len > kMaxHeaderBytes)
      throw InputError("safetensors_header",
                       path + ": header length " + std::to_string(header_len) +
                           " bytes is above the 100 MB limit; this is not a safetensors file or it is corrupted",
                       path, "", 0, kHintRegenerate);
    if (header_len > file_size - 8)
      throw InputError("safetensors_truncated",
                       path + ": header length " + std::to_string(header_len) + " bytes but the file has only " +
                           std::to_string(file_size - 8) + " bytes after the length field",
                       path, "", 0, kHintRedownload);
    data_start_ = 8 + header_len;
    const uint64_t data_size = file_size - data_start_;

    std::string text(reinterpret_cast<const char*>(map_) + 8, static_cast<size_t>(header_len));
    Json header;
    JsonParseError perr;
    if (!json_parse(text, header, perr))
      throw InputError("safetensors_header",
                       path + ": header JSON is invalid at line " + std::to_string(perr.line) + ", column " +
                           std::to_string(perr.column) + ": " + perr.message,
                       path, "", perr.line, kHintRegenerate);
    if (!header.is_object())
      throw InputError("safetensors_header", path + ": header must be a JSON object", path, "", 0,
                       kHintRegenerate);

    for (const auto& member : header.members()) {
      const std::string& name = member.first;
      const Json& v = member.second;
      if (name == "__metadata__") {
        if (!v.is_object())
          throw InputError("safetensors_header", path + ": __metadata__ must be an object of strings", path,
                           name, 0, kHintRegenerate);
        for (const auto& kv : v.members()) {
          if (!kv.second.is_string())
            throw InputError("safetensors_header",
                             path + ": __metadata__." + kv.first + " must be a string", path,
                             "__metadata__." + kv.first, 0, kHintRegenerate);
          metadata_[kv.first] = kv.second.as_string();
        }
        continue;
      }
      auto header_error = [&](const std::string& what) {
        return InputError("safetensors_header", path + ": tensor '" + name + "': " + what, path, name, 0,
                          kHintRegenerate);
      };
      if (!v.is_object()) throw header_error("entry must be an object with dtype, shape, data_offsets");
      const Json* jd = v.find("dtype");
      const Json* js = v.find("shape");
      const Json* jo = v.find("data_offsets");
      if (!jd || !jd->is_string()) throw header_error("missing or non-string \"dtype\"");
      if (!js || !js->is_array()) throw header_error("missing or non-array \"shape\"");
      if (!jo || !jo->is_array()) throw header_error("missing or non-array \"data_offsets\"");

      TensorInfo t;
      t.name = name;
      if (!dtype_from_name(jd->as_string(), t.dtype))
        throw InputError("safetensors_dtype",
                         path + ": tensor '" + name + "' has unsupported dtype " + jd->as_string(), path, name, 0,
                         "supported dtypes are F32, F16, BF16 (and F64, I64, I32, I16, I8, U8, BOOL for "
                         "non-weight tensors); convert the checkpoint to bf16/fp16/fp32");

      uint64_t numel = 1;
      bool overflow = false;
      for (const Json& d : js->items()) {
        if (!d.is_integer())
          throw InputError("safetensors_shape",
                           path + ": tensor '" + name + "' has a non-integer dimension in its shape", path, name,
                           0, kHintRegenerate);
        if (d.as_int() < 0)
          throw InputError("safetensors_shape",
                           path + ": tensor '" + name + "' has a negative dimension " +
                               std::to_string(d.as_int()),
                           path, name, 0, kHintRegenerate);
        t.shape.push_back(d.as_int());
        uint64_t next;
        if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d.as_int()), &next)) overflow = true;
        numel = next;
      }
      uint64_t nbytes = 0;
      if (overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &nbytes))
        throw InputError("safetensors_shape",
                         path + ": tensor '" + name + "' shape " + shape_str(t.shape) + " is impossibly large",
                         path, name, 0, kHintRegenerate);

      const auto& offs = jo->items();
      if (offs.size() != 2 || !offs[0].is_integer() || !offs[1].is_integer() || offs[0].as_int() < 0 ||
          offs[1].as_int() < 0)
        throw InputError("safetensors_offsets",
                         path + ": tensor '" + name + "' data_offsets must be two non-negative integers", path,
                         name, 0, kHintRegenerate);
      t.begin = static_cast<uint64_t>(offs[0].as_int());
      t.end = static_cast<uint64_t>(offs[1].as_int());
      if (t.end < t.begin)
        throw InputError("safetensors_offsets",
                         path + ": tensor '" + name + "' data_offsets [" + std::to_string(t.begin) + ", " +
                             std::to_string(t.end) + "] end before they begin",
                         path, name, 0, kHintRegenerate);
      if (t.end - t.begin != nbytes)
        throw InputError("safetensors_shape",
                         path + ": tensor '" + name + "' is " + jd->as_string() + " " + shape_str(t.shape) +
                             " = " + std::to_string(nbytes) + " bytes, but its data_offsets span " +
                             std::to_string(t.end - t.begin) + " bytes",
                         path, name, 0, kHintRegenerate);
      if (t.end > data_size)
        throw InputError("safetensors_truncated",
                         path + ": tensor '" + name + "' data ends at byte " + std::to_string(t.end) +
                             " of the data region, but the file holds only " + std::to_string(data_size) +
                             " data bytes",
                         path, name, 0, kHintRedownload);
      index_[name] = tensors_.size();
      tensors_.push_back(std::move(t));
    }

    // Overlapping ranges would let one tensor alias another's bytes: a forged or corrupt header.
    std::vector<size_t> order(tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return tensors_[a].begin < tensors_[b].begin; });
    const TensorInfo* prev = nullptr;
    for (size_t i : order) {
      const TensorInfo& t = tensors_[i];
      if (t.begin == t.end) continue;  // empty tensors occupy no bytes
      if (prev && t.begin < prev->end)
        throw InputError("safetensors_offsets",
                         path + ": tensors '" + prev->name + "' and '" + t.name + "' have overlapping data_offsets",
                         path, t.name, 0, kHintRegenerate);
      prev = &t;
    }
  } catch (...) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
    map_ = nullptr;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
  if (fd_ >= 0) ::close(fd_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const uint8_t* SafetensorsFile::data(const TensorInfo& t) const { return map_ + data_start_ + t.begin; }

// ---------------------------------------------------------------------------------------
// WeightStore

WeightStore::WeightStore(const std::string& model_dir) {
  const std::string index_path = join_path(model_dir, "model.safetensors.index.json");
  const std::string single_path = join_path(model_dir, "model.safetensors");
  struct stat st;
  if (::stat(model_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw InputError("model_missing", "model folder not found: " + model_dir, model_dir, "", 0,
                     "point at a Hugging Face model folder (config.json + *.safetensors)");

  if (file_exists(index_path)) {
    Json index = json_parse_file(index_path);
    auto index_error = [&](const std::string& field, const std::string& what, const std::string& hint) {
      return InputError("safetensors_index", index_path + ": " + what, index_path, field,
                        0, hint);
    };
    const Json* wm = index.is_object() ? index.find("weight_map") : nullptr;
    if (!wm || !wm->is_object())
      throw index_error("weight_map", "missing \"weight_map\" object",
                        "re-download model.safetensors.index.json from the model's repository");
    std::map<std::string, size_t> file_slot;
    std::vector<std::pair<std::string, std::string>> listed;  // tensor, file
    for (const auto& kv : wm->members()) {
      if (!kv.second.is_string())
        throw InputError("safetensors_index", index_path + ": weight_map entry '" + kv.first + "' is not a file name",
                         index_path, "weight_map." + kv.first, kv.second.line(),
                         "re-download model.safetensors.index.json from the model's repository");
      const std::string& file = kv.second.as_string();
      // Shard names are plain file names beside the index; anything else could read
      // files outside the model folder.
      if (file.empty() || file.find('/') != std::string::npos || file.find('\\') != std::string::npos ||
          file == "." || file == "..")
        throw InputError("safetensors_index",
                         index_path + ": weight_map entry '" + kv.first + "' names '" + file +
                             "', which is not a file name in the model folder",
                         index_path, "weight_map." + kv.first, kv.second.line(),
                         "re-download model.safetensors.index.json from the model's repository");
      if (!file_slot.count(file)) {
        const std::string shard_path = join_path(model_dir, file);
        if (!file_exists(shard_path))
          throw InputError("safetensors_index",
                           index_path + " lists shard " + file + ", which is missing from " + model_dir,
                           index_path, "weight_map." + kv.first, kv.second.line(),
                           "download every shard listed in model.safetensors.index.json into the model folder");
        file_slot[file] = files_.size();
        files_.push_back(std::make_unique<SafetensorsFile>(shard_path));
      }
      listed.emplace_back(kv.first, file);
    }
    if (files_.empty())
      throw index_error("weight_map", "\"weight_map\" lists no tensors",
                        "re-download model.safetensors.index.json from the model's repository");
    for (const auto& tf : listed) {
      size_t slot = file_slot[tf.second];
      if (!files_[slot]->find(tf.first))
        throw InputError("safetensors_index",
                         index_path + ": tensor '" + tf.first + "' is listed in " + tf.second +
                             ", but that shard does not contain it",
                         index_path, "weight_map." + tf.first, 0,
                         "the index and the shards come from different versions: re-download them together");
      where_[tf.first] = slot;
    }
    // Tensors the index forgot are still reachable, but one name in two shards is ambiguous.
    for (size_t slot = 0; slot < files_.size(); ++slot) {
      for (const auto& t : files_[slot]->tensors()) {
        auto it = where_.find(t.name);
        if (it == where_.end()) {
          where_[t.name] = slot;
        } else if (it->second != slot && wm->find(t.name) == nullptr) {
          throw InputError("safetensors_index",
                           "tensor '" + t.name + "' appears in both " + files_[it->second]->path() + " and " +
                               files_[slot]->path(),
                           index_path, t.name, 0,
                           "the index and the shards come from different versions: re-download them together");
        }
      }
    }
    return;
  }

  if (file_exists(single_path)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single_path));
    for (const auto& t : files_[0]->tensors()) where_[t.name] = 0;
    return;
  }

  std::string hint = "the folder must contain model.safetensors or model.safetensors.index.json with its shards";
  if (file_exists(join_path(model_dir, "pytorch_model.bin")) ||
      file_exists(join_path(model_dir, "pytorch_model.bin.index.json")))
    hint += "; PyTorch .bin checkpoints are not supported: convert them to safetensors "
            "(e.g. model.save_pretrained(dir, safe_serialization=True))";
  throw InputError("safetensors_missing", "no safetensors weights in " + model_dir, single_path, "", 0, hint);
}

const TensorInfo* WeightStore::find(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return nullptr;
  return files_[it->second]->find(name);
}

const SafetensorsFile& WeightStore::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw InputError("tensor_missing", "tensor '" + name + "' is not in the model's safetensors files",
                     files_.empty() ? std::string() : files_[0]->path(), name, 0,
                     "the weights do not match config.json's architecture: check the model folder");
  return *files_[it->second];
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

void WeightStore::read_f32(const std::string& name, const std::vector<int64_t>& expect_shape, float* out) const {
  const SafetensorsFile& file = file_of(name);
  const TensorInfo* t = file.find(name);
  if (t->shape != expect_shape)
    throw InputError("tensor_shape",
                     file.path() + ": tensor '" + name + "' has shape " + shape_str(t->shape) + ", expected " +
                         shape_str(expect_shape),
                     file.path(), name, 0,
                     "config.json does not match the weights: check hidden_size, intermediate_size, "
                     "num_attention_heads, num_key_value_heads and vocab_size");
  if (t->dtype != DType::F32 && t->dtype != DType::F16 && t->dtype != DType::BF16)
    throw InputError("safetensors_dtype",
                     file.path() + ": tensor '" + name + "' is " + dtype_name(t->dtype) +
                         "; weights must be F32, F16 or BF16",
                     file.path(), name, 0, "convert the checkpoint to bf16, fp16 or fp32");
  const uint8_t* src = file.data(*t);
  const int64_t n = t->numel();
  const DType dt = t->dtype;
  if (n == 0) return;
  // The mapping may be unaligned (the header length is arbitrary), hence memcpy loads.
  auto convert = [src, out, dt](int64_t begin, int64_t end, int) {
    if (dt == DType::F32) {
      std::memcpy(out + begin, src + begin * 4, static_cast<size_t>(end - begin) * 4);
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      uint16_t h;
      std::memcpy(&h, src + i * 2, 2);
      out[i] = dt == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  };
  if (n >= (int64_t(1) << 20))
    parallel_for(n, convert);
  else
    convert(0, n, 0);
}

std::vector<float> WeightStore::read_f32(const std::string& name, const std::vector<int64_t>& expect_shape) const {
  const TensorInfo* t = find(name);
  std::vector<float> out(t && t->shape == expect_shape ? static_cast<size_t>(t->numel()) : 0);
  read_f32(name, expect_shape, out.data());
  return out;
}

uint64_t WeightStore::total_bytes() const {
  uint64_t total = 0;
  for (const auto& f : files_)
    for (const auto& t : f->tensors()) total += t.end - t.begin;
  return total;
}

// ---------------------------------------------------------------------------------------
// Writing

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& kv : metadata) meta.set(kv.first, kv.second);
    header.set("__metadata__", std::move(meta));
  }
  // Invalid tensors here are the caller's bug, not the user's input: std::invalid_argument
  // (exit code 1) rather than an assert, which would vanish in release builds and write a
  // file that readers reject.
  std::set<std::string> names;
  std::vector<int64_t> numels;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)
      throw std::invalid_argument("write_safetensors: tensor " + t.name + " has unsupported output dtype " +
                                  dtype_name(t.dtype));
    if (t.name == "__metadata__" || !names.insert(t.name).second)
      throw std::invalid_argument("write_safetensors: duplicate or reserved tensor name " + t.name);
    int64_t numel = 1;
    Json shape = Json::array();
    for (int64_t d : t.shape) {
      if (d < 0) throw std::invalid_argument("write_safetensors: negative dimension in " + t.name);
      numel *= d;
      shape.push(d);
    }
    if (numel > 0 && !t.data) throw std::invalid_argument("write_safetensors: no data for " + t.name);
    numels.push_back(numel);
    const uint64_t nbytes = static_cast<uint64_t>(numel) * dtype_size(t.dtype);
    Json entry = Json::object();
    entry.set("dtype", dtype_name(t.dtype));
    entry.set("shape", std::move(shape));
    Json offs = Json::array();
    offs.push(offset);
    offs.push(offset + nbytes);
    entry.set("data_offsets", std::move(offs));
    header.set(t.name, std::move(entry));
    offset += nbytes;
  }
  std::string text = header.dump();
  // Pad with spaces so the data region starts 8-byte aligned, as the reference writer does.
  while ((8 + text.size()) % 8 != 0) text += ' ';
  const uint64_t header_len = text.size();

  AtomicFileWriter out(path);
  out.write(&header_len, 8);
  out.write(text.data(), text.size());
  constexpr int64_t kChunk = 1 << 16;
  std::vector<uint16_t> half;
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    const TensorToWrite& t = tensors[ti];
    const int64_t numel = numels[ti];
    if (numel == 0) continue;
    if (t.dtype == DType::F32) {
      out.write(t.data, static_cast<size_t>(numel) * 4);
      continue;
    }
    for (int64_t begin = 0; begin < numel; begin += kChunk) {
      const int64_t end = std::min(numel, begin + kChunk);
      half.resize(static_cast<size_t>(end - begin));
      for (int64_t i = begin; i < end; ++i)
        half[static_cast<size_t>(i - begin)] = t.dtype == DType::BF16 ? f32_to_bf16(t.data[i]) : f32_to_f16(t.data[i]);
      out.write(half.data(), half.size() * 2);
    }
  }
  out.commit();
}

}  // namespace lora
