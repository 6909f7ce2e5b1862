// report.md / report.json: the paper's tables with its numbers beside ours.
#include "jem/report.hpp"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "jem/eval_io.hpp"
#include "jem/ood.hpp"

namespace jem {

namespace {

// The JEM paper's numbers (see /work/shared/JEM.md); CIFAR-10 unless stated.
struct PaperOod {
  const char* set;  // our name of the OOD set
  const char* label;
  double logsumexp, max_softmax;
};
constexpr PaperOod kPaperOod[] = {
    {"svhn", "SVHN", 0.67, 0.89}, {"interp", "CIFAR-10 interp", 0.65, 0.75}, {"cifar100", "CIFAR-100", 0.67, 0.87}};
constexpr double kPaperAccuracy = 0.929, kPaperIs = 8.76, kPaperFid = 38.4;
constexpr double kPaperEceJem = 0.0487, kPaperEceBaseline = 0.2232;  // CIFAR-100

std::string pct(double v) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f%%", 100.0 * v);
  return s;
}
std::string num(double v, const char* fmt = "%.3f") {
  char s[32];
  std::snprintf(s, sizeof s, fmt, v);
  return s;
}

}  // namespace

std::string report_json(const SuiteResults& r) {
  using nlohmann::json;
  json j;
  j["checkpoint"] = r.checkpoint;
  j["dataset"] = r.dataset;
  j["split"] = r.split;
  j["model"] = r.model;
  j["images"] = r.images;
  if (r.accuracy)
    j["accuracy"] = {{"accuracy", r.accuracy->accuracy},
                     {"mean_ce", r.accuracy->mean_ce},
                     {"mean_energy", r.accuracy->mean_energy},
                     {"count", r.accuracy->count}};
  if (r.calibration) {
    json bins = json::array();
    for (const auto& b : r.calibration->bins)
      bins.push_back({{"lo", b.lo},
                      {"hi", b.hi},
                      {"count", b.count},
                      {"confidence", b.mean_confidence},
                      {"accuracy", b.accuracy}});
    j["calibration"] = {{"ece", r.calibration->ece}, {"bins", bins}, {"count", r.calibration->count}};
  }
  if (!r.ood.empty()) {
    json sets = json::object();
    for (const auto& s : r.ood) {
      json a;
      for (int i = 0; i < 3; ++i) a[kOodScoreNames[i]] = s.auroc[i];
      sets[s.name] = {{"count", s.count}, {"auroc", a}};
    }
    j["ood"] = sets;
  }
  if (!r.robustness.empty()) {
    json pts = json::array();
    for (const auto& p : r.robustness)
      pts.push_back({{"norm", p.norm}, {"eps", p.eps}, {"accuracy", p.accuracy}, {"mean_loss", p.mean_loss}});
    j["robustness"] = {{"points", pts}, {"purify_steps", r.purify_steps}};
  }
  if (r.fid)
    j["fid"] = {{"fid", r.fid->fid}, {"is_mean", r.fid->is_mean}, {"is_std", r.fid->is_std}, {"count", r.fid->count}};
  j["files"] = r.files;
  j["seconds"] = r.seconds;
  json paper;
  paper["cifar10"] = {{"accuracy", kPaperAccuracy}, {"inception_score", kPaperIs}, {"fid", kPaperFid}};
  paper["cifar100_ece"] = {{"jem", kPaperEceJem}, {"baseline", kPaperEceBaseline}};
  json po;
  for (const auto& p : kPaperOod) po[p.set] = {{"logsumexp", p.logsumexp}, {"max_softmax", p.max_softmax}};
  paper["cifar10_ood_auroc"] = po;
  j["paper"] = paper;
  return j.dump(2) + "\n";
}

std::string report_markdown(const SuiteResults& r) {
  std::ostringstream m;
  m << "# JEM evaluation report\n\n";
  m << "| | |\n|---|---|\n";
  m << "| checkpoint | `" << r.checkpoint << "` |\n| model | " << r.model << " |\n| data | " << r.dataset << " "
    << r.split << " (" << r.images << " images) |\n\n";
  m << "The paper's numbers are for CIFAR-10 (calibration: CIFAR-100) with WRN-28-10; compare like with like.\n\n";

  m << "## Classification and generation (paper Table 1 layout)\n\n";
  m << "| model | accuracy % | IS | FID |\n|---|---|---|---|\n";
  m << "| JEM (paper, CIFAR-10) | " << num(100 * kPaperAccuracy, "%.1f") << " | " << num(kPaperIs, "%.2f") << " | "
    << num(kPaperFid, "%.1f") << " |\n";
  m << "| this checkpoint (" << r.dataset << ") | " << (r.accuracy ? num(100 * r.accuracy->accuracy, "%.2f") : "-")
    << " | " << (r.fid ? num(r.fid->is_mean, "%.2f") : "-") << " | " << (r.fid ? num(r.fid->fid, "%.1f") : "-")
    << " |\n\n";
  if (r.accuracy)
    m << "Mean cross-entropy " << num(r.accuracy->mean_ce, "%.4f") << ", mean energy "
      << num(r.accuracy->mean_energy, "%.4f") << ".\n\n";
  if (!r.fid) m << "IS / FID: not computed (run with `--inception FILE`, see docs/fid.md).\n\n";

  if (r.calibration) {
    m << "## Calibration\n\n";
    m << "| model | ECE (" << r.calibration->bins.size() << " bins) |\n|---|---|\n";
    m << "| baseline classifier (paper, CIFAR-100) | " << pct(kPaperEceBaseline) << " |\n";
    m << "| JEM (paper, CIFAR-100) | " << pct(kPaperEceJem) << " |\n";
    m << "| this checkpoint (" << r.dataset << ") | " << pct(r.calibration->ece) << " |\n\n";
    if (r.files.count("reliability")) m << "![reliability diagram](" << r.files.at("reliability") << ")\n\n";
  }

  if (!r.ood.empty()) {
    m << "## Out-of-distribution detection (AUROC, in-distribution test images positive)\n\n";
    m << "| score | ";
    for (const auto& s : r.ood) m << s.name << " | ";
    m << "\n|---|";
    for (std::size_t i = 0; i < r.ood.size(); ++i) m << "---|";
    m << "\n";
    const char* labels[3] = {"log p(x) (logsumexp)", "max p(y\\|x)", "-‖∂ log p(x)/∂x‖"};
    for (int i = 0; i < 3; ++i) {
      m << "| " << labels[i] << " | ";
      for (const auto& s : r.ood) m << num(s.auroc[i], "%.3f") << " | ";
      m << "\n";
    }
    m << "\nThe paper (JEM trained on CIFAR-10):\n\n| score | SVHN | CIFAR-10 interp | CIFAR-100 | CelebA |\n"
         "|---|---|---|---|---|\n| log p(x) | .67 | .65 | .67 | .75 |\n| max p(y\\|x) | .89 | .75 | .87 | .79 |\n\n";
    m << "Histograms (in-distribution: black outline; OOD sets in colour:";
    for (std::size_t i = 0; i < r.ood.size(); ++i) {
      char c[16];
      std::snprintf(c, sizeof c, "#%06x", ood_color(int(i)));
      m << " " << r.ood[i].name << " " << c << (i + 1 < r.ood.size() ? "," : "");
    }
    m << ")\n\n";
    for (int i = 0; i < 3; ++i) {
      const std::string key = std::string("ood_") + kOodScoreNames[i];
      if (r.files.count(key)) m << "![" << kOodScoreNames[i] << "](" << r.files.at(key) << ")\n";
    }
    m << "\n";
  }

  if (!r.robustness.empty()) {
    m << "## Adversarial robustness (PGD"
      << (r.purify_steps > 0 ? ", then " + std::to_string(r.purify_steps) + " SGLD purification steps" : "") << ")\n\n";
    m << "eps on the [0, 1] pixel scale. The attack differentiates the classifier only.\n\n";
    m << "| norm | eps | accuracy % | mean CE of attacked images |\n|---|---|---|---|\n";
    for (const auto& p : r.robustness)
      m << "| " << p.norm << " | " << num(p.eps, "%.4g")
        << (p.norm == "linf" ? " (" + num(p.eps * 255, "%.3g") + "/255)" : "") << " | " << num(100 * p.accuracy, "%.2f")
        << " | " << num(p.mean_loss, "%.4f") << " |\n";
    m << "\n";
    if (r.files.count("robustness")) m << "![robustness](" << r.files.at("robustness") << ")\n\n";
  }

  if (r.files.count("samples_fresh")) {
    m << "## Samples\n\nUnconditional (fresh chains): ![fresh](" << r.files.at("samples_fresh") << ")\n\n";
    if (r.files.count("samples_conditional"))
      m << "Class-conditional (one row per class): ![conditional](" << r.files.at("samples_conditional") << ")\n\n";
    if (r.files.count("buffer_by_class"))
      m << "Replay buffer by predicted class: ![buffer](" << r.files.at("buffer_by_class") << ")\n\n";
    m << "Raw samples: `" << r.files.at("samples_npz") << "`.\n\n";
  }

  if (!r.seconds.empty()) {
    m << "## Time per mode\n\n| mode | seconds |\n|---|---|\n";
    for (const auto& [mode, s] : r.seconds) m << "| " << mode << " | " << num(s, "%.1f") << " |\n";
  }
  return m.str();
}

void write_report(const std::string& out_dir, const SuiteResults& r) {
  namespace fs = std::filesystem;
  write_file_atomic((fs::path(out_dir) / "report.md").string(), report_markdown(r));
  write_file_atomic((fs::path(out_dir) / "report.json").string(), report_json(r));
}

}  // namespace jem
