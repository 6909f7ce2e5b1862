// Image grids as PNG files (samples, buffer snapshots, per-class grids).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace jem {

// Writes n images, NCHW floats in [-1, 1] (clamped; NaN as -1), as one grid PNG: 1 channel ->
// 8-bit grayscale, 3 -> 8-bit RGB. Pixel value round((x + 1) / 2 * 255). Layout as
// torchvision's make_grid: `columns` tiles per row (0: ceil(sqrt(n)); at most n), `padding`
// black pixels between tiles and around the border, so tile (r, c) starts at
// (padding + r * (height + padding), padding + c * (width + padding)).
// Written atomically: a temporary file in the same folder, fsync, rename over `path`.
// Errors name the path.
void write_png_grid(const std::string& path, const float* images, int n, int channels, int height, int width,
                    int columns = 0, int padding = 2);

// Reads an 8-bit PNG as grayscale (1 channel) or RGB (3, interleaved): whichever the file is.
std::vector<std::uint8_t> read_png_gray_or_rgb(const std::string& path, int* width, int* height, int* channels);

}  // namespace jem
