#pragma once
// Packing token shards into fixed-length rows, and the order in which rows are visited.
//
// Packing: documents are taken in shard order and placed greedily into rows of seq_len
// tokens; a document that does not fit into the space left in the current row starts a
// new row (documents are never split across rows to fill a gap). A document longer than
// seq_len is cut into seq_len-token pieces, each packed as its own document (counted in
// split_documents; the data pipeline normally truncates first). Within a row, positions
// restart at 0 for every document and attention stays inside the document; the unused
// tail of a row is padding that attends only to itself and is never a target.
// Targets: position t predicts token t+1 of the same piece when that token's loss_mask is
// 1, so a document's first token (and the first token of every piece) is never a target.
// Pieces without any target are dropped (counted in dropped_documents).
//
// Order: rows are visited in a fresh permutation each epoch, a pure function of
// (seed, epoch); a step takes the next micro_batch * grad_accum rows of that order (the
// last step of an epoch takes what is left). Everything is a function of the step index,
// which is what makes a resumed run identical to an uninterrupted one.
#include <cstdint>
#include <vector>

#include "formats/shard.hpp"
#include "model/forward.hpp"

namespace lora {

struct PackedRows {
  int64_t seq_len = 0;
  int64_t rows = 0;
  std::vector<int32_t> tokens, targets, pos, doc_start;  // rows * seq_len each
  std::vector<int64_t> row_targets;                      // targets per row
  std::vector<int64_t> row_tokens;                       // real (non-padding) tokens per row
  int64_t split_documents = 0;
  int64_t dropped_documents = 0;
  int64_t total_targets = 0;
  int64_t total_tokens = 0;                              // real (non-padding) tokens
};

PackedRows pack_shard(const TokenShard& shard, int64_t seq_len);

// A batch made of the given rows, in the given order.
Batch gather_rows(const PackedRows& rows, const int64_t* ids, int64_t n);

// The row order of one epoch (Fisher-Yates from the counter-based RNG).
std::vector<int64_t> epoch_permutation(int64_t rows, uint64_t seed, uint64_t epoch);

// Step bookkeeping for a packed training set.
struct StepPlan {
  int64_t rows_per_step = 0;
  int64_t steps_per_epoch = 0;
  int64_t steps_total = 0;
  int64_t epochs = 0;   // epochs touched by steps_total
};
StepPlan plan_steps(int64_t rows, int64_t micro_batch, int64_t grad_accum, int64_t epochs, int64_t max_steps);

}  // namespace lora
