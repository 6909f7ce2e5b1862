// PNG grids through libpng's simplified API (png_image): it reports errors in image.message
// instead of longjmp-ing through C++ frames, which the classic API requires.
#include "jem/png_grid.hpp"

#include <fcntl.h>
#include <png.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "jem/error.hpp"

namespace jem {
namespace {

std::uint8_t to_byte(float x) {
  if (!(x > -1.0f)) return 0;  // also NaN
  if (x >= 1.0f) return 255;
  return static_cast<std::uint8_t>(std::lround((double(x) + 1.0) * 127.5));
}

// write(2) until done, retrying on EINTR and short writes.
bool write_all(int fd, const std::uint8_t* p, std::size_t n) {
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= std::size_t(k);
  }
  return true;
}

// Readers never see a half-written file: the bytes go to a temporary file next to `path`
// (same file system, so rename is atomic), are fsync'ed, and the temporary replaces `path`.
void write_file_atomically(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  // A name of our own (pid + counter) opened with O_EXCL and mode 0666, so that the umask
  // applies as for any new file (mkstemp would force 0600).
  static std::atomic<unsigned> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  JEM_CHECK(fd >= 0, "cannot write PNG ", path, ": cannot create ", tmp, ": ", std::strerror(errno));
  const bool ok = write_all(fd, bytes.data(), bytes.size()) && ::fsync(fd) == 0;
  const int err = errno;
  const int closed = ::close(fd);
  const int close_err = errno;
  if (closed != 0 || !ok) {
    ::unlink(tmp.c_str());
    JEM_FAIL("cannot write PNG ", path, ": ", std::strerror(ok ? close_err : err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    JEM_FAIL("cannot write PNG ", path, ": rename from ", tmp, " failed: ", std::strerror(e));
  }
  // Make the rename itself durable; failing to sync the folder does not undo the write.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

void write_png_grid(const std::string& path, const float* images, int n, int channels, int height, int width,
                    int columns, int padding) {
  JEM_CHECK(n >= 1 && images != nullptr, "cannot write PNG ", path, ": no images (n = ", n, ")");
  JEM_CHECK(channels == 1 || channels == 3, "cannot write PNG ", path, ": ", channels,
            " channels (1 = grayscale or 3 = RGB)");
  JEM_CHECK(height >= 1 && width >= 1 && columns >= 0 && padding >= 0, "cannot write PNG ", path, ": bad geometry ",
            height, "x", width, ", columns ", columns, ", padding ", padding);
  int cols = columns;
  if (cols == 0)
    while (std::int64_t(cols) * cols < n) ++cols;  // ceil(sqrt(n)) without floating point
  if (cols > n) cols = n;
  const int rows = (n + cols - 1) / cols;
  const std::int64_t gw = std::int64_t(cols) * (width + padding) + padding;
  const std::int64_t gh = std::int64_t(rows) * (height + padding) + padding;
  JEM_CHECK(gw < (1 << 20) && gh < (1 << 20), "cannot write PNG ", path, ": grid of ", gw, "x", gh, " is too large");

  std::vector<std::uint8_t> pixels(std::size_t(gw * gh * channels), 0);  // padding stays black
  for (int i = 0; i < n; ++i) {
    const std::int64_t y0 = padding + std::int64_t(i / cols) * (height + padding);
    const std::int64_t x0 = padding + std::int64_t(i % cols) * (width + padding);
    for (int c = 0; c < channels; ++c)
      for (int h = 0; h < height; ++h) {
        const float* src = images + ((std::size_t(i) * channels + c) * height + h) * width;
        std::uint8_t* dst = pixels.data() + ((y0 + h) * gw + x0) * channels + c;
        for (int w = 0; w < width; ++w) dst[std::size_t(w) * channels] = to_byte(src[w]);
      }
  }

  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(gw);
  image.height = static_cast<png_uint_32>(gh);
  image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  // First call: the encoded size; second: the bytes.
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0, nullptr)) {
    const std::string msg = image.message;
    png_image_free(&image);
    JEM_FAIL("cannot write PNG ", path, ": libpng: ", msg);
  }
  std::vector<std::uint8_t> bytes(size);
  if (!png_image_write_to_memory(&image, bytes.data(), &size, 0, pixels.data(), 0, nullptr)) {
    const std::string msg = image.message;
    png_image_free(&image);
    JEM_FAIL("cannot write PNG ", path, ": libpng: ", msg);
  }
  bytes.resize(size);
  write_file_atomically(path, bytes);
}

std::vector<std::uint8_t> read_png_gray_or_rgb(const std::string& path, int* width, int* height, int* channels) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) {
    const std::string msg = image.message;
    png_image_free(&image);
    JEM_FAIL("cannot read PNG ", path, ": ", msg);
  }
  const bool color = (image.format & PNG_FORMAT_FLAG_COLOR) != 0;
  image.format = color ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  std::vector<std::uint8_t> pixels(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, pixels.data(), 0, nullptr)) {
    const std::string msg = image.message;
    png_image_free(&image);
    JEM_FAIL("cannot read PNG ", path, ": ", msg);
  }
  *width = static_cast<int>(image.width);
  *height = static_cast<int>(image.height);
  *channels = color ? 3 : 1;
  return pixels;
}

}  // namespace jem
