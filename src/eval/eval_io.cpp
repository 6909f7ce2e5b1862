// Atomic file writes and the RGB canvas of the evaluation plots.
#include "jem/eval_io.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "jem/error.hpp"
#include "jem/png_grid.hpp"

namespace jem {

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  JEM_CHECK(f, path, ": cannot write (", std::strerror(errno), ")");
  const bool ok =
      std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  const int err = errno;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = ok && closed ? errno : err;
    std::remove(tmp.c_str());
    JEM_FAIL(path, ": write failed (", std::strerror(e), ")");
  }
}

Canvas::Canvas(int w, int h, std::uint8_t grey) : width(w), height(h), rgb(std::size_t(w) * std::size_t(h) * 3, grey) {
  JEM_CHECK(w > 0 && h > 0, "canvas: bad size ", w, "x", h);
}

void Canvas::set(int x, int y, std::uint32_t c) {
  if (x < 0 || y < 0 || x >= width || y >= height) return;
  std::uint8_t* p = rgb.data() + (std::size_t(y) * std::size_t(width) + std::size_t(x)) * 3;
  p[0] = std::uint8_t(c >> 16);
  p[1] = std::uint8_t(c >> 8);
  p[2] = std::uint8_t(c);
}

void Canvas::fill_rect(int x0, int y0, int x1, int y1, std::uint32_t c) {
  if (x0 > x1) std::swap(x0, x1);
  if (y0 > y1) std::swap(y0, y1);
  for (int y = std::max(y0, 0); y <= std::min(y1, height - 1); ++y)
    for (int x = std::max(x0, 0); x <= std::min(x1, width - 1); ++x) set(x, y, c);
}

void Canvas::line(int x0, int y0, int x1, int y1, std::uint32_t c, int thickness) {
  // Bresenham, each point stamped as a thickness x thickness square.
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
  const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  const int h0 = (thickness - 1) / 2, h1 = thickness / 2;
  while (true) {
    fill_rect(x0 - h0, y0 - h0, x0 + h1, y0 + h1, c);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) err += dy, x0 += sx;
    if (e2 <= dx) err += dx, y0 += sy;
  }
}

namespace {
// 3x5 glyphs, one row per 3 bits (bit 2 = left column), top row first.
struct Glyph {
  char c;
  std::uint8_t rows[5];
};
constexpr Glyph kFont[] = {
    {'0', {7, 5, 5, 5, 7}}, {'1', {2, 6, 2, 2, 7}}, {'2', {7, 1, 7, 4, 7}}, {'3', {7, 1, 7, 1, 7}},
    {'4', {5, 5, 7, 1, 1}}, {'5', {7, 4, 7, 1, 7}}, {'6', {7, 4, 7, 5, 7}}, {'7', {7, 1, 1, 1, 1}},
    {'8', {7, 5, 7, 5, 7}}, {'9', {7, 5, 7, 1, 7}}, {'.', {0, 0, 0, 0, 2}}, {'-', {0, 0, 7, 0, 0}},
    {'%', {5, 1, 2, 4, 5}}, {'/', {1, 1, 2, 4, 4}}, {'A', {2, 5, 7, 5, 5}}, {'C', {7, 4, 4, 4, 7}},
    {'E', {7, 4, 6, 4, 7}}, {'L', {4, 4, 4, 4, 7}}, {'P', {6, 5, 6, 4, 4}}, {'X', {5, 5, 2, 5, 5}},
    {'Y', {5, 5, 2, 2, 2}}, {'S', {7, 4, 7, 1, 7}}, {'N', {5, 7, 7, 7, 5}}, {'O', {7, 5, 5, 5, 7}},
    {'R', {6, 5, 6, 5, 5}}, {'I', {7, 2, 2, 2, 7}}, {'F', {7, 4, 6, 4, 4}}, {'D', {6, 5, 5, 5, 6}},
    {'G', {7, 4, 5, 5, 7}}, {'T', {7, 2, 2, 2, 2}}, {'U', {5, 5, 5, 5, 7}}, {'M', {5, 7, 7, 5, 5}},
    {'K', {5, 5, 6, 5, 5}}, {'B', {6, 5, 6, 5, 6}}, {'H', {5, 5, 7, 5, 5}}, {'V', {5, 5, 5, 5, 2}},
    {'W', {5, 5, 7, 7, 5}}, {'(', {1, 2, 2, 2, 1}}, {')', {4, 2, 2, 2, 4}},
    {'=', {0, 7, 0, 7, 0}}, {':', {0, 2, 0, 2, 0}}, {'+', {0, 2, 7, 2, 0}},
};
}  // namespace

void Canvas::text(int x, int y, const std::string& s, std::uint32_t c, int scale) {
  for (char ch : s) {
    const char up = (ch >= 'a' && ch <= 'z') ? char(ch - 'a' + 'A') : ch;
    for (const Glyph& g : kFont) {
      if (g.c != up) continue;
      for (int r = 0; r < 5; ++r)
        for (int col = 0; col < 3; ++col)
          if (g.rows[r] & (4 >> col))
            fill_rect(x + col * scale, y + r * scale, x + (col + 1) * scale - 1, y + (r + 1) * scale - 1, c);
      break;
    }
    x += 4 * scale;  // unknown characters (space) leave a gap
  }
}

void Canvas::write_png(const std::string& path) const {
  // Through the grid writer (one RGB tile, no padding): pixel v -> v / 127.5 - 1 maps back to
  // round((x + 1) * 127.5) = v exactly.
  const std::size_t plane = std::size_t(width) * std::size_t(height);
  std::vector<float> chw(plane * 3);
  for (std::size_t i = 0; i < plane; ++i)
    for (int ch = 0; ch < 3; ++ch)
      chw[std::size_t(ch) * plane + i] = float(rgb[i * 3 + std::size_t(ch)]) / 127.5f - 1.0f;
  write_png_grid(path, chw.data(), 1, 3, height, width, 1, 0);
}

}  // namespace jem

namespace jem {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

ProgressBar::ProgressBar(std::string label) : label_(std::move(label)), tty_(isatty(2) != 0), start_(now_seconds()) {}

double ProgressBar::seconds() const { return now_seconds() - start_; }

void ProgressBar::update(std::int64_t done, std::int64_t total) {
  const double f = total > 0 ? std::clamp(double(done) / double(total), 0.0, 1.0) : 1.0;
  if (tty_) {
    constexpr int kWidth = 30;
    const int fill = int(f * kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %3d%% %lld/%lld %.0fs", label_.c_str(),
                 std::string(std::size_t(fill), '#').c_str(), std::string(std::size_t(kWidth - fill), '.').c_str(),
                 int(f * 100), static_cast<long long>(done), static_cast<long long>(total), seconds());
    std::fflush(stderr);
  } else {
    const int decile = int(f * 10);
    if (decile > last_decile_) {
      last_decile_ = decile;
      std::fprintf(stderr, "%s: %lld/%lld (%d%%) %.1fs\n", label_.c_str(), static_cast<long long>(done),
                   static_cast<long long>(total), decile * 10, seconds());
    }
  }
}

void ProgressBar::finish() {
  if (tty_) std::fprintf(stderr, "\n");
  std::fprintf(stderr, "%s: done in %.1fs\n", label_.c_str(), seconds());
}

}  // namespace jem
