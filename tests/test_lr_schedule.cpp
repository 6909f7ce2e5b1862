// The learning-rate schedule: linear warm-up, step decay at epochs, cosine to zero, and the
// divergence guard's factor on top. Expected values are computed here from the definitions.
#include <gtest/gtest.h>

#include <cmath>

#include "jem/optimizer.hpp"

namespace {

using jem::OptimizerConfig;
using jem::scheduled_lr;

OptimizerConfig base() {
  OptimizerConfig c;
  c.lr = 0.1f;
  c.warmup_iters = 10;
  c.decay_epochs = {2, 4};
  c.decay_rate = 0.5f;
  return c;
}

TEST(LrSchedule, WarmupIsLinearFromLrOverWarmup) {
  const OptimizerConfig c = base();
  EXPECT_FLOAT_EQ(scheduled_lr(c, 0, 0), 0.1f * 1 / 10);
  EXPECT_FLOAT_EQ(scheduled_lr(c, 4, 0), 0.1f * 5 / 10);
  EXPECT_FLOAT_EQ(scheduled_lr(c, 9, 0), 0.1f);
  EXPECT_FLOAT_EQ(scheduled_lr(c, 500, 0), 0.1f);
}

TEST(LrSchedule, StepDecayMultipliesAtEachListedEpoch) {
  const OptimizerConfig c = base();
  EXPECT_FLOAT_EQ(scheduled_lr(c, 100, 1), 0.1f);
  EXPECT_FLOAT_EQ(scheduled_lr(c, 100, 2), 0.05f);
  EXPECT_FLOAT_EQ(scheduled_lr(c, 100, 3), 0.05f);
  EXPECT_FLOAT_EQ(scheduled_lr(c, 100, 4), 0.025f);
  EXPECT_FLOAT_EQ(scheduled_lr(c, 100, 4, 0.5f), 0.0125f);  // the guard's cut on top
}

TEST(LrSchedule, CosineGoesFromLrAfterWarmupToZeroAtTheEnd) {
  OptimizerConfig c = base();
  c.cosine = true;
  c.total_iters = 110;  // 100 iterations of cosine after 10 of warm-up
  EXPECT_FLOAT_EQ(scheduled_lr(c, 4, 0), 0.1f * 5 / 10);  // warm-up unchanged
  EXPECT_FLOAT_EQ(scheduled_lr(c, 10, 0), 0.1f);
  EXPECT_NEAR(scheduled_lr(c, 60, 9), 0.05f, 1e-7f);  // halfway: (1 + cos(pi/2)) / 2
  const float quarter = float(0.1 * 0.5 * (1 + std::cos(3.14159265358979 * 0.25)));
  EXPECT_NEAR(scheduled_lr(c, 35, 9), quarter, 1e-7f);
  EXPECT_NEAR(scheduled_lr(c, 110, 9), 0.0f, 1e-9f);
  EXPECT_NEAR(scheduled_lr(c, 200, 9), 0.0f, 1e-9f);  // past the end: stays at 0
  // decay_epochs do not apply under cosine; the guard's factor does.
  EXPECT_NEAR(scheduled_lr(c, 60, 9, 0.5f), 0.025f, 1e-7f);
}

TEST(LrSchedule, CosineIsMonotoneAfterWarmup) {
  OptimizerConfig c = base();
  c.cosine = true;
  c.total_iters = 1000;
  for (int i = 11; i <= 1000; ++i) ASSERT_LE(scheduled_lr(c, i, 0), scheduled_lr(c, i - 1, 0)) << i;
}

}  // namespace
