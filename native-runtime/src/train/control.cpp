#include "train/control.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <string>

#include "common/json.hpp"

namespace lora {

namespace {
volatile std::sig_atomic_t g_signal = 0;
// The first SIGINT/SIGTERM asks for a graceful stop; a second one (an impatient Ctrl-C)
// exits at once, as shells users expect.
extern "C" void on_stop_signal(int sig) {
  if (g_signal != 0) _exit(128 + sig);
  g_signal = sig;
}
}  // namespace

Control::~Control() { finish(); }

void Control::start() {
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  reader_ = std::thread([this] { read_loop(); });
}

void Control::finish() {
  quit_ = true;
  if (reader_.joinable()) reader_.join();
}

bool Control::stop_requested() const { return stop_ || g_signal != 0; }

const char* Control::stop_source() const {
  if (g_signal == SIGINT) return "SIGINT";
  if (g_signal == SIGTERM) return "SIGTERM";
  return stop_ ? "stdin" : "";
}

void Control::read_loop() {
  std::string pending;
  char buf[4096];
  while (!quit_) {
    pollfd p = {STDIN_FILENO, POLLIN, 0};
    const int r = ::poll(&p, 1, 100);
    if (r < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (r == 0) continue;
    if (p.revents & POLLNVAL) return;
    const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // EOF: nobody will send commands any more; keep training
    pending.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      handle_line(pending.substr(0, nl));
      pending.erase(0, nl + 1);
    }
    if (pending.size() > (1 << 16)) pending.clear();
  }
}

void Control::handle_line(const std::string& raw) {
  std::string line = raw;
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  if (line.empty()) return;
  Json msg;
  JsonParseError err;
  const Json* cmd = nullptr;
  if (json_parse(line, msg, err) && msg.is_object()) cmd = msg.find("cmd");
  if (cmd && cmd->is_string() && cmd->as_string() == "stop") {
    stop_ = true;
    events_.log("info", "stop requested: finishing the current step, then checkpoint and exit");
  } else if (cmd && cmd->is_string() && cmd->as_string() == "checkpoint") {
    checkpoint_ = true;
    events_.log("info", "checkpoint requested: writing it after the current step");
  } else {
    events_.log("warning", "ignored control line (expected {\"cmd\":\"stop\"} or {\"cmd\":\"checkpoint\"}): " +
                               line.substr(0, 200));
  }
}

}  // namespace lora
