#include "train/checkpoint.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/errors.hpp"
#include "train/adapter.hpp"
#include "train/files.hpp"

namespace lora {

namespace {

constexpr char kMagic[4] = {'L', 'S', 'C', 'K'};
constexpr uint32_t kVersion = 1;

uint64_t fnv1a(const char* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 1099511628211ull;
  return h;
}

class Writer {
 public:
  template <class T>
  void put(const T& v) { buf_.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void floats(const std::vector<float>& v) { buf_.append(reinterpret_cast<const char*>(v.data()), v.size() * 4); }
  void raw(const char* p, size_t n) { buf_.append(p, n); }
  std::string& bytes() { return buf_; }

 private:
  std::string buf_;
};

class Reader {
 public:
  Reader(const std::string& b, std::string file) : b_(b), file_(std::move(file)) {}
  template <class T>
  T get() {
    T v;
    need(sizeof v);
    std::memcpy(&v, b_.data() + at_, sizeof v);
    at_ += sizeof v;
    return v;
  }
  void floats(std::vector<float>& v, uint64_t n) {
    need(n * 4);
    v.resize(n);
    std::memcpy(v.data(), b_.data() + at_, n * 4);
    at_ += n * 4;
  }
  size_t at() const { return at_; }

 private:
  void need(uint64_t n) {
    if (n > b_.size() - at_)
      throw InputError("checkpoint_invalid", "state.bin is truncated: " + file_, file_, "", 0,
                       "the checkpoint is damaged; delete this step-N folder to resume from an older one.");
  }
  const std::string& b_;
  std::string file_;
  size_t at_ = 0;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool parse_step_name(const std::string& name, uint64_t& step) {
  if (name.rfind("step-", 0) != 0 || name.size() == 5 || name.size() > 25) return false;
  for (size_t i = 5; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return false;
  step = std::stoull(name.substr(5));
  return true;
}

// Validates header and checksum only.
bool state_file_ok(const std::string& path, std::string& why) {
  const std::string b = slurp(path);
  if (b.size() < 4 + 4 + 8) return why = "state.bin missing or truncated", false;
  if (std::memcmp(b.data(), kMagic, 4) != 0) return why = "state.bin has a wrong magic", false;
  uint32_t version;
  std::memcpy(&version, b.data() + 4, 4);
  if (version != kVersion) return why = "state.bin has version " + std::to_string(version), false;
  uint64_t sum;
  std::memcpy(&sum, b.data() + b.size() - 8, 8);
  if (fnv1a(b.data(), b.size() - 8) != sum) return why = "state.bin checksum mismatch (torn write?)", false;
  return true;
}

}  // namespace

std::string write_checkpoint(const std::string& run_dir, const LoraState& lora, const TrainState& s,
                             uint64_t config_hash, const std::string& base_model) {
  const std::string root = run_dir + "/checkpoints";
  const std::string name = "step-" + std::to_string(s.step);
  const std::string final_dir = root + "/" + name;
  const std::string tmp_dir = root + "/.tmp-" + name;
  make_dirs(root);
  remove_tree(tmp_dir);
  try {
    make_dirs(tmp_dir);
    write_adapter(tmp_dir, lora, base_model);
    Writer w;
    w.raw(kMagic, 4);
    w.put(kVersion);
    w.put(config_hash);
    w.put(s.step);
    w.put(s.epoch);
    w.put(s.position);
    w.put(s.tokens_seen);
    w.put(s.elapsed_s);
    w.put(static_cast<uint64_t>(lora.params.size()));
    w.floats(lora.params);
    w.floats(s.m);
    w.floats(s.v);
    w.put(static_cast<uint8_t>(s.has_best));
    w.put(s.best_loss);
    w.put(s.best_step);
    w.put(s.evals_since_best);
    if (s.has_best) w.floats(s.best_params);
    const uint64_t sum = fnv1a(w.bytes().data(), w.bytes().size());
    w.put(sum);
    write_file_atomic(tmp_dir + "/state.bin", w.bytes());
    fsync_dir(tmp_dir);
    // A checkpoint of the same step (an explicit request right after a periodic save)
    // replaces the old one; both hold the same state.
    if (path_exists(final_dir) && !remove_tree(final_dir))
      throw InputError("write_failed", "cannot replace " + final_dir, final_dir, "", 0,
                       "check the run folder's permissions.");
    if (std::rename(tmp_dir.c_str(), final_dir.c_str()) != 0)
      throw InputError("write_failed", "cannot rename " + tmp_dir + " to " + final_dir + ": " + std::strerror(errno),
                       final_dir, "", 0, "check the run folder's permissions and free disk space.");
    fsync_dir(root);
  } catch (...) {
    remove_tree(tmp_dir);
    throw;
  }
  return final_dir;
}

std::string find_latest_checkpoint(const std::string& run_dir, std::vector<std::string>* skipped) {
  const std::string root = run_dir + "/checkpoints";
  std::vector<std::pair<uint64_t, std::string>> found;
  for (const auto& name : list_dir(root)) {
    uint64_t step;
    if (parse_step_name(name, step) && is_dir(root + "/" + name)) found.push_back({step, name});
  }
  std::sort(found.rbegin(), found.rend());
  for (const auto& [step, name] : found) {
    const std::string dir = root + "/" + name;
    std::string why;
    if (state_file_ok(dir + "/state.bin", why) && path_exists(dir + "/adapter_model.safetensors")) return dir;
    if (skipped) skipped->push_back(dir + ": " + (why.empty() ? "adapter_model.safetensors missing" : why));
  }
  return {};
}

void read_checkpoint(const std::string& dir, LoraState& lora, TrainState& s, uint64_t config_hash,
                     const std::string& run_file) {
  const std::string path = dir + "/state.bin";
  std::string why;
  if (!state_file_ok(path, why))
    throw InputError("checkpoint_invalid", why + ": " + path, path, "", 0,
                     "delete this step-N folder to resume from an older checkpoint.");
  const std::string b = slurp(path);
  Reader r(b, path);
  r.get<uint32_t>();
  r.get<uint32_t>();
  const uint64_t hash = r.get<uint64_t>();
  if (hash != config_hash)
    throw InputError("resume_config_changed",
                     "run.json's training settings changed since checkpoint " + dir + " was written", run_file, "", 0,
                     "restore the original run.json to resume, or start a new run (without --resume).");
  s.step = r.get<uint64_t>();
  s.epoch = r.get<uint64_t>();
  s.position = r.get<uint64_t>();
  s.tokens_seen = r.get<uint64_t>();
  s.elapsed_s = r.get<double>();
  const uint64_t n = r.get<uint64_t>();
  if (n != lora.params.size())
    throw InputError("checkpoint_invalid",
                     "state.bin holds " + std::to_string(n) + " parameters, the run needs " + std::to_string(lora.params.size()),
                     path, "", 0, "the checkpoint belongs to another configuration; start a new run.");
  r.floats(lora.params, n);
  r.floats(s.m, n);
  r.floats(s.v, n);
  s.has_best = r.get<uint8_t>() != 0;
  s.best_loss = r.get<double>();
  s.best_step = r.get<uint64_t>();
  s.evals_since_best = r.get<uint64_t>();
  if (s.has_best) r.floats(s.best_params, n);
}

}  // namespace lora
