#include "formats/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/errors.hpp"

namespace lora {

std::string write_failure_hint(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT: return "the disk is full: free some space (or choose a folder on another disk) and retry";
    case EACCES:
    case EPERM:
    case EROFS: return "the folder is not writable: check its permissions or choose another folder";
    case ENOENT:
    case ENOTDIR: return "the folder does not exist: create it or choose another folder";
    default: return "check that the folder exists, is writable and has free space";
  }
}

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    int e = errno;
    throw InputError("write_failed", "cannot create " + tmp_ + ": " + std::strerror(e), path_, "", 0,
                     write_failure_hint(e));
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFileWriter::fail(int err, const std::string& action) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  throw InputError("write_failed", "cannot " + action + " " + path_ + ": " + std::strerror(err), path_, "", 0,
                   write_failure_hint(err));
}

void AtomicFileWriter::write(const void* data, size_t n) {
  if (fd_ < 0) fail(EBADF, "write");
  const auto* p = static_cast<const unsigned char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(errno, "write");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) fail(EBADF, "write");
  // Without the fsync a crash after rename can leave a complete name over empty data.
  if (::fsync(fd_) != 0) fail(errno, "flush");
  int fd = fd_;
  fd_ = -1;
  // close() reports delayed write errors (e.g. on network file systems).
  if (::close(fd) != 0) fail(errno, "write");
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(errno, "rename into place");
  committed_ = true;
  // Persist the directory entry too; failure here is harmless for correctness.
  std::string dir = ".";
  size_t slash = path_.find_last_of('/');
  if (slash != std::string::npos) dir = slash == 0 ? "/" : path_.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace lora
