// Packing, targets, per-epoch shuffling and step planning.
#include <algorithm>
#include <set>

#include "model_fixture.hpp"
#include "test.hpp"
#include "train/data.hpp"

using namespace lora;

TEST(pack_greedy_rows_positions_and_targets) {
  // Lengths 4, 3, 5, 2 into rows of 8: [4 3] [5 2].
  auto shard = lora_test::make_shard({{1, 2, 3, 4}, {5, 6, 7}, {8, 9, 10, 11, 12}, {13, 14}}, 32);
  shard.loss_mask[5] = 0;  // token 6 (second of doc 2) is not a target
  const PackedRows p = pack_shard(shard, 8);
  CHECK_EQ(p.rows, 2);
  CHECK((std::vector<int32_t>(p.tokens.begin(), p.tokens.begin() + 8) == std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 0}));
  CHECK((std::vector<int32_t>(p.pos.begin(), p.pos.begin() + 8) == std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 0}));
  CHECK((std::vector<int32_t>(p.doc_start.begin(), p.doc_start.begin() + 8) == std::vector<int32_t>{0, 0, 0, 0, 4, 4, 4, 7}));
  CHECK((std::vector<int32_t>(p.targets.begin(), p.targets.begin() + 8) == std::vector<int32_t>{2, 3, 4, -1, -1, 7, -1, -1}));
  CHECK((std::vector<int32_t>(p.tokens.begin() + 8, p.tokens.end()) == std::vector<int32_t>{8, 9, 10, 11, 12, 13, 14, 0}));
  CHECK_EQ(p.total_targets, int64_t(3 + 1 + 4 + 1));
  CHECK_EQ(p.total_targets, static_cast<int64_t>(shard.target_count()));
  CHECK_EQ(p.row_targets[0] + p.row_targets[1], p.total_targets);
  CHECK_EQ(p.total_tokens, int64_t(14));
  CHECK_EQ(p.row_tokens[0], int64_t(7));
  CHECK_EQ(p.split_documents, int64_t(0));
}

TEST(pack_splits_long_documents_and_drops_targetless_ones) {
  std::vector<uint32_t> long_doc;
  for (uint32_t i = 0; i < 10; ++i) long_doc.push_back(i + 1);
  auto shard = lora_test::make_shard({long_doc, {20, 21}}, 32);
  shard.loss_mask[11] = 0;  // the short doc has no target left
  const PackedRows p = pack_shard(shard, 4);
  CHECK_EQ(p.split_documents, int64_t(1));
  CHECK_EQ(p.dropped_documents, int64_t(1));
  CHECK_EQ(p.rows, int64_t(3));  // pieces 4, 4, 2
  CHECK_EQ(p.total_targets, int64_t(3 + 3 + 1));
  CHECK_EQ(p.pos[4], 0);         // second piece restarts positions
  CHECK_EQ(p.targets[3], -1);    // a piece's last token has nothing to predict
}

TEST(epoch_permutation_is_a_deterministic_permutation) {
  const auto a = epoch_permutation(100, 42, 0), b = epoch_permutation(100, 42, 0), c = epoch_permutation(100, 42, 1);
  CHECK(a == b);
  CHECK(a != c);
  CHECK_EQ(std::set<int64_t>(a.begin(), a.end()).size(), size_t(100));
  CHECK(epoch_permutation(100, 43, 0) != a);
}

TEST(plan_steps_counts) {
  StepPlan s = plan_steps(10, 2, 2, 3, 0);
  CHECK_EQ(s.rows_per_step, 4);
  CHECK_EQ(s.steps_per_epoch, 3);
  CHECK_EQ(s.steps_total, 9);
  CHECK_EQ(s.epochs, 3);
  s = plan_steps(10, 2, 2, 3, 7);
  CHECK_EQ(s.steps_total, 7);
  CHECK_EQ(s.epochs, 3);
  s = plan_steps(10, 1, 1, 1, 25);
  CHECK_EQ(s.epochs, 3);
}

TEST(gather_rows_copies_in_order) {
  auto shard = lora_test::make_shard({{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}, 16);
  const PackedRows p = pack_shard(shard, 3);
  const int64_t ids[2] = {2, 0};
  const Batch b = gather_rows(p, ids, 2);
  CHECK_EQ(b.rows, 2);
  CHECK((b.tokens == std::vector<int32_t>{7, 8, 9, 1, 2, 3}));
  CHECK_EQ(b.target_count(), int64_t(4));
}
