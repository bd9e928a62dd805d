#pragma once
// Crash-safe file writing: data goes to PATH.tmp, which is fsynced and renamed over PATH,
// so readers see either the old file or the complete new one, never a torn write.
#include <cstddef>
#include <string>

namespace lora {

class AtomicFileWriter {
 public:
  // Creates PATH.tmp. Throws InputError code "write_failed" (file = path, hint about disk
  // space or permissions) on this and every later failure.
  explicit AtomicFileWriter(std::string path);
  // Removes PATH.tmp when commit() was not reached (an exception unwound past the writer).
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  // fsync, close, rename to PATH, fsync the folder.
  void commit();

  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void fail(int err, const std::string& action);
  std::string path_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// The hint for a failed write with errno `err` (full disk, permissions, missing folder).
std::string write_failure_hint(int err);

}  // namespace lora
