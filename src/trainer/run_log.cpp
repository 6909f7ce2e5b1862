#include "jem/run_log.hpp"

#include <unistd.h>

#include <ctime>

#include "jem/error.hpp"

namespace jem {

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  const long s = long(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

RunLog::RunLog(const std::string& dir, bool quiet)
    : quiet_(quiet), tty_(!quiet && isatty(fileno(stderr))), start_(std::chrono::steady_clock::now()) {
  if (!dir.empty()) {
    log_ = std::fopen((dir + "/log.txt").c_str(), "a");
    JEM_CHECK(log_ != nullptr, dir, "/log.txt: cannot open for appending");
    metrics_ = std::fopen((dir + "/metrics.jsonl").c_str(), "a");
    JEM_CHECK(metrics_ != nullptr, dir, "/metrics.jsonl: cannot open for appending");
  }
}

RunLog::~RunLog() {
  end_progress();
  if (log_) std::fclose(log_);
  if (metrics_) std::fclose(metrics_);
}

void RunLog::info(const std::string& line) {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  if (log_) {
    std::fprintf(log_, "%s %s\n", stamp, line.c_str());
    std::fflush(log_);
  }
  if (!quiet_) {
    end_progress();
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

void RunLog::metrics(const std::string& json_object) {
  if (!metrics_) return;
  std::fprintf(metrics_, "%s\n", json_object.c_str());
  std::fflush(metrics_);
}

void RunLog::progress(std::int64_t done, std::int64_t total, const std::string& status) {
  if (!tty_) return;
  const auto now = std::chrono::steady_clock::now();
  if (first_done_ < 0) {
    first_done_ = done;
    start_ = now;
  }
  if (bar_open_ && done < total && now - last_draw_ < std::chrono::milliseconds(200)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? double(done - first_done_) / elapsed : 0.0;
  const double eta = rate > 0 ? double(total - done) / rate : -1.0;
  constexpr int kWidth = 24;
  const int filled = total > 0 ? int(double(kWidth) * double(done) / double(total)) : 0;
  std::string bar(std::size_t(filled), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r[%s] %lld/%lld %.2f it/s ETA %s %s\033[K", bar.c_str(),
               static_cast<long long>(done), static_cast<long long>(total), rate,
               format_duration(eta).c_str(), status.c_str());
  std::fflush(stderr);
  bar_open_ = true;
}

void RunLog::end_progress() {
  if (bar_open_) {
    std::fputc('\n', stderr);
    bar_open_ = false;
  }
}

}  // namespace jem
