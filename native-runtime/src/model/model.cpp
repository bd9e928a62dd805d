#include "model/model.hpp"

#include <algorithm>
#include <map>

#include "common/errors.hpp"
#include "ops/rope.hpp"

namespace lora {

namespace {

const char* const kModuleNames[kNumModules] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj", "c_attn", "c_proj", "c_fc", "c_proj"};

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
  if (c.arch == Arch::GPT2) return true;
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
    case kDownProj:
    case kMlpCProj: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

int64_t module_out_of(const ModelConfig& c, int m) {
  switch (m) {
    case kQProj: return c.num_heads * c.head_dim;
    case kKProj:
    case kVProj: return c.num_kv_heads * c.head_dim;
    case kOProj:
    case kDownProj:
    case kAttnCProj:
    case kMlpCProj: return c.hidden_size;
    case kCAttn: return 3 * c.hidden_size;
    default: return c.intermediate_size;
  }
}

// GPT-2 checkpoints name tensors "transformer.h.0..." (GPT2LMHeadModel) or "h.0..."
// (GPT2Model, and some conversions); both are accepted.
std::string gpt2_prefix(const WeightStore& ws) { return ws.find("wte.weight") ? "" : "transformer."; }

// The checkpoint name of a GPT-2 module's tensor (Conv1D: weight stored [in, out]).
std::string gpt2_tensor(const std::string& prefix, int64_t layer, int m, const char* what) {
  const char* path = m == kCAttn ? "attn.c_attn" : m == kAttnCProj ? "attn.c_proj" : m == kCFc ? "mlp.c_fc" : "mlp.c_proj";
  return prefix + "h." + std::to_string(layer) + "." + path + "." + what;
}

std::vector<Expected> expected_tensors_gpt2(const ModelConfig& c, const std::string& x) {
  std::vector<Expected> e;
  const int64_t C = c.hidden_size;
  e.push_back({x + "wte.weight", {c.vocab_size, C}});
  e.push_back({x + "wpe.weight", {c.max_position_embeddings, C}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = x + "h." + std::to_string(l);
    for (const char* ln : {".ln_1.", ".ln_2."}) {
      e.push_back({p + ln + "weight", {C}});
      e.push_back({p + ln + "bias", {C}});
    }
    for (int m : arch_modules(Arch::GPT2)) {
      e.push_back({gpt2_tensor(x, l, m, "weight"), {module_in_of(c, m), module_out_of(c, m)}});
      e.push_back({gpt2_tensor(x, l, m, "bias"), {module_out_of(c, m)}});
    }
  }
  e.push_back({x + "ln_f.weight", {C}});
  e.push_back({x + "ln_f.bias", {C}});
  if (!c.tie_word_embeddings) e.push_back({"lm_head.weight", {c.vocab_size, C}});
  return e;
}

std::vector<Expected> expected_tensors(const ModelConfig& c, const WeightStore& ws) {
  if (c.arch == Arch::GPT2) return expected_tensors_gpt2(c, gpt2_prefix(ws));
  std::vector<Expected> e;
  e.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    e.push_back({p + ".input_layernorm.weight", {c.hidden_size}});
    e.push_back({p + ".post_attention_layernorm.weight", {c.hidden_size}});
    for (int m : arch_modules(c.arch)) {
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
  for (int m = 0; m <= kDownProj; ++m)
    if (name == kModuleNames[m]) return m;
  return -1;
}

const std::vector<int>& arch_modules(Arch arch) {
  static const std::vector<int> llama = {kQProj, kKProj, kVProj, kOProj, kGateProj, kUpProj, kDownProj};
  static const std::vector<int> gpt2 = {kCAttn, kAttnCProj, kCFc, kMlpCProj};
  return arch == Arch::GPT2 ? gpt2 : llama;
}

std::vector<int> modules_for_target(Arch arch, const std::string& name) {
  std::vector<int> out;
  for (int m : arch_modules(arch)) {
    const std::string path = std::string(module_is_attention(m) ? (arch == Arch::GPT2 ? "attn." : "self_attn.") : "mlp.") +
                             kModuleNames[m];
    // PEFT's suffix rule: the name equals the last component or a dotted tail of the path.
    if (name == kModuleNames[m] || name == path) out.push_back(m);
  }
  return out;
}

std::vector<std::string> target_names(const std::vector<int>& modules) {
  auto has = [&](int m) { return std::find(modules.begin(), modules.end(), m) != modules.end(); };
  std::vector<std::string> out;
  for (int m : modules) {
    if (m == kAttnCProj || m == kMlpCProj) {
      const bool both = has(kAttnCProj) && has(kMlpCProj);
      if (both && m == kMlpCProj) continue;
      out.push_back(both ? "c_proj" : m == kAttnCProj ? "attn.c_proj" : "mlp.c_proj");
      continue;
    }
    out.push_back(kModuleNames[m]);
  }
  return out;
}

bool module_is_attention(int module) { return module <= kOProj || module == kCAttn || module == kAttnCProj; }

std::string module_path(int64_t layer, int module) {
  if (module >= kCAttn)
    return "transformer.h." + std::to_string(layer) + (module_is_attention(module) ? ".attn." : ".mlp.") +
           kModuleNames[module];
  return "model.layers." + std::to_string(layer) + (module_is_attention(module) ? ".self_attn." : ".mlp.") +
         kModuleNames[module];
}

int64_t Model::module_in(int module) const { return module_in_of(cfg, module); }
int64_t Model::module_out(int module) const { return module_out_of(cfg, module); }
int64_t Model::max_linear_numel() const {
  int64_t n = 0;
  for (int m : arch_modules(cfg.arch)) n = std::max(n, module_in(m) * module_out(m));
  return n;
}

namespace {

// GPT-2's tensors into `model`; `read` reads a small fp32 tensor and counts its bytes.
template <class Read>
void load_gpt2_weights(Model& model, const WeightStore& ws, const Read& read) {
  const ModelConfig& c = model.cfg;
  const QuantSettings& quant = model.quant;
  const std::string x = gpt2_prefix(ws);
  const int64_t C = c.hidden_size;
  model.embed = read(x + "wte.weight", {c.vocab_size, C});
  model.wpe = read(x + "wpe.weight", {c.max_position_embeddings, C});
  model.final_norm = read(x + "ln_f.weight", {C});
  model.final_norm_bias = read(x + "ln_f.bias", {C});
  if (!c.tie_word_embeddings) model.lm_head = read("lm_head.weight", {c.vocab_size, C});
  model.layers.resize(c.num_layers);
  std::vector<float> stored, linear;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = model.layers[l];
    const std::string p = x + "h." + std::to_string(l);
    lw.input_norm = read(p + ".ln_1.weight", {C});
    lw.input_norm_bias = read(p + ".ln_1.bias", {C});
    lw.post_norm = read(p + ".ln_2.weight", {C});
    lw.post_norm_bias = read(p + ".ln_2.bias", {C});
    for (int m : arch_modules(Arch::GPT2)) {
      const int64_t in = module_in_of(c, m), out = module_out_of(c, m);
      const std::string name = gpt2_tensor(x, l, m, "weight");
      stored.resize(in * out);
      ws.read_f32(name, {in, out}, stored.data());
      // Conv1D computes x W with W [in, out]; nn.Linear's layout [out, in] is its transpose.
      linear.resize(in * out);
      for (int64_t i = 0; i < in; ++i)
        for (int64_t o = 0; o < out; ++o) linear[o * in + i] = stored[i * out + o];
      // Unquantized weights stay in the checkpoint's dtype, as for Llama.
      lw.linear[m] = quantize_matrix(linear.data(), out, in, quant.type, quant.block_size, quant.double_quant,
                                     ws.find(name)->dtype);
      model.bytes_held += lw.linear[m].bytes();
      lw.bias[m] = read(gpt2_tensor(x, l, m, "bias"), {out});
    }
  }
}

}  // namespace

ModelSummary inspect_model(const std::string& model_dir) {
  ModelSummary s;
  s.cfg = load_model_config(model_dir);
  WeightStore ws(model_dir);
  const auto ex = expected_tensors(s.cfg, ws);
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
  const auto ex = expected_tensors(c, ws);
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
  if (c.arch == Arch::GPT2) {
    load_gpt2_weights(model, ws, read);
    return model;
  }
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
    for (int m : arch_modules(c.arch)) {
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
