// What a run tells its user: log.txt and stderr lines, metrics.jsonl, and a live progress bar
// with an ETA on a terminal (plain periodic lines otherwise).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace jem {

class RunLog {
 public:
  // `dir` empty: stderr only (no files). `quiet`: no stderr progress (tests).
  RunLog(const std::string& dir, bool quiet);
  ~RunLog();
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;

  // A line for log.txt and stderr, time-stamped.
  void info(const std::string& line);
  // One JSON object per line in metrics.jsonl (flushed: a crash loses at most the line being written).
  void metrics(const std::string& json_object);
  // Progress of iteration `done` of `total`; redraws the bar at most ~5 times a second on a
  // terminal, no-op otherwise.
  void progress(std::int64_t done, std::int64_t total, const std::string& status);
  // Ends the bar's line, so that the next stderr line starts clean.
  void end_progress();

 private:
  FILE* log_ = nullptr;
  FILE* metrics_ = nullptr;
  bool quiet_, tty_;
  bool bar_open_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::int64_t first_done_ = -1;
};

// "1h02m", "3m07s", "12s"
std::string format_duration(double seconds);

}  // namespace jem
