// The replay buffer's draws, the SGLD sampler on a real model, and the JEM objective's
// parameter gradient against finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "jem/objective.hpp"
#include "jem/philox.hpp"
#include "jem/sampler.hpp"
#include "jem/wide_resnet.hpp"
#include "test_support.hpp"

using namespace jem;

namespace {

TEST(ReplayBuffer, ReinitFractionMatchesReinitFreq) {
  auto be = make_cpu_backend(1);
  ReplayBuffer buf(*be, 10000, 1, 4, 1);
  BufferDraw d;
  // 200 draws of 64: n = 12800 Bernoulli(0.05) trials; the count's std is
  // sqrt(n p (1-p)) = 24.7, so 5 sigma is +-123 around the mean 640.
  long reinit = 0, n = 0;
  for (std::uint32_t it = 0; it < 200; ++it) {
    draw_slots(buf, 0.05f, 7, it, 0, 64, nullptr, d);
    for (auto r : d.reinit) reinit += r;
    n += 64;
  }
  EXPECT_NEAR(double(reinit), 0.05 * double(n), 5 * std::sqrt(n * 0.05 * 0.95));
  draw_slots(buf, 0.0f, 7, 1, 0, 64, nullptr, d);
  EXPECT_EQ(std::count(d.reinit.begin(), d.reinit.end(), 1), 0);
  draw_slots(buf, 1.0f, 7, 1, 0, 64, nullptr, d);
  EXPECT_EQ(std::count(d.reinit.begin(), d.reinit.end(), 1), 64);
}

TEST(ReplayBuffer, DrawsAreDistinctAndConditionalDrawsStayInTheirSegment) {
  auto be = make_cpu_backend(1);
  ReplayBuffer buf(*be, 100, 1, 4, 10);  // segments of 10
  BufferDraw d;
  std::vector<std::int32_t> labels(10);
  for (int b = 0; b < 10; ++b) labels[std::size_t(b)] = (b * 3) % 10;
  for (std::uint32_t it = 0; it < 50; ++it) {
    draw_slots(buf, 0.05f, 3, it, 0, 10, labels.data(), d);
    for (int b = 0; b < 10; ++b) {
      EXPECT_GE(d.slots[std::size_t(b)], labels[std::size_t(b)] * 10);
      EXPECT_LT(d.slots[std::size_t(b)], labels[std::size_t(b)] * 10 + 10);
    }
    // Unconditional: 64 distinct slots out of 100 (collisions are redrawn).
    draw_slots(buf, 0.05f, 3, it, 0, 64, nullptr, d);
    EXPECT_EQ(std::set<std::int32_t>(d.slots.begin(), d.slots.end()).size(), 64u);
  }
  // Every draw of the same coordinates is the same.
  BufferDraw again;
  draw_slots(buf, 0.05f, 3, 49, 0, 64, nullptr, again);
  EXPECT_EQ(again.slots, d.slots);
  EXPECT_THROW(draw_slots(buf, 0.05f, 3, 0, 0, 11, labels.data(), d), Error);  // 11 > segment
}

class Sampler : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<WideResNet>(WrnConfig{10, 1, 1, 8, 4}, *be_, 12);
    model_->init(5);
  }
  std::unique_ptr<Backend> be_ = make_cpu_backend(2);
  std::unique_ptr<WideResNet> model_;
};

TEST_F(Sampler, WritesBackExactlyTheDrawnSlots) {
  SamplerConfig sc;
  sc.buffer_size = 40;
  sc.steps = 2;
  sc.reinit_freq = 0.3f;
  sc.n_classes = 4;
  ReplayBuffer buf(*be_, 40, 1, 8, 1);
  buf.init_uniform(9);
  const auto before = be_->to_vector(buf.data());
  SgldSampler s(*be_, *model_, sc, 6);
  const Tensor xq = s.sample(buf, 9, 3, 0, 6, nullptr);
  const auto after = be_->to_vector(buf.data());
  const auto samples = be_->to_vector(xq);
  BufferDraw d;
  draw_slots(buf, sc.reinit_freq, 9, 3, 0, 6, nullptr, d);  // the same draw, recomputed
  const std::size_t per = 64;
  for (int slot = 0; slot < 40; ++slot) {
    const auto it = std::find(d.slots.begin(), d.slots.end(), slot);
    for (std::size_t e = 0; e < per; ++e) {
      const float now = after[std::size_t(slot) * per + e];
      if (it == d.slots.end()) ASSERT_EQ(now, before[std::size_t(slot) * per + e]) << "untouched slot " << slot;
      else ASSERT_EQ(now, samples[std::size_t(it - d.slots.begin()) * per + e]) << "slot " << slot;
    }
  }
}

TEST_F(Sampler, NoiselessStepsLowerTheEnergy) {
  SamplerConfig sc;
  sc.noise_std = 0.0f;
  sc.step_size = 0.05f;  // small: each step follows the gradient's descent direction
  SgldSampler s(*be_, *model_, sc, 8);
  const Tensor x = be_->from_vector(jem::test::random_vector(8 * 64, 4), Shape{8, 1, 8, 8});
  const Tensor energy = be_->empty(Shape{8}), dl = be_->empty(Shape{8, 4});
  auto total_energy = [&] {
    be_->energy_forward_backward(model_->forward(x), energy, dl, 1.0f);
    double e = 0;
    for (float v : be_->to_vector(energy)) e += v;
    return e;
  };
  double e = total_energy();
  for (int round = 0; round < 5; ++round) {
    s.run_chains(x, Tensor(), 1, std::uint32_t(round), 0, 1);
    const double next = total_energy();
    EXPECT_LT(next, e) << "round " << round;
    e = next;
  }
}

// The CPU backend captures nothing: capture() returns no ops, says why and runs nothing of them
// (the caller runs them itself), and launch() refuses ops from elsewhere.
TEST_F(Sampler, CpuBackendCapturesNothing) {
  EXPECT_FALSE(be_->can_capture());
  bool ran = false;
  std::string why;
  EXPECT_EQ(be_->capture(NoiseKey{}, [&] { ran = true; }, &why), nullptr);
  EXPECT_FALSE(ran);
  EXPECT_NE(why.find("no capture"), std::string::npos) << why;
  struct Foreign : CapturedOps {};
  EXPECT_THROW(be_->launch(Foreign{}, NoiseKey{}), Error);
  EXPECT_EQ(be_->graph_launches(), 0);
}

// The objective's parameter gradient (all four terms on) against central finite differences of
// the loss it reports, on the largest gradient coordinates (see test_wide_resnet.cpp for why:
// LeakyReLU kinks and float32 rounding), with the same h / h/2 agreement filter.
// Parameterised by the p(x) batch: equal to the labelled batch (3) and smaller (2).
class Objective : public ::testing::TestWithParam<int> {};

TEST_P(Objective, ParameterGradientMatchesFiniteDifferences) {
  auto be = make_cpu_backend(1);
  const int B = 3, Bp = GetParam();
  ObjectiveConfig oc{1.0f, 0.5f, 0.1f};
  WideResNet m(WrnConfig{10, 1, 1, 8, 4}, *be, JemObjective::rows_needed(oc, B, Bp));
  m.init(2);
  JemObjective obj(*be, m, oc, B, Bp);
  EXPECT_EQ(JemObjective::rows_needed(oc, B, Bp), 2 * B + 2 * Bp);
  const std::vector<std::int32_t> y{0, 2, 3};
  obj.set_labels(y.data());
  be->upload(jem::test::random_vector(std::size_t(B) * 64, 1).data(), obj.x_lab());
  be->upload(jem::test::random_vector(std::size_t(Bp) * 64, 2).data(), obj.x_data());
  be->upload(jem::test::random_vector(std::size_t(Bp) * 64, 3).data(), obj.x_q());
  be->upload(jem::test::random_vector(std::size_t(B) * 64, 4).data(), obj.x_q_y());
  obj.compute();
  const auto g = be->to_vector(m.grad_buffer());
  const auto base = be->to_vector(m.param_buffer());
  auto loss_at = [&](std::size_t i, float v) {
    auto p = base;
    p[i] = v;
    be->upload(p.data(), m.param_buffer());
    return obj.compute().loss;
  };
  std::vector<std::size_t> idx(base.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::partial_sort(idx.begin(), idx.begin() + 16, idx.end(),
                    [&](std::size_t a, std::size_t b) { return std::fabs(g[a]) > std::fabs(g[b]); });
  int qualified = 0;
  for (int j = 0; j < 16; ++j) {
    const std::size_t i = idx[std::size_t(j)];
    const float h = 2e-3f;
    const double fd = (loss_at(i, base[i] + h) - loss_at(i, base[i] - h)) / (2.0 * h);
    const double fd_half = (loss_at(i, base[i] + h / 2) - loss_at(i, base[i] - h / 2)) / double(h);
    if (std::fabs(fd - fd_half) > 1e-2 * std::fabs(fd_half)) continue;  // a kink within h
    ++qualified;
    EXPECT_NEAR(g[i], fd_half, 2e-2 * std::fabs(fd_half)) << "param " << i;
  }
  EXPECT_GE(qualified, 8);
}

INSTANTIATE_TEST_SUITE_P(PxBatch, Objective, ::testing::Values(3, 2));

// Staged statistics: three iterations left in staging slots and read back by one collect() give
// each iteration's own statistics, as compute() (one slot, read at once) gives them; the
// parameters change between iterations so that a slot read twice, or the wrong labels, show.
TEST(ObjectiveStaging, CollectGivesEachSlotsStatistics) {
  auto be = make_cpu_backend(1);
  const int B = 3, Bp = 2, slots = 3;
  ObjectiveConfig oc{1.0f, 0.5f, 0.1f};
  WideResNet m(WrnConfig{10, 1, 1, 8, 4}, *be, JemObjective::rows_needed(oc, B, Bp));
  m.init(5);
  JemObjective staged(*be, m, oc, B, Bp, 0, 0, slots), direct(*be, m, oc, B, Bp);
  EXPECT_EQ(staged.stage_slots(), slots);
  std::vector<StepStats> expected;
  for (int it = 0; it < slots; ++it) {
    const std::vector<std::int32_t> y{it % 4, (it + 1) % 4, 3};
    for (JemObjective* o : {&staged, &direct}) {
      o->set_labels(y.data());
      be->upload(jem::test::random_vector(std::size_t(B) * 64, 10 + it).data(), o->x_lab());
      be->upload(jem::test::random_vector(std::size_t(Bp) * 64, 20 + it).data(), o->x_data());
      be->upload(jem::test::random_vector(std::size_t(Bp) * 64, 30 + it).data(), o->x_q());
      be->upload(jem::test::random_vector(std::size_t(B) * 64, 40 + it).data(), o->x_q_y());
    }
    expected.push_back(direct.compute());
    staged.compute_staged(it);
    // A different network for the next iteration.
    auto p = be->to_vector(m.param_buffer());
    for (float& v : p) v *= 1.1f;
    be->upload(p.data(), m.param_buffer());
  }
  const std::vector<StepSums>& sums = staged.collect(slots);
  for (int it = 0; it < slots; ++it) {
    const StepStats got = staged.stats(sums[std::size_t(it)]);
    SCOPED_TRACE("slot " + std::to_string(it));
    // The same floats summed in the same order: equal, not close.
    EXPECT_EQ(got.loss, expected[std::size_t(it)].loss);
    EXPECT_EQ(got.ce, expected[std::size_t(it)].ce);
    EXPECT_EQ(got.acc, expected[std::size_t(it)].acc);
    EXPECT_EQ(got.e_data, expected[std::size_t(it)].e_data);
    EXPECT_EQ(got.e_q, expected[std::size_t(it)].e_q);
    EXPECT_EQ(got.e_lab_y, expected[std::size_t(it)].e_lab_y);
    EXPECT_EQ(got.e_q_y, expected[std::size_t(it)].e_q_y);
    EXPECT_EQ(got.max_abs_energy, expected[std::size_t(it)].max_abs_energy);
  }
  EXPECT_NE(expected[0].loss, expected[1].loss);
  EXPECT_THROW(staged.compute_staged(slots), Error);
  EXPECT_THROW(staged.collect(slots + 1), Error);
}

}  // namespace
