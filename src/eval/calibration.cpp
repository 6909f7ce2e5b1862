// Expected calibration error and the reliability diagram.
#include "jem/calibration.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "jem/error.hpp"
#include "jem/eval_io.hpp"

namespace jem {

CalibrationResult expected_calibration_error(const std::vector<float>& confidence,
                                             const std::vector<std::uint8_t>& correct, int bins) {
  JEM_CHECK(bins >= 1, "ece: ", bins, " bins");
  JEM_CHECK(confidence.size() == correct.size(), "ece: ", confidence.size(), " confidences but ", correct.size(),
            " correctness flags");
  CalibrationResult r;
  r.bins.resize(std::size_t(bins));
  std::vector<double> conf_sum(std::size_t(bins), 0.0), hits(std::size_t(bins), 0.0);
  for (std::size_t i = 0; i < confidence.size(); ++i) {
    const double c = confidence[i];
    JEM_CHECK(c >= 0.0 && c <= 1.0, "ece: confidence ", c, " of prediction ", i, " is outside [0, 1]");
    // Bin b holds (b/B, (b+1)/B]: ceil(c * B) - 1, with 0 in bin 0.
    const int b = std::clamp(int(std::ceil(c * bins)) - 1, 0, bins - 1);
    conf_sum[std::size_t(b)] += c;
    hits[std::size_t(b)] += correct[i] ? 1.0 : 0.0;
    ++r.bins[std::size_t(b)].count;
  }
  r.count = std::int64_t(confidence.size());
  for (int b = 0; b < bins; ++b) {
    CalibrationBin& bin = r.bins[std::size_t(b)];
    bin.lo = double(b) / bins;
    bin.hi = double(b + 1) / bins;
    if (bin.count == 0) continue;
    bin.mean_confidence = conf_sum[std::size_t(b)] / double(bin.count);
    bin.accuracy = hits[std::size_t(b)] / double(bin.count);
    r.ece += double(bin.count) / double(r.count) * std::abs(bin.accuracy - bin.mean_confidence);
  }
  return r;
}

void write_reliability_png(const std::string& path, const CalibrationResult& r) {
  // Plot area [left, right] x [top, bottom]; x = confidence, y = accuracy, both 0..1.
  const int W = 420, H = 420, left = 50, right = W - 20, top = 30, bottom = H - 40;
  Canvas c(W, H);
  auto px = [&](double v) { return left + int(std::lround(v * (right - left))); };
  auto py = [&](double v) { return bottom - int(std::lround(v * (bottom - top))); };
  for (const CalibrationBin& b : r.bins) {
    if (b.count == 0) continue;
    const int x0 = px(b.lo) + 1, x1 = px(b.hi) - 1;
    c.fill_rect(x0, py(b.accuracy), x1, bottom, 0x3b6fd1);  // accuracy bar
    // Gap to perfect calibration at the bin's mean confidence, drawn over the bar.
    const int ya = py(b.accuracy), yc = py(b.mean_confidence);
    c.fill_rect(x0, std::min(ya, yc), x1, std::max(ya, yc), 0xd64541);
  }
  c.line(px(0), py(0), px(1), py(1), 0x808080, 2);  // the diagonal
  c.line(left, top, left, bottom, 0, 2);            // axes
  c.line(left, bottom, right, bottom, 0, 2);
  for (int t = 0; t <= 4; ++t) {  // ticks at 0, .25, .5, .75, 1
    const double v = t / 4.0;
    char s[16];
    std::snprintf(s, sizeof s, "%.2g", v);
    c.line(px(v), bottom, px(v), bottom + 5, 0);
    c.text(px(v) - 6, bottom + 10, s, 0);
    c.line(left - 5, py(v), left, py(v), 0);
    c.text(8, py(v) - 5, s, 0);
  }
  char title[64];
  std::snprintf(title, sizeof title, "ECE %.2f%%", 100.0 * r.ece);
  c.text(left + 10, top + 5, title, 0);
  c.write_png(path);
}

}  // namespace jem
