#pragma once
// The tensor-core and asynchronous-copy instructions of the attention kernels
// (src/cuda/attention_kernels.cuh) on the host, on top of emu_shim.hpp's fibers:
//  - ldmatrix.m8n8.x4(.trans).b16 and mma.m16n8k16.row.col.f32.bf16.bf16.f32, rebuilt from
//    the fragment layouts of the PTX ISA. A warp instruction is one rendezvous of its 32
//    lanes: each lane posts its operands (a row address, or its A/B registers) and then
//    reads what the instruction gives it from the others' posts;
//  - cp.async.cg 16 bytes, commit_group, wait_group n and wait_all: the source is read at
//    issue, but the bytes reach shared memory only when a wait retires their group, the
//    latest moment the PTX allows; a consumer that lacks its wait reads what was there
//    before. (set_land_at_issue switches to the earliest moment, which exposes a copy
//    issued before the barrier that keeps it from overwriting what others still read);
//  - dynamic shared memory (extern __shared__): one buffer per block, filled with 0xFF bytes
//    (bf16 and fp32 NaN) before the block starts, so a read of shared memory nobody wrote,
//    or read before its copy landed, turns the results into NaNs.
// Row addresses and copy destinations outside the dynamic buffer, misaligned ones, and
// copies still pending when a block ends are recorded in emu::faults().
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "emu_shim.hpp"

namespace emu {

class MmaUnit {
 public:
  struct Copy {
    unsigned char* dst;
    unsigned char bytes[16];
  };

  // Prepares one block: fresh NaN-filled shared memory, no copies in flight.
  void begin_block(unsigned threads, size_t smem_bytes) {
    smem_.assign(smem_bytes + 16, 0xFF);
    const uintptr_t raw = reinterpret_cast<uintptr_t>(smem_.data());
    base_ = smem_.data() + ((16 - raw % 16) % 16);
    bytes_ = smem_bytes;
    open_.assign(threads, {});
    groups_.assign(threads, {});
    ops_.assign(threads, 0);
    posts_.assign(size_t((threads + 31) / 32) * 2 * 32 * 6, 0);
  }

  // Copies a block left in flight: its shared memory is gone, so they are a bug.
  void end_block(const std::string& what) {
    size_t pending = 0;
    for (const auto& o : open_) pending += o.size();
    for (const auto& g : groups_)
      for (const auto& grp : g) pending += grp.size();
    if (pending) fault(what + ": " + std::to_string(pending) + " cp.async copies never waited for");
  }

  unsigned char* smem() { return base_; }

  bool in_smem(const void* p, size_t n) const {
    const auto* c = static_cast<const unsigned char*>(p);
    return bytes_ > 0 && c >= base_ && c + n <= base_ + bytes_;
  }

  void cp_async_16(void* dst, const void* src, bool valid) {
    if (!in_smem(dst, 16)) fault("cp.async destination outside the block's dynamic shared memory");
    if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16)
      fault("cp.async of 16 bytes with a misaligned address");
    Copy c;
    c.dst = static_cast<unsigned char*>(dst);
    if (valid)
      std::memcpy(c.bytes, src, 16);
    else
      std::memset(c.bytes, 0, 16);  // src-size 0: nothing read, the destination zero-filled
    if (land_at_issue_) {
      if (in_smem(c.dst, 16)) std::memcpy(c.dst, c.bytes, 16);
    } else {
      open_[me()].push_back(c);
    }
  }

  // Copies land at their wait (the default: a missing wait leaves the old bytes), or at
  // issue (then a copy issued without the barrier that should have protected the bytes
  // other warps still read overwrites them under those readers).
  void set_land_at_issue(bool on) { land_at_issue_ = on; }

  void commit() {
    const size_t t = me();
    groups_[t].push_back(std::move(open_[t]));
    open_[t].clear();
  }

  // wait_group n: every group but the newest n has landed.
  void wait_group(int n) {
    auto& g = groups_[me()];
    while (g.size() > size_t(n)) {
      for (const Copy& c : g.front())
        if (in_smem(c.dst, 16)) std::memcpy(c.dst, c.bytes, 16);
      g.pop_front();
    }
  }

  // ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7 give the row addresses
  // of matrix i; without .trans lane (g = lane/4, c = lane%4) receives row g, columns 2c and
  // 2c+1 of each matrix, with .trans rows 2c and 2c+1 of column g.
  void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
    const void* row = p;
    if (!in_smem(p, 16) || reinterpret_cast<uintptr_t>(p) % 16) {
      fault("ldmatrix row address outside shared memory or not 16-byte aligned");
      row = nullptr;
    }
    uint64_t* mine = post();
    mine[0] = reinterpret_cast<uintptr_t>(row);
    const uint64_t* all = rendezvous(mine);
    const int lane = int(me() % 32), g = lane >> 2, c = lane & 3;
    auto elem = [&](int i, int rr, int col) -> uint32_t {
      const auto* rp = reinterpret_cast<const unsigned char*>(all[size_t(8 * i + rr) * 6]);
      if (!rp) return 0xFFFFu;
      uint16_t v;
      std::memcpy(&v, rp + 2 * col, 2);
      return v;
    };
    for (int i = 0; i < 4; ++i) {
      const uint32_t lo = trans ? elem(i, 2 * c, g) : elem(i, g, 2 * c);
      const uint32_t hi = trans ? elem(i, 2 * c + 1, g) : elem(i, g, 2 * c + 1);
      r[i] = lo | (hi << 16);
    }
  }

  // mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d += A B. Lane (g, c) holds
  //   A: a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
  //   B: b0 = (k 2c..2c+1, n g), b1 = (k 2c+8..2c+9, n g)
  //   D: d0, d1 = (g, 2c), (g, 2c+1); d2, d3 = (g+8, 2c), (g+8, 2c+1)
  // (low half = lower column / k index). bf16 products are exact in fp32; the sum runs over
  // k in order, one of the orders the hardware may use.
  void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    uint64_t* mine = post();
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    mine[4] = b0;
    mine[5] = b1;
    const uint64_t* all = rendezvous(mine);
    const int lane = int(me() % 32), g = lane >> 2, c = lane & 3;
    auto half = [](uint64_t reg, int k) {
      const uint32_t bits = (uint32_t(reg) >> (16 * (k & 1))) & 0xFFFFu;
      const uint32_t u = bits << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    };
    for (int e = 0; e < 4; ++e) {
      const int row = g + (e >= 2 ? 8 : 0), col = 2 * c + (e & 1);
      float acc = d[e];
      for (int k = 0; k < 16; ++k) {
        const int owner_a = (row % 8) * 4 + (k % 8) / 2, reg_a = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        const int owner_b = col * 4 + (k % 8) / 2, reg_b = 4 + (k >= 8 ? 1 : 0);
        acc += half(all[size_t(owner_a) * 6 + size_t(reg_a)], k) * half(all[size_t(owner_b) * 6 + size_t(reg_b)], k);
      }
      d[e] = acc;
    }
  }

 private:
  static size_t me() { return size_t(runner().current()); }

  // This lane's post area for its next warp instruction. Two areas alternate per lane: a
  // lane can only post into an area again after the whole warp met at the instruction in
  // between, by which time every lane has finished reading it.
  uint64_t* post() {
    const size_t t = me(), warp = t / 32, lane = t % 32;
    const size_t set = size_t(ops_[t]++ & 1);
    return &posts_[((warp * 2 + set) * 32 + lane) * 6];
  }
  // All 32 lanes' posts of this instruction, once every lane has posted.
  const uint64_t* rendezvous(const uint64_t* mine) {
    (void)runner().shuffle(0xffffffffu, 0, lane_xor, 0);
    const size_t lane = me() % 32;
    return mine - lane * 6;
  }

  std::vector<unsigned char> smem_;
  unsigned char* base_ = nullptr;
  size_t bytes_ = 0;
  bool land_at_issue_ = false;
  std::vector<std::vector<Copy>> open_;
  std::vector<std::deque<std::vector<Copy>>> groups_;
  std::vector<int> ops_;
  std::vector<uint64_t> posts_;
};

inline MmaUnit& mma_unit() {
  static MmaUnit u;
  return u;
}

inline unsigned char* dynamic_smem() { return mma_unit().smem(); }
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) { mma_unit().ldmatrix_x4(r, p, trans); }
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma_unit().mma_m16n8k16(d, a, b0, b1);
}
inline void cp_async_16(void* dst, const void* src, bool valid) { mma_unit().cp_async_16(dst, src, valid); }
inline void cp_async_commit() { mma_unit().commit(); }
inline void cp_async_wait_group(int n) { mma_unit().wait_group(n); }
// cp.async.wait_all is commit_group followed by wait_group 0.
inline void cp_async_wait_all() {
  mma_unit().commit();
  mma_unit().wait_group(0);
}

// kernel<<<grid, block, smem_bytes>>>(args...) as launch_smem(grid, block, smem_bytes,
// [&] { kernel(args...); }): each block gets its own NaN-filled dynamic shared memory.
// smem_bytes above 99 KB is a fault: the kernels promise to fit sm_86/sm_89 blocks.
inline void launch_smem(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body,
                        const std::string& what = "kernel") {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (smem_bytes > 99 * 1024) {
    fault(what + ": " + std::to_string(smem_bytes) + " bytes of dynamic shared memory per block");
    return;
  }
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    fault(what + ": launch with a bad grid or block");
    return;
  }
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        mma_unit().begin_block(unsigned(threads), smem_bytes);
        const uint3 b = make_uint3(x, y, z);
        // emu::launch runs a one-block grid; each fiber restores the real indices first.
        launch(dim3(1), block, [&] {
          block_idx = b;
          grid_dim = grid;
          body();
        });
        mma_unit().end_block(what);
      }
}

}  // namespace emu

inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
