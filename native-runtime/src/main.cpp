// lora-runtime: the command-line entry point (DESIGN.md section 2, "CLI").
// Every failure is reported as an `error` event (JSON line on stdout; also in
// events.jsonl for `train`) and mapped onto the documented exit codes.
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "common/threadpool.hpp"
#include "cuda/cuda.hpp"
#include "model/forward.hpp"
#include "model/logits.hpp"
#include "model/lora.hpp"
#include "model/merge.hpp"
#include "model/model.hpp"
#include "train/adapter.hpp"
#include "train/events.hpp"
#include "train/run_config.hpp"
#include "train/trainer.hpp"

namespace {

using namespace lora;

const char* const kUsage =
    "usage:\n"
    "  lora-runtime --version\n"
    "  lora-runtime devices\n"
    "  lora-runtime inspect --model DIR\n"
    "  lora-runtime train --run RUN_DIR [--resume]\n"
    "  lora-runtime estimate --run RUN_DIR\n"
    "  lora-runtime eval --model DIR [--adapter DIR] --data SHARD [--quant none|nf4|fp4|int8]\n"
    "                    [--seq-len N] [--micro-batch N] [--threads N] [--device auto|cpu|cuda:N]\n"
    "  lora-runtime logits --model DIR [--adapter DIR] --tokens ID,ID,... [--quant none|nf4|fp4|int8]\n"
    "                      [--positions all|last] [--threads N]\n"
    "  lora-runtime merge --model DIR --adapter DIR --out DIR [--dtype bf16|f16|f32]\n"
    "                     [--quant none|nf4|fp4|int8] [--shard-size BYTES] [--force] [--threads N]\n";

struct UsageError {
  std::string message;
};

// --flag value pairs and bare --switches, validated against what the command accepts.
struct Args {
  std::map<std::string, std::string> values;
  std::map<std::string, bool> switches;

  Args(int argc, char** argv, int first, const std::vector<std::string>& valued, const std::vector<std::string>& bare) {
    for (int i = first; i < argc; ++i) {
      const std::string a = argv[i];
      bool known = false;
      for (const auto& v : valued) {
        if (a != v) continue;
        if (i + 1 >= argc) throw UsageError{a + " needs a value"};
        values[a] = argv[++i];
        known = true;
      }
      for (const auto& b : bare)
        if (a == b) switches[a] = known = true;
      if (!known) throw UsageError{"unknown argument " + a};
    }
  }
  std::string get(const std::string& k, const std::string& def = {}) const {
    auto it = values.find(k);
    return it == values.end() ? def : it->second;
  }
  std::string need(const std::string& k) const {
    auto it = values.find(k);
    if (it == values.end()) throw UsageError{"missing " + k};
    return it->second;
  }
  int64_t integer(const std::string& k, int64_t def, int64_t lo, int64_t hi) const {
    auto it = values.find(k);
    if (it == values.end()) return def;
    char* end = nullptr;
    const long long v = std::strtoll(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end || v < lo || v > hi)
      throw UsageError{k + " must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi)};
    return v;
  }
};

void print_json(const Json& j) {
  std::string s = j.dump() + "\n";
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

std::map<std::string, uint64_t> meminfo() {
  std::map<std::string, uint64_t> out;
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return out;
  char key[64];
  unsigned long long kb;
  while (std::fscanf(f, "%63[^:]: %llu kB\n", key, &kb) == 2) out[key] = kb * 1024ull;
  std::fclose(f);
  return out;
}

// The CPU first (it is always there), then every GPU the driver reports, supported or not:
// an unsupported one carries a note saying why, so a user sees the GPU and the reason.
int cmd_devices() {
  auto mem = meminfo();
  Json d = Json::object();
  d.set("kind", "cpu");
  d.set("name", cpu_name());
  d.set("threads", static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency())));
  d.set("memory_total", mem["MemTotal"]);
  d.set("memory_free", mem.count("MemAvailable") ? mem["MemAvailable"] : mem["MemFree"]);
  Json list = Json::array();
  list.push(d);
  for (const auto& g : cuda::list_devices()) list.push(cuda_device_json(g, true));
  Json out = Json::object();
  out.set("devices", list);
  print_json(out);
  return kExitOk;
}

// `cuda` answers "can this runtime train on a GPU here": built with CUDA and a supported GPU
// present. `cuda_built` and `cuda_runtime` tell a build without CUDA from a machine without
// a GPU.
int cmd_version() {
  bool usable = false;
  if (cuda::compiled())
    for (const auto& g : cuda::list_devices()) usable = usable || g.supported;
  Json v = Json::object();
  v.set("version", kRuntimeVersion);
  v.set("protocol", kProtocolVersion);
  v.set("cuda", usable);
  v.set("cuda_built", cuda::compiled());
  v.set("cuda_runtime", cuda::runtime_version());
  print_json(v);
  return kExitOk;
}

int cmd_inspect(const Args& a) {
  const ModelSummary s = inspect_model(a.need("--model"));
  const ModelConfig& c = s.cfg;
  Json out = Json::object();
  out.set("arch", arch_name(c.arch));
  out.set("hf_architecture", c.hf_architecture);
  out.set("layers", c.num_layers);
  out.set("hidden_size", c.hidden_size);
  out.set("intermediate_size", c.intermediate_size);
  out.set("heads", c.num_heads);
  out.set("kv_heads", c.num_kv_heads);
  out.set("head_dim", c.head_dim);
  out.set("vocab_size", c.vocab_size);
  out.set("max_position_embeddings", c.max_position_embeddings);
  out.set("tie_word_embeddings", c.tie_word_embeddings);
  out.set("params_total", s.params_total);
  Json mods = Json::array();
  Model probe;
  probe.cfg = c;
  // GPT-2 lists "c_proj" twice (attn and mlp): "path" tells them apart, "name" is what
  // PEFT's target_modules (and run.json's lora.targets) match.
  for (int m : arch_modules(c.arch)) {
    Json t = Json::object();
    t.set("name", module_name(m));
    t.set("path", std::string(module_is_attention(m) ? (c.arch == Arch::GPT2 ? "attn." : "self_attn.") : "mlp.") +
                      module_name(m));
    t.set("in", probe.module_in(m));
    t.set("out", probe.module_out(m));
    t.set("count", c.num_layers);
    mods.push(t);
  }
  out.set("target_modules", mods);
  out.set("dtype", s.dtype);
  out.set("bytes", s.bytes);
  print_json(out);
  return kExitOk;
}

int cmd_eval(const Args& a) {
  EvalOptions o;
  o.model = a.need("--model");
  o.data = a.need("--data");
  o.adapter = a.get("--adapter");
  o.quant = a.get("--quant", "none");
  o.seq_len = a.integer("--seq-len", 0, 2, 1 << 20);
  o.micro_batch = a.integer("--micro-batch", 1, 1, 4096);
  o.device = a.get("--device", "auto");
  set_num_threads(static_cast<int>(a.integer("--threads", 0, 0, 1024)));
  const EvalResult r = run_eval(o);
  Json out = Json::object();
  out.set("loss", r.loss);
  out.set("tokens", r.tokens);
  if (r.documents_split) out.set("documents_split", r.documents_split);
  print_json(out);
  return kExitOk;
}

QuantSettings quant_option(const Args& a) {
  QuantSettings q;
  const std::string name = a.get("--quant", "none");
  if (!quant_from_name(name, q.type))
    throw InputError("usage", "--quant " + name + " is not a quantization type", "", "--quant", 0, "use none, nf4, fp4 or int8.");
  // The QLoRA settings `eval` uses too, so the numbers of both commands agree.
  q.double_quant = q.type != QuantType::None;
  return q;
}

// Writes {"logits": [[V floats] per position], "tokens": n, "vocab": V, "positions": ...}
// directly: a few hundred positions of a large vocabulary are too many values for a Json
// tree. "%.9g" round-trips every fp32 value exactly.
void print_logits(const std::vector<float>& logits, int64_t rows, int64_t vocab, int64_t tokens, bool only_last) {
  std::string s = "{\"logits\":[";
  char num[32];
  for (int64_t r = 0; r < rows; ++r) {
    s += r ? ",[" : "[";
    for (int64_t v = 0; v < vocab; ++v) {
      const float x = logits[r * vocab + v];
      if (v) s += ',';
      if (std::isfinite(x)) {
        std::snprintf(num, sizeof num, "%.9g", static_cast<double>(x));
        s += num;
      } else {
        s += "null";
      }
    }
    s += ']';
  }
  s += "],\"tokens\":" + std::to_string(tokens) + ",\"vocab\":" + std::to_string(vocab) +
       ",\"positions\":\"" + (only_last ? "last" : "all") + "\"}\n";
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

int cmd_logits(const Args& a) {
  set_num_threads(static_cast<int>(a.integer("--threads", 0, 0, 1024)));
  const std::string positions = a.get("--positions", "all");
  if (positions != "all" && positions != "last")
    throw UsageError{"--positions must be all or last"};
  const std::string token_text = a.need("--tokens");
  const Model model = load_model(a.need("--model"), quant_option(a));
  const std::vector<int32_t> tokens = parse_token_list(token_text, model.cfg.vocab_size);
  if (static_cast<int64_t>(tokens.size()) > model.cfg.max_position_embeddings)
    throw InputError("usage", "--tokens has " + std::to_string(tokens.size()) + " tokens, more than the model's " +
                                  std::to_string(model.cfg.max_position_embeddings) + " positions",
                     model.cfg.dir + "/config.json", "max_position_embeddings", 0, "give a shorter sequence.");
  LoraState adapter;
  const bool has_adapter = !a.get("--adapter").empty();
  if (has_adapter) adapter = read_adapter(a.get("--adapter"), model);
  const bool only_last = positions == "last";
  const std::vector<float> logits = compute_logits(model, has_adapter ? &adapter : nullptr, tokens, only_last);
  print_logits(logits, only_last ? 1 : static_cast<int64_t>(tokens.size()), model.cfg.vocab_size,
               static_cast<int64_t>(tokens.size()), only_last);
  return kExitOk;
}

int cmd_merge(const Args& a) {
  set_num_threads(static_cast<int>(a.integer("--threads", 0, 0, 1024)));
  MergeOptions o;
  o.model = a.need("--model");
  o.adapter = a.need("--adapter");
  o.out = a.need("--out");
  const std::string dtype = a.get("--dtype", "bf16");
  if (!merge_dtype_from_name(dtype, o.dtype)) throw UsageError{"--dtype must be bf16, f16 or f32"};
  o.quant = quant_option(a).type;
  o.force = a.switches.count("--force") > 0;
  o.shard_bytes = static_cast<uint64_t>(a.integer("--shard-size", static_cast<int64_t>(o.shard_bytes), 1, INT64_MAX));
  const MergeResult r = merge_adapter(o);
  if (!r.dequantized.empty())
    std::fprintf(stderr, "lora-runtime: merged into the %s-dequantized base weights (quantized, then dequantized, as the adapter saw them)\n",
                 r.dequantized.c_str());
  Json out = Json::object();
  out.set("out", r.out);
  out.set("tensors", r.tensors);
  out.set("merged_modules", r.merged_modules);
  out.set("dtype", r.dtype);
  out.set("bytes", r.bytes);
  out.set("shards", r.shards);
  if (!r.dequantized.empty()) out.set("dequantized", r.dequantized);
  Json copied = Json::array();
  for (const auto& c : r.copied) copied.push(c);
  out.set("copied", copied);
  print_json(out);
  return kExitOk;
}

// The memory the trainer's pre-flight check computes for RUN_DIR/run.json, without training
// and without a GPU (the device estimate is host arithmetic): the model is loaded and
// quantized as `train` would, the adapter created from lora.*, and one micro-batch of
// micro_batch x seq_len tokens sized. (`train` takes min(micro_batch, rows of the shard),
// so for a shard with fewer rows than micro_batch this is an upper bound.) The extension's
// estimate (src/core/estimate.ts) is tested against this output.
int cmd_estimate(const Args& a) {
  std::string run_dir = a.need("--run");
  while (run_dir.size() > 1 && run_dir.back() == '/') run_dir.pop_back();
  const RunConfig cfg = load_run_config(run_dir);
  const Model model = load_model(cfg.model, cfg.quant);
  LoraSpec spec;
  spec.r = cfg.r;
  spec.alpha = cfg.alpha;
  spec.dropout = cfg.dropout;
  spec.rslora = cfg.rslora;
  spec.targets = resolve_targets(cfg, model.cfg.arch);
  const LoraState lora = lora_create(model, spec, cfg.seed, cfg.file, cfg.r_line);
  const int64_t tokens = cfg.micro_batch * cfg.seq_len;
  const uint64_t n_params = lora.params.size();

  Json out = Json::object();
  out.set("tokens", tokens);
  out.set("params_trainable", n_params);
  std::string unsupported;
  cuda::DeviceEstimate e;
  if (cuda::compiled()) {
    cuda::CudaTrainOptions opt;
    opt.offload_activations = cfg.offload_activations;
    // The CUDA kernels refuse some shapes (e.g. a head size that is not a multiple of 8)
    // while sizing them: that is "cannot run on a GPU", not a failure of this command.
    try {
      e = cuda::estimate_device(model, lora, tokens, cfg.grad_checkpointing, opt);
    } catch (const std::invalid_argument& err) {
      unsupported = err.what();
    }
  }
  if (cuda::compiled() && unsupported.empty()) {
    Json parts = Json::object();
    parts.set("base", e.base);
    parts.set("lora", e.lora);
    parts.set("layer_inputs", e.layer_inputs);
    parts.set("activations", e.activations);
    parts.set("dequant", e.dequant);
    parts.set("lm_head", e.lm_head);
    parts.set("scratch", e.scratch);
    parts.set("gemm_workspace", e.gemm_workspace);
    Json d = Json::object();
    d.set("bytes", e.total());
    // What the trainer adds for the CUDA context before comparing with free GPU memory.
    d.set("context_reserve", uint64_t(512) << 20);
    d.set("parts", parts);
    out.set("device", d);
  } else {
    out.set("device", Json());
    if (!unsupported.empty()) out.set("device_unsupported", unsupported);
  }
  // The trainer's host-memory check on the CPU path (trainer.cpp make_engine): the base as
  // loaded, 7 fp32 vectors per LoRA parameter, the CPU workspace of one micro-batch.
  const uint64_t cpu_base = model.bytes_held, cpu_lora = n_params * 4 * 7,
                 cpu_ws = workspace_bytes(model, lora, tokens, cfg.grad_checkpointing);
  Json cparts = Json::object();
  cparts.set("base", cpu_base);
  cparts.set("lora", cpu_lora);
  cparts.set("workspace", cpu_ws);
  Json c = Json::object();
  c.set("bytes", cpu_base + cpu_lora + cpu_ws);
  c.set("parts", cparts);
  out.set("cpu", c);
  print_json(out);
  return kExitOk;
}

Json error_fields(const std::string& code, const std::string& message, const std::string& hint = {},
                  const std::string& file = {}, int64_t line = 0, const std::string& field = {}) {
  Json e = Json::object();
  e.set("code", code);
  e.set("message", message);
  if (!hint.empty()) e.set("hint", hint);
  if (!file.empty()) e.set("file", file);
  if (line > 0) e.set("line", line);
  if (!field.empty()) e.set("field", field);
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  // The extension may go away (window reload) while training continues and it re-attaches
  // by tailing events.jsonl: a closed stdout must not kill the run with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return kExitBadInput;
  }
  const std::string cmd = argv[1];
  EventSink events;
  TrainProgress progress;
  const bool is_train = cmd == "train";
  auto fail = [&](const Json& err, int code) {
    events.emit("error", err);
    if (is_train) {
      Json d = Json::object();
      d.set("status", "failed");
      d.set("step", progress.step);
      events.emit("done", d);
    }
    return code;
  };
  try {
    if (cmd == "--version" || cmd == "version") return cmd_version();
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    }
    if (cmd == "devices") {
      Args(argc, argv, 2, {}, {});
      return cmd_devices();
    }
    if (cmd == "inspect") return cmd_inspect(Args(argc, argv, 2, {"--model"}, {}));
    if (cmd == "eval")
      return cmd_eval(Args(argc, argv, 2,
                           {"--model", "--adapter", "--data", "--quant", "--seq-len", "--micro-batch", "--threads", "--device"},
                           {}));
    if (cmd == "logits")
      return cmd_logits(Args(argc, argv, 2, {"--model", "--adapter", "--tokens", "--quant", "--positions", "--threads"}, {}));
    if (cmd == "merge")
      return cmd_merge(Args(argc, argv, 2, {"--model", "--adapter", "--out", "--dtype", "--quant", "--shard-size", "--threads"}, {"--force"}));
    if (cmd == "estimate") return cmd_estimate(Args(argc, argv, 2, {"--run"}, {}));
    if (is_train) {
      Args a(argc, argv, 2, {"--run"}, {"--resume"});
      return run_train(a.need("--run"), a.switches.count("--resume") > 0, events, progress);
    }
    throw UsageError{"unknown command " + cmd};
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lora-runtime: %s\n%s", e.message.c_str(), kUsage);
    return kExitBadInput;
  } catch (const InputError& e) {
    return fail(error_fields(e.code, e.what(), e.hint, e.file, e.line, e.field), kExitBadInput);
  } catch (const OutOfMemoryError& e) {
    Json err = error_fields("out_of_memory", e.what(), e.hint);
    // What the estimate or the failed allocation measured; 0 when the failure came without
    // a size (a CUDA library call), where a number would mislead.
    if (e.bytes_needed > 0) err.set("bytes_needed", e.bytes_needed);
    return fail(err, kExitOutOfMemory);
  } catch (const std::bad_alloc&) {
    return fail(error_fields("out_of_memory", "out of memory",
                             "use a smaller train.seq_len or micro_batch, a 4-bit quant.type, or grad_checkpointing: true."),
                kExitOutOfMemory);
  } catch (const std::exception& e) {
    return fail(error_fields("internal", e.what(), "this is a bug in lora-runtime; please report it with runtime.log."),
                kExitInternal);
  }
}
