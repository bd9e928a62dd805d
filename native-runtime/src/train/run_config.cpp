#include "train/run_config.hpp"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <set>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "cuda/cuda.hpp"

namespace lora {

namespace {

std::string absolute_path(const std::string& p, const std::string& base) {
  if (!p.empty() && p[0] == '/') return p;
  std::string b = base;
  if (b.empty() || b[0] != '/') {
    char cwd[PATH_MAX];
    const std::string here = getcwd(cwd, sizeof cwd) ? cwd : ".";
    b = b.empty() ? here : here + "/" + b;
  }
  while (b.size() > 1 && b.back() == '/') b.pop_back();
  return p.empty() ? b : b + "/" + p;
}

// Reads one object section, checks its keys against the allowed set and types each field.
class Section {
 public:
  Section(const Json* obj, std::string path, const std::string& file, int parent_line)
      : obj_(obj), path_(std::move(path)), file_(file) {
    if (obj_ && !obj_->is_object())
      fail(path_, obj_->line() ? obj_->line() : parent_line, "must be an object", "write it as { ... }.");
  }

  // Rejects keys outside `known`: a misspelt key must not silently fall back to a default.
  void only(const std::set<std::string>& known) const {
    if (!obj_) return;
    for (const auto& [k, v] : obj_->members()) {
      if (known.count(k)) continue;
      std::string list;
      for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
      fail(join(k), v.line(), "is not a known setting", "known keys here: " + list + ".");
    }
  }

  const Json* get(const std::string& key) const { return obj_ ? obj_->find(key) : nullptr; }
  std::string join(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  [[noreturn]] void fail(const std::string& field, int line, const std::string& what, const std::string& hint) const {
    throw InputError("config_field", field + " " + what, file_, field, line, hint);
  }

  int64_t integer(const std::string& key, int64_t def, int64_t lo, int64_t hi, bool nullable = false,
                  int64_t null_value = 0) const {
    const Json* v = get(key);
    const std::string range = "an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
                              (nullable ? ", or null" : "");
    if (!v) return def;
    if (v->is_null() && nullable) return null_value;
    if (!v->is_number() || !v->is_integer()) fail(join(key), v->line(), "must be " + range, "use " + range + ".");
    const int64_t x = v->as_int();
    if (x < lo || x > hi)
      fail(join(key), v->line(), "is " + std::to_string(x) + ", out of range", "use " + range + ".");
    return x;
  }

  double number(const std::string& key, double def, double lo, double hi, bool lo_open, bool hi_open) const {
    const Json* v = get(key);
    if (!v) return def;
    char range[160];
    std::snprintf(range, sizeof range, "a number in %s%g, %g%s", lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]");
    if (!v->is_number()) fail(join(key), v->line(), std::string("must be ") + range, std::string("use ") + range + ".");
    const double x = v->as_number();
    const bool ok = std::isfinite(x) && (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
    if (!ok) {
      char got[64];
      std::snprintf(got, sizeof got, "%g", x);
      fail(join(key), v->line(), std::string("is ") + got + ", out of range", std::string("use ") + range + ".");
    }
    return x;
  }

  bool boolean(const std::string& key, bool def) const {
    const Json* v = get(key);
    if (!v) return def;
    if (!v->is_bool()) fail(join(key), v->line(), "must be true or false", "use true or false (no quotes).");
    return v->as_bool();
  }

  std::string choice(const std::string& key, const std::string& def, const std::vector<std::string>& options) const {
    const Json* v = get(key);
    std::string list;
    for (const auto& o : options) list += (list.empty() ? "\"" : ", \"") + o + "\"";
    if (!v) return def;
    if (v->is_string())
      for (const auto& o : options)
        if (v->as_string() == o) return o;
    fail(join(key), v->line(), v->is_string() ? "is \"" + v->as_string() + "\", not a valid choice" : "must be a string",
         "use one of " + list + ".");
  }

  // A path string; empty when absent or (if nullable) null.
  std::string path(const std::string& key, bool required, bool nullable, const std::string& what) const {
    const Json* v = get(key);
    if (!v) {
      if (required) fail(join(key), obj_ ? obj_->line() : 0, "is missing", "set it to " + what + ".");
      return {};
    }
    if (v->is_null() && nullable) return {};
    if (!v->is_string() || v->as_string().empty())
      fail(join(key), v->line(), std::string("must be a non-empty string") + (nullable ? " or null" : ""),
           "set it to " + what + ".");
    return v->as_string();
  }

  int line() const { return obj_ ? obj_->line() : 0; }

 private:
  const Json* obj_;
  std::string path_;
  const std::string& file_;
};

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

const char* optimizer_name(Optimizer o) { return o == Optimizer::AdamW ? "adamw" : "sgd"; }
const char* schedule_name(Schedule s) {
  return s == Schedule::Constant ? "constant" : s == Schedule::Linear ? "linear" : "cosine";
}

RunConfig parse_run_config(const Json& root, const std::string& run_dir, const std::string& file) {
  RunConfig c;
  c.run_dir = absolute_path("", run_dir);
  c.file = file;
  Section top(&root, "", file, 1);
  top.only({"v", "model", "data", "lora", "quant", "train", "compute", "meta"});
  const Json* v = top.get("v");
  if (!v) top.fail("v", 1, "is missing", "run.json must start with \"v\": 1 (the schema version).");
  if (!v->is_number() || !v->is_integer() || v->as_int() != 1)
    top.fail("v", v->line(), "must be 1", "this runtime reads run.json version 1; regenerate run.json with this LoRA Studio.");
  c.model = absolute_path(top.path("model", true, false, "the HF model folder (containing config.json)"), c.run_dir);

  const Json* data = top.get("data");
  if (!data) top.fail("data", 1, "is missing", "set \"data\": {\"train\": \"data/train.bin\"}.");
  Section d(data, "data", file, 1);
  d.only({"train", "eval"});
  c.data_train = absolute_path(d.path("train", true, false, "the training token shard, e.g. \"data/train.bin\""), c.run_dir);
  const std::string ev = d.path("eval", false, true, "an eval token shard path, or null");
  if (!ev.empty()) c.data_eval = absolute_path(ev, c.run_dir);

  Section l(top.get("lora"), "lora", file, 1);
  l.only({"r", "alpha", "dropout", "rslora", "targets", "init_adapter"});
  c.r = l.integer("r", 16, 1, 4096);
  if (const Json* rv = l.get("r")) c.r_line = rv->line();
  c.alpha = l.number("alpha", 32, 0, 1e6, true, false);
  c.dropout = l.number("dropout", 0.05, 0, 1, false, true);
  c.rslora = l.boolean("rslora", false);
  c.targets = llama_target_modules();
  if (const Json* t = l.get("targets")) {
    c.targets_default = false;
    c.targets_line = t->line();
    const std::string hint = "a non-empty list of module names, e.g. [\"q_proj\", \"v_proj\"].";
    if (!t->is_array() || t->items().empty()) l.fail("lora.targets", t->line(), "must be " + hint, "use " + hint);
    c.targets.clear();
    std::set<std::string> seen;
    for (const auto& item : t->items()) {
      if (!item.is_string()) l.fail("lora.targets", item.line(), "must contain only strings", "use " + hint);
      if (!seen.insert(item.as_string()).second)
        l.fail("lora.targets", item.line(), "lists \"" + item.as_string() + "\" twice", "list each module once.");
      c.targets.push_back(item.as_string());
    }
  }
  const std::string init = l.path("init_adapter", false, true, "a PEFT adapter folder, or null");
  if (!init.empty()) c.init_adapter = absolute_path(init, c.run_dir);

  Section q(top.get("quant"), "quant", file, 1);
  q.only({"type", "double_quant", "block_size"});
  const std::string qt = q.choice("type", "nf4", {"none", "nf4", "fp4", "int8"});
  quant_from_name(qt, c.quant.type);
  c.quant.double_quant = q.boolean("double_quant", true);
  c.quant.block_size = static_cast<int>(q.integer("block_size", 64, 16, 4096));
  if (c.quant.block_size & (c.quant.block_size - 1))
    q.fail("quant.block_size", q.get("block_size")->line(), "must be a power of two",
           "use 64 (QLoRA's choice), or another power of two from 16 to 4096.");

  Section t(top.get("train"), "train", file, 1);
  t.only({"seq_len", "micro_batch", "grad_accum", "epochs", "max_steps", "optimizer", "lr", "schedule",
          "warmup_steps", "weight_decay", "max_grad_norm", "grad_checkpointing", "seed", "eval_every",
          "save_every", "early_stopping_patience"});
  c.seq_len = t.integer("seq_len", 2048, 2, 1 << 20);
  c.micro_batch = t.integer("micro_batch", 1, 1, 4096);
  c.grad_accum = t.integer("grad_accum", 8, 1, 1 << 16);
  c.epochs = t.integer("epochs", 1, 1, 100000);
  c.max_steps = t.integer("max_steps", 0, 1, int64_t(1) << 40, true, 0);
  c.optimizer = t.choice("optimizer", "adamw", {"adamw", "sgd"}) == "adamw" ? Optimizer::AdamW : Optimizer::SGD;
  c.lr = t.number("lr", 2e-4, 0, 10, true, false);
  const std::string sch = t.choice("schedule", "cosine", {"constant", "linear", "cosine"});
  c.schedule = sch == "constant" ? Schedule::Constant : sch == "linear" ? Schedule::Linear : Schedule::Cosine;
  c.warmup_steps = t.integer("warmup_steps", 10, 0, int64_t(1) << 40);
  c.weight_decay = t.number("weight_decay", 0.0, 0, 10, false, false);
  c.max_grad_norm = t.number("max_grad_norm", 1.0, 0, 1e9, false, false);
  c.grad_checkpointing = t.boolean("grad_checkpointing", true);
  c.seed = static_cast<uint64_t>(t.integer("seed", 42, 0, (int64_t(1) << 53)));
  c.eval_every = t.integer("eval_every", 50, 0, int64_t(1) << 40);
  c.save_every = t.integer("save_every", 100, 0, int64_t(1) << 40);
  c.early_stopping_patience = t.integer("early_stopping_patience", 0, 0, 1 << 20);
  if (c.early_stopping_patience > 0 && c.data_eval.empty())
    t.fail("train.early_stopping_patience", t.get("early_stopping_patience")->line(), "needs an eval set",
           "set data.eval to an eval shard, or early_stopping_patience to 0.");
  if (c.early_stopping_patience > 0 && c.eval_every == 0)
    t.fail("train.early_stopping_patience", t.get("early_stopping_patience")->line(), "needs periodic eval",
           "set train.eval_every > 0, or early_stopping_patience to 0.");

  Section k(top.get("compute"), "compute", file, 1);
  k.only({"device", "dtype", "threads", "offload_activations"});
  if (const Json* dev = k.get("device")) {
    const bool known = dev->is_string() && (dev->as_string() == "auto" || dev->as_string() == "cpu" ||
                                            dev->as_string().rfind("cuda:", 0) == 0);
    if (!known) k.fail("compute.device", dev->line(), "must be \"auto\", \"cpu\" or \"cuda:N\"", "use \"auto\" to pick the best device.");
    const std::string s = dev->as_string();
    if (s.rfind("cuda:", 0) == 0) {
      const std::string n = s.substr(5);
      if (n.empty() || n.size() > 4 || n.find_first_not_of("0123456789") != std::string::npos)
        k.fail("compute.device", dev->line(), "has a malformed CUDA index", "write \"cuda:0\", \"cuda:1\", ...");
      // Whether that GPU exists is known only on the machine that trains (the trainer asks
      // the driver); a build without CUDA can say no already.
      if (!cuda::compiled())
        k.fail("compute.device", dev->line(), "asks for " + s + ", but this runtime was built without CUDA",
               "use \"auto\" or \"cpu\", or build the runtime on a machine with nvcc.");
    }
    c.device = s;
    c.device_line = dev->line();
  }
  c.dtype = k.choice("dtype", "bf16", {"fp32", "bf16", "fp16"});
  c.threads = k.integer("threads", 0, 0, 1024);
  c.offload_activations = k.boolean("offload_activations", false);
  return c;
}

RunConfig load_run_config(const std::string& run_dir) {
  const std::string abs = absolute_path("", run_dir);
  const std::string file = abs + "/run.json";
  if (access(file.c_str(), F_OK) != 0)
    throw InputError("file_read", "run.json not found in " + abs, file, "", 0,
                     "a run folder needs run.json; LoRA Studio writes it when it starts a run.");
  const Json root = json_parse_file(file);
  if (!root.is_object())
    throw InputError("config_field", "run.json must contain a JSON object", file, "", root.line(),
                     "see docs/run-json.md for the schema.");
  return parse_run_config(root, abs, file);
}

std::vector<int> resolve_targets(const RunConfig& cfg, Arch arch) {
  if (cfg.targets_default) return arch_modules(arch);
  std::vector<int> out;
  for (const auto& name : cfg.targets) {
    const std::vector<int> ms = modules_for_target(arch, name);
    if (ms.empty()) {
      std::string list;
      for (const auto& n : target_modules(arch)) list += (list.empty() ? "" : ", ") + n;
      throw InputError("config_field",
                       "lora.targets names \"" + name + "\", which this " + arch_name(arch) + " model does not have",
                       cfg.file, "lora.targets", cfg.targets_line, "the model's modules are: " + list + ".");
    }
    out.insert(out.end(), ms.begin(), ms.end());
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// compute.* (device, dtype, threads, offload_activations) and grad_checkpointing are left out
// on purpose: a run checkpointed on one device may resume on another, and offloading or
// recomputing activations moves memory without changing the math.
uint64_t RunConfig::training_hash() const {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "r=%lld alpha=%.17g dropout=%.17g rslora=%d quant=%d/%d/%d seq=%lld mb=%lld ga=%lld ep=%lld "
                "max=%lld opt=%d lr=%.17g sch=%d warm=%lld wd=%.17g clip=%.17g seed=%llu",
                (long long)r, alpha, dropout, rslora, (int)quant.type, quant.block_size, quant.double_quant,
                (long long)seq_len, (long long)micro_batch, (long long)grad_accum, (long long)epochs,
                (long long)max_steps, (int)optimizer, lr, (int)schedule, (long long)warmup_steps, weight_decay,
                max_grad_norm, (unsigned long long)seed);
  std::string s = std::string(buf) + " model=" + model + " train=" + data_train + " init=" + init_adapter + " targets=";
  for (const auto& t : targets) s += t + ",";
  return fnv1a(s);
}

}  // namespace lora
