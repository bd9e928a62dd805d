#include "model/model.hpp"

#include <algorithm>
#include <map>

#include "common/errors.hpp"
#include "ops/rope.hpp"

namespace lora {

namespace {

const char* const kModuleNames[kNumModules] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"};

std::string weights_file_hint(const std::string& dir) {
  return dir + "/model.safetensors (or the shards of model.safetensors.index.json)";
}

// One tensor the model needs: its name and the shape config.json implies.
struct Expected {
  std::string name;
  std::vector<int64_t> shape;
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool module_has_bias(const ModelConfig& c, int m) {
  if (module_is_attention(m)) {
    // Qwen2 puts biases on q, k, v only; Llama's attention_bias also covers o_proj.
    if (c.arch == Arch::Qwen2) return m != kOProj;
    return c.attention_bias;
  }
  return c.mlp_bias;
}

int64_t module_in_of(const ModelConfig& c, int m) {
  switch (m) {
    case kOProj: return c.num_heads * c.head_dim;
    case kDownProj: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

int64_t module_out_of(const ModelConfig& c, int m) {
  switch (m) {
    case kQProj: return c.num_heads * c.head_dim;
    case kKProj:
    case kVProj: return c.num_kv_heads * c.head_dim;
    case kOProj:
    case kDownProj: return c.hidden_size;
    default: return c.intermediate_size;
  }
}

std::vector<Expected> expected_tensors(const ModelConfig& c) {
  std::vector<Expected> e;
  e.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    e.push_back({p + ".input_layernorm.weight", {c.hidden_size}});
    e.push_back({p + ".post_attention_layernorm.weight", {c.hidden_size}});
    for (int m = 0; m < kNumModules; ++m) {
      e.push_back({module_path(l, m) + ".weight", {module_out_of(c, m), module_in_of(c, m)}});
      if (module_has_bias(c, m)) e.push_back({module_path(l, m) + ".bias", {module_out_of(c, m)}});
    }
  }
  e.push_back({"model.norm.weight", {c.hidden_size}});
  if (!c.tie_word_embeddings) e.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
  return e;
}

// Checks presence, dtype and shape of one tensor; returns its info.
const TensorInfo& check_tensor(const WeightStore& ws, const ModelConfig& c, const Expected& x) {
  const TensorInfo* t = ws.find(x.name);
  if (!t) {
    std::string hint = "the checkpoint does not match config.json (" + c.hf_architecture + ", " +
                       std::to_string(c.num_layers) + " layers)";
    if (x.name == "lm_head.weight") hint += "; if the LM head is tied to the embeddings, set \"tie_word_embeddings\": true in config.json";
    throw InputError("tensor_missing", "tensor " + x.name + " is missing from the model's weights",
                     weights_file_hint(c.dir), x.name, 0, hint + ".");
  }
  const std::string file = ws.file_of(x.name).path();
  if (t->dtype != DType::F32 && t->dtype != DType::F16 && t->dtype != DType::BF16) {
    throw InputError("unsupported_dtype",
                     "tensor " + x.name + " has dtype " + dtype_name(t->dtype) + ", which the runtime cannot use",
                     file, x.name, 0, "supported weight dtypes are F32, F16 and BF16; re-save the model in one of them.");
  }
  if (t->shape != x.shape) {
    throw InputError("tensor_shape",
                     "tensor " + x.name + " has shape " + shape_str(t->shape) + " but config.json implies " + shape_str(x.shape),
                     file, x.name, 0, "the weights and config.json belong to different models, or the file is corrupt.");
  }
  return *t;
}

std::string dominant_dtype(const WeightStore& ws, const std::vector<Expected>& ex) {
  std::map<std::string, uint64_t> bytes;
  for (const auto& x : ex) {
    const TensorInfo* t = ws.find(x.name);
    bytes[dtype_name(t->dtype)] += t->end - t->begin;
  }
  std::string best;
  uint64_t most = 0;
  for (const auto& [name, b] : bytes)
    if (b > most) most = b, best = name;
  return best;
}

}  // namespace

const char* module_name(int module) { return kModuleNames[module]; }

int module_from_name(const std::string& name) {
  for (int m = 0; m < kNumModules; ++m)
    if (name == kModuleNames[m]) return m;
  return -1;
}

bool module_is_attention(int module) { return module <= kOProj; }

std::string module_path(int64_t layer, int module) {
  return "model.layers." + std::to_string(layer) + (module_is_attention(module) ? ".self_attn." : ".mlp.") +
         kModuleNames[module];
}

int64_t Model::module_in(int module) const { return module_in_of(cfg, module); }
int64_t Model::module_out(int module) const { return module_out_of(cfg, module); }
int64_t Model::max_linear_numel() const {
  int64_t n = 0;
  for (int m = 0; m < kNumModules; ++m) n = std::max(n, module_in(m) * module_out(m));
  return n;
}

ModelSummary inspect_model(const std::string& model_dir) {
  ModelSummary s;
  s.cfg = load_model_config(model_dir);
  WeightStore ws(model_dir);
  const auto ex = expected_tensors(s.cfg);
  for (const auto& x : ex) {
    const TensorInfo& t = check_tensor(ws, s.cfg, x);
    s.params_total += t.numel();
    s.bytes += t.end - t.begin;
  }
  s.dtype = dominant_dtype(ws, ex);
  return s;
}

Model load_model(const std::string& model_dir, const QuantSettings& quant) {
  Model model;
  model.cfg = load_model_config(model_dir);
  model.quant = quant;
  const ModelConfig& c = model.cfg;
  WeightStore ws(model_dir);
  const auto ex = expected_tensors(c);
  // Validate everything first: a bad tensor in the last layer must not cost a long load.
  for (const auto& x : ex) {
    const TensorInfo& t = check_tensor(ws, c, x);
    model.params_total += t.numel();
    model.bytes_disk += t.end - t.begin;
  }
  model.dtype = dominant_dtype(ws, ex);

  auto read = [&](const std::string& name, const std::vector<int64_t>& shape) {
    std::vector<float> v = ws.read_f32(name, shape);
    model.bytes_held += v.size() * sizeof(float);
    return v;
  };
  model.embed = read("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  model.final_norm = read("model.norm.weight", {c.hidden_size});
  if (!c.tie_word_embeddings) model.lm_head = read("lm_head.weight", {c.vocab_size, c.hidden_size});

  model.layers.resize(c.num_layers);
  std::vector<float> scratch;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = model.layers[l];
    const std::string p = "model.layers." + std::to_string(l);
    lw.input_norm = read(p + ".input_layernorm.weight", {c.hidden_size});
    lw.post_norm = read(p + ".post_attention_layernorm.weight", {c.hidden_size});
    for (int m = 0; m < kNumModules; ++m) {
      const int64_t rows = module_out_of(c, m), cols = module_in_of(c, m);
      const std::string name = module_path(l, m) + ".weight";
      if (quant.type == QuantType::None) {
        const TensorInfo* t = ws.find(name);
        lw.linear[m] = wrap_unquantized(ws.file_of(name).data(*t), t->dtype, rows, cols);
      } else {
        scratch.resize(rows * cols);
        ws.read_f32(name, {rows, cols}, scratch.data());
        lw.linear[m] = quantize_matrix(scratch.data(), rows, cols, quant.type, quant.block_size, quant.double_quant);
      }
      model.bytes_held += lw.linear[m].bytes();
      if (module_has_bias(c, m)) lw.bias[m] = read(module_path(l, m) + ".bias", {rows});
    }
  }
  model.inv_freq.resize(c.head_dim / 2);
  rope_inv_freq(model.inv_freq.data(), c.head_dim, c.rope_theta, c.rope_scaling);
  return model;
}

}  // namespace lora
