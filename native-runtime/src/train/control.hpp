#pragma once
// Run control while training: stdin lines {"cmd":"stop"} / {"cmd":"checkpoint"}, and
// SIGINT/SIGTERM as a graceful stop. End of stdin is not a stop request: the extension may
// close the pipe, and a run started from a shell with </dev/null must still train.
#include <atomic>
#include <thread>

#include "train/events.hpp"

namespace lora {

class Control {
 public:
  explicit Control(EventSink& events) : events_(events) {}
  ~Control();
  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;

  // Installs the signal handlers and starts the stdin reader thread.
  void start();
  // Joins the reader thread (it polls, so this returns within ~100 ms).
  void finish();

  bool stop_requested() const;
  // True once per {"cmd":"checkpoint"} received.
  bool take_checkpoint_request() { return checkpoint_.exchange(false); }
  // "stdin", "SIGINT", "SIGTERM" or "" when no stop was requested.
  const char* stop_source() const;

 private:
  void read_loop();
  void handle_line(const std::string& line);

  EventSink& events_;
  std::thread reader_;
  std::atomic<bool> quit_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> checkpoint_{false};
};

}  // namespace lora
