#include "common/threadpool.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LORA_CPU_RELAX() _mm_pause()
#else
#define LORA_CPU_RELAX() std::this_thread::yield()
#endif

namespace lora {

namespace {

// The chunk index the current thread is running (0 outside parallel_for). A nested
// parallel_for runs serially and reports this index, so per-chunk scratch stays private.
thread_local int t_chunk_index = 0;
thread_local bool t_inside_parallel = false;

// Spinning briefly before sleeping keeps the hand-off cheap for the many back-to-back
// parallel_for calls of a training step (one per GEMM), without burning a core while idle.
constexpr int kSpinIterations = 4000;

// One parallel_for call. Chunks are fixed ranges of [0, n); which thread runs a chunk is
// decided at run time by claiming the next index. So when a worker has not been scheduled
// yet (a busy machine), the caller runs its chunk instead of waiting for it: the
// partitioning, and therefore every result, is unchanged. Late workers hold the job by
// shared_ptr and find nothing left to claim.
struct Job {
  const std::function<void(int64_t, int64_t, int)>* fn = nullptr;
  int64_t n = 0;
  int chunks = 0;
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::mutex error_mutex;
  std::exception_ptr error;
};

class ThreadPool {
 public:
  ~ThreadPool() { stop_workers(); }

  void set_size(int n) {
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::lock_guard<std::mutex> dispatch(dispatch_mutex_);
    if (n == size_.load(std::memory_order_acquire)) return;
    stop_workers();
    size_.store(n, std::memory_order_release);
  }

  // Inside a parallel region a nested parallel_for runs inline, so its width is 1. The read
  // is lock-free: the dispatching thread holds dispatch_mutex_ for the whole job, so taking
  // it here (a GEMM inside an attention work item asks for num_threads()) would deadlock.
  int size() const {
    if (t_inside_parallel) return 1;
    return size_.load(std::memory_order_acquire);
  }

  void run(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
    if (n <= 0) return;
    if (t_inside_parallel) {
      fn(0, n, t_chunk_index);
      return;
    }
    // Independent threads calling parallel_for at once take turns.
    std::lock_guard<std::mutex> dispatch(dispatch_mutex_);
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->chunks = static_cast<int>(std::min<int64_t>(size_.load(std::memory_order_acquire), n));
    if (job->chunks > 1) {
      start_workers();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        current_ = job;
        generation_.fetch_add(1, std::memory_order_release);
      }
      wake_cv_.notify_all();
    }
    work_on(*job);
    for (int spin = 0; !finished(*job) && spin < kSpinIterations; ++spin) LORA_CPU_RELAX();
    if (!finished(*job)) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_cv_.wait(lock, [&] { return finished(*job); });
    }
    if (job->chunks > 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (current_ == job) current_.reset();
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  static bool finished(const Job& job) { return job.done.load(std::memory_order_acquire) == job.chunks; }

  // Claims and runs chunks until none is left. Chunk c covers [n*c/chunks, n*(c+1)/chunks):
  // contiguous, sizes differ by at most one, a pure function of (n, chunks).
  void work_on(Job& job) {
    for (;;) {
      const int c = job.next.fetch_add(1, std::memory_order_relaxed);
      if (c >= job.chunks) return;
      const int64_t begin = job.n * c / job.chunks;
      const int64_t end = job.n * (c + 1) / job.chunks;
      t_inside_parallel = true;
      t_chunk_index = c;
      try {
        (*job.fn)(begin, end, c);
      } catch (...) {
        std::lock_guard<std::mutex> lock(job.error_mutex);
        if (!job.error) job.error = std::current_exception();
      }
      t_inside_parallel = false;
      t_chunk_index = 0;
      if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.chunks) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_cv_.notify_all();
      }
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      uint64_t current = seen;
      for (int spin = 0; spin < kSpinIterations; ++spin) {
        current = generation_.load(std::memory_order_acquire);
        if (current != seen || stopping_.load(std::memory_order_acquire)) break;
        LORA_CPU_RELAX();
      }
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_cv_.wait(lock, [&] {
          return generation_.load(std::memory_order_acquire) != seen ||
                 stopping_.load(std::memory_order_acquire);
        });
        if (stopping_.load(std::memory_order_acquire)) return;
        seen = generation_.load(std::memory_order_acquire);
        job = current_;
      }
      if (job) work_on(*job);
    }
  }

  void start_workers() {
    if (!workers_.empty()) return;
    stopping_.store(false, std::memory_order_release);
    const int size = size_.load(std::memory_order_acquire);
    for (int i = 1; i < size; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void stop_workers() {
    if (workers_.empty()) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_.store(true, std::memory_order_release);
    }
    wake_cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::mutex dispatch_mutex_;
  std::mutex mutex_;  // guards current_ and the condition variables' predicates
  std::condition_variable wake_cv_;
  std::condition_variable done_cv_;
  std::vector<std::thread> workers_;
  std::shared_ptr<Job> current_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<int> size_{static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))};
};

ThreadPool& pool() {
  static ThreadPool instance;
  return instance;
}

}  // namespace

void set_num_threads(int n) { pool().set_size(n); }

int num_threads() { return pool().size(); }

void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end, int thread)>& fn) {
  pool().run(n, fn);
}

}  // namespace lora
