// Calibration: expected calibration error (ECE) over equal-width confidence bins, and the
// reliability diagram.
//
// ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|, where confidence is the max softmax
// probability and bin b of B holds the confidences in (b/B, (b+1)/B] (confidence 0 joins bin 0).
// The paper's successors use B = 20.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace jem {

struct CalibrationBin {
  double lo = 0, hi = 0;  // (lo, hi]
  std::int64_t count = 0;
  double mean_confidence = 0;  // 0 when empty
  double accuracy = 0;         // 0 when empty
};

struct CalibrationResult {
  double ece = 0;  // in [0, 1]
  std::int64_t count = 0;
  std::vector<CalibrationBin> bins;
};

// confidence[i] in [0, 1], correct[i] 0/1, the same length.
CalibrationResult expected_calibration_error(const std::vector<float>& confidence,
                                             const std::vector<std::uint8_t>& correct, int bins = 20);

// The reliability diagram: accuracy per bin as bars (blue), the diagonal (perfect
// calibration, grey), the gap to the diagonal in red, and the ECE printed in the corner.
void write_reliability_png(const std::string& path, const CalibrationResult& r);

}  // namespace jem
