// The pieces of data parallelism that need no second process: row splits, buffer shards, a
// rank's rows of a batch, the objective split over ranks (its gradients and statistics add up
// to the global batch's), evaluation split over ranks, and checkpoints re-split over another
// world size. The multi-process runs themselves are tests/mpi (ctest Distributed.*).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <set>

#include "jem/checkpoint.hpp"
#include "jem/communicator.hpp"
#include "jem/data_pipeline.hpp"
#include "jem/evaluate.hpp"
#include "jem/objective.hpp"
#include "jem/optimizer.hpp"
#include "jem/sampler.hpp"
#include "jem/wide_resnet.hpp"
#include "test_support.hpp"

using namespace jem;

namespace {

TEST(DataParallel, SplitRowsPartitionsEvenly) {
  for (int total : {0, 1, 7, 8, 64, 101})
    for (int world = 1; world <= 9; ++world) {
      int next = 0, smallest = total, largest = 0;
      for (int r = 0; r < world; ++r) {
        const RowRange g = split_rows(total, world, r);
        EXPECT_EQ(g.begin, next) << total << " over " << world;
        next = g.end;
        smallest = std::min(smallest, g.size());
        largest = std::max(largest, g.size());
      }
      EXPECT_EQ(next, total);
      EXPECT_LE(largest - smallest, 1) << total << " over " << world;
    }
  EXPECT_THROW(split_rows(8, 2, 2), Error);
}

TEST(DataParallel, BufferShardsPartitionTheBufferSegmentBySegment) {
  for (const auto& [S, K] : {std::pair{100, 1}, {100, 10}, {7, 1}, {30, 3}})
    for (int world = 1; world <= 4; ++world) {
      std::set<int> seen;
      for (int r = 0; r < world; ++r) {
        const BufferShard sh = make_buffer_shard(S, K, world, r);
        EXPECT_EQ(sh.local_size(), K * sh.segment_rows());
        for (int i = 0; i < sh.local_size(); ++i) {
          const int g = sh.global_row(i);
          EXPECT_TRUE(seen.insert(g).second) << "slot " << g << " owned twice";
          // Local segment i / segment_rows is global segment g / (S / K): conditional draws
          // find class y's chains in the same segment locally and globally.
          EXPECT_EQ(g / (S / K), i / sh.segment_rows());
        }
      }
      EXPECT_EQ(int(seen.size()), S) << S << "/" << K << " over " << world;
    }
  const BufferShard one = make_buffer_shard(100, 10, 1, 0);  // world 1: local = global
  for (int i = 0; i < 100; ++i) EXPECT_EQ(one.global_row(i), i);
  EXPECT_THROW(make_buffer_shard(100, 3, 2, 0), Error);  // 100 slots, 3 segments
}

Dataset tiny_dataset(int n, int classes, std::uint64_t seed) {
  Dataset d;
  d.name = "tiny";
  d.count = n;
  d.channels = 1;
  d.height = d.width = 8;
  d.classes = classes;
  const auto v = test::random_vector(std::size_t(n) * 64, seed, 0.0f, 255.0f);
  for (float x : v) d.images.push_back(std::uint8_t(x));
  for (int i = 0; i < n; ++i) d.labels.push_back(i % classes);
  return d;
}

TEST(DataParallel, MakeRowsEqualsTheSameRowsOfMakeBatch) {
  const Dataset d = tiny_dataset(50, 4, 3);
  const BatchStream s(d, 12, AugmentSpec{true, true, 2, 0.1f}, 9, 1);
  std::vector<float> full(12 * 64), part(5 * 64);
  std::vector<std::int32_t> yf(12), yp(5);
  for (std::uint64_t it : {0u, 3u, 7u}) {
    s.make_batch(it, full.data(), yf.data());
    s.make_rows(it, 6, 5, part.data(), yp.data());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), full.begin() + 6 * 64)) << "iteration " << it;
    EXPECT_TRUE(std::equal(yp.begin(), yp.end(), yf.begin() + 6));
  }
  EXPECT_THROW(s.make_rows(0, 10, 5, part.data(), yp.data()), Error);
}

// Two "ranks" with rows [0, 2) | [2, B) of the labelled batch and [0, 1) | [1, Bp) of the p(x)
// batch (uneven on purpose): their gradients add up to the global batch's, and their summed
// statistics give the global statistics.
TEST(DataParallel, ObjectiveSplitOverRanksAddsUpToTheGlobalBatch) {
  auto be = make_cpu_backend(1);
  const ObjectiveConfig oc{1.0f, 0.7f, 0.1f};  // every term: CE, p(x), p(x, y), L2
  const int B = 5, Bp = 3, K = 4;
  const WrnConfig wc{10, 1, 1, 8, K};
  const int S = 8 * 8;
  const auto x_lab = test::random_vector(std::size_t(B) * S, 1), x_data = test::random_vector(std::size_t(Bp) * S, 2);
  const auto x_q = test::random_vector(std::size_t(Bp) * S, 3), x_qy = test::random_vector(std::size_t(B) * S, 4);
  const std::vector<std::int32_t> y{0, 3, 1, 2, 3};

  auto run = [&](int lab0, int lab1, int px0, int px1, StepSums* sums, StepStats* stats) {
    WideResNet m(wc, *be, JemObjective::rows_needed(oc, lab1 - lab0, px1 - px0));
    m.init(11);
    JemObjective obj(*be, m, oc, lab1 - lab0, px1 - px0, B, Bp);
    auto up = [&](const std::vector<float>& src, int first, const Tensor& dst) {
      be->upload(src.data() + std::size_t(first) * S, dst);
    };
    up(x_lab, lab0, obj.x_lab());
    up(x_data, px0, obj.x_data());
    up(x_q, px0, obj.x_q());
    up(x_qy, lab0, obj.x_q_y());
    obj.set_labels(y.data() + lab0);
    *stats = obj.compute();
    *sums = obj.last_sums();
    return be->to_vector(m.grad_buffer());
  };
  StepSums full_sums, a_sums, b_sums;
  StepStats full, a_stats, b_stats;
  const auto g_full = run(0, B, 0, Bp, &full_sums, &full);
  const auto g_a = run(0, 2, 0, 1, &a_sums, &a_stats);
  auto g_sum = run(2, B, 1, Bp, &b_sums, &b_stats);
  for (std::size_t i = 0; i < g_sum.size(); ++i) g_sum[i] += g_a[i];
  // Float sums in another order and GEMMs of other shapes: 1e-5 relative is ~100 ulp of float.
  EXPECT_LT(test::rel_error(g_sum, g_full), 1e-5);
  EXPECT_GT(test::rel_error(g_a, g_full), 0.05) << "one rank's gradient alone must not pass";
  StepSums total = a_sums;
  for (int k = 0; k < StepSums::kSums; ++k) total.sum[k] += b_sums.sum[k];
  total.max_abs_energy = std::max(a_sums.max_abs_energy, b_sums.max_abs_energy);
  WideResNet m(wc, *be, JemObjective::rows_needed(oc, B, Bp));
  const StepStats s = JemObjective(*be, m, oc, B, Bp).stats(total);
  EXPECT_NEAR(s.loss, full.loss, 1e-5 * std::max(1.0, std::fabs(full.loss)));
  EXPECT_NEAR(s.ce, full.ce, 1e-5);
  EXPECT_NEAR(s.e_data, full.e_data, 1e-5);
  EXPECT_NEAR(s.e_q, full.e_q, 1e-5);
  EXPECT_NEAR(s.e_lab_y, full.e_lab_y, 1e-5);
  EXPECT_NEAR(s.e_q_y, full.e_q_y, 1e-5);
  EXPECT_DOUBLE_EQ(s.acc, full.acc);
  EXPECT_FLOAT_EQ(float(s.max_abs_energy), float(full.max_abs_energy));
}

TEST(DataParallel, EvaluationSplitOverRanksAddsUp) {
  auto be = make_cpu_backend(1);
  const Dataset d = tiny_dataset(37, 4, 5);
  WideResNet m(WrnConfig{10, 1, 1, 8, 4}, *be, 8);
  m.init(3);
  const EvalResult all = evaluate(m, d, 0.05f, 7);
  double correct = 0, ce = 0;
  for (int r = 0; r < 3; ++r) {
    const RowRange part = split_rows(d.count, 3, r);
    const EvalResult e = evaluate_range(m, d, part.begin, part.size(), 0.05f, 7);
    EXPECT_EQ(e.count, part.size());
    correct += e.accuracy * double(e.count);
    ce += e.mean_ce * double(e.count);
  }
  EXPECT_NEAR(correct, all.accuracy * d.count, 1e-9);
  EXPECT_NEAR(ce / d.count, all.mean_ce, 1e-6);
}

// A checkpoint holds the global buffer; each rank of another world size loads its own slots.
TEST(DataParallel, CheckpointBufferIsResplitOverAnotherWorldSize) {
  auto be = make_cpu_backend(1);
  const std::string dir = test::temp_dir("dp_ckpt");
  WideResNet m(WrnConfig{10, 1, 1, 8, 4}, *be, 4);
  m.init(1);
  Optimizer opt(*be, OptimizerConfig{}, m.num_params());
  const int S = 12, K = 4;
  ReplayBuffer whole(*be, S, 1, 8, K);
  whole.init_uniform(5);
  const std::string path = dir + "/c.safetensors";
  save_checkpoint(path, m, opt, whole, TrainState{}, "");
  const auto global = be->to_vector(whole.data());
  for (int world : {2, 3}) {
    std::set<int> loaded;
    for (int r = 0; r < world; ++r) {
      const BufferShard sh = make_buffer_shard(S, K, world, r);
      ReplayBuffer local(*be, sh.local_size(), 1, 8, K);
      load_checkpoint(path, m, opt, local, sh);
      const auto v = be->to_vector(local.data());
      for (int i = 0; i < sh.local_size(); ++i) {
        EXPECT_TRUE(std::equal(v.begin() + i * 64, v.begin() + (i + 1) * 64, global.begin() + sh.global_row(i) * 64))
            << "world " << world << " rank " << r << " slot " << i;
        loaded.insert(sh.global_row(i));
      }
      // A shard initialised from scratch starts as the same slots of the whole buffer.
      ReplayBuffer fresh(*be, sh.local_size(), 1, 8, K);
      fresh.init_uniform(5, sh);
      EXPECT_EQ(be->to_vector(fresh.data()), v);
    }
    EXPECT_EQ(int(loaded.size()), S);
  }
  std::filesystem::remove_all(dir);
}

using jem::test::ScopedEnv;

TEST(DataParallel, LaunchIsReadFromTheLaunchersEnvironment) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("SLURM_STEP_ID"))
    GTEST_SKIP() << "this test runs under a launcher";
  EXPECT_EQ(launch_from_environment().world, 1);
  EXPECT_EQ(launch_from_environment().launcher, "");
  {
    ScopedEnv env({{"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
    const LaunchInfo l = launch_from_environment();
    EXPECT_EQ(l.world, 4);
    EXPECT_EQ(l.rank, 3);
    EXPECT_EQ(l.local_rank, 1);
    EXPECT_EQ(l.launcher, "Open MPI");
    // Two processes that each think they are alone would train two copies into one directory.
    EXPECT_THROW(make_host_communicator("none", 10), Error);
    EXPECT_THROW(make_host_communicator("gloo", 10), Error);
  }
  {
    ScopedEnv env(
        {{"SLURM_STEP_ID", "0"}, {"SLURM_STEP_NUM_TASKS", "16"}, {"SLURM_PROCID", "9"}, {"SLURM_LOCALID", "1"}});
    const LaunchInfo l = launch_from_environment();
    EXPECT_EQ(l.world, 16);
    EXPECT_EQ(l.rank, 9);
    EXPECT_EQ(l.launcher, "Slurm");
  }
  {
    // sbatch's own shell (no job step): one process, whatever SLURM_NTASKS says.
    ScopedEnv env({{"SLURM_NTASKS", "16"}, {"SLURM_PROCID", "0"}});
    EXPECT_EQ(launch_from_environment().world, 1);
  }
  {
    ScopedEnv env({{"PMI_SIZE", "two"}});
    try {
      launch_from_environment();
      FAIL() << "a malformed PMI_SIZE must be an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("PMI_SIZE"), std::string::npos) << e.what();
    }
  }
  // Started alone: the single-process communicator, no MPI; also for one process through the
  // NCCL path (a singleton MPI_Init would need Open MPI's whole installation).
  for (const char* kind : {"auto", "nccl"}) {
    const auto c = make_host_communicator(kind, 10);
    EXPECT_EQ(c->world(), 1) << kind;
    EXPECT_EQ(c->name(), "single process") << kind;
  }
}

TEST(DataParallel, NcclOnTheCpuBackendIsAClearError) {
  const std::string dir = test::temp_dir("dp_cli");
  std::string out;
  const int rc = test::run_command(test::jem_binary() + " train --device cpu --comm nccl --dataset mnist --data_dir " +
                                       dir + "/nowhere --out " + dir + "/run",
                                   &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--comm nccl needs the CUDA backend"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/run"));
  std::filesystem::remove_all(dir);
}

}  // namespace
