#include "train/events.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/errors.hpp"

namespace lora {

EventSink::~EventSink() {
  if (file_) std::fclose(file_);
}

void EventSink::open_file(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (!f) {
    throw InputError("write_failed", "cannot append to " + path + ": " + std::strerror(errno), path, "", 0,
                     "the run folder must be writable: check its permissions and free disk space.");
  }
  file_ = f;
}

void EventSink::emit(const std::string& type, const Json& fields) {
  Json e = Json::object();
  e.set("v", 1);
  e.set("type", type);
  if (fields.is_object())
    for (const auto& [k, v] : fields.members()) e.set(k, v);
  const std::string line = e.dump() + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
  if (file_) {
    std::fwrite(line.data(), 1, line.size(), file_);
    std::fflush(file_);
  }
}

void EventSink::log(const std::string& level, const std::string& message) {
  Json f = Json::object();
  f.set("level", level);
  f.set("message", message);
  emit("log", f);
}

namespace {
uint64_t kb_field(const std::string& text, const std::string& key) {
  const size_t at = text.find(key);
  if (at == std::string::npos) return 0;
  return std::strtoull(text.c_str() + at + key.size(), nullptr, 10) * 1024ull;
}
std::string slurp(const char* path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

MemoryInfo read_memory_info() {
  MemoryInfo m;
  const std::string self = slurp("/proc/self/status");
  m.rss = kb_field(self, "VmRSS:");
  m.peak = kb_field(self, "VmHWM:");
  const std::string mem = slurp("/proc/meminfo");
  m.system_total = kb_field(mem, "MemTotal:");
  const uint64_t avail = kb_field(mem, "MemAvailable:");
  m.system_used = m.system_total > avail ? m.system_total - avail : 0;
  return m;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t b = line.find_first_not_of(" \t", colon + 1);
        return b == std::string::npos ? "cpu" : line.substr(b);
      }
    }
  }
  return "cpu";
}

Json cpu_device_json() {
  Json d = Json::object();
  d.set("kind", "cpu");
  d.set("name", cpu_name());
  d.set("memory_total", read_memory_info().system_total);
  return d;
}

std::string compute_capability(const cuda::DeviceInfo& d) {
  return std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor);
}

Json cuda_device_json(const cuda::DeviceInfo& g, bool inventory) {
  Json d = Json::object();
  d.set("kind", "cuda");
  d.set("index", g.index);
  d.set("name", g.name);
  d.set("compute_capability", compute_capability(g));
  if (inventory) d.set("multiprocessors", g.multiprocessors);
  d.set("memory_total", g.memory_total);
  if (inventory) {
    d.set("memory_free", g.memory_free);
    d.set("supported", g.supported);
    if (!g.note.empty()) d.set("note", g.note);
  }
  return d;
}

std::string gib(uint64_t bytes) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / double(1ull << 30));
  return buf;
}

}  // namespace lora
