#pragma once
// Runtime events (DESIGN.md "Events"): one JSON object a line on stdout and appended to
// RUN_DIR/events.jsonl, flushed per line, with "v": 1 and the event kind in "type".
// Thread-safe: the control thread logs through the same sink as the trainer.
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

#include "common/json.hpp"
#include "cuda/cuda.hpp"

namespace lora {

class EventSink {
 public:
  EventSink() = default;
  ~EventSink();
  EventSink(const EventSink&) = delete;
  EventSink& operator=(const EventSink&) = delete;

  // Starts appending to `path` as well as stdout. Throws InputError (code "write_failed")
  // when the file cannot be opened for appending.
  void open_file(const std::string& path);
  bool has_file() const { return file_ != nullptr; }

  // Emits {"v":1,"type":type, ...fields}. Write errors on the file raise nothing here (a
  // full disk is detected by the checkpoint writer, which fails the run cleanly).
  void emit(const std::string& type, const Json& fields);
  void log(const std::string& level, const std::string& message);

 private:
  std::mutex mu_;
  std::FILE* file_ = nullptr;
};

// Memory of this process and of the system, for step events (bytes).
struct MemoryInfo {
  uint64_t rss = 0, peak = 0;          // VmRSS, VmHWM of /proc/self/status
  uint64_t system_total = 0, system_used = 0;  // MemTotal, MemTotal - MemAvailable
};
MemoryInfo read_memory_info();
std::string cpu_name();

// The `device` of the hello event. CPU: {kind:"cpu", name, memory_total}. GPU: {kind:"cuda",
// index, name, compute_capability ("9.0"), memory_total}; with `inventory` (the `devices`
// command) also multiprocessors, memory_free, supported and, when unsupported, note.
Json cpu_device_json();
Json cuda_device_json(const cuda::DeviceInfo& d, bool inventory = false);
std::string compute_capability(const cuda::DeviceInfo& d);
// "12.34 GiB", for messages about memory.
std::string gib(uint64_t bytes);

}  // namespace lora
