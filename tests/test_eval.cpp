// The evaluation library: ECE and AUROC against hand-computed values, the OOD scores against
// direct computation and finite differences, PGD's budget and effect, and .npz files (our
// round trip, numpy reading ours, us reading numpy's).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "jem/calibration.hpp"
#include "jem/data_pipeline.hpp"
#include "jem/eval_suite.hpp"
#include "jem/evaluate.hpp"
#include "jem/npz.hpp"
#include "jem/ood.hpp"
#include "jem/pgd.hpp"
#include "jem/png_grid.hpp"
#include "jem/samples.hpp"
#include "synthetic_data.hpp"
#include "test_support.hpp"

using namespace jem;
namespace fs = std::filesystem;

namespace {

TEST(Calibration, EceMatchesHandComputedValue) {
  // 20 bins of width 0.05, bin b = (b/20, (b+1)/20]:
  //   0.93 (right), 0.91 (wrong) -> bin 18: confidence 0.92, accuracy 0.5, gap 0.42
  //   0.52, 0.54 (both right)    -> bin 10: confidence 0.53, accuracy 1.0, gap 0.47
  //   0.12 (wrong)               -> bin 2:  confidence 0.12, accuracy 0.0, gap 0.12
  // ECE = 2/5 * 0.42 + 2/5 * 0.47 + 1/5 * 0.12 = 0.38.
  const CalibrationResult r = expected_calibration_error({0.93f, 0.91f, 0.52f, 0.54f, 0.12f}, {1, 0, 1, 1, 0}, 20);
  // The inputs are floats (0.93f = 0.93 +- 3e-8): 1e-6 covers their rounding.
  EXPECT_NEAR(r.ece, 0.38, 1e-6);
  ASSERT_EQ(r.bins.size(), 20u);
  EXPECT_EQ(r.bins[18].count, 2);
  EXPECT_EQ(r.bins[10].count, 2);
  EXPECT_EQ(r.bins[2].count, 1);
  EXPECT_NEAR(r.bins[18].accuracy, 0.5, 1e-12);
  EXPECT_NEAR(r.bins[10].mean_confidence, 0.53, 1e-6);
  EXPECT_DOUBLE_EQ(r.bins[18].lo, 0.9);
  // Edges: 1.0 is in the last bin, 0 in the first; a perfectly calibrated bin adds nothing.
  const CalibrationResult e = expected_calibration_error({1.0f, 1.0f, 0.0f}, {1, 1, 0}, 20);
  EXPECT_EQ(e.bins[19].count, 2);
  EXPECT_EQ(e.bins[0].count, 1);
  EXPECT_NEAR(e.ece, 0.0, 1e-12);
  EXPECT_THROW(expected_calibration_error({1.5f}, {1}), Error);
  EXPECT_THROW(expected_calibration_error({0.5f}, {1, 0}), Error);
}

TEST(Calibration, ReliabilityDiagramIsAPng) {
  const std::string dir = jem::test::temp_dir("calib");
  const auto r = expected_calibration_error({0.93f, 0.91f, 0.52f, 0.54f, 0.12f}, {1, 0, 1, 1, 0});
  write_reliability_png(dir + "/r.png", r);
  int w = 0, h = 0, c = 0;
  const auto px = read_png_gray_or_rgb(dir + "/r.png", &w, &h, &c);
  EXPECT_EQ(c, 3);
  EXPECT_GT(w, 100);
  EXPECT_EQ(px.size(), std::size_t(w) * h * 3);
  fs::remove_all(dir);
}

TEST(Auroc, HandComputedWithTies) {
  // Pairs (pos, neg): (.9,.5)=1 (.9,.1)=1 (.5,.5)=1/2 (.5,.1)=1 (.5,.5)=1/2 (.5,.1)=1 -> 5/6.
  EXPECT_NEAR(auroc({0.9, 0.5, 0.5}, {0.5, 0.1}), 5.0 / 6.0, 1e-12);
  EXPECT_DOUBLE_EQ(auroc({2, 3}, {0, 1}), 1.0);
  EXPECT_DOUBLE_EQ(auroc({0, 1}, {2, 3}), 0.0);
  EXPECT_DOUBLE_EQ(auroc({1, 1}, {1, 1, 1}), 0.5);
  EXPECT_THROW(auroc({}, {1.0}), Error);
  EXPECT_THROW(auroc({NAN}, {1.0}), Error);
}

TEST(Auroc, AgreesWithPairwiseMannWhitneyCount) {
  // Scores from a small integer range so that ties are common.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> d(0, 5);
  std::vector<double> pos(37), neg(23);
  for (double& v : pos) v = d(rng) + 1;  // shifted up: AUROC well above 1/2
  for (double& v : neg) v = d(rng);
  double u = 0;
  for (double p : pos)
    for (double n : neg) u += p > n ? 1.0 : p == n ? 0.5 : 0.0;
  EXPECT_NEAR(auroc(pos, neg), u / double(pos.size() * neg.size()), 1e-12);
  EXPECT_GT(auroc(pos, neg), 0.5);
}

// A random tiny WRN-10-1 on 1x8x8 images.
struct TinyModel {
  std::unique_ptr<Backend> be = make_cpu_backend(1);
  WideResNet model;
  explicit TinyModel(int batch, std::uint64_t seed = 3) : model(WrnConfig{10, 1, 1, 8, 10, 0.2f}, *be, batch) {
    model.init(seed);
  }
};

std::vector<float> logits_of(WideResNet& m, const std::vector<float>& x, int n) {
  const Tensor t = m.backend().from_vector(x, Shape{n, 1, 8, 8});
  return m.backend().to_vector(m.forward(t));
}

TEST(OodScores, MatchDirectComputationAndFiniteDifferences) {
  TinyModel t(4);
  const int n = 3;
  const std::vector<float> x = jem::test::random_vector(std::size_t(n) * 64, 11);
  const OodScores s = compute_ood_scores(t.model, x, n);
  ASSERT_EQ(s.logsumexp.size(), std::size_t(n));
  auto lse_of = [&](const std::vector<float>& img) {  // one image -> logsumexp in double
    const auto l = logits_of(t.model, img, 1);
    double mx = -INFINITY, z = 0;
    for (float v : l) mx = std::max(mx, double(v));
    for (float v : l) z += std::exp(double(v) - mx);
    return mx + std::log(z);
  };
  for (int i = 0; i < n; ++i) {
    std::vector<float> img(x.begin() + i * 64, x.begin() + (i + 1) * 64);
    const auto l = logits_of(t.model, img, 1);
    const double mx = *std::max_element(l.begin(), l.end());
    double z = 0;
    for (float v : l) z += std::exp(double(v) - mx);
    EXPECT_NEAR(s.logsumexp[std::size_t(i)], mx + std::log(z), 1e-5);
    EXPECT_NEAR(s.max_softmax[std::size_t(i)], 1.0 / z, 1e-6);
    // -||d lse / dx|| by central differences, pixel by pixel (h = 1e-2: float32 forward
    // passes make smaller steps noisier than the O(h^2) truncation error; the kinks of the
    // LeakyReLU make a rare pixel inexact, hence a 2% tolerance on the norm).
    const float h = 1e-2f;
    double sq = 0;
    for (int e = 0; e < 64; ++e) {
      std::vector<float> a = img, b = img;
      a[std::size_t(e)] += h;
      b[std::size_t(e)] -= h;
      const double g = (lse_of(a) - lse_of(b)) / (2.0 * h);
      sq += g * g;
    }
    const double fd = -std::sqrt(sq);
    EXPECT_LT(s.grad_norm[std::size_t(i)], 0.0);
    EXPECT_NEAR(s.grad_norm[std::size_t(i)], fd, 0.02 * std::abs(fd)) << "image " << i;
  }
  // Batch-independent: the same images scored one at a time give the same numbers.
  TinyModel one(1);
  const OodScores s1 = compute_ood_scores(one.model, x, n);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(s1.grad_norm[std::size_t(i)], s.grad_norm[std::size_t(i)], 1e-5);
}

TEST(OodSets, SyntheticSetsHaveTheirDefiningProperties) {
  const int n = 5, C = 3, S = 4;
  const std::int64_t per = C * S * S;
  const auto noise = uniform_noise_images(n, per, 1);
  for (float v : noise) EXPECT_TRUE(v >= -1.0f && v < 1.0f);
  EXPECT_NE(noise, uniform_noise_images(n, per, 2));
  const auto constant = constant_images(n, C, S, S, 1);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < C; ++c)
      for (int p = 0; p < S * S; ++p)
        EXPECT_EQ(constant[std::size_t((i * C + c) * S * S + p)], constant[std::size_t((i * C + c) * S * S)]);
  // interp: every image is the mean of two source images.
  const auto src = jem::test::random_vector(std::size_t(7 * per), 5);
  const auto mix = interp_images(src, 7, per, n, 1);
  for (int i = 0; i < n; ++i) {
    bool found = false;
    for (int a = 0; a < 7 && !found; ++a)
      for (int b = 0; b < 7 && !found; ++b) {
        bool same = true;
        for (std::int64_t e = 0; e < per && same; ++e)
          same = std::abs(mix[std::size_t(i * per + e)] -
                          0.5f * (src[std::size_t(a * per + e)] + src[std::size_t(b * per + e)])) < 1e-6f;
        found = same;
      }
    EXPECT_TRUE(found) << "interp image " << i << " is not the mean of two source images";
  }
}

TEST(Pgd, StaysInsideTheBallAndRaisesTheLoss) {
  TinyModel t(4);
  Backend& be = *t.be;
  const int B = 4;
  const std::vector<float> x = jem::test::random_vector(std::size_t(B) * 64, 21, -0.8f, 0.8f);
  // Labels: the model's own predictions, so that the clean loss is lowish.
  const auto lg = logits_of(t.model, x, B);
  std::vector<std::int32_t> y(B);
  for (int b = 0; b < B; ++b)
    y[std::size_t(b)] = int(std::max_element(lg.begin() + b * 10, lg.begin() + (b + 1) * 10) - (lg.begin() + b * 10));
  const Tensor xd = be.from_vector(x, Shape{B, 1, 8, 8}), adv = be.empty(Shape{B, 1, 8, 8});
  const Tensor yd = be.empty(Shape{B}, DType::I32);
  be.upload_i32(y.data(), yd);
  for (PgdNorm norm : {PgdNorm::Linf, PgdNorm::L2}) {
    const float eps = norm == PgdNorm::Linf ? 8.0f / 255 : 0.5f;
    const double clean = pgd_attack(t.model, xd, yd, PgdConfig{norm, eps, 0, 0.0f}, adv);
    const double attacked = pgd_attack(t.model, xd, yd, PgdConfig{norm, eps, 10, 0.0f}, adv);
    EXPECT_GT(attacked, clean + 1e-3) << to_string(norm);
    const auto a = be.to_vector(adv);
    // Internal budget: 2 * eps in the [-1, 1] image scale; 1e-6 absorbs float rounding.
    for (int b = 0; b < B; ++b) {
      double linf = 0, l2 = 0;
      for (int e = 0; e < 64; ++e) {
        const double d = double(a[std::size_t(b * 64 + e)]) - x[std::size_t(b * 64 + e)];
        linf = std::max(linf, std::abs(d));
        l2 += d * d;
        EXPECT_LE(std::abs(a[std::size_t(b * 64 + e)]), 1.0f);
      }
      if (norm == PgdNorm::Linf) {
        EXPECT_LE(linf, 2.0 * eps + 1e-6);
        EXPECT_GT(linf, 2.0 * eps * 0.5) << "the attack should use its budget";
      } else {
        EXPECT_LE(std::sqrt(l2), 2.0 * eps * (1 + 1e-6));
        EXPECT_GT(std::sqrt(l2), 2.0 * eps * 0.5);
      }
    }
  }
  EXPECT_THROW(parse_pgd_norm("l1"), Error);
}

TEST(Npz, RoundTripAndAlignment) {
  const std::string dir = jem::test::temp_dir("npz");
  const auto f = jem::test::random_vector(2 * 3 * 4, 3);
  write_npz(dir + "/a.npz", {NpyArray::floats("images", {2, 3, 4}, f), NpyArray::ints("labels", {3}, {7, -1, 2}),
                             NpyArray::floats("scalar", {}, {1.5f})});
  const auto back = read_npz(dir + "/a.npz");
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back[0].name, "images");
  EXPECT_EQ(back[0].shape, (std::vector<std::int64_t>{2, 3, 4}));
  EXPECT_EQ(back[0].f32, f);
  EXPECT_EQ(back[1].descr, "<i4");
  EXPECT_EQ(back[1].i32, (std::vector<std::int32_t>{7, -1, 2}));
  EXPECT_TRUE(back[2].shape.empty());
  EXPECT_EQ(back[2].f32, std::vector<float>{1.5f});
  // .npy v1.0: the data starts at a multiple of 64 bytes.
  const auto bytes = npy_bytes(NpyArray::floats("x", {5}, std::vector<float>(5, 0.0f)));
  EXPECT_EQ((bytes.size() - 5 * 4) % 64, 0u);
  // A flipped data byte fails the CRC check, naming the entry.
  {
    std::fstream io(dir + "/a.npz", std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(200);
    char c = 0;
    io.read(&c, 1);
    io.seekp(200);
    c = char(c ^ 0x5A);
    io.write(&c, 1);
  }
  try {
    read_npz(dir + "/a.npz");
    ADD_FAILURE() << "expected a CRC error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("images"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_npz(dir + "/missing.npz"), Error);
  fs::remove_all(dir);
}

bool have_numpy() {
  std::string out;
  return jem::test::run_command("/usr/bin/python3 -c 'import numpy'", &out) == 0;
}

TEST(Npz, NumpyReadsOursAndWeReadNumpys) {
  if (!have_numpy()) GTEST_SKIP() << "/usr/bin/python3 has no numpy: cannot cross-check the .npz format";
  const std::string dir = jem::test::temp_dir("npz_numpy");
  write_npz(dir + "/ours.npz",
            {NpyArray::floats("x", {2, 3}, {1, 2, 3, 4, 5, 6.5f}), NpyArray::ints("y", {2}, {4, -9})});
  std::string out;
  const std::string check =
      "/usr/bin/python3 -c \"import numpy as np; d = np.load('" + dir +
      "/ours.npz'); "
      "assert d['x'].dtype == np.float32 and d['x'].shape == (2, 3) and d['x'][1, 2] == 6.5, d['x']; "
      "assert d['y'].dtype == np.int32 and list(d['y']) == [4, -9], d['y']; "
      "np.savez('" +
      dir + "/theirs.npz', a=np.arange(6, dtype=np.float32).reshape(3, 2), b=np.array([3], dtype=np.int32))\"";
  ASSERT_EQ(jem::test::run_command(check, &out), 0) << out;
  const auto theirs = read_npz(dir + "/theirs.npz");
  ASSERT_EQ(theirs.size(), 2u);
  EXPECT_EQ(theirs[0].name, "a");
  EXPECT_EQ(theirs[0].shape, (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(theirs[0].f32, (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(theirs[1].i32, std::vector<std::int32_t>{3});
  fs::remove_all(dir);
}

TEST(Fid, ReferenceImagesAreScaledTrainingImages) {
  Dataset d;
  d.name = "t";
  d.count = 5;
  d.channels = 1;
  d.height = d.width = 2;
  d.classes = 2;
  for (int i = 0; i < 5; ++i)
    for (int p = 0; p < 4; ++p) d.images.push_back(std::uint8_t(i * 50));
  d.labels = {0, 1, 0, 1, 0};
  const auto r = EvalSuite::reference_images(d, 3, 1);
  ASSERT_EQ(r.size(), 12u);
  std::vector<float> firsts;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r[std::size_t(i * 4)], r[std::size_t(i * 4 + 3)]);
    firsts.push_back(r[std::size_t(i * 4)]);
  }
  std::sort(firsts.begin(), firsts.end());
  EXPECT_TRUE(std::adjacent_find(firsts.begin(), firsts.end()) == firsts.end()) << "distinct images";
  for (float v : firsts) EXPECT_NEAR((v + 1.0f) * 127.5f / 50.0f, std::round((v + 1.0f) * 127.5f / 50.0f), 1e-3);
}

// A suite on 8x8 synthetic digits and a random tiny model, for the modes' internals.
struct TinySuite {
  std::string dir = jem::test::temp_dir("suite");
  TrainConfig cfg;
  DataSplits splits;
  TinyModel t{8};
  SuiteResults res;
  TinySuite() {
    jem::test::write_synthetic_mnist(dir, 40, 12, 8, 10);
    cfg.dataset = "mnist";
    cfg.data_dir = dir;
    cfg.n_valid = 8;
    cfg.sigma = 0.0;
    splits = load_splits(cfg.dataset, cfg.data_dir, cfg.n_valid, cfg.seed);
  }
  ~TinySuite() { fs::remove_all(dir); }
  EvalOptions options() {
    EvalOptions o;
    o.out_dir = dir + "/out";
    return o;
  }
};

TEST(EvalSuiteModes, FidInputsAreExportedAsNpz) {
  TinySuite s;
  EvalOptions o = s.options();
  o.fid_count = 6;
  o.rounds = 1;
  o.steps = 2;
  EvalSuite suite(s.t.model, s.cfg, s.splits.test, {}, o, s.res);
  std::vector<float> gen, ref;
  suite.export_fid_inputs(&gen, &ref);
  ASSERT_EQ(gen.size(), 6u * 64);
  ASSERT_EQ(ref.size(), 6u * 64);
  const auto g = read_npz(o.out_dir + "/fid_samples.npz"), r = read_npz(o.out_dir + "/fid_reference.npz");
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].name, "samples");
  EXPECT_EQ(g[0].shape, (std::vector<std::int64_t>{6, 1, 8, 8}));
  EXPECT_EQ(g[0].f32, gen);
  EXPECT_EQ(r[0].name, "reference");
  EXPECT_EQ(r[0].f32, ref);
  for (float v : ref) EXPECT_TRUE(v >= -1.0f && v <= 1.0f);
  // The samples moved away from their uniform starting noise.
  const auto start = fresh_noise(*s.t.be, 6, 1, 8, o.seed + 2);
  EXPECT_GT(jem::test::max_abs_diff(gen, start), 1e-3);
  // fid() itself refuses clearly without the Inception weights.
  try {
    suite.fid();
    ADD_FAILURE() << "fid() should fail without --inception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--mode fid needs --inception FILE"), std::string::npos) << e.what();
  }
}

TEST(EvalSuiteModes, RobustnessAtZeroBudgetIsTheCleanAccuracyAndPurificationRuns) {
  TinySuite s;
  const Dataset& d = s.splits.test;
  Dataset first = d;  // evaluate() on the same 12 images
  const EvalResult clean = evaluate(s.t.model, first, 0.0f, 1);
  SamplerConfig sc;
  const auto pts = robustness_sweep(s.t.model, d, d.count, 0.0f, 1, PgdNorm::Linf, {0.0f, 16.0f / 255}, 3, 0.0f, 0, sc);
  ASSERT_EQ(pts.size(), 2u);
  EXPECT_DOUBLE_EQ(pts[0].accuracy, clean.accuracy);
  EXPECT_NEAR(pts[0].mean_loss, clean.mean_ce, 1e-5);
  EXPECT_GT(pts[1].mean_loss, pts[0].mean_loss);
  // With purification the attacked images are moved before classifying: the loss recorded is
  // the attack's (before purification), so it is unchanged; the run must complete.
  const auto purified = robustness_sweep(s.t.model, d, d.count, 0.0f, 1, PgdNorm::Linf, {16.0f / 255}, 3, 0.0f, 2, sc);
  ASSERT_EQ(purified.size(), 1u);
  EXPECT_NEAR(purified[0].mean_loss, pts[1].mean_loss, 1e-6);
  EXPECT_TRUE(purified[0].accuracy >= 0.0 && purified[0].accuracy <= 1.0);
}

}  // namespace
