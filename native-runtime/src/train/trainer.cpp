#include "train/trainer.hpp"

#include <algorithm>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <exception>
#include <stdexcept>
#include <thread>

#include "common/errors.hpp"
#include "common/threadpool.hpp"
#include "formats/shard.hpp"
#include "model/forward.hpp"
#include "train/adapter.hpp"
#include "train/checkpoint.hpp"
#include "train/control.hpp"
#include "train/data.hpp"
#include "train/engine.hpp"
#include "train/files.hpp"
#include "train/run_config.hpp"

namespace lora {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double learning_rate(const RunConfig& c, int64_t step, int64_t total) {
  if (step < c.warmup_steps) return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  if (c.schedule == Schedule::Constant) return c.lr;
  const double progress = static_cast<double>(step - c.warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, total - c.warmup_steps));
  if (c.schedule == Schedule::Linear) return c.lr * std::max(0.0, 1.0 - progress);
  return c.lr * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
}

// Mean loss over all targets of a packed set, without dropout.
double evaluate(TrainEngine& engine, bool with_adapter, const PackedRows& rows, int64_t micro_batch) {
  double sum = 0;
  std::vector<int64_t> ids;
  for (int64_t r = 0; r < rows.rows; r += micro_batch) {
    ids.clear();
    for (int64_t i = r; i < std::min(rows.rows, r + micro_batch); ++i) ids.push_back(i);
    sum += engine.forward_loss(gather_rows(rows, ids.data(), ids.size()), with_adapter);
  }
  return rows.total_targets ? sum / static_cast<double>(rows.total_targets) : 0.0;
}

std::string gpu_label(const cuda::DeviceInfo& g) {
  return "cuda:" + std::to_string(g.index) + " (" + g.name + ", compute capability " + compute_capability(g) + ")";
}

// Device memory free on `g` now (the model load between selection and this check may have
// taken a while, and other processes share the GPU); the selection-time figure otherwise.
uint64_t free_device_memory(const cuda::DeviceInfo& g) {
  for (const auto& d : cuda::list_devices())
    if (d.index == g.index) return d.memory_free;
  return g.memory_free;
}

const char* const kMemoryHint =
    "lower train.seq_len or train.micro_batch (raise grad_accum to keep the batch), set train.grad_checkpointing to "
    "true, or use quant.type nf4.";
const char* const kDeviceMemoryHint =
    "lower train.micro_batch or train.seq_len (raise grad_accum to keep the batch), set train.grad_checkpointing to "
    "true, set compute.offload_activations to true, or use quant.type nf4; compute.device \"cpu\" trains in host "
    "memory instead.";

// The engine for the chosen device, after refusing (exit 3) a configuration whose memory
// estimate cannot fit, so a run does not die minutes later in the OOM killer or cudaMalloc.
std::unique_ptr<TrainEngine> make_engine(const DeviceChoice& dev, const RunConfig& cfg, const Model& model,
                                         LoraState& lora, int64_t tokens, EventSink& events) {
  const uint64_t n_params = lora.params.size();
  const MemoryInfo mem = read_memory_info();
  // Host: the base as loaded plus the fp32 LoRA vectors: params, grads, the engine's AdamW
  // moments, the trainer's copies of the moments for checkpoints, and the best params. On
  // the CPU the activations of one micro-batch come on top.
  uint64_t host_need = model.bytes_held + n_params * 4 * 7;
  if (!dev.cuda) host_need += workspace_bytes(model, lora, tokens, cfg.grad_checkpointing);
  if (mem.system_total > 0 && host_need > mem.system_total)
    throw OutOfMemoryError("training needs about " + gib(host_need) + ", more than this machine's memory (" +
                               gib(mem.system_total) + ")",
                           host_need, kMemoryHint);
  if (mem.system_total > 0 && host_need > mem.system_total - mem.system_used)
    events.log("warning", "training needs about " + gib(host_need) +
                              " of host memory, more than is available now; it may swap or be killed");
  if (!dev.cuda) return make_cpu_engine(model, lora);

  cuda::CudaTrainOptions opt;
  opt.device = dev.gpu.index;
  opt.offload_activations = cfg.offload_activations;
  // The estimate leaves out this process's CUDA context (cuBLASLt's and the kernels' code
  // and the driver's own allocations, a few hundred MiB), which the driver may not have
  // counted as used yet when `free` was read: keep room for it.
  constexpr uint64_t kContextReserve = uint64_t(512) << 20;
  uint64_t estimate = 0;
  try {
    estimate = cuda::estimate_device_bytes(model, lora, tokens, cfg.grad_checkpointing, opt);
  } catch (const std::invalid_argument& e) {
    // Sizing the kernels' workspaces checks the model's shapes (e.g. the attention kernels'
    // head sizes): a model the CUDA path cannot run is a configuration problem, not a bug.
    throw InputError("device", "the CUDA path cannot train this model: " + std::string(e.what()), cfg.file,
                     "compute.device", cfg.device_line, "set compute.device to \"cpu\" to train it on the CPU.");
  }
  const uint64_t need = estimate + kContextReserve;
  const uint64_t free = free_device_memory(dev.gpu);
  if (need > free)
    throw OutOfMemoryError("training needs about " + gib(need) + " of GPU memory on " + gpu_label(dev.gpu) +
                               " (0.50 GiB of it for the CUDA context), but only " + gib(free) + " of its " +
                               gib(dev.gpu.memory_total) + " are free",
                           need, kDeviceMemoryHint);
  return cuda::make_cuda_engine(model, lora, opt);
}

}  // namespace

DeviceChoice choose_device(const std::string& device, bool cuda_built, const std::vector<cuda::DeviceInfo>& gpus,
                           const std::string& why_none, const DeviceOrigin& origin) {
  DeviceChoice c;
  if (device == "cpu") return c;
  if (device == "auto") {
    if (!cuda_built) {
      c.why_cpu = "this runtime was built without CUDA";
      return c;
    }
    for (const auto& g : gpus)
      if (g.supported) {
        c.cuda = true;
        c.gpu = g;
        return c;
      }
    if (gpus.empty()) {
      c.why_cpu = "no CUDA GPU" + (why_none.empty() ? std::string() : " (" + why_none + ")");
    } else {
      c.why_cpu = "no supported CUDA GPU:";
      for (const auto& g : gpus) c.why_cpu += " " + gpu_label(g) + " " + (g.note.empty() ? "is not supported" : g.note) + ";";
      c.why_cpu.pop_back();
    }
    return c;
  }
  const std::string what = origin.field.empty() ? "the device" : origin.field;
  const std::string digits = device.rfind("cuda:", 0) == 0 ? device.substr(5) : std::string();
  if (digits.empty() || digits.size() > 4 || digits.find_first_not_of("0123456789") != std::string::npos)
    throw InputError("device", what + " is \"" + device + "\", not a device", origin.file, origin.field, origin.line,
                     "use \"auto\" (the first supported GPU, else the CPU), \"cpu\", or \"cuda:N\" for GPU N.");
  const int index = std::stoi(digits);
  if (!cuda_built)
    throw InputError("device", what + " asks for " + device + ", but this runtime was built without CUDA", origin.file,
                     origin.field, origin.line,
                     "use \"auto\" or \"cpu\", or rebuild the runtime on a machine with the CUDA toolkit (nvcc on "
                     "PATH): npm run build:native.");
  const cuda::DeviceInfo* found = nullptr;
  for (const auto& g : gpus)
    if (g.index == index) found = &g;
  if (!found) {
    std::string seen;
    if (gpus.empty()) {
      seen = "no CUDA GPU was found" + (why_none.empty() ? std::string() : " (" + why_none + ")");
    } else {
      seen = "this machine has " + std::to_string(gpus.size()) + (gpus.size() == 1 ? " GPU:" : " GPUs:");
      for (size_t i = 0; i < gpus.size(); ++i) seen += (i ? ", " : " ") + gpu_label(gpus[i]);
    }
    const std::string hint =
        gpus.empty() ? "use \"cpu\" or \"auto\" to train on the CPU, or check the NVIDIA driver (nvidia-smi lists "
                       "the GPUs it sees)."
                     : "use \"auto\", or one of cuda:0 to cuda:" + std::to_string(gpus.back().index) + ".";
    throw InputError("device", what + " asks for " + device + ", but " + seen, origin.file, origin.field, origin.line,
                     hint);
  }
  if (!found->supported)
    throw InputError("device",
                     what + " asks for " + gpu_label(*found) + ", which this runtime cannot use" +
                         (found->note.empty() ? std::string() : ": " + found->note),
                     origin.file, origin.field, origin.line,
                     "the CUDA path needs compute capability " + std::to_string(cuda::kMinComputeMajor) +
                         ".0 or newer (bf16 tensor cores: Ampere, Ada, Hopper); use another GPU, or \"cpu\".");
  c.cuda = true;
  c.gpu = *found;
  return c;
}

DeviceChoice select_device(const std::string& device, const DeviceOrigin& origin) {
  // "cpu" never touches the driver: a CPU run on a machine with a broken driver still works.
  if (device == "cpu") return {};
  std::string why;
  const std::vector<cuda::DeviceInfo> gpus = cuda::compiled() ? cuda::list_devices(&why) : std::vector<cuda::DeviceInfo>{};
  return choose_device(device, cuda::compiled(), gpus, why, origin);
}

int run_train(const std::string& run_dir_arg, bool resume, EventSink& events, TrainProgress& progress) {
  std::string run_dir = run_dir_arg;
  while (run_dir.size() > 1 && run_dir.back() == '/') run_dir.pop_back();
  if (!is_dir(run_dir))
    throw InputError("file_read", "run folder not found: " + run_dir, run_dir, "", 0,
                     "pass the folder that contains run.json: lora-runtime train --run RUN_DIR.");
  events.open_file(run_dir + "/events.jsonl");

  // hello names the device the run computes on, so run.json is read and compute.device
  // resolved first; hello is still the first event when either fails: it then names the
  // host's CPU (as a run that fails before training does), and the error follows it.
  RunConfig cfg;
  DeviceChoice dev;
  std::exception_ptr config_error;
  try {
    cfg = load_run_config(run_dir);
    dev = select_device(cfg.device, {cfg.file, "compute.device", cfg.device_line});
    // "auto" means "the GPU when it can train this model": a shape the kernels refuse (an
    // odd head size) trains on the CPU instead, decided before hello names the device. An
    // explicit cuda:N with such a model fails at the memory check with code "device".
    if (dev.cuda && cfg.device == "auto") {
      std::string why;
      if (!cuda::supports_model(load_model_config(cfg.model), &why)) {
        dev = DeviceChoice{};
        dev.why_cpu = why;
      }
    }
  } catch (...) {
    config_error = std::current_exception();
    dev = DeviceChoice{};
  }
  {
    Json hello = Json::object();
    hello.set("runtime", kRuntimeVersion);
    hello.set("protocol", kProtocolVersion);
    hello.set("device", dev.cuda ? cuda_device_json(dev.gpu) : cpu_device_json());
    // Lets a reader of events.jsonl (the extension after a window reload) check that the
    // process writing it is still alive.
    hello.set("pid", static_cast<int64_t>(getpid()));
    events.emit("hello", hello);
  }
  if (config_error) std::rethrow_exception(config_error);

  // Signals and stdin commands are honoured from here on: a stop during the model load
  // ends the run right after it, before the first step.
  Control control(events);
  control.start();

  set_num_threads(static_cast<int>(cfg.threads));
  if (!dev.cuda && !dev.why_cpu.empty()) events.log("info", dev.why_cpu + ": training on the CPU");
  if (dev.cuda) {
    if (cfg.dtype != "bf16")
      events.log("info", "compute.dtype " + cfg.dtype +
                             ": the CUDA path computes in bf16 with fp32 LoRA master weights and optimizer states");
  } else {
    if (cfg.dtype != "fp32")
      events.log("info", "compute.dtype " + cfg.dtype + ": the CPU path computes in fp32 (same results, more memory)");
    if (cfg.offload_activations)
      events.log("info", "compute.offload_activations applies to CUDA only; on the CPU the activations already live in "
                         "host memory");
  }

  // The shards are checked before the (possibly long) model load, so bad data fails fast.
  const ModelConfig model_cfg = load_model_config(cfg.model);
  const std::vector<int> targets = resolve_targets(cfg, model_cfg.arch);
  // GPT-2's positions are a learned table: a document longer than it has no embedding.
  if (model_cfg.arch == Arch::GPT2 && cfg.seq_len > model_cfg.max_position_embeddings)
    throw InputError("config_field",
                     "train.seq_len " + std::to_string(cfg.seq_len) + " exceeds the model's " +
                         std::to_string(model_cfg.max_position_embeddings) + " learned positions (n_positions)",
                     cfg.file, "train.seq_len", 0,
                     "set train.seq_len to at most " + std::to_string(model_cfg.max_position_embeddings) + ".");
  const uint32_t model_vocab = static_cast<uint32_t>(model_cfg.vocab_size);
  const TokenShard train_shard = read_shard(cfg.data_train, model_vocab);
  TokenShard eval_shard;
  if (!cfg.data_eval.empty()) eval_shard = read_shard(cfg.data_eval, model_vocab);

  events.log("info", "loading " + cfg.model + " (" + quant_name(cfg.quant.type) + ")");
  const Model model = load_model(cfg.model, cfg.quant);
  if (model.cfg.sliding_window > 0 && cfg.seq_len > model.cfg.sliding_window)
    events.log("warning", "train.seq_len " + std::to_string(cfg.seq_len) + " exceeds the model's sliding window (" +
                              std::to_string(model.cfg.sliding_window) + "); the runtime attends over the whole document");
  if (model.cfg.max_position_embeddings > 0 && cfg.seq_len > model.cfg.max_position_embeddings)
    events.log("warning", "train.seq_len exceeds the model's max_position_embeddings (" +
                              std::to_string(model.cfg.max_position_embeddings) + ")");

  LoraSpec spec;
  spec.r = cfg.r;
  spec.alpha = cfg.alpha;
  spec.dropout = cfg.dropout;
  spec.rslora = cfg.rslora;
  spec.targets = targets;
  LoraState lora = lora_create(model, spec, cfg.seed, cfg.file, cfg.r_line);
  if (!cfg.init_adapter.empty()) load_adapter_into(cfg.init_adapter, model, lora, cfg.file);
  const int64_t n_params = static_cast<int64_t>(lora.params.size());
  {
    Json m = Json::object();
    m.set("arch", arch_name(model.cfg.arch));
    m.set("hf_architecture", model.cfg.hf_architecture);
    m.set("layers", model.cfg.num_layers);
    m.set("params_total", model.params_total);
    m.set("params_trainable", n_params);
    m.set("quant", quant_name(cfg.quant.type));
    m.set("double_quant", cfg.quant.type != QuantType::None && cfg.quant.double_quant);
    m.set("dtype", model.dtype);
    m.set("bytes_base", model.bytes_held);
    m.set("bytes_base_disk", model.bytes_disk);
    m.set("bytes_lora", static_cast<uint64_t>(n_params) * 4);
    Json t = Json::array();
    for (const auto& name : target_names(targets)) t.push(name);
    m.set("targets", t);
    events.emit("model", m);
  }

  const PackedRows train_rows = pack_shard(train_shard, cfg.seq_len);
  if (train_rows.total_targets == 0)
    throw InputError("config_field", "the training shard has no target tokens (every loss_mask is 0)", cfg.data_train,
                     "data.train", 0, "check the dataset's format: the assistant/completion part must be trained on.");
  if (train_rows.split_documents)
    events.log("warning", std::to_string(train_rows.split_documents) + " training documents are longer than seq_len " +
                              std::to_string(cfg.seq_len) + " and were split into pieces");
  PackedRows eval_rows;
  if (!cfg.data_eval.empty()) eval_rows = pack_shard(eval_shard, cfg.seq_len);
  const bool has_eval = eval_rows.total_targets > 0;
  const StepPlan plan = plan_steps(train_rows.rows, cfg.micro_batch, cfg.grad_accum, cfg.epochs, cfg.max_steps);
  {
    Json p = Json::object();
    p.set("steps_total", plan.steps_total);
    p.set("tokens_per_step", plan.rows_per_step * cfg.seq_len);
    p.set("epochs", plan.epochs);
    p.set("train_tokens", train_rows.total_tokens);
    p.set("eval_tokens", eval_rows.total_tokens);
    p.set("train_targets", train_rows.total_targets);
    p.set("eval_targets", eval_rows.total_targets);
    p.set("rows", train_rows.rows);
    p.set("steps_per_epoch", plan.steps_per_epoch);
    events.emit("plan", p);
  }

  const int64_t micro_tokens = std::min(cfg.micro_batch, train_rows.rows) * cfg.seq_len;
  const std::unique_ptr<TrainEngine> engine = make_engine(dev, cfg, model, lora, micro_tokens, events);
  if (dev.cuda) {
    const Json d = engine->device_json();
    std::string line = "training on " + gpu_label(dev.gpu) + ", " + gib(dev.gpu.memory_total);
    if (const Json* g = d.find("gemm"); g && g->is_string()) line += ", GEMM " + g->as_string();
    events.log("info", line);
  }

  const uint64_t config_hash = cfg.training_hash();
  TrainState st;
  st.m.assign(n_params, 0.f);
  st.v.assign(n_params, 0.f);
  if (resume) {
    std::vector<std::string> skipped;
    const std::string dir = find_latest_checkpoint(run_dir, &skipped);
    for (const auto& s : skipped) events.log("warning", "skipping incomplete checkpoint " + s);
    if (dir.empty()) {
      events.log("warning", "--resume: no checkpoint in " + run_dir + "/checkpoints; starting from step 0");
    } else {
      read_checkpoint(dir, lora, st, config_hash, cfg.file);
      engine->upload(lora, &st.m, &st.v);
      events.log("info", "resumed from " + dir + " at step " + std::to_string(st.step));
    }
  }
  progress.step = static_cast<int64_t>(st.step);

  // The engine holds the live parameters and moments (on a GPU, in device memory); `lora`
  // and st.m/st.v are brought up to date only where the host needs them.
  int64_t host_synced = static_cast<int64_t>(st.step);
  auto sync_host = [&] {
    if (host_synced == static_cast<int64_t>(st.step)) return;
    engine->download(lora, &st.m, &st.v);
    host_synced = static_cast<int64_t>(st.step);
  };

  const double elapsed_before = st.elapsed_s;
  const auto t_loop = Clock::now();
  auto elapsed = [&] { return elapsed_before + seconds_since(t_loop); };
  int64_t last_checkpoint = -1, last_eval = -1;
  auto checkpoint = [&] {
    if (last_checkpoint == static_cast<int64_t>(st.step)) return;
    sync_host();
    st.elapsed_s = elapsed();
    const std::string path = write_checkpoint(run_dir, lora, st, config_hash, cfg.model);
    last_checkpoint = static_cast<int64_t>(st.step);
    Json c = Json::object();
    c.set("step", st.step);
    c.set("path", path);
    events.emit("checkpoint", c);
  };
  bool early_stopped = false;
  // Runs an eval; returns true when early stopping says to stop.
  auto run_eval = [&]() -> bool {
    const double loss = evaluate(*engine, true, eval_rows, cfg.micro_batch);
    last_eval = static_cast<int64_t>(st.step);
    Json e = Json::object();
    e.set("step", st.step);
    e.set("loss", loss);
    e.set("tokens", eval_rows.total_targets);
    events.emit("eval", e);
    if (cfg.early_stopping_patience == 0) return false;
    if (!st.has_best || loss < st.best_loss) {
      sync_host();
      st.has_best = true;
      st.best_loss = loss;
      st.best_step = st.step;
      st.best_params = lora.params;
      st.evals_since_best = 0;
      return false;
    }
    ++st.evals_since_best;
    return static_cast<int64_t>(st.evals_since_best) >= cfg.early_stopping_patience;
  };
  auto stop_now = [&]() -> int {
    checkpoint();
    sync_host();
    write_adapter(run_dir + "/adapter", lora, cfg.model);
    events.log("info", std::string("stopped on request (") + control.stop_source() + ") after step " + std::to_string(st.step));
    Json d = Json::object();
    d.set("status", "stopped");
    d.set("step", st.step);
    d.set("adapter", run_dir + "/adapter");
    events.emit("done", d);
    control.finish();
    return kExitOk;
  };

  std::vector<int64_t> perm;
  int64_t perm_epoch = -1;
  const int64_t total = plan.steps_total;
  try {
    while (static_cast<int64_t>(st.step) < total) {
      if (control.stop_requested()) return stop_now();
      const auto t_step = Clock::now();
      const int64_t s = static_cast<int64_t>(st.step);
      const int64_t epoch = s / plan.steps_per_epoch, index = s % plan.steps_per_epoch;
      if (epoch != perm_epoch) {
        perm = epoch_permutation(train_rows.rows, cfg.seed, static_cast<uint64_t>(epoch));
        perm_epoch = epoch;
      }
      const int64_t begin = index * plan.rows_per_step;
      const int64_t end = std::min(begin + plan.rows_per_step, train_rows.rows);
      int64_t step_targets = 0, step_tokens = 0;
      for (int64_t i = begin; i < end; ++i) {
        step_targets += train_rows.row_targets[perm[i]];
        step_tokens += train_rows.row_tokens[perm[i]];
      }
      engine->zero_grads();
      double loss_sum = 0;
      int64_t micro = 0;
      for (int64_t b = begin; b < end; b += cfg.micro_batch, ++micro) {
        const int64_t n = std::min(cfg.micro_batch, end - b);
        const Batch batch = gather_rows(train_rows, perm.data() + b, n);
        loss_sum += engine->forward_backward(batch, {cfg.seed, static_cast<uint64_t>(s), static_cast<uint64_t>(micro)},
                                             cfg.grad_checkpointing);
      }
      // The step's loss is the mean over all its target tokens; the micro-batches summed
      // their token losses, so one division here weights every token equally.
      const float inv = 1.0f / static_cast<float>(std::max<int64_t>(1, step_targets));
      engine->scale_grads(inv);
      const double grad_norm = std::sqrt(engine->grad_sum_squares());
      if (!std::isfinite(grad_norm) || !std::isfinite(loss_sum)) {
        // One non-finite update would turn every LoRA weight into NaN: stop before it, with the
        // adapter of the last good step still in the latest checkpoint.
        Json e = Json::object();
        e.set("step", s + 1);
        e.set("epoch", static_cast<double>(s + 1) / static_cast<double>(plan.steps_per_epoch));
        e.set("loss", loss_sum / static_cast<double>(std::max<int64_t>(1, step_targets)));
        e.set("lr", learning_rate(cfg, s, total));
        e.set("grad_norm", grad_norm);
        e.set("tokens_per_s", 0.0);
        e.set("elapsed_s", elapsed());
        e.set("mem", engine->memory_json());
        events.emit("step", e);
        throw InputError("diverged",
                         "training diverged at step " + std::to_string(s + 1) + ": the loss or the gradients are not finite",
                         cfg.file, "train.lr", 0,
                         "lower train.lr (for example 10x), keep train.max_grad_norm > 0 and warmup_steps > 0, and check "
                         "the model's weights for NaN/Inf; then start a new run.");
      }
      if (cfg.max_grad_norm > 0 && grad_norm > cfg.max_grad_norm)
        engine->scale_grads(static_cast<float>(cfg.max_grad_norm / (grad_norm + 1e-6)));
      const double lr = learning_rate(cfg, s, total);
      OptimizerStep o;
      o.adamw = cfg.optimizer == Optimizer::AdamW;
      o.lr = static_cast<float>(lr);
      o.beta1 = 0.9f;
      o.beta2 = 0.999f;
      o.eps = 1e-8f;
      o.weight_decay = static_cast<float>(cfg.weight_decay);
      o.step = s + 1;
      engine->optimizer_step(o);
      st.step = static_cast<uint64_t>(s + 1);
      st.epoch = st.step / plan.steps_per_epoch;
      st.position = st.step % plan.steps_per_epoch;
      st.tokens_seen += step_tokens;
      progress.step = s + 1;
      const double step_time = seconds_since(t_step);
      {
        Json e = Json::object();
        e.set("step", st.step);
        // Fractional epochs for the charts; whole ones print as integers ("3", not "3e+00").
        if (st.step % plan.steps_per_epoch == 0)
          e.set("epoch", static_cast<int64_t>(st.step / plan.steps_per_epoch));
        else
          e.set("epoch", static_cast<double>(st.step) / static_cast<double>(plan.steps_per_epoch));
        e.set("loss", loss_sum / static_cast<double>(std::max<int64_t>(1, step_targets)));
        e.set("lr", lr);
        e.set("grad_norm", grad_norm);
        e.set("tokens_per_s", step_time > 0 ? step_tokens / step_time : 0.0);
        e.set("elapsed_s", elapsed());
        e.set("mem", engine->memory_json());
        e.set("tokens", step_tokens);
        e.set("targets", step_targets);
        events.emit("step", e);
      }
      if (has_eval && cfg.eval_every > 0 && st.step % cfg.eval_every == 0 && run_eval()) {
        early_stopped = true;
        events.log("info", "early stopping: no eval improvement in " + std::to_string(cfg.early_stopping_patience) +
                               " evals; keeping the adapter of step " + std::to_string(st.best_step));
      }
      const bool periodic = cfg.save_every > 0 && st.step % cfg.save_every == 0;
      if (periodic || control.take_checkpoint_request()) checkpoint();
      if (early_stopped) break;
    }
  } catch (const OutOfMemoryError&) {
    // main() reports the error (exit 3). Checkpoints are built in a temporary folder and
    // renamed, so the newest step-N on disk is complete; say which one a resume would use.
    if (last_checkpoint >= 0)
      events.log("info", "the checkpoint of step " + std::to_string(last_checkpoint) +
                             " is intact: lower the memory use (train.grad_checkpointing, compute.offload_activations) "
                             "and continue with --resume");
    throw;
  }
  if (control.stop_requested() && !early_stopped && static_cast<int64_t>(st.step) < total) return stop_now();
  if (has_eval && cfg.eval_every > 0 && !early_stopped && last_eval != static_cast<int64_t>(st.step)) run_eval();
  const bool use_best = cfg.early_stopping_patience > 0 && st.has_best;
  sync_host();
  write_adapter(run_dir + "/adapter", lora, cfg.model, use_best ? &st.best_params : nullptr);
  Json d = Json::object();
  d.set("status", "completed");
  d.set("step", st.step);
  d.set("adapter", run_dir + "/adapter");
  if (use_best) {
    d.set("best_step", st.best_step);
    d.set("best_eval_loss", st.best_loss);
  }
  if (early_stopped) d.set("early_stopped", true);
  events.emit("done", d);
  control.finish();
  return kExitOk;
}

EvalResult run_eval(const EvalOptions& opt) {
  QuantSettings q;
  if (!quant_from_name(opt.quant, q.type))
    throw InputError("usage", "--quant " + opt.quant + " is not a quantization type", "", "--quant", 0,
                     "use none, nf4, fp4 or int8.");
  q.double_quant = q.type != QuantType::None;
  // The device is resolved before the model load, so a bad --device fails at once.
  const DeviceChoice dev = select_device(opt.device, {"", "--device", 0});
  const Model model = load_model(opt.model, q);
  LoraState adapter;
  const bool has_adapter = !opt.adapter.empty();
  if (has_adapter) {
    adapter = read_adapter(opt.adapter, model);
  } else {
    // The engines need a well-formed adapter to hold; scoring the base (with_adapter false)
    // never reads it, so the smallest one will do.
    LoraSpec spec;
    spec.r = 1;
    spec.targets = {arch_modules(model.cfg.arch).front()};
    adapter = lora_create(model, spec, 0);
  }
  const TokenShard shard = read_shard(opt.data, static_cast<uint32_t>(model.cfg.vocab_size));
  int64_t seq_len = opt.seq_len;
  if (seq_len <= 0) {
    for (uint64_t d = 0; d < shard.documents(); ++d)
      seq_len = std::max<int64_t>(seq_len, static_cast<int64_t>(shard.offsets[d + 1] - shard.offsets[d]));
    if (model.cfg.max_position_embeddings > 0) seq_len = std::min(seq_len, model.cfg.max_position_embeddings);
    seq_len = std::max<int64_t>(seq_len, 2);
  }
  if (model.cfg.arch == Arch::GPT2 && seq_len > model.cfg.max_position_embeddings)
    throw InputError("usage",
                     "--seq-len " + std::to_string(seq_len) + " exceeds the model's " +
                         std::to_string(model.cfg.max_position_embeddings) + " learned positions (n_positions)",
                     "", "--seq-len", 0,
                     "give --seq-len at most " + std::to_string(model.cfg.max_position_embeddings) + ".");
  const PackedRows rows = pack_shard(shard, seq_len);
  std::unique_ptr<TrainEngine> engine;
  if (dev.cuda) {
    cuda::CudaTrainOptions copt;
    copt.device = dev.gpu.index;
    engine = cuda::make_cuda_engine(model, adapter, copt);
  } else {
    engine = make_cpu_engine(model, adapter);
  }
  EvalResult r;
  r.loss = evaluate(*engine, has_adapter, rows, opt.micro_batch);
  r.tokens = rows.total_targets;
  r.documents_split = rows.split_documents;
  return r;
}

}  // namespace lora
