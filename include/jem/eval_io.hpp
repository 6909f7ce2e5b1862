// Small output helpers shared by the evaluation code: atomic file writes and RGB raster images.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace jem {

// Writes `bytes` to a temporary file next to `path`, then renames it over `path`: a failure
// leaves any existing file untouched. Errors name the path.
void write_file_atomic(const std::string& path, const std::string& bytes);

// An 8-bit RGB canvas for plots (interleaved, row-major, origin top-left).
struct Canvas {
  int width = 0, height = 0;
  std::vector<std::uint8_t> rgb;  // [height, width, 3]

  Canvas(int w, int h, std::uint8_t grey = 255);
  void set(int x, int y, std::uint32_t color);                          // 0xRRGGBB; ignores points outside
  void fill_rect(int x0, int y0, int x1, int y1, std::uint32_t color);  // inclusive corners
  void line(int x0, int y0, int x1, int y1, std::uint32_t color, int thickness = 1);
  // Tiny 3x5 pixel font (digits, '.', '-', upper-case letters), scale `s`.
  void text(int x, int y, const std::string& s, std::uint32_t color, int scale = 2);
  void write_png(const std::string& path) const;
};

}  // namespace jem

namespace jem {

// A progress display on stderr: a redrawn bar when stderr is a terminal, otherwise a plain
// line at every 10% (so logs stay readable). Call update(done, total) as work completes and
// finish() at the end (prints the elapsed time).
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  void update(std::int64_t done, std::int64_t total);
  void finish();
  double seconds() const;  // since construction

 private:
  std::string label_;
  bool tty_;
  int last_decile_ = -1;
  double start_;
};

}  // namespace jem
