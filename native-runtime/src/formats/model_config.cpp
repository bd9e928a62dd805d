#include "formats/model_config.hpp"

#include <sys/stat.h>

#include <cmath>

#include "common/errors.hpp"
#include "common/json.hpp"

namespace lora {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Mistral: return "mistral";
    case Arch::Qwen2: return "qwen2";
    case Arch::GPT2: return "gpt2";
  }
  return "?";
}

const std::vector<std::string>& llama_target_modules() {
  static const std::vector<std::string> modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
  return modules;
}

const std::vector<std::string>& gpt2_target_modules() {
  static const std::vector<std::string> modules = {"c_attn", "c_proj", "c_fc"};
  return modules;
}

const std::vector<std::string>& target_modules(Arch a) {
  return a == Arch::GPT2 ? gpt2_target_modules() : llama_target_modules();
}

namespace {

const char* const kSupportedHint =
    "supported architectures: LlamaForCausalLM (Llama 2/3.x, SmolLM, TinyLlama), MistralForCausalLM, "
    "Qwen2ForCausalLM (Qwen2/2.5), GPT2LMHeadModel (gpt2, gpt2-medium, distilgpt2)";

// Reads fields of one config.json, turning every problem into an InputError that names
// the file, the key and the line of the offending value.
class ConfigReader {
 public:
  ConfigReader(const Json& root, std::string file) : root_(root), file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what, const Json* at = nullptr,
                         const std::string& hint = {}) const {
    throw InputError("config_field", file_ + ": \"" + field + "\" " + what, file_, field, at ? at->line() : 0,
                     hint.empty() ? "fix config.json or re-download it from the model's repository" : hint);
  }

  // A present, non-null member, or nullptr.
  const Json* get(const Json& obj, const std::string& key) const {
    const Json* v = obj.find(key);
    return v && !v->is_null() ? v : nullptr;
  }

  int64_t positive_int(const std::string& key, const Json& obj, const std::string& path) const {
    const Json* v = get(obj, key);
    if (!v) fail(path, "is missing; it must be a positive integer");
    return positive_int_value(*v, path);
  }

  int64_t positive_int_value(const Json& v, const std::string& path) const {
    if (!v.is_integer()) fail(path, "must be a positive integer, got " + v.dump(), &v);
    if (v.as_int() <= 0) fail(path, "must be a positive integer, got " + v.dump(), &v);
    return v.as_int();
  }

  int64_t optional_positive_int(const std::string& key, int64_t fallback) const {
    const Json* v = get(root_, key);
    return v ? positive_int_value(*v, key) : fallback;
  }

  double positive_number(const Json& obj, const std::string& key, const std::string& path, bool required,
                         double fallback) const {
    const Json* v = get(obj, key);
    if (!v) {
      if (required) fail(path, "is missing; it must be a positive number");
      return fallback;
    }
    if (!v->is_number() || !(v->as_number() > 0) || !std::isfinite(v->as_number()))
      fail(path, "must be a positive number, got " + v->dump(), v);
    return v->as_number();
  }

  bool optional_bool(const std::string& key, bool fallback) const {
    const Json* v = get(root_, key);
    if (!v) return fallback;
    if (!v->is_bool()) fail(key, "must be true or false, got " + v->dump(), v);
    return v->as_bool();
  }

  const Json& root() const { return root_; }
  const std::string& file() const { return file_; }

 private:
  const Json& root_;
  std::string file_;
};

Arch detect_arch(const ConfigReader& r, std::string& hf_arch) {
  struct Known {
    const char* hf;
    const char* model_type;
    Arch arch;
  };
  static const Known known[] = {
      {"LlamaForCausalLM", "llama", Arch::Llama},
      {"MistralForCausalLM", "mistral", Arch::Mistral},
      {"Qwen2ForCausalLM", "qwen2", Arch::Qwen2},
      {"GPT2LMHeadModel", "gpt2", Arch::GPT2},
  };
  const Json* archs = r.get(r.root(), "architectures");
  if (archs) {
    if (!archs->is_array() || archs->size() == 0 || !archs->items()[0].is_string())
      r.fail("architectures", "must be a non-empty array of class names, e.g. [\"LlamaForCausalLM\"]", archs);
    hf_arch = archs->items()[0].as_string();
    for (const auto& k : known)
      if (hf_arch == k.hf) return k.arch;
    throw InputError("unsupported_architecture",
                     r.file() + ": architecture " + hf_arch + " is not supported", r.file(), "architectures",
                     archs->line(), kSupportedHint);
  }
  // Some hand-written configs carry only model_type; it identifies the same classes.
  const Json* mt = r.get(r.root(), "model_type");
  if (mt && mt->is_string()) {
    for (const auto& k : known) {
      if (mt->as_string() == k.model_type) {
        hf_arch = k.hf;
        return k.arch;
      }
    }
    throw InputError("unsupported_architecture",
                     r.file() + ": model_type " + mt->as_string() + " is not supported", r.file(), "model_type",
                     mt->line(), kSupportedHint);
  }
  throw InputError("unsupported_architecture",
                   r.file() + ": neither \"architectures\" nor \"model_type\" says which model this is", r.file(),
                   "architectures", 0, std::string("add \"architectures\": [\"LlamaForCausalLM\"] or similar; ") +
                                           kSupportedHint);
}

void read_rope_scaling(const ConfigReader& r, RopeScaling& rs) {
  const Json* v = r.get(r.root(), "rope_scaling");
  if (!v) return;
  if (!v->is_object()) r.fail("rope_scaling", "must be an object or null, got " + v->dump(), v);
  // Newer transformers write "rope_type"; older configs use "type".
  const char* type_key = v->find("rope_type") ? "rope_type" : "type";
  const Json* t = r.get(*v, type_key);
  const std::string path = std::string("rope_scaling.") + type_key;
  if (!t) r.fail("rope_scaling.rope_type", "is missing");
  if (!t->is_string()) r.fail(path, "must be a string, got " + t->dump(), t);
  const std::string& type = t->as_string();
  if (type == "default") return;
  if (type == "linear") {
    rs.type = "linear";
    rs.factor = r.positive_number(*v, "factor", "rope_scaling.factor", true, 1.0);
    return;
  }
  if (type == "llama3") {
    rs.type = "llama3";
    rs.factor = r.positive_number(*v, "factor", "rope_scaling.factor", true, 1.0);
    rs.low_freq_factor = r.positive_number(*v, "low_freq_factor", "rope_scaling.low_freq_factor", true, 1.0);
    rs.high_freq_factor = r.positive_number(*v, "high_freq_factor", "rope_scaling.high_freq_factor", true, 4.0);
    // The llama3 formula divides by (high_freq_factor - low_freq_factor).
    if (!(rs.high_freq_factor > rs.low_freq_factor))
      r.fail("rope_scaling.high_freq_factor", "must be greater than low_freq_factor", r.get(*v, "high_freq_factor"));
    const Json* omp = r.get(*v, "original_max_position_embeddings");
    if (!omp) r.fail("rope_scaling.original_max_position_embeddings", "is missing; it must be a positive integer");
    rs.original_max_position_embeddings = r.positive_int_value(*omp, "rope_scaling.original_max_position_embeddings");
    return;
  }
  r.fail(path, "\"" + type + "\" is not supported", t,
         "supported rope scaling types: llama3, linear, default (or rope_scaling: null)");
}

// GPT2Config's keys and defaults (transformers' GPT2Config), mapped onto ModelConfig.
void read_gpt2(const ConfigReader& r, ModelConfig& c) {
  const Json& root = r.root();
  c.hidden_size = r.optional_positive_int("n_embd", 768);
  c.num_layers = r.optional_positive_int("n_layer", 12);
  c.num_heads = r.optional_positive_int("n_head", 12);
  c.num_kv_heads = c.num_heads;
  c.vocab_size = r.optional_positive_int("vocab_size", 50257);
  c.max_position_embeddings = r.optional_positive_int("n_positions", 1024);
  // n_inner: null means 4 * n_embd (GPT2MLP's default).
  c.intermediate_size = r.optional_positive_int("n_inner", 4 * c.hidden_size);
  c.rms_norm_eps = r.positive_number(root, "layer_norm_epsilon", "layer_norm_epsilon", false, 1e-5);
  if (c.hidden_size % c.num_heads != 0)
    r.fail("n_head", "(" + std::to_string(c.num_heads) + ") must divide n_embd (" + std::to_string(c.hidden_size) + ")",
           r.get(root, "n_head"));
  c.head_dim = c.hidden_size / c.num_heads;
  c.tie_word_embeddings = r.optional_bool("tie_word_embeddings", true);
  c.attention_bias = true;
  c.mlp_bias = true;
  if (const Json* act = r.get(root, "activation_function")) {
    if (!act->is_string() || (act->as_string() != "gelu_new" && act->as_string() != "gelu_pytorch_tanh"))
      r.fail("activation_function", "must be \"gelu_new\" or \"gelu_pytorch_tanh\", got " + act->dump(), act,
             "the runtime implements GPT-2's tanh-approximated GELU only; exact \"gelu\" or \"relu\" models are "
             "not supported");
  }
  // Both change the attention scores away from 1/sqrt(head_dim); no released GPT-2 sets them.
  if (r.optional_bool("scale_attn_by_inverse_layer_idx", false))
    r.fail("scale_attn_by_inverse_layer_idx", "is true, which the runtime does not implement", r.get(root, "scale_attn_by_inverse_layer_idx"),
           "set it to false (the value of gpt2, gpt2-medium and distilgpt2)");
  if (!r.optional_bool("scale_attn_weights", true))
    r.fail("scale_attn_weights", "is false, which the runtime does not implement", r.get(root, "scale_attn_weights"),
           "set it to true (the value of every released GPT-2)");
}

}  // namespace

ModelConfig load_model_config(const std::string& model_dir) {
  const std::string path = model_dir.empty() || model_dir.back() == '/' ? model_dir + "config.json"
                                                                        : model_dir + "/config.json";
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw InputError("file_read", "no config.json in " + model_dir, path, "", 0,
                     "point at a Hugging Face model folder (it holds config.json and *.safetensors)");
  const Json root = json_parse_file(path);
  ConfigReader r(root, path);
  if (!root.is_object()) r.fail("config.json", "must hold a JSON object", &root);

  ModelConfig c;
  c.dir = model_dir;
  c.arch = detect_arch(r, c.hf_architecture);
  if (c.arch == Arch::GPT2) {
    read_gpt2(r, c);
    if (const Json* dt = r.get(root, "torch_dtype"))
      if (dt->is_string()) c.torch_dtype = dt->as_string();
    return c;
  }

  c.hidden_size = r.positive_int("hidden_size", root, "hidden_size");
  c.intermediate_size = r.positive_int("intermediate_size", root, "intermediate_size");
  c.num_layers = r.positive_int("num_hidden_layers", root, "num_hidden_layers");
  c.num_heads = r.positive_int("num_attention_heads", root, "num_attention_heads");
  c.num_kv_heads = r.optional_positive_int("num_key_value_heads", c.num_heads);
  c.vocab_size = r.positive_int("vocab_size", root, "vocab_size");

  if (c.num_heads % c.num_kv_heads != 0)
    r.fail("num_key_value_heads",
           "(" + std::to_string(c.num_kv_heads) + ") must divide num_attention_heads (" +
               std::to_string(c.num_heads) + ")",
           r.get(root, "num_key_value_heads"));
  if (const Json* hd = r.get(root, "head_dim")) {
    c.head_dim = r.positive_int_value(*hd, "head_dim");
  } else {
    if (c.hidden_size % c.num_heads != 0)
      r.fail("num_attention_heads",
             "(" + std::to_string(c.num_heads) + ") must divide hidden_size (" + std::to_string(c.hidden_size) +
                 ") when config.json has no head_dim",
             r.get(root, "num_attention_heads"));
    c.head_dim = c.hidden_size / c.num_heads;
  }
  // Rotary embeddings rotate pairs of dimensions.
  if (c.head_dim % 2 != 0)
    r.fail(r.get(root, "head_dim") ? "head_dim" : "num_attention_heads",
           "gives an odd head dimension (" + std::to_string(c.head_dim) + "); rotary embeddings need an even one",
           r.get(root, "head_dim"));

  // Defaults below are those of the transformers config classes, so a config that omits a
  // field means here what it means there.
  const int64_t default_max_pos = c.arch == Arch::Llama ? 2048 : c.arch == Arch::Mistral ? 4096 * 32 : 32768;
  c.max_position_embeddings = r.optional_positive_int("max_position_embeddings", default_max_pos);
  c.rms_norm_eps = r.positive_number(root, "rms_norm_eps", "rms_norm_eps", false, 1e-6);
  c.rope_theta = r.positive_number(root, "rope_theta", "rope_theta", false, 10000.0);
  read_rope_scaling(r, c.rope_scaling);
  c.tie_word_embeddings = r.optional_bool("tie_word_embeddings", false);

  if (const Json* act = r.get(root, "hidden_act")) {
    if (!act->is_string() || (act->as_string() != "silu" && act->as_string() != "swish"))
      r.fail("hidden_act", "must be \"silu\" for this architecture (SwiGLU MLP), got " + act->dump(), act,
             "this model uses an activation the runtime does not implement");
  }

  switch (c.arch) {
    case Arch::Llama:
      c.attention_bias = r.optional_bool("attention_bias", false);
      c.mlp_bias = r.optional_bool("mlp_bias", false);
      break;
    case Arch::Mistral:
      // MistralForCausalLM has no bias terms, whatever extra keys the config carries.
      if (const Json* sw = r.get(root, "sliding_window")) c.sliding_window = r.positive_int_value(*sw, "sliding_window");
      break;
    case Arch::Qwen2:
      c.attention_bias = true;
      // Qwen2 configs always carry sliding_window; it only applies when use_sliding_window
      // is true (the per-layer max_window_layers split is not modelled: the window then
      // applies to every layer).
      if (r.optional_bool("use_sliding_window", false)) {
        const Json* sw = r.get(root, "sliding_window");
        c.sliding_window = sw ? r.positive_int_value(*sw, "sliding_window") : 4096;
      }
      break;
    case Arch::GPT2:  // read by read_gpt2
      break;
  }

  if (const Json* dt = r.get(root, "torch_dtype")) {
    if (dt->is_string()) c.torch_dtype = dt->as_string();
  } else if (const Json* dt2 = r.get(root, "dtype")) {
    if (dt2->is_string()) c.torch_dtype = dt2->as_string();
  }
  return c;
}

}  // namespace lora
