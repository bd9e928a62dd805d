#pragma once
// The CUDA execution model on the host, for running kernel headers (src/cuda/*_kernels.cuh)
// on the CPU. Every CUDA thread of a block is a fiber on the calling OS thread; blocks run
// one after another, so `__shared__` arrays can be function statics. A fiber runs until it
// reaches a barrier (__syncthreads, or the rendezvous of a warp shuffle) and then hands over
// to the next runnable thread of its block, so the cost is a few context switches per
// barrier, not an OS thread per CUDA thread.
//
// The emulator also checks what the hardware leaves undefined: a full-mask shuffle in a warp
// that has lanes already returned, a barrier some threads can never reach (deadlock), and a
// shuffle mask other than 0xffffffff (the kernels here use only full warps). Each such
// violation lands in emu::faults().
//
// Include this after the CUDA headers and before the kernel headers, from one translation
// unit. The context switch is a few instructions of x86-64 assembly (about 10x faster than
// swapcontext, which makes a system call per switch); other machines, AddressSanitizer
// builds (which must see every stack switch) and builds with CET shadow stacks (whose
// return addresses the assembly would not switch) use ucontext.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !(defined(__CET__) && (__CET__ & 2))
#define LORA_EMU_ASM_SWITCH 1
#else
#define LORA_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if LORA_EMU_ASM_SWITCH
// lora_emu_switch(save, next): pushes the callee-saved registers, stores the stack pointer in
// *save, loads `next` and pops the registers saved there. Weak, so the header may be
// included by more than one object.
extern "C" void lora_emu_switch(void** save_sp, void* next_sp);
asm(".pushsection .text\n"
    ".weak lora_emu_switch\n"
    ".type lora_emu_switch,@function\n"
    "lora_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size lora_emu_switch,.-lora_emu_switch\n"
    ".popsection\n");
#endif

namespace emu {

inline uint3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;

inline std::vector<std::string>& faults() {
  static std::vector<std::string> f;
  return f;
}
inline void fault(const std::string& what) {
  if (faults().size() < 10) faults().push_back(what);
}

class BlockRunner {
 public:
  static constexpr size_t kStack = 64 * 1024;

  // Runs every thread of one block to completion (or to a detected deadlock).
  void run(unsigned nthreads, const std::function<void()>& body) {
    body_ = &body;
    n_ = static_cast<int>(nthreads);
    const int warps = (n_ + 31) / 32;
    fibers_.assign(static_cast<size_t>(n_), Fiber{});
    if (stacks_.size() < static_cast<size_t>(n_)) stacks_.resize(static_cast<size_t>(n_));
    warp_arrived_.assign(static_cast<size_t>(warps), 0);
    warp_live_.assign(static_cast<size_t>(warps), 0);
    slots_.assign(static_cast<size_t>(warps) * 64, 0);
    for (int i = 0; i < n_; ++i) {
      ++warp_live_[static_cast<size_t>(i / 32)];
      if (stacks_[static_cast<size_t>(i)].empty()) stacks_[static_cast<size_t>(i)].resize(kStack);
      init_fiber(i);
    }
    live_ = n_;
    block_arrived_ = 0;
    cur_ = -1;
    if (n_ > 0) switch_to(0);
  }

  // __syncthreads: threads that have returned no longer count (as on sm_70 and later).
  void syncthreads() {
    Fiber& me = fibers_[static_cast<size_t>(cur_)];
    me.state = kWaitBlock;
    if (++block_arrived_ == live_) {
      release_block();
    } else {
      yield();
    }
  }

  // A warp shuffle: the lanes meet, each reads the value its source lane offered. Two slot
  // sets alternate, so a lane may offer its next value while a slower one still reads.
  template <class T>
  T shuffle(unsigned mask, T v, int src_lane_of(int lane, int arg), int arg) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    Fiber& me = fibers_[static_cast<size_t>(cur_)];
    const int warp = cur_ / 32, lane = cur_ % 32;
    const int width = std::min(32, n_ - 32 * warp);
    if (mask != 0xffffffffu) fault("shuffle with a partial mask");
    if (warp_live_[static_cast<size_t>(warp)] != width)
      fault("full-mask shuffle in warp " + std::to_string(warp) + " after some of its lanes returned");
    const int set = me.shuffles++ & 1;
    uint64_t* slots = &slots_[static_cast<size_t>(warp) * 64 + static_cast<size_t>(set) * 32];
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[lane] = bits;
    me.state = kWaitWarp;
    if (++warp_arrived_[static_cast<size_t>(warp)] == warp_live_[static_cast<size_t>(warp)]) {
      release_warp(warp);
    } else {
      yield();
    }
    int src = src_lane_of(lane, arg);
    if (src < 0 || src >= width) src = lane;
    T out;
    std::memcpy(&out, &slots[src], sizeof(T));
    return out;
  }

  int current() const { return cur_; }

  // The order in which runnable threads take turns. Round robin (the default) keeps the
  // warps of a block within one barrier or shuffle of each other. Lowest first always resumes
  // the lowest-numbered runnable thread, so warp 0 runs ahead to every block barrier before
  // warp 1 starts: a shared-memory write missing the barrier that should hold it back until
  // other warps have read the old contents then lands before they read.
  void set_lowest_first(bool on) { lowest_first_ = on; }

 private:
  enum State { kReady, kWaitBlock, kWaitWarp, kDone };
  struct Fiber {
    void* sp = nullptr;
    State state = kReady;
    int shuffles = 0;
#if !LORA_EMU_ASM_SWITCH
    ucontext_t ctx;
#endif
  };

  static BlockRunner*& active() {
    static BlockRunner* r = nullptr;
    return r;
  }

  static void trampoline() {
    BlockRunner* r = active();
    (*r->body_)();
    r->finish();
  }

  void init_fiber(int i) {
    char* top = stacks_[static_cast<size_t>(i)].data() + kStack;
    top = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15));
#if LORA_EMU_ASM_SWITCH
    // Six saved registers, then the return address the first switch "returns" to; after
    // that ret the stack pointer is 8 mod 16, as at any function entry.
    void** sp = reinterpret_cast<void**>(top - 64);
    for (int k = 0; k < 6; ++k) sp[k] = nullptr;
    sp[6] = reinterpret_cast<void*>(&BlockRunner::trampoline);
    sp[7] = nullptr;
    fibers_[static_cast<size_t>(i)].sp = sp;
#else
    Fiber& f = fibers_[static_cast<size_t>(i)];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stacks_[static_cast<size_t>(i)].data();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, &BlockRunner::trampoline, 0);
#endif
  }

  void set_indices(int i) {
    const unsigned bx = block_dim.x, by = block_dim.y;
    const unsigned u = static_cast<unsigned>(i);
    thread_idx = make_uint3(u % bx, (u / bx) % by, u / (bx * by));
  }

  // From the current context (a fiber, or the launcher when cur_ < 0) to fiber `next`, or
  // back to the launcher when next < 0.
  void switch_to(int next) {
    BlockRunner*& a = active();
    a = this;
    const int from = cur_;
    cur_ = next;
    if (next >= 0) set_indices(next);
#if LORA_EMU_ASM_SWITCH
    void** save = from >= 0 ? &fibers_[static_cast<size_t>(from)].sp : &main_sp_;
    void* target = next >= 0 ? fibers_[static_cast<size_t>(next)].sp : main_sp_;
    lora_emu_switch(save, target);
#else
    ucontext_t* save = from >= 0 ? &fibers_[static_cast<size_t>(from)].ctx : &main_ctx_;
    ucontext_t* target = next >= 0 ? &fibers_[static_cast<size_t>(next)].ctx : &main_ctx_;
    swapcontext(save, target);
#endif
    // Resumed: whoever switched here set cur_ to this fiber.
    if (cur_ >= 0) set_indices(cur_);
  }

  int next_ready(int from) const {
    if (lowest_first_) {
      for (int j = 0; j < n_; ++j)
        if (fibers_[static_cast<size_t>(j)].state == kReady) return j;
      return -1;
    }
    for (int k = 1; k <= n_; ++k) {
      const int j = (from + k) % n_;
      if (fibers_[static_cast<size_t>(j)].state == kReady) return j;
    }
    return -1;
  }

  void yield() {
    const int j = next_ready(cur_);
    if (j < 0) {
      fault("deadlock: " + std::to_string(live_) + " threads wait at barriers none of the others will reach");
      switch_to(-1);  // the block is abandoned; this fiber is never resumed
      return;
    }
    switch_to(j);
  }

  void release_block() {
    block_arrived_ = 0;
    for (Fiber& f : fibers_)
      if (f.state == kWaitBlock) f.state = kReady;
  }

  void release_warp(int warp) {
    warp_arrived_[static_cast<size_t>(warp)] = 0;
    const int end = std::min(n_, 32 * (warp + 1));
    for (int i = 32 * warp; i < end; ++i)
      if (fibers_[static_cast<size_t>(i)].state == kWaitWarp) fibers_[static_cast<size_t>(i)].state = kReady;
  }

  void finish() {
    const int warp = cur_ / 32;
    fibers_[static_cast<size_t>(cur_)].state = kDone;
    --live_;
    --warp_live_[static_cast<size_t>(warp)];
    if (warp_arrived_[static_cast<size_t>(warp)] > 0)
      fault("a lane of warp " + std::to_string(warp) + " returned while the others wait in a shuffle");
    if (block_arrived_ > 0 && block_arrived_ == live_) release_block();
    const int j = next_ready(cur_);
    if (j < 0 && live_ > 0)
      fault("deadlock: " + std::to_string(live_) + " threads wait at barriers none of the others will reach");
    switch_to(j);  // never returns: this fiber is done
  }

  const std::function<void()>* body_ = nullptr;
  int n_ = 0, live_ = 0, cur_ = -1, block_arrived_ = 0;
  bool lowest_first_ = false;
  std::vector<Fiber> fibers_;
  std::vector<std::vector<char>> stacks_;
  std::vector<int> warp_arrived_, warp_live_;
  std::vector<uint64_t> slots_;
#if LORA_EMU_ASM_SWITCH
  void* main_sp_ = nullptr;
#else
  ucontext_t main_ctx_;
#endif
};

inline BlockRunner& runner() {
  static BlockRunner r;
  return r;
}

// kernel<<<grid, block>>>(args...) as launch(grid, block, [&] { kernel(args...); }).
// Checks the launch limits the driver would reject.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024) {
    fault("launch with " + std::to_string(threads) + " threads per block");
    return;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    fault("launch with grid " + std::to_string(grid.x) + " x " + std::to_string(grid.y) + " x " +
          std::to_string(grid.z));
    return;
  }
  block_dim = block;
  grid_dim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        block_idx = make_uint3(x, y, z);
        runner().run(static_cast<unsigned>(threads), body);
      }
}

inline void syncthreads() { runner().syncthreads(); }

inline int lane_xor(int lane, int arg) { return lane ^ arg; }
inline int lane_down(int lane, int arg) { return lane + arg; }
inline int lane_up(int lane, int arg) { return lane - arg; }

}  // namespace emu

// ---- device intrinsics the kernels call, as host functions ----------------------------------

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) emu::fault("shuffle width other than 32");
  return emu::runner().shuffle(mask, v, emu::lane_xor, lane_mask);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) emu::fault("shuffle width other than 32");
  return emu::runner().shuffle(mask, v, emu::lane_down, static_cast<int>(delta));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) emu::fault("shuffle width other than 32");
  return emu::runner().shuffle(mask, v, emu::lane_up, static_cast<int>(delta));
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
// The _rn intrinsics: one IEEE operation, rounded to nearest even. (The kernels call them
// where nothing is added to the product afterwards, or through __fmaf_rn, so a host
// compiler that contracts a * b + c cannot change their results.)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __expf(float a) { return std::exp(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }

// The CUDA keywords of the kernel sources.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx ::emu::thread_idx
#define blockIdx ::emu::block_idx
#define blockDim ::emu::block_dim
#define gridDim ::emu::grid_dim
#define __syncthreads() ::emu::syncthreads()
