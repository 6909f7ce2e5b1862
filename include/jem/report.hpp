// report.md and report.json from the evaluation suite's results: the JEM paper's table
// layouts (accuracy / IS / FID, calibration, OOD AUROC, robustness) with the paper's numbers
// beside ours, and links to the plots.
#pragma once

#include <string>

#include "jem/eval_suite.hpp"

namespace jem {

// The numbers as JSON (indented), for scripts: every field of SuiteResults that was computed,
// plus the paper's reference numbers under "paper".
std::string report_json(const SuiteResults& r);
// The Markdown report; image links are relative to the report's folder.
std::string report_markdown(const SuiteResults& r);
// Writes out_dir/report.md and out_dir/report.json (atomically).
void write_report(const std::string& out_dir, const SuiteResults& r);

}  // namespace jem
