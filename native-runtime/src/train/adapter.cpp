#include "train/adapter.hpp"

#include <cmath>
#include <cstring>
#include <set>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "formats/safetensors.hpp"
#include "train/files.hpp"

namespace lora {

std::string adapter_key(int64_t layer, int module, bool is_a) {
  return "base_model.model." + module_path(layer, module) + (is_a ? ".lora_A.weight" : ".lora_B.weight");
}

void write_adapter(const std::string& dir, const LoraState& lora, const std::string& base_model_path,
                   const std::vector<float>* params) {
  const std::vector<float>& p = params ? *params : lora.params;
  make_dirs(dir);
  std::vector<TensorToWrite> tensors;
  for (int64_t l = 0; l < lora.layers; ++l) {
    for (int m : lora.spec.targets) {
      const LoraSlot& s = lora.slot(l, m);
      tensors.push_back({adapter_key(l, m, true), DType::F32, {lora.spec.r, s.in}, p.data() + s.a});
      tensors.push_back({adapter_key(l, m, false), DType::F32, {s.out, lora.spec.r}, p.data() + s.b});
    }
  }
  write_safetensors(dir + "/adapter_model.safetensors", tensors);

  Json c = Json::object();
  const double alpha = lora.spec.alpha;
  c.set("alpha_pattern", Json::object());
  c.set("base_model_name_or_path", base_model_path);
  c.set("bias", "none");
  // GPT-2's Conv1D layers store their weight [in, out]; PEFT needs this flag to transpose
  // the merged delta (lora_A/lora_B keep nn.Linear's layout either way).
  const bool conv1d = !lora.spec.targets.empty() && lora.spec.targets.front() >= kCAttn;
  c.set("fan_in_fan_out", conv1d);
  c.set("inference_mode", true);
  c.set("init_lora_weights", true);
  c.set("layers_pattern", nullptr);
  c.set("layers_to_transform", nullptr);
  c.set("lora_alpha", alpha == std::floor(alpha) && std::fabs(alpha) < 1e15 ? Json(static_cast<int64_t>(alpha)) : Json(alpha));
  c.set("lora_bias", false);
  c.set("lora_dropout", lora.spec.dropout);
  c.set("modules_to_save", nullptr);
  c.set("peft_type", "LORA");
  c.set("r", lora.spec.r);
  c.set("rank_pattern", Json::object());
  c.set("revision", nullptr);
  Json targets = Json::array();
  for (const auto& name : target_names(lora.spec.targets)) targets.push(name);
  c.set("target_modules", targets);
  c.set("task_type", "CAUSAL_LM");
  c.set("use_dora", false);
  c.set("use_rslora", lora.spec.rslora);
  write_file_atomic(dir + "/adapter_config.json", c.dump(true) + "\n");
}

namespace {

[[noreturn]] void bad(const std::string& file, const std::string& field, const std::string& what, const std::string& hint,
                      int line = 0) {
  throw InputError("adapter_invalid", what, file, field, line, hint);
}

// Parses "base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight"
// (Llama family) or "base_model.model.transformer.h.{i}.{attn|mlp}.{module}.lora_{A|B}.weight"
// (GPT-2).
bool parse_key(const std::string& key, Arch arch, int64_t& layer, int& module, bool& is_a) {
  const std::string prefix = arch == Arch::GPT2 ? "base_model.model.transformer.h." : "base_model.model.model.layers.";
  if (key.rfind(prefix, 0) != 0) return false;
  size_t i = prefix.size();
  size_t j = i;
  while (j < key.size() && key[j] >= '0' && key[j] <= '9') ++j;
  if (j == i || j - i > 9 || j >= key.size() || key[j] != '.') return false;
  layer = std::stoll(key.substr(i, j - i));
  const std::string rest = key.substr(j + 1);
  for (int m : arch_modules(arch)) {
    const std::string base =
        std::string(module_is_attention(m) ? (arch == Arch::GPT2 ? "attn." : "self_attn.") : "mlp.") + module_name(m);
    if (rest == base + ".lora_A.weight" || rest == base + ".lora_B.weight") {
      module = m;
      is_a = rest == base + ".lora_A.weight";
      return true;
    }
  }
  return false;
}

void read_f32_tensor(const SafetensorsFile& f, const TensorInfo& t, float* out) {
  const uint8_t* p = f.data(t);
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (t.dtype == DType::F32) {
      std::memcpy(out + i, p + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = t.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
}

// Fills lora.params from the safetensors file; every targeted (layer, module) needs both
// matrices and nothing else may be present.
void fill_from_file(const std::string& dir, const Model& model, LoraState& lora) {
  const std::string path = dir + "/adapter_model.safetensors";
  if (!path_exists(path))
    bad(path, "", "adapter_model.safetensors not found in " + dir, "an adapter folder holds adapter_model.safetensors and adapter_config.json.");
  SafetensorsFile f(path);
  std::set<std::string> seen;
  for (const TensorInfo& t : f.tensors()) {
    int64_t layer;
    int module;
    bool is_a;
    if (!parse_key(t.name, model.cfg.arch, layer, module, is_a))
      bad(path, t.name, "unexpected tensor " + t.name + " in the adapter",
          model.cfg.arch == Arch::GPT2
              ? "only LoRA A/B weights of GPT-2's c_attn, c_proj, c_fc (PEFT key names under transformer.h, no \".default\") are supported."
              : "only LoRA A/B weights of q,k,v,o,gate,up,down_proj (PEFT key names, no \".default\") are supported.");
    if (layer >= model.cfg.num_layers)
      bad(path, t.name, "tensor " + t.name + " refers to layer " + std::to_string(layer) + ", but the model has " +
                            std::to_string(model.cfg.num_layers) + " layers",
          "the adapter was trained for a different base model.");
    if (!lora.targeted(module))
      bad(path, t.name, "tensor " + t.name + " is for " + module_name(module) + ", which adapter_config.json's target_modules does not list",
          "the adapter's files disagree; re-export it.");
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      bad(path, t.name, std::string("tensor ") + t.name + " has dtype " + dtype_name(t.dtype), "LoRA weights must be F32, F16 or BF16.");
    const LoraSlot& s = lora.slot(layer, module);
    const std::vector<int64_t> want = is_a ? std::vector<int64_t>{lora.spec.r, s.in} : std::vector<int64_t>{s.out, lora.spec.r};
    if (t.shape != want) {
      auto str = [](const std::vector<int64_t>& v) {
        std::string o = "[";
        for (size_t i = 0; i < v.size(); ++i) o += (i ? ", " : "") + std::to_string(v[i]);
        return o + "]";
      };
      bad(path, t.name, "tensor " + t.name + " has shape " + str(t.shape) + ", expected " + str(want) + " for r = " + std::to_string(lora.spec.r),
          "the adapter was trained for a different base model, or its r differs from adapter_config.json.");
    }
    read_f32_tensor(f, t, lora.params.data() + (is_a ? s.a : s.b));
    seen.insert(t.name);
  }
  for (int64_t l = 0; l < lora.layers; ++l)
    for (int m : lora.spec.targets)
      for (bool a : {true, false})
        if (!seen.count(adapter_key(l, m, a)))
          bad(path, adapter_key(l, m, a), "tensor " + adapter_key(l, m, a) + " is missing from the adapter",
              "every targeted module of every layer needs lora_A and lora_B.");
}

}  // namespace

LoraState read_adapter(const std::string& dir, const Model& model) {
  const std::string cfg_path = dir + "/adapter_config.json";
  if (!path_exists(cfg_path))
    bad(cfg_path, "", "adapter_config.json not found in " + dir, "point to a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).");
  const Json c = json_parse_file(cfg_path);
  if (!c.is_object()) bad(cfg_path, "", "adapter_config.json must hold an object", "re-export the adapter.", c.line());
  const Json* pt = c.find("peft_type");
  if (pt && !(pt->is_string() && pt->as_string() == "LORA"))
    bad(cfg_path, "peft_type", "peft_type is not \"LORA\"", "only LoRA adapters are supported.", pt->line());
  LoraSpec spec;
  const Json* r = c.find("r");
  if (!r || !r->is_integer() || r->as_int() < 1)
    bad(cfg_path, "r", "r must be a positive integer", "fix adapter_config.json.", r ? r->line() : 0);
  spec.r = r->as_int();
  const Json* alpha = c.find("lora_alpha");
  if (!alpha || !alpha->is_number())
    bad(cfg_path, "lora_alpha", "lora_alpha must be a number", "fix adapter_config.json.", alpha ? alpha->line() : 0);
  spec.alpha = alpha->as_number();
  if (const Json* d = c.find("lora_dropout"); d && d->is_number()) spec.dropout = d->as_number();
  if (const Json* rs = c.find("use_rslora"); rs && rs->is_bool()) spec.rslora = rs->as_bool();
  if (const Json* dora = c.find("use_dora"); dora && dora->is_bool() && dora->as_bool())
    bad(cfg_path, "use_dora", "DoRA adapters are not supported", "train a plain LoRA adapter.", dora->line());
  const Json* tm = c.find("target_modules");
  if (!tm || !tm->is_array() || tm->items().empty())
    bad(cfg_path, "target_modules", "target_modules must be a non-empty list of module names",
        "regex target_modules are not supported; list the modules explicitly.", tm ? tm->line() : 0);
  std::set<int> mods;
  for (const auto& item : tm->items()) {
    const std::vector<int> ms = item.is_string() ? modules_for_target(model.cfg.arch, item.as_string()) : std::vector<int>{};
    if (ms.empty()) {
      std::string supported;
      for (const auto& n : target_modules(model.cfg.arch)) supported += (supported.empty() ? "" : ", ") + n;
      bad(cfg_path, "target_modules", "target_modules lists " + (item.is_string() ? "\"" + item.as_string() + "\"" : std::string("a non-string")) +
                                          ", which is not a supported module of this " + arch_name(model.cfg.arch) + " model",
          "supported: " + supported + ".", item.line());
    }
    mods.insert(ms.begin(), ms.end());
  }
  spec.targets.assign(mods.begin(), mods.end());
  LoraState lora = lora_create(model, spec, 0, cfg_path);
  fill_from_file(dir, model, lora);
  return lora;
}

void load_adapter_into(const std::string& dir, const Model& model, LoraState& lora, const std::string& run_file) {
  LoraState loaded = read_adapter(dir, model);
  if (loaded.spec.r != lora.spec.r)
    throw InputError("config_field",
                     "lora.init_adapter has r = " + std::to_string(loaded.spec.r) + " but lora.r is " + std::to_string(lora.spec.r),
                     run_file, "lora.init_adapter", 0, "set lora.r to the adapter's r (" + std::to_string(loaded.spec.r) + ").");
  if (loaded.spec.targets != lora.spec.targets) {
    std::string list;
    for (const auto& n : target_names(loaded.spec.targets)) list += (list.empty() ? "" : ", ") + n;
    throw InputError("config_field", "lora.init_adapter targets different modules than lora.targets", run_file,
                     "lora.init_adapter", 0, "set lora.targets to the adapter's modules: " + list + ".");
  }
  lora.params = loaded.params;
}

}  // namespace lora
