#include "model/merge.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "common/threadpool.hpp"
#include "formats/atomic_file.hpp"
#include "formats/model_config.hpp"
#include "model/model.hpp"
#include "train/adapter.hpp"
#include "train/files.hpp"

namespace lora {

namespace {

// Files that make the merged folder usable on its own, copied byte for byte when present.
const char* const kCopiedFiles[] = {
    "generation_config.json", "tokenizer.json",     "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model",        "vocab.json",         "merges.txt",            "added_tokens.json",
    "chat_template.jinja",    "chat_template.json",
};

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: return "float32";
  }
}

const char* short_dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    default: return "f32";
  }
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

std::string read_whole(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw InputError("file_read", "cannot read " + path, path, "", 0, "check the file's permissions.");
  std::string s;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  const bool err = std::ferror(f) != 0;
  std::fclose(f);
  if (err) throw InputError("file_read", "cannot read " + path, path, "", 0, "check the file's permissions.");
  return s;
}

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

std::string parent_of(const std::string& p) {
  const size_t slash = p.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : p.substr(0, slash);
}

struct Planned {
  std::string name;
  const TensorInfo* src = nullptr;
  DType dtype = DType::F32;  // as written
  uint64_t bytes = 0;
  int64_t layer = -1;        // decoder-layer linear weight: its layer and module, else -1
  int module = -1;
};

// Output tensors in the base's own order (file, then offset), split into shards of at most
// `limit` bytes; a tensor larger than the limit gets a shard to itself, as HF does.
std::vector<std::vector<Planned>> plan_shards(std::vector<Planned> all, uint64_t limit) {
  std::vector<std::vector<Planned>> shards;
  uint64_t used = 0;
  for (auto& p : all) {
    if (shards.empty() || (used > 0 && used + p.bytes > limit)) {
      shards.emplace_back();
      used = 0;
    }
    used += p.bytes;
    shards.back().push_back(std::move(p));
  }
  return shards;
}

std::string shard_header(const std::vector<Planned>& tensors) {
  std::string h = "{";
  uint64_t offset = 0;
  for (const Planned& p : tensors) {
    h += json_quote(p.name) + ":{\"dtype\":\"" + dtype_name(p.dtype) + "\",\"shape\":[";
    for (size_t i = 0; i < p.src->shape.size(); ++i) h += (i ? "," : "") + std::to_string(p.src->shape[i]);
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + p.bytes) + "]},";
    offset += p.bytes;
  }
  h += "\"__metadata__\":{\"format\":\"pt\"}}";
  // The data region starts 8-byte aligned, as the reference writer pads the header.
  while ((h.size() + 8) % 8 != 0) h += ' ';
  return h;
}

// out[cols, rows] = in[rows, cols]^T
void transpose(const float* in, int64_t rows, int64_t cols, std::vector<float>& out) {
  out.resize(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
}

}  // namespace

bool merge_dtype_from_name(const std::string& s, DType& out) {
  if (s == "bf16") out = DType::BF16;
  else if (s == "f16") out = DType::F16;
  else if (s == "f32") out = DType::F32;
  else return false;
  return true;
}

void merge_lora_delta(float* w, const float* a, const float* b, int64_t out, int64_t in, int64_t r, float scale) {
  parallel_for(out, [&](int64_t begin, int64_t end, int) {
    std::vector<float> delta(static_cast<size_t>(in));
    for (int64_t o = begin; o < end; ++o) {
      std::fill(delta.begin(), delta.end(), 0.f);
      for (int64_t k = 0; k < r; ++k) {
        const float bk = b[o * r + k];
        const float* ak = a + k * in;
        for (int64_t i = 0; i < in; ++i) delta[i] += bk * ak[i];
      }
      float* wo = w + o * in;
      for (int64_t i = 0; i < in; ++i) wo[i] += scale * delta[i];
    }
  });
}

MergeResult merge_adapter(const MergeOptions& opt) {
  // Headers only: every tensor the architecture needs is present with the right shape.
  const ModelSummary summary = inspect_model(opt.model);
  const ModelConfig& cfg = summary.cfg;
  Model probe;
  probe.cfg = cfg;
  const LoraState lora = read_adapter(opt.adapter, probe);

  const std::string out_real = real_path(opt.out);
  if (!out_real.empty()) {
    if (out_real == real_path(opt.model) || out_real == real_path(opt.adapter))
      throw InputError("out_exists", "--out " + opt.out + " is the model or adapter folder itself", opt.out, "--out", 0,
                       "write the merged model to a new folder.");
    if (!is_dir(opt.out))
      throw InputError("out_exists", "--out " + opt.out + " exists and is not a folder", opt.out, "--out", 0,
                       "choose a new folder for the merged model.");
    if (!list_dir(opt.out).empty() && !opt.force)
      throw InputError("out_exists", "--out " + opt.out + " is not empty", opt.out, "--out", 0,
                       "choose an empty or new folder, or pass --force to replace its contents.");
  }

  const WeightStore store(opt.model);
  // GPT-2's Conv1D weights are stored [in, out] under "transformer.h.N" or, for GPT2Model
  // checkpoints, "h.N"; the delta B A is [out, in], so they are merged transposed.
  const bool conv1d = cfg.arch == Arch::GPT2;
  const std::string drop_prefix = conv1d && store.find("wte.weight") ? "transformer." : "";
  std::map<std::string, std::pair<int64_t, int>> linear_of;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (int m : arch_modules(cfg.arch)) {
      std::string name = module_path(l, m) + ".weight";
      if (!drop_prefix.empty() && name.rfind(drop_prefix, 0) == 0) name = name.substr(drop_prefix.size());
      linear_of[name] = {l, m};
    }

  std::vector<Planned> all;
  std::map<std::string, size_t> file_rank;
  for (const std::string& name : store.names()) {
    Planned p;
    p.name = name;
    p.src = store.find(name);
    p.dtype = is_float(p.src->dtype) ? opt.dtype : p.src->dtype;
    p.bytes = static_cast<uint64_t>(p.src->numel()) * dtype_size(p.dtype);
    if (auto it = linear_of.find(name); it != linear_of.end()) {
      p.layer = it->second.first;
      p.module = it->second.second;
    }
    file_rank.emplace(store.file_of(name).path(), file_rank.size());
    all.push_back(std::move(p));
  }
  std::sort(all.begin(), all.end(), [&](const Planned& x, const Planned& y) {
    const size_t fx = file_rank.at(store.file_of(x.name).path()), fy = file_rank.at(store.file_of(y.name).path());
    return fx != fy ? fx < fy : x.src->begin < y.src->begin;
  });
  const auto shards = plan_shards(std::move(all), std::max<uint64_t>(1, opt.shard_bytes));

  MergeResult res;
  res.out = opt.out;
  res.dtype = short_dtype_name(opt.dtype);
  res.shards = static_cast<int64_t>(shards.size());
  if (opt.quant != QuantType::None) res.dequantized = quant_name(opt.quant);

  const std::string tmp = opt.out + ".tmp-" + std::to_string(::getpid());
  remove_tree(tmp);
  make_dirs(tmp);
  try {
    Json weight_map = Json::object();
    std::vector<float> buf, linear;
    std::vector<uint8_t> bytes;
    for (size_t s = 0; s < shards.size(); ++s) {
      char fname[64];
      if (shards.size() == 1) std::snprintf(fname, sizeof fname, "model.safetensors");
      else std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      AtomicFileWriter w(tmp + "/" + fname);
      const std::string header = shard_header(shards[s]);
      uint8_t len[8];
      for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
      w.write(len, 8);
      w.write(header.data(), header.size());
      for (const Planned& p : shards[s]) {
        weight_map.set(p.name, std::string(fname));
        ++res.tensors;
        res.bytes += p.bytes;
        if (!is_float(p.src->dtype)) {
          w.write(store.file_of(p.name).data(*p.src), p.bytes);
          continue;
        }
        const int64_t n = p.src->numel();
        buf.resize(static_cast<size_t>(n));
        store.read_f32(p.name, p.src->shape, buf.data());
        const LoraSlot* slot = p.layer >= 0 ? &lora.slot(p.layer, p.module) : nullptr;
        if (slot && (slot->a >= 0 || opt.quant != QuantType::None)) {
          // w: (out, in) as nn.Linear holds it, which is also the layout load_model quantizes.
          const int64_t rows = conv1d ? p.src->shape[1] : p.src->shape[0];
          const int64_t cols = conv1d ? p.src->shape[0] : p.src->shape[1];
          if (conv1d) transpose(buf.data(), p.src->shape[0], p.src->shape[1], linear);
          float* w = conv1d ? linear.data() : buf.data();
          if (opt.quant != QuantType::None) {
            // The same settings as `eval`/`logits --quant`: blocks of 64, double quantization.
            const QuantizedMatrix q = quantize_matrix(w, rows, cols, opt.quant, 64, true);
            dequantize_rows(q, 0, rows, w);
          }
          if (slot->a >= 0) {
            merge_lora_delta(w, lora.params.data() + slot->a, lora.params.data() + slot->b, rows, cols, lora.spec.r,
                             lora.scale);
            ++res.merged_modules;
          }
          if (conv1d) transpose(linear.data(), rows, cols, buf);
        }
        bytes.resize(p.bytes);
        if (p.dtype == DType::F32) {
          std::memcpy(bytes.data(), buf.data(), p.bytes);
        } else {
          const bool bf = p.dtype == DType::BF16;
          for (int64_t i = 0; i < n; ++i) {
            const uint16_t h = bf ? f32_to_bf16(buf[i]) : f32_to_f16(buf[i]);
            std::memcpy(bytes.data() + 2 * i, &h, 2);
          }
        }
        w.write(bytes.data(), bytes.size());
      }
      w.commit();
    }
    int64_t targeted = 0;
    for (int64_t l = 0; l < lora.layers; ++l)
      for (int m = 0; m < kNumModules; ++m) targeted += lora.slot(l, m).a >= 0;
    // inspect_model checked that every module's weight exists, so a shortfall is a naming bug
    // here, and a folder missing part of the adapter must not be passed off as merged.
    if (res.merged_modules != targeted)
      throw std::logic_error("merge: " + std::to_string(res.merged_modules) + " of " + std::to_string(targeted) +
                             " adapted modules found among the base's tensors");
    if (shards.size() > 1) {
      Json meta = Json::object();
      meta.set("total_size", res.bytes);
      Json index = Json::object();
      index.set("metadata", meta);
      index.set("weight_map", weight_map);
      write_file_atomic(tmp + "/model.safetensors.index.json", index.dump(true) + "\n");
    }

    const std::string cfg_path = opt.model + "/config.json";
    Json config = json_parse_file(cfg_path);
    config.set("torch_dtype", torch_dtype_name(opt.dtype));
    // The merged weights are plain tensors whatever the base's loader was told.
    if (config.has("quantization_config")) {
      Json kept = Json::object();
      for (const auto& kv : config.members())
        if (kv.first != "quantization_config") kept.set(kv.first, kv.second);
      config = kept;
    }
    write_file_atomic(tmp + "/config.json", config.dump(true) + "\n");
    res.copied.push_back("config.json");
    for (const char* name : kCopiedFiles) {
      const std::string src = opt.model + "/" + name;
      if (!path_exists(src)) continue;
      write_file_atomic(tmp + "/" + name, read_whole(src));
      res.copied.push_back(name);
    }

    if (path_exists(opt.out)) {
      const std::string old = opt.out + ".old-" + std::to_string(::getpid());
      remove_tree(old);
      if (std::rename(opt.out.c_str(), old.c_str()) != 0)
        throw InputError("write_failed", "cannot move the existing " + opt.out + " aside", opt.out, "--out", 0,
                         write_failure_hint(errno));
      if (std::rename(tmp.c_str(), opt.out.c_str()) != 0) {
        const int err = errno;
        std::rename(old.c_str(), opt.out.c_str());
        throw InputError("write_failed", "cannot rename " + tmp + " to " + opt.out, opt.out, "--out", 0, write_failure_hint(err));
      }
      remove_tree(old);
    } else if (std::rename(tmp.c_str(), opt.out.c_str()) != 0) {
      throw InputError("write_failed", "cannot rename " + tmp + " to " + opt.out, opt.out, "--out", 0, write_failure_hint(errno));
    }
    fsync_dir(parent_of(opt.out));
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  return res;
}

}  // namespace lora
