// Checkpoints: round trip, newest complete one wins, torn/temp folders ignored, config
// changes refused.
#include <cstdio>

#include "common/errors.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"
#include "model_fixture.hpp"
#include "test.hpp"
#include "train/checkpoint.hpp"
#include "train/files.hpp"

using namespace lora;

namespace {
struct Fx {
  std::string run;
  Model model;
  LoraState lora;
  TrainState st;
  Fx() {
    run = lora_test::make_temp_dir("ckpt");
    const std::string md = run + "/model";
    make_dirs(md);
    lora_test::write_tiny_model(lora_test::TinyModelSpec{}, md);
    model = load_model(md, QuantSettings{});
    LoraSpec s;
    s.r = 2;
    s.targets = {kQProj, kOProj};
    lora = lora_create(model, s, 5);
    st.m.assign(lora.params.size(), 0.25f);
    st.v.assign(lora.params.size(), 0.5f);
  }
};
}  // namespace

TEST(checkpoint_round_trip_and_latest) {
  Fx f;
  f.st.step = 3;
  f.st.epoch = 1;
  f.st.position = 1;
  f.st.tokens_seen = 999;
  f.st.has_best = true;
  f.st.best_loss = 1.25;
  f.st.best_step = 2;
  f.st.evals_since_best = 1;
  f.st.best_params = f.lora.params;
  f.st.best_params[0] = 9.f;
  const std::string p3 = write_checkpoint(f.run, f.lora, f.st, 1234, "/m");
  CHECK_EQ(p3, f.run + "/checkpoints/step-3");
  CHECK(path_exists(p3 + "/adapter_model.safetensors"));
  CHECK(path_exists(p3 + "/adapter_config.json"));
  f.lora.params[1] = 7.f;
  f.st.step = 10;
  write_checkpoint(f.run, f.lora, f.st, 1234, "/m");
  // A leftover temp folder and a corrupted newer checkpoint are ignored.
  make_dirs(f.run + "/checkpoints/.tmp-step-20");
  make_dirs(f.run + "/checkpoints/step-15");
  lora_test::write_text(f.run + "/checkpoints/step-15/state.bin", "LSCK garbage");
  std::vector<std::string> skipped;
  const std::string latest = find_latest_checkpoint(f.run, &skipped);
  CHECK_EQ(latest, f.run + "/checkpoints/step-10");
  CHECK_EQ(skipped.size(), size_t(1));

  LoraState back = lora_create(f.model, f.lora.spec, 99);
  TrainState st;
  read_checkpoint(latest, back, st, 1234, "/r/run.json");
  CHECK(back.params == f.lora.params);
  CHECK_EQ(st.step, uint64_t(10));
  CHECK_EQ(st.tokens_seen, uint64_t(999));
  CHECK(st.m == f.st.m);
  CHECK(st.v == f.st.v);
  CHECK(st.has_best);
  CHECK_EQ(st.best_loss, 1.25);
  CHECK(st.best_params == f.st.best_params);
  CHECK_INPUT_ERROR(read_checkpoint(latest, back, st, 4321, "/r/run.json"), "resume_config_changed");
}

TEST(checkpoint_corruption_is_detected) {
  Fx f;
  f.st.step = 1;
  const std::string p = write_checkpoint(f.run, f.lora, f.st, 1, "/m");
  std::string bytes = lora_test::read_text(p + "/state.bin");
  bytes[40] ^= 0x10;
  lora_test::write_text(p + "/state.bin", bytes);
  CHECK_EQ(find_latest_checkpoint(f.run), std::string());
  LoraState back = f.lora;
  TrainState st;
  CHECK_INPUT_ERROR(read_checkpoint(p, back, st, 1, "/r/run.json"), "checkpoint_invalid");
}

TEST(checkpoint_write_failure_leaves_nothing) {
  Fx f;
  // checkpoints/ is a file: nothing can be created under it.
  lora_test::write_text(f.run + "/checkpoints", "not a folder");
  f.st.step = 2;
  CHECK_INPUT_ERROR(write_checkpoint(f.run, f.lora, f.st, 1, "/m"), "write_failed");
  CHECK(!is_dir(f.run + "/checkpoints"));
}
