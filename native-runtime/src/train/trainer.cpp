#include "train/trainer.hpp"

#include <algorithm>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "common/errors.hpp"
#include "common/threadpool.hpp"
#include "formats/shard.hpp"
#include "model/forward.hpp"
#include "ops/adamw.hpp"
#include "train/adapter.hpp"
#include "train/checkpoint.hpp"
#include "train/control.hpp"
#include "train/data.hpp"
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
double evaluate(const Model& model, const LoraState* lora, const PackedRows& rows, int64_t micro_batch, Workspace& ws) {
  double sum = 0;
  std::vector<int64_t> ids;
  for (int64_t r = 0; r < rows.rows; r += micro_batch) {
    ids.clear();
    for (int64_t i = r; i < std::min(rows.rows, r + micro_batch); ++i) ids.push_back(i);
    sum += forward_loss(model, lora, gather_rows(rows, ids.data(), ids.size()), ws);
  }
  return rows.total_targets ? sum / static_cast<double>(rows.total_targets) : 0.0;
}

Json memory_json() {
  const MemoryInfo m = read_memory_info();
  Json j = Json::object();
  j.set("used", m.rss);
  j.set("peak", m.peak);
  j.set("device_used", m.system_used);
  j.set("device_total", m.system_total);
  return j;
}

}  // namespace

int run_train(const std::string& run_dir_arg, bool resume, EventSink& events, TrainProgress& progress) {
  std::string run_dir = run_dir_arg;
  while (run_dir.size() > 1 && run_dir.back() == '/') run_dir.pop_back();
  if (!is_dir(run_dir))
    throw InputError("file_read", "run folder not found: " + run_dir, run_dir, "", 0,
                     "pass the folder that contains run.json: lora-runtime train --run RUN_DIR.");
  events.open_file(run_dir + "/events.jsonl");
  {
    Json dev = Json::object();
    dev.set("kind", "cpu");
    dev.set("name", cpu_name());
    dev.set("memory_total", read_memory_info().system_total);
    Json hello = Json::object();
    hello.set("runtime", kRuntimeVersion);
    hello.set("protocol", kProtocolVersion);
    hello.set("device", dev);
    // Lets a reader of events.jsonl (the extension after a window reload) check that the
    // process writing it is still alive.
    hello.set("pid", static_cast<int64_t>(getpid()));
    events.emit("hello", hello);
  }

  // Signals and stdin commands are honoured from here on: a stop during the model load
  // ends the run right after it, before the first step.
  Control control(events);
  control.start();

  const RunConfig cfg = load_run_config(run_dir);
  set_num_threads(static_cast<int>(cfg.threads));
  if (cfg.dtype != "fp32")
    events.log("info", "compute.dtype " + cfg.dtype + ": the CPU path computes in fp32 (same results, more memory)");

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

  {
    // Refuse what cannot fit at all (exit 3 with a hint) instead of dying later in the OOM
    // killer; warn when it only fits by swapping.
    const uint64_t tokens = static_cast<uint64_t>(std::min(cfg.micro_batch, train_rows.rows) * cfg.seq_len);
    const uint64_t need = model.bytes_held + static_cast<uint64_t>(n_params) * 4 * 5 +
                          workspace_bytes(model, lora, static_cast<int64_t>(tokens), cfg.grad_checkpointing);
    const MemoryInfo mem = read_memory_info();
    const std::string gib = std::to_string(need / double(1ull << 30)).substr(0, 5) + " GiB";
    const std::string hint = "lower train.seq_len or train.micro_batch (raise grad_accum to keep the batch), set "
                             "train.grad_checkpointing to true, or use quant.type nf4.";
    if (mem.system_total > 0 && need > mem.system_total)
      throw OutOfMemoryError("training needs about " + gib + ", more than this machine's memory", need, hint);
    if (mem.system_total > 0 && need > mem.system_total - mem.system_used)
      events.log("warning", "training needs about " + gib + ", more than the memory available now; it may swap or be killed");
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
      events.log("info", "resumed from " + dir + " at step " + std::to_string(st.step));
    }
  }
  progress.step = static_cast<int64_t>(st.step);

  const double elapsed_before = st.elapsed_s;
  const auto t_loop = Clock::now();
  auto elapsed = [&] { return elapsed_before + seconds_since(t_loop); };
  int64_t last_checkpoint = -1, last_eval = -1;
  auto checkpoint = [&] {
    if (last_checkpoint == static_cast<int64_t>(st.step)) return;
    st.elapsed_s = elapsed();
    const std::string path = write_checkpoint(run_dir, lora, st, config_hash, cfg.model);
    last_checkpoint = static_cast<int64_t>(st.step);
    Json c = Json::object();
    c.set("step", st.step);
    c.set("path", path);
    events.emit("checkpoint", c);
  };
  Workspace ws, eval_ws;
  bool early_stopped = false;
  // Runs an eval; returns true when early stopping says to stop.
  auto run_eval = [&]() -> bool {
    const double loss = evaluate(model, &lora, eval_rows, cfg.micro_batch, eval_ws);
    last_eval = static_cast<int64_t>(st.step);
    Json e = Json::object();
    e.set("step", st.step);
    e.set("loss", loss);
    e.set("tokens", eval_rows.total_targets);
    events.emit("eval", e);
    if (cfg.early_stopping_patience == 0) return false;
    if (!st.has_best || loss < st.best_loss) {
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
  std::vector<int64_t> ids;
  const int64_t total = plan.steps_total;
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
    std::fill(lora.grads.begin(), lora.grads.end(), 0.f);
    double loss_sum = 0;
    int64_t micro = 0;
    for (int64_t b = begin; b < end; b += cfg.micro_batch, ++micro) {
      const int64_t n = std::min(cfg.micro_batch, end - b);
      const Batch batch = gather_rows(train_rows, perm.data() + b, n);
      loss_sum += forward_backward(model, lora, batch, {cfg.seed, static_cast<uint64_t>(s), static_cast<uint64_t>(micro)},
                                   cfg.grad_checkpointing, ws);
    }
    // The step's loss is the mean over all its target tokens; the micro-batches summed
    // their token losses, so one division here weights every token equally.
    const float inv = 1.0f / static_cast<float>(std::max<int64_t>(1, step_targets));
    scale_inplace(lora.grads.data(), n_params, inv);
    const double grad_norm = std::sqrt(sum_squares(lora.grads.data(), n_params));
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
      e.set("mem", memory_json());
      events.emit("step", e);
      throw InputError("diverged",
                       "training diverged at step " + std::to_string(s + 1) + ": the loss or the gradients are not finite",
                       cfg.file, "train.lr", 0,
                       "lower train.lr (for example 10x), keep train.max_grad_norm > 0 and warmup_steps > 0, and check "
                       "the model's weights for NaN/Inf; then start a new run.");
    }
    if (cfg.max_grad_norm > 0 && grad_norm > cfg.max_grad_norm)
      scale_inplace(lora.grads.data(), n_params, static_cast<float>(cfg.max_grad_norm / (grad_norm + 1e-6)));
    const double lr = learning_rate(cfg, s, total);
    if (cfg.optimizer == Optimizer::AdamW)
      adamw_update(lora.params.data(), lora.grads.data(), st.m.data(), st.v.data(), n_params, static_cast<float>(lr),
                   0.9f, 0.999f, 1e-8f, static_cast<float>(cfg.weight_decay), s + 1);
    else
      sgd_update(lora.params.data(), lora.grads.data(), n_params, static_cast<float>(lr), static_cast<float>(cfg.weight_decay));
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
      e.set("mem", memory_json());
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
  if (control.stop_requested() && !early_stopped && static_cast<int64_t>(st.step) < total) return stop_now();
  if (has_eval && cfg.eval_every > 0 && !early_stopped && last_eval != static_cast<int64_t>(st.step)) run_eval();
  const bool use_best = cfg.early_stopping_patience > 0 && st.has_best;
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
  const Model model = load_model(opt.model, q);
  LoraState adapter;
  const bool has_adapter = !opt.adapter.empty();
  if (has_adapter) adapter = read_adapter(opt.adapter, model);
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
  Workspace ws;
  EvalResult r;
  r.loss = evaluate(model, has_adapter ? &adapter : nullptr, rows, opt.micro_batch, ws);
  r.tokens = rows.total_targets;
  r.documents_split = rows.split_documents;
  return r;
}

}  // namespace lora
