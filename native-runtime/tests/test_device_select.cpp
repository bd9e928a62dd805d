// Device selection (compute.device, eval's --device), the `devices`/hello device JSON, and
// the CPU TrainEngine. Everything here runs without a GPU: choose_device takes the GPU list
// as an argument, and the tests that ask this machine's driver accept either answer.
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

// A run folder over the tiny model with `compute` as run.json's compute section.
std::string make_run(const std::string& tag, const std::string& compute) {
  const std::string run = lora_test::make_temp_dir(tag);
  make_dirs(run + "/model");
  make_dirs(run + "/data");
  lora_test::TinyModelSpec spec;
  lora_test::write_tiny_model(spec, run + "/model");
  write_shard(run + "/data/train.bin",
              lora_test::make_shard({{1, 5, 9, 13, 17}, {2, 6, 10, 14}, {3, 7, 11, 15, 19}}, spec.vocab));
  lora_test::write_text(run + "/run.json",
                        "{\n  \"v\": 1,\n  \"model\": \"model\",\n  \"data\": {\"train\": \"data/train.bin\"},\n"
                        "  \"quant\": {\"type\": \"none\"},\n"
                        "  \"train\": {\"seq_len\": 16, \"max_steps\": 1, \"grad_accum\": 1, \"save_every\": 0},\n"
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
