#include "common/threadpool.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
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

// Index of the pool thread running the current code: 0 for the caller of parallel_for (and
// any thread outside the pool), 1..n-1 for workers. A nested parallel_for runs serially
// and reports this index, so per-thread scratch buffers stay private to their thread.
thread_local int t_thread_index = 0;
thread_local bool t_inside_parallel = false;

// Spinning briefly before sleeping keeps the hand-off cheap for the many back-to-back
// parallel_for calls of a training step (one per GEMM), without burning a core while idle.
constexpr int kSpinIterations = 4000;

class ThreadPool {
 public:
  ~ThreadPool() { stop_workers(); }

  void set_size(int n) {
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::lock_guard<std::mutex> dispatch(dispatch_mutex_);
    if (n == size_) return;
    stop_workers();
    size_ = n;
  }

  int size() {
    std::lock_guard<std::mutex> dispatch(dispatch_mutex_);
    return size_;
  }

  void run(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
    if (n <= 0) return;
    if (t_inside_parallel) {
      fn(0, n, t_thread_index);
      return;
    }
    // Independent threads calling parallel_for at once take turns: the pool has one job slot.
    std::lock_guard<std::mutex> dispatch(dispatch_mutex_);
    const int chunks = static_cast<int>(std::min<int64_t>(size_, n));
    if (chunks <= 1) {
      t_inside_parallel = true;
      try {
        fn(0, n, 0);
      } catch (...) {
        t_inside_parallel = false;
        throw;
      }
      t_inside_parallel = false;
      return;
    }
    start_workers();

    job_fn_ = &fn;
    job_n_ = n;
    job_chunks_ = chunks;
    first_error_ = nullptr;
    // Every worker acknowledges every job, even one with no chunk for it, so the job fields
    // are never rewritten while a slow worker may still read them.
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_cv_.notify_all();

    run_chunk(0);

    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0 && spin < kSpinIterations; ++spin)
      LORA_CPU_RELAX();
    if (pending_.load(std::memory_order_acquire) != 0) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_cv_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    job_fn_ = nullptr;
    if (first_error_) std::rethrow_exception(first_error_);
  }

 private:
  // Chunk c covers [n*c/chunks, n*(c+1)/chunks): contiguous, sizes differ by at most one,
  // and a pure function of (n, chunks), which keeps results reproducible.
  void run_chunk(int c) {
    const int64_t begin = job_n_ * c / job_chunks_;
    const int64_t end = job_n_ * (c + 1) / job_chunks_;
    t_inside_parallel = true;
    try {
      (*job_fn_)(begin, end, c);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (!first_error_) first_error_ = std::current_exception();
    }
    t_inside_parallel = false;
  }

  // `seen` is the generation when the worker was created: a worker that starts running only
  // after its first job was posted must still take that job.
  void worker_loop(int index, uint64_t seen) {
    t_thread_index = index;
    for (;;) {
      uint64_t current = seen;
      for (int spin = 0; spin < kSpinIterations; ++spin) {
        current = generation_.load(std::memory_order_acquire);
        if (current != seen || stopping_.load(std::memory_order_acquire)) break;
        LORA_CPU_RELAX();
      }
      if (current == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_cv_.wait(lock, [&] {
          return generation_.load(std::memory_order_acquire) != seen ||
                 stopping_.load(std::memory_order_acquire);
        });
        current = generation_.load(std::memory_order_acquire);
      }
      if (stopping_.load(std::memory_order_acquire)) return;
      seen = current;
      if (index < job_chunks_) run_chunk(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_cv_.notify_one();
      }
    }
  }

  void start_workers() {
    if (!workers_.empty()) return;
    stopping_.store(false, std::memory_order_release);
    const uint64_t generation = generation_.load(std::memory_order_acquire);
    for (int i = 1; i < size_; ++i)
      workers_.emplace_back([this, i, generation] { worker_loop(i, generation); });
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
  std::mutex mutex_;
  std::mutex error_mutex_;
  std::condition_variable wake_cv_;
  std::condition_variable done_cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stopping_{false};
  int size_ = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  const std::function<void(int64_t, int64_t, int)>* job_fn_ = nullptr;
  int64_t job_n_ = 0;
  int job_chunks_ = 0;
  std::exception_ptr first_error_;
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
