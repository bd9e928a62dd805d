#include "train/data.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "common/rng.hpp"

namespace lora {

namespace {

struct Piece {
  uint64_t begin, len;
};

}  // namespace

PackedRows pack_shard(const TokenShard& shard, int64_t seq_len) {
  PackedRows p;
  p.seq_len = seq_len;
  std::vector<Piece> pieces;
  for (uint64_t d = 0; d < shard.documents(); ++d) {
    const uint64_t b = shard.offsets[d], e = shard.offsets[d + 1];
    if (e - b > static_cast<uint64_t>(seq_len)) ++p.split_documents;
    for (uint64_t s = b; s < e; s += seq_len) {
      const uint64_t len = std::min<uint64_t>(seq_len, e - s);
      bool any = false;
      for (uint64_t i = s + 1; i < s + len && !any; ++i) any = shard.loss_mask[i] != 0;
      if (!any) {
        ++p.dropped_documents;
        continue;
      }
      pieces.push_back({s, len});
    }
  }
  // Greedy packing in shard order.
  std::vector<int64_t> row_of(pieces.size()), offset_in_row(pieces.size());
  int64_t rows = 0, used = seq_len;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (used + static_cast<int64_t>(pieces[i].len) > seq_len) {
      ++rows;
      used = 0;
    }
    row_of[i] = rows - 1;
    offset_in_row[i] = used;
    used += pieces[i].len;
  }
  p.rows = rows;
  const int64_t n = rows * seq_len;
  p.tokens.assign(n, 0);
  p.targets.assign(n, -1);
  p.pos.assign(n, 0);
  p.doc_start.resize(n);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < seq_len; ++t) p.doc_start[r * seq_len + t] = static_cast<int32_t>(t);
  p.row_targets.assign(rows, 0);
  p.row_tokens.assign(rows, 0);
  for (size_t i = 0; i < pieces.size(); ++i) {
    const int64_t base = row_of[i] * seq_len + offset_in_row[i];
    const Piece& pc = pieces[i];
    for (uint64_t t = 0; t < pc.len; ++t) {
      const uint64_t src = pc.begin + t;
      p.tokens[base + t] = static_cast<int32_t>(shard.tokens[src]);
      p.pos[base + t] = static_cast<int32_t>(t);
      p.doc_start[base + t] = static_cast<int32_t>(offset_in_row[i]);
      if (t + 1 < pc.len && shard.loss_mask[src + 1]) {
        p.targets[base + t] = static_cast<int32_t>(shard.tokens[src + 1]);
        ++p.row_targets[row_of[i]];
        ++p.total_targets;
      }
    }
    p.total_tokens += pc.len;
    p.row_tokens[row_of[i]] += pc.len;
  }
  return p;
}

Batch gather_rows(const PackedRows& rows, const int64_t* ids, int64_t n) {
  Batch b;
  b.rows = n;
  b.seq_len = rows.seq_len;
  const int64_t T = rows.seq_len;
  b.tokens.resize(n * T);
  b.targets.resize(n * T);
  b.pos.resize(n * T);
  b.doc_start.resize(n * T);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t src = ids[i] * T, dst = i * T;
    std::memcpy(&b.tokens[dst], &rows.tokens[src], T * sizeof(int32_t));
    std::memcpy(&b.targets[dst], &rows.targets[src], T * sizeof(int32_t));
    std::memcpy(&b.pos[dst], &rows.pos[src], T * sizeof(int32_t));
    std::memcpy(&b.doc_start[dst], &rows.doc_start[src], T * sizeof(int32_t));
  }
  return b;
}

std::vector<int64_t> epoch_permutation(int64_t rows, uint64_t seed, uint64_t epoch) {
  std::vector<int64_t> perm(rows);
  std::iota(perm.begin(), perm.end(), 0);
  const uint64_t key = rng_key(seed, 0x5348554646ull /* "SHUFF" */, epoch);
  for (int64_t i = rows - 1; i > 0; --i) {
    const uint64_t j = splitmix64(key ^ splitmix64(static_cast<uint64_t>(i))) % static_cast<uint64_t>(i + 1);
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

StepPlan plan_steps(int64_t rows, int64_t micro_batch, int64_t grad_accum, int64_t epochs, int64_t max_steps) {
  StepPlan s;
  s.rows_per_step = micro_batch * grad_accum;
  s.steps_per_epoch = rows == 0 ? 0 : (rows + s.rows_per_step - 1) / s.rows_per_step;
  s.steps_total = max_steps > 0 ? max_steps : epochs * s.steps_per_epoch;
  if (s.steps_per_epoch == 0) s.steps_total = 0;
  s.epochs = s.steps_per_epoch ? (s.steps_total + s.steps_per_epoch - 1) / s.steps_per_epoch : 0;
  return s;
}

}  // namespace lora
