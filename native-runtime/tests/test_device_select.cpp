// Device selection (compute.device, eval's --device), the `devices`/hello device JSON, and
// the CPU TrainEngine. Everything here runs without a GPU: choose_device takes the GPU list
// as an argument, and the tests that ask this machine's driver accept either answer.
#include <cstdio>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "cuda/cuda.hpp"
#include "model/forward.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"
#include "model_fixture.hpp"
#include "ops/adamw.hpp"
#include "test.hpp"
#include "train/engine.hpp"
#include "train/events.hpp"
#include "train/files.hpp"
#include "train/trainer.hpp"

using namespace lora;

namespace {

cuda::DeviceInfo gpu(int index, const std::string& name, int major, int minor) {
  cuda::DeviceInfo g;
  g.index = index;
  g.name = name;
  g.cc_major = major;
  g.cc_minor = minor;
  g.multiprocessors = 108;
  g.memory_total = 80ull << 30;
  g.memory_free = 79ull << 30;
  g.supported = major >= cuda::kMinComputeMajor;
  if (!g.supported) g.note = "compute capability " + std::to_string(major) + "." + std::to_string(minor) + " is older than 8.0";
  return g;
}

const DeviceOrigin kRunJson{"/runs/r1/run.json", "compute.device", 17};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Runs choose_device expecting InputError "device" at kRunJson's place; returns it.
InputError expect_device_error(const std::string& device, bool built, const std::vector<cuda::DeviceInfo>& gpus,
                               const std::string& why = "no driver") {
  try {
    choose_device(device, built, gpus, why, kRunJson);
  } catch (const InputError& e) {
    CHECK_EQ(e.code, std::string("device"));
    CHECK_EQ(e.field, std::string("compute.device"));
    CHECK_EQ(e.file, std::string("/runs/r1/run.json"));
    CHECK_EQ(e.line, int64_t(17));
    CHECK(!e.hint.empty());
    return e;
  }
  lora_test::record_failure(__FILE__, __LINE__, "no InputError for " + device);
  return InputError("", "");
}

}  // namespace

TEST(device_cpu_is_the_cpu_whatever_is_installed) {
  const DeviceChoice c = choose_device("cpu", true, {gpu(0, "NVIDIA H100", 9, 0)}, "", kRunJson);
  CHECK(!c.cuda);
  CHECK(c.why_cpu.empty());
}

TEST(device_auto_falls_back_to_the_cpu_and_says_why) {
  DeviceChoice c = choose_device("auto", false, {}, "built without", kRunJson);
  CHECK(!c.cuda);
  CHECK(contains(c.why_cpu, "built without CUDA"));

  c = choose_device("auto", true, {}, "CUDA driver not found (libcuda.so.1)", kRunJson);
  CHECK(!c.cuda);
  CHECK(contains(c.why_cpu, "no CUDA GPU"));
  CHECK(contains(c.why_cpu, "libcuda.so.1"));

  c = choose_device("auto", true, {gpu(0, "Tesla T4", 7, 5)}, "", kRunJson);
  CHECK(!c.cuda);
  CHECK(contains(c.why_cpu, "Tesla T4"));
  CHECK(contains(c.why_cpu, "7.5"));
}

TEST(device_auto_takes_the_first_supported_gpu) {
  const DeviceChoice c =
      choose_device("auto", true, {gpu(0, "Tesla T4", 7, 5), gpu(1, "NVIDIA A100", 8, 0), gpu(2, "NVIDIA H100", 9, 0)},
                    "", kRunJson);
  CHECK(c.cuda);
  CHECK_EQ(c.gpu.index, 1);
  CHECK_EQ(c.gpu.name, std::string("NVIDIA A100"));
}

TEST(device_cuda_n_picks_that_gpu) {
  const DeviceChoice c = choose_device("cuda:1", true, {gpu(0, "NVIDIA A100", 8, 0), gpu(1, "NVIDIA H100", 9, 0)}, "", kRunJson);
  CHECK(c.cuda);
  CHECK_EQ(c.gpu.index, 1);
  CHECK(c.why_cpu.empty());
}

TEST(device_cuda_n_errors_name_the_field_and_what_was_found) {
  // No GPU at all: the driver's reason is in the message.
  InputError e = expect_device_error("cuda:0", true, {}, "CUDA driver not found");
  CHECK(contains(e.what(), "cuda:0"));
  CHECK(contains(e.what(), "no CUDA GPU was found"));
  CHECK(contains(e.what(), "CUDA driver not found"));
  CHECK(contains(e.hint, "cpu"));

  // An index past the end: the message lists the GPUs there are, the hint the valid range.
  e = expect_device_error("cuda:2", true, {gpu(0, "NVIDIA A100", 8, 0), gpu(1, "NVIDIA H100", 9, 0)});
  CHECK(contains(e.what(), "cuda:2"));
  CHECK(contains(e.what(), "2 GPUs"));
  CHECK(contains(e.what(), "cuda:0 (NVIDIA A100"));
  CHECK(contains(e.what(), "cuda:1 (NVIDIA H100"));
  CHECK(contains(e.hint, "cuda:1"));

  // Too old for the bf16 kernels.
  e = expect_device_error("cuda:0", true, {gpu(0, "Tesla V100", 7, 0)});
  CHECK(contains(e.what(), "Tesla V100"));
  CHECK(contains(e.what(), "7.0"));
  CHECK(contains(e.hint, "8.0"));

  // A build without CUDA.
  e = expect_device_error("cuda:0", false, {});
  CHECK(contains(e.what(), "built without CUDA"));
  CHECK(contains(e.hint, "nvcc"));

  // Not a device name (eval's --device is not validated anywhere else).
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CUDA:0", "cuda:123456"}) {
    e = expect_device_error(bad, true, {gpu(0, "NVIDIA H100", 9, 0)});
    CHECK(contains(e.what(), bad));
  }
}

TEST(device_eval_flag_errors_name_the_flag) {
  try {
    choose_device("cuda:3", true, {}, "no driver", {"", "--device", 0});
    lora_test::record_failure(__FILE__, __LINE__, "no error");
  } catch (const InputError& e) {
    CHECK_EQ(e.code, std::string("device"));
    CHECK_EQ(e.field, std::string("--device"));
    CHECK(e.file.empty());
    CHECK(contains(e.what(), "--device asks for cuda:3"));
  }
}

// This machine, whatever it has: "auto" takes the first supported GPU or says why not,
// and a GPU index past the end is an error that names compute.device.
TEST(device_select_on_this_machine) {
  std::string why;
  const std::vector<cuda::DeviceInfo> gpus = cuda::list_devices(&why);
  if (!cuda::compiled()) CHECK(gpus.empty());
  if (gpus.empty()) CHECK(!why.empty());
  const DeviceChoice c = select_device("auto", kRunJson);
  const cuda::DeviceInfo* first = nullptr;
  for (const auto& g : gpus)
    if (g.supported && !first) first = &g;
  CHECK_EQ(c.cuda, first != nullptr);
  if (first) CHECK_EQ(c.gpu.index, first->index);
  if (!first) CHECK(!c.why_cpu.empty());

  CHECK(!select_device("cpu", kRunJson).cuda);
  // No machine this runs on has 1000 GPUs.
  CHECK_INPUT_ERROR(select_device("cuda:999", kRunJson), "device");
}

TEST(device_json_shapes) {
  const Json cpu = cpu_device_json();
  CHECK_EQ(cpu.find("kind")->as_string(), std::string("cpu"));
  CHECK(!cpu.find("name")->as_string().empty());
  CHECK(cpu.find("memory_total")->as_int() > 0);

  cuda::DeviceInfo h = gpu(0, "NVIDIA H100 80GB HBM3", 9, 0);
  h.multiprocessors = 132;
  const Json hello = cuda_device_json(h);
  CHECK_EQ(hello.find("kind")->as_string(), std::string("cuda"));
  CHECK_EQ(hello.find("index")->as_int(), int64_t(0));
  CHECK_EQ(hello.find("name")->as_string(), h.name);
  CHECK_EQ(hello.find("compute_capability")->as_string(), std::string("9.0"));
  CHECK_EQ(static_cast<uint64_t>(hello.find("memory_total")->as_int()), h.memory_total);
  CHECK(!hello.has("memory_free"));

  const Json inv = cuda_device_json(h, true);
  CHECK_EQ(inv.find("multiprocessors")->as_int(), int64_t(132));
  CHECK_EQ(static_cast<uint64_t>(inv.find("memory_free")->as_int()), h.memory_free);
  CHECK(inv.find("supported")->as_bool());
  CHECK(!inv.has("note"));

  const Json old = cuda_device_json(gpu(1, "Tesla T4", 7, 5), true);
  CHECK(!old.find("supported")->as_bool());
  CHECK_EQ(old.find("compute_capability")->as_string(), std::string("7.5"));
  CHECK(contains(old.find("note")->as_string(), "7.5"));

  CHECK_EQ(gib(3ull << 29), std::string("1.50 GiB"));
}

// The CPU engine is the trainer's old code path behind an interface: two optimizer steps
// through it equal the same calls made directly, bit for bit, and download/upload round-trip.
TEST(cpu_engine_matches_the_direct_path_bitwise) {
  const std::string dir = lora_test::make_temp_dir("engine");
  lora_test::TinyModelSpec spec;
  lora_test::write_tiny_model(spec, dir);
  const Model model = load_model(dir, QuantSettings{});
  LoraSpec ls;
  ls.r = 4;
  ls.alpha = 8;
  ls.dropout = 0.1;
  ls.targets = arch_modules(model.cfg.arch);
  LoraState direct = lora_create(model, ls, 3);
  lora_test::randomise_b(direct, 5);
  LoraState through = direct;
  const Batch batch = lora_test::packed_batch(spec.vocab);
  const int64_t n = static_cast<int64_t>(direct.params.size());

  std::vector<float> m(n, 0.f), v(n, 0.f);
  Workspace ws, eval_ws;
  const std::unique_ptr<TrainEngine> engine = make_cpu_engine(model, through);
  for (int64_t step = 0; step < 2; ++step) {
    std::fill(direct.grads.begin(), direct.grads.end(), 0.f);
    const double l1 = forward_backward(model, direct, batch, {3, static_cast<uint64_t>(step), 0}, true, ws);
    scale_inplace(direct.grads.data(), n, 0.125f);
    const double s1 = sum_squares(direct.grads.data(), n);
    adamw_update(direct.params.data(), direct.grads.data(), m.data(), v.data(), n, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f,
                 step + 1);

    engine->zero_grads();
    const double l2 = engine->forward_backward(batch, {3, static_cast<uint64_t>(step), 0}, true);
    engine->scale_grads(0.125f);
    const double s2 = engine->grad_sum_squares();
    OptimizerStep o;
    o.lr = 1e-2f;
    o.weight_decay = 0.01f;
    o.step = step + 1;
    engine->optimizer_step(o);
    CHECK_EQ(l1, l2);
    CHECK_EQ(s1, s2);
  }
  CHECK(direct.params == through.params);
  CHECK_EQ(forward_loss(model, &direct, batch, eval_ws), engine->forward_loss(batch, true));
  CHECK_EQ(forward_loss(model, nullptr, batch, eval_ws), engine->forward_loss(batch, false));

  LoraState host = direct;
  std::vector<float> hm, hv;
  engine->download(host, &hm, &hv);
  CHECK(host.params == direct.params);
  CHECK(hm == m);
  CHECK(hv == v);
  // Upload replaces parameters and moments: a further step from them equals the direct one.
  std::fill(host.params.begin(), host.params.end(), 0.5f);
  std::fill(hm.begin(), hm.end(), 0.f);
  engine->upload(host, &hm, &hv);
  CHECK(through.params == host.params);
  std::vector<float> m2, v2;
  engine->download(host, &m2, &v2);
  CHECK(m2 == hm);
  CHECK_EQ(engine->device_json().find("kind")->as_string(), std::string("cpu"));
  const Json mem = engine->memory_json();
  for (const char* k : {"used", "peak", "device_used", "device_total"}) CHECK(mem.find(k)->as_int() > 0);
}

namespace {

// A run folder over the tiny model with `compute` as run.json's compute section and `train`
// as its train section; `with_eval` adds an eval shard.
std::string make_run(const std::string& tag, const std::string& compute,
                     const std::string& train = "{\"seq_len\": 16, \"max_steps\": 1, \"grad_accum\": 1, \"save_every\": 0}",
                     bool with_eval = false, const lora_test::TinyModelSpec& spec = {}) {
  const std::string run = lora_test::make_temp_dir(tag);
  make_dirs(run + "/model");
  make_dirs(run + "/data");
  lora_test::write_tiny_model(spec, run + "/model");
  std::vector<std::vector<uint32_t>> docs;
  for (uint32_t d = 0; d < 12; ++d) {
    std::vector<uint32_t> doc;
    for (uint32_t i = 0; i < 5 + d % 7; ++i) doc.push_back((d * 7 + i * 13 + 1) % static_cast<uint32_t>(spec.vocab));
    docs.push_back(doc);
  }
  write_shard(run + "/data/train.bin", lora_test::make_shard(docs, spec.vocab));
  if (with_eval)
    write_shard(run + "/data/eval.bin",
                lora_test::make_shard({{1, 5, 9, 13, 17}, {2, 6, 10, 14}, {3, 7, 11, 15, 19}}, spec.vocab));
  lora_test::write_text(run + "/run.json",
                        "{\n  \"v\": 1,\n  \"model\": \"model\",\n  \"data\": {\"train\": \"data/train.bin\"" +
                            std::string(with_eval ? ", \"eval\": \"data/eval.bin\"" : "") +
                            "},\n"
                            "  \"quant\": {\"type\": \"none\"},\n"
                            "  \"train\": " + train + ",\n"
                            "  \"compute\": " + compute + "\n}\n");
  return run;
}

std::vector<Json> read_events(const std::string& run) {
  std::vector<Json> out;
  const std::string text = lora_test::read_text(run + "/events.jsonl");
  size_t at = 0;
  while (at < text.size()) {
    const size_t nl = text.find('\n', at);
    const std::string line = text.substr(at, nl == std::string::npos ? std::string::npos : nl - at);
    at = nl == std::string::npos ? text.size() : nl + 1;
    Json j;
    JsonParseError err;
    if (!line.empty() && json_parse(line, j, err)) out.push_back(j);
  }
  return out;
}

}  // namespace

// A GPU that is not there: hello is still the first event (naming the CPU), and the error
// names compute.device with run.json's file and line, before the model is loaded.
TEST(train_with_a_missing_gpu_fails_after_hello) {
  const std::string run = make_run("nogpu", "{\"threads\": 1,\n    \"device\": \"cuda:999\"}");
  EventSink events;
  TrainProgress progress;
  try {
    run_train(run, false, events, progress);
    lora_test::record_failure(__FILE__, __LINE__, "no error");
  } catch (const InputError& e) {
    // A build without CUDA refuses any cuda:N while reading run.json.
    CHECK_EQ(e.code, std::string(cuda::compiled() ? "device" : "config_field"));
    CHECK_EQ(e.field, std::string("compute.device"));
    CHECK(contains(e.file, "/run.json"));
    CHECK_EQ(e.line, int64_t(8));
    CHECK(contains(e.what(), "cuda:999"));
  }
  const std::vector<Json> ev = read_events(run);
  CHECK_EQ(ev.size(), size_t(1));
  if (!ev.empty()) {
    CHECK_EQ(ev[0].find("type")->as_string(), std::string("hello"));
    CHECK_EQ(ev[0].find("device")->find("kind")->as_string(), std::string("cpu"));
  }
}

// "auto" trains where select_device says, names that device in hello and, on the CPU, logs
// why no GPU was used.
TEST(train_auto_device_names_it_in_hello) {
  const std::string run = make_run("auto", "{\"threads\": 1, \"device\": \"auto\", \"offload_activations\": true}");
  const DeviceChoice expect = select_device("auto", kRunJson);
  EventSink events;
  TrainProgress progress;
  CHECK_EQ(run_train(run, false, events, progress), int(kExitOk));
  const std::vector<Json> ev = read_events(run);
  CHECK(!ev.empty());
  if (ev.empty()) return;
  CHECK_EQ(ev[0].find("type")->as_string(), std::string("hello"));
  CHECK_EQ(ev[0].find("device")->find("kind")->as_string(), std::string(expect.cuda ? "cuda" : "cpu"));
  bool why_logged = false, offload_logged = false, done = false;
  for (const auto& e : ev) {
    const std::string type = e.find("type")->as_string();
    if (type == "log" && contains(e.find("message")->as_string(), "training on the CPU")) why_logged = true;
    if (type == "log" && contains(e.find("message")->as_string(), "offload_activations")) offload_logged = true;
    if (type == "done") done = e.find("status")->as_string() == "completed";
  }
  CHECK_EQ(why_logged, !expect.cuda);
  CHECK_EQ(offload_logged, !expect.cuda);
  CHECK(done);
}

// The CUDA kernels refuse head sizes that are not multiples of 8 (up to 256): supports_model
// says so and names the size; a supported size passes whenever the build has CUDA.
TEST(cuda_supports_model_names_a_refused_head_size) {
  ModelConfig c;
  c.head_dim = 12;
  std::string why;
  CHECK(!cuda::supports_model(c, &why));
  CHECK(contains(why, cuda::compiled() ? "is 12" : "without CUDA"));
  c.head_dim = 64;
  CHECK_EQ(cuda::supports_model(c, nullptr), cuda::compiled());
  c.head_dim = 264;
  CHECK(!cuda::supports_model(c, nullptr));
}

// ---- On a GPU (skipped elsewhere): the trainer drives the CUDA engine end to end. ----

namespace {

// Field accessors that record a failure instead of crashing when a field is missing.
std::string str_at(const Json& j, const std::string& key) {
  const Json* v = j.is_object() ? j.find(key) : nullptr;
  if (v && v->is_string()) return v->as_string();
  lora_test::record_failure(__FILE__, __LINE__, "no string field " + key + " in " + j.dump());
  return {};
}
double num_at(const Json& j, const std::string& key) {
  const Json* v = j.is_object() ? j.find(key) : nullptr;
  if (v && v->is_number()) return v->as_number();
  lora_test::record_failure(__FILE__, __LINE__, "no number field " + key + " in " + j.dump());
  return -1;
}
const Json& obj_at(const Json& j, const std::string& key) {
  static const Json empty = Json::object();
  const Json* v = j.is_object() ? j.find(key) : nullptr;
  if (v && v->is_object()) return *v;
  lora_test::record_failure(__FILE__, __LINE__, "no object field " + key + " in " + j.dump());
  return empty;
}

bool gpu_or_skip() {
  const DeviceChoice c = select_device("auto", {});
  if (!c.cuda) lora_test::skip(c.why_cpu + ": the GPU end-to-end tests need a GPU of compute capability 8.0+");
  return c.cuda;
}

std::vector<double> step_losses(const std::vector<Json>& ev) {
  std::vector<double> out;
  for (const auto& e : ev)
    if (str_at(e, "type") == "step") out.push_back(num_at(e, "loss"));
  return out;
}

const Json* last_of(const std::vector<Json>& ev, const std::string& type) {
  const Json* found = nullptr;
  for (const auto& e : ev)
    if (str_at(e, "type") == type) found = &e;
  return found;
}

int run_quietly(const std::string& run, bool resume) {
  EventSink events;
  TrainProgress progress;
  return run_train(run, resume, events, progress);
}

}  // namespace

// "auto" means "the GPU when it can train this model": a head size the kernels refuse (12)
// trains on the CPU, hello names the CPU, and a log line says why.
TEST(gpu_auto_trains_a_refused_model_on_the_cpu) {
  if (!gpu_or_skip()) return;
  lora_test::TinyModelSpec spec;
  spec.hidden = 48;  // 4 heads of 12
  spec.intermediate = 64;
  const std::string run = make_run("auto-odd-head", "{\"threads\": 1, \"device\": \"auto\"}",
                                   "{\"seq_len\": 16, \"max_steps\": 1, \"grad_accum\": 1, \"save_every\": 0}",
                                   false, spec);
  CHECK_EQ(run_quietly(run, false), int(kExitOk));
  const std::vector<Json> ev = read_events(run);
  CHECK(!ev.empty());
  if (ev.empty()) return;
  CHECK_EQ(str_at(obj_at(ev[0], "device"), "kind"), std::string("cpu"));
  bool why_logged = false;
  for (const auto& e : ev)
    if (str_at(e, "type") == "log" && contains(str_at(e, "message"), "multiple of 8")) why_logged = true;
  CHECK(why_logged);
  const Json* done = last_of(ev, "done");
  CHECK(done && str_at(*done, "status") == "completed");
}

// The same 6 steps on the GPU and on the CPU: this checks the trainer's use of the CUDA
// engine (step loop, clipping, schedule, eval, checkpoint and adapter downloads); the
// kernels' gradients are checked op by op in tests/cuda. The GPU multiplies bf16-rounded
// inputs (unit roundoff 2^-8 per operand) with fp32 accumulation over K <= 48 terms of size
// ~0.2, so a logit moves by ~1e-2 on this model and the mean token loss (ln 64 = 4.16 at the
// start) by about as much; AdamW's normalised updates keep the trajectories that close over
// 6 steps. 0.05 absolute leaves headroom for that and is still far below what a lost update,
// a missing micro-batch or a wrong loss normalisation (a factor 2 on the gradient's scale
// before clipping, a step of the schedule off) does to these losses.
TEST(gpu_training_run_matches_the_cpu_run) {
  if (!gpu_or_skip()) return;
  const std::string train =
      "{\"seq_len\": 16, \"micro_batch\": 2, \"grad_accum\": 2, \"max_steps\": 6, \"lr\": 1e-2, \"warmup_steps\": 0, "
      "\"eval_every\": 3, \"save_every\": 3}";
  const std::string gpu_run = make_run("gpurun", "{\"device\": \"cuda:0\", \"dtype\": \"fp16\"}", train, true);
  const std::string cpu_run = make_run("cpurun", "{\"device\": \"cpu\", \"threads\": 1}", train, true);
  CHECK_EQ(run_quietly(gpu_run, false), int(kExitOk));
  CHECK_EQ(run_quietly(cpu_run, false), int(kExitOk));
  const std::vector<Json> g = read_events(gpu_run), c = read_events(cpu_run);
  CHECK(!g.empty());
  if (g.empty()) return;
  const Json& dev = obj_at(g[0], "device");
  CHECK_EQ(str_at(dev, "kind"), std::string("cuda"));
  CHECK_EQ(num_at(dev, "index"), 0.0);
  CHECK(str_at(dev, "compute_capability").size() >= 3);
  bool gemm_logged = false, dtype_logged = false;
  for (const auto& e : g) {
    if (str_at(e, "type") != "log") continue;
    const std::string m = str_at(e, "message");
    gemm_logged = gemm_logged || (contains(m, "training on cuda:0") && contains(m, "GEMM"));
    dtype_logged = dtype_logged || (contains(m, "compute.dtype fp16") && contains(m, "bf16"));
  }
  CHECK(gemm_logged);
  CHECK(dtype_logged);
  const std::vector<double> lg = step_losses(g), lc = step_losses(c);
  CHECK_EQ(lg.size(), size_t(6));
  CHECK_EQ(lc.size(), size_t(6));
  for (size_t i = 0; i < lg.size() && i < lc.size(); ++i) CHECK_NEAR(lg[i], lc[i], 0.05, 0.0);
  // The run must have trained, or the comparison says nothing.
  if (lc.size() == 6) CHECK(lc[5] < lc[0] - 0.1);
  // step.mem on a GPU: the caching allocator's figures and the whole GPU's.
  const Json* step = last_of(g, "step");
  if (step) {
    const Json& mem = obj_at(*step, "mem");
    CHECK(num_at(mem, "used") > 0);
    CHECK(num_at(mem, "peak") >= num_at(mem, "used"));
    CHECK(num_at(mem, "device_total") >= num_at(mem, "device_used"));
    CHECK(num_at(mem, "device_total") > double(1ull << 30));
  }
  const Json* ge = last_of(g, "eval");
  const Json* ce = last_of(c, "eval");
  CHECK(ge && ce);
  if (ge && ce) CHECK_NEAR(num_at(*ge, "loss"), num_at(*ce, "loss"), 0.05, 0.0);
  const Json* gdone = last_of(g, "done");
  CHECK(gdone && str_at(*gdone, "status") == "completed");

  // The adapter the GPU run wrote (downloaded from the device) scores on the CPU as the
  // run's last eval said.
  EvalOptions o;
  o.model = gpu_run + "/model";
  o.adapter = gpu_run + "/adapter";
  o.data = gpu_run + "/data/eval.bin";
  o.seq_len = 16;
  o.device = "cpu";
  const EvalResult cpu_eval = run_eval(o);
  if (ge) CHECK_NEAR(cpu_eval.loss, num_at(*ge, "loss"), 0.05, 0.0);
  o.device = "cuda:0";
  const EvalResult gpu_eval = run_eval(o);
  CHECK_EQ(gpu_eval.tokens, cpu_eval.tokens);
  CHECK_NEAR(gpu_eval.loss, cpu_eval.loss, 0.05, 0.0);
}

// A resume uploads the checkpoint's parameters and AdamW moments: step 4 after resuming from
// step 2 equals step 4 of the uninterrupted run. Lost moments would make step 3's update a
// fresh AdamW step (|update| = lr per element), which moves step 4's loss by far more than
// the bound; the bound itself allows for non-deterministic reduction order on the GPU.
TEST(gpu_resume_restores_parameters_and_moments) {
  if (!gpu_or_skip()) return;
  const std::string train =
      "{\"seq_len\": 16, \"micro_batch\": 2, \"grad_accum\": 1, \"max_steps\": 4, \"lr\": 2e-2, \"warmup_steps\": 0, "
      "\"save_every\": 2}";
  const std::string run = make_run("gpuresume", "{\"device\": \"cuda:0\"}", train);
  CHECK_EQ(run_quietly(run, false), int(kExitOk));
  const std::vector<double> first = step_losses(read_events(run));
  CHECK_EQ(first.size(), size_t(4));
  remove_tree(run + "/checkpoints/step-4");
  remove_tree(run + "/adapter");
  std::remove((run + "/events.jsonl").c_str());
  CHECK_EQ(run_quietly(run, true), int(kExitOk));
  const std::vector<double> resumed = step_losses(read_events(run));
  CHECK_EQ(resumed.size(), size_t(2));
  if (first.size() == 4 && resumed.size() == 2) {
    CHECK_NEAR(resumed[0], first[2], 1e-4, 1e-4);
    CHECK_NEAR(resumed[1], first[3], 1e-4, 1e-4);
  }
}

// Early stopping on a GPU keeps the best eval's parameters (downloaded when it was best).
TEST(gpu_early_stopping_reports_the_best_step) {
  if (!gpu_or_skip()) return;
  const std::string train =
      "{\"seq_len\": 16, \"micro_batch\": 2, \"grad_accum\": 1, \"max_steps\": 40, \"lr\": 0.5, \"warmup_steps\": 0, "
      "\"max_grad_norm\": 0, \"eval_every\": 2, \"save_every\": 0, \"early_stopping_patience\": 2}";
  const std::string run = make_run("gpuearly", "{\"device\": \"cuda:0\"}", train, true);
  const int code = [&] {
    try {
      return run_quietly(run, false);
    } catch (const InputError& e) {
      // lr 0.5 may also diverge before early stopping triggers; that path is tested on the CPU.
      CHECK_EQ(e.code, std::string("diverged"));
      return -1;
    }
  }();
  if (code != int(kExitOk)) return;
  const std::vector<Json> ev = read_events(run);
  const Json* done = last_of(ev, "done");
  CHECK(done != nullptr);
  if (!done || !done->has("best_step")) return;
  double best = 1e30;
  int64_t best_step = -1;
  for (const auto& e : ev)
    if (str_at(e, "type") == "eval" && num_at(e, "loss") < best) {
      best = num_at(e, "loss");
      best_step = static_cast<int64_t>(num_at(e, "step"));
    }
  CHECK_EQ(static_cast<int64_t>(num_at(*done, "best_step")), best_step);
  EvalOptions o;
  o.model = run + "/model";
  o.adapter = run + "/adapter";
  o.data = run + "/data/eval.bin";
  o.seq_len = 16;
  o.micro_batch = 2;
  o.device = "cuda:0";
  CHECK_NEAR(run_eval(o).loss, best, 1e-3, 1e-3);
}

// A run that cannot fit on the GPU is refused before the model is uploaded: exit 3's error
// with the estimate in bytes_needed and need vs free in the message. 128 rows of 16384
// tokens (2M) through a 4-layer, hidden-1024 model without checkpointing keep hundreds of GB
// of activations (over 100 KB per token per layer), more than any single GPU has.
TEST(gpu_memory_estimate_refuses_a_run_that_cannot_fit) {
  if (!gpu_or_skip()) return;
  const std::string run = lora_test::make_temp_dir("gpuoom");
  make_dirs(run + "/model");
  make_dirs(run + "/data");
  lora_test::TinyModelSpec spec;
  spec.layers = 4;
  spec.hidden = 1024;
  spec.intermediate = 4096;
  spec.heads = 8;
  spec.kv_heads = 8;
  lora_test::write_tiny_model(spec, run + "/model");
  std::vector<std::vector<uint32_t>> docs(128, std::vector<uint32_t>(16384));
  for (size_t d = 0; d < docs.size(); ++d)
    for (size_t i = 0; i < docs[d].size(); ++i) docs[d][i] = static_cast<uint32_t>((d + i * 7) % spec.vocab);
  write_shard(run + "/data/train.bin", lora_test::make_shard(docs, spec.vocab));
  lora_test::write_text(run + "/run.json",
                        "{\"v\": 1, \"model\": \"model\", \"data\": {\"train\": \"data/train.bin\"},\n"
                        " \"quant\": {\"type\": \"none\"},\n"
                        " \"train\": {\"seq_len\": 16384, \"micro_batch\": 128, \"grad_accum\": 1, \"max_steps\": 1,\n"
                        "           \"grad_checkpointing\": false, \"save_every\": 0},\n"
                        " \"compute\": {\"device\": \"cuda:0\"}}\n");
  try {
    run_quietly(run, false);
    lora_test::record_failure(__FILE__, __LINE__, "no OutOfMemoryError");
  } catch (const OutOfMemoryError& e) {
    CHECK(e.bytes_needed > select_device("cuda:0", {}).gpu.memory_free);
    CHECK(contains(e.what(), "GiB of GPU memory on cuda:0"));
    CHECK(contains(e.what(), "are free"));
    CHECK(contains(e.hint, "offload_activations"));
    CHECK(contains(e.hint, "grad_checkpointing"));
  }
  // Nothing was trained, so nothing was written.
  CHECK(!is_dir(run + "/checkpoints/step-1"));
  CHECK(!is_dir(run + "/adapter"));
}
