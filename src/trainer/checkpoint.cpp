#include "jem/checkpoint.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "jem/optimizer.hpp"
#include "jem/safetensors.hpp"
#include "jem/sampler.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

namespace fs = std::filesystem;

void save_checkpoint(const std::string& path, const WideResNet& model, const Optimizer& optimizer,
                     const ReplayBuffer& buffer, const TrainState& state,
                     const std::string& config_toml) {
  const Tensor& buf = buffer.data();
  const auto host = model.backend().to_vector(buf);
  save_checkpoint(path, model, optimizer, host.data(), buf.shape(), state, config_toml);
}

void save_checkpoint(const std::string& path, const WideResNet& model, const Optimizer& optimizer,
                     const float* buffer_host, const Shape& bs, const TrainState& state,
                     const std::string& config_toml) {
  JEM_CHECK(bs.rank() == 4, path, ": replay buffer shape ", bs.str(), " is not [S, C, H, W]");
  safetensors::Writer w;
  model.save(w);
  optimizer.save(w);
  w.add_f32("replay_buffer", {bs[0], bs[1], bs[2], bs[3]}, buffer_host);
  w.set_metadata("format", kCheckpointFormat);
  const WrnConfig& mc = model.config();
  w.set_metadata("model", mc.str());
  w.set_metadata("depth", std::to_string(mc.depth));
  w.set_metadata("width", std::to_string(mc.width));
  w.set_metadata("channels", std::to_string(mc.in_channels));
  w.set_metadata("image_size", std::to_string(mc.image_size));
  w.set_metadata("n_classes", std::to_string(mc.n_classes));
  char slope[64];
  std::snprintf(slope, sizeof slope, "%.9g", double(mc.slope));
  w.set_metadata("slope", slope);
  w.set_metadata("iteration", std::to_string(state.iteration));
  char lr[64];
  std::snprintf(lr, sizeof lr, "%.17g", state.lr_factor);
  w.set_metadata("lr_factor", lr);
  w.set_metadata("retries", std::to_string(state.retries));
  w.set_metadata("sampler_seed", std::to_string(state.sampler_seed));
  w.set_metadata("config", config_toml);
  w.write(path);
}

static std::string meta(const safetensors::File& f, const std::string& key) {
  auto it = f.metadata().find(key);
  JEM_CHECK(it != f.metadata().end(), f.path(), ": not a jem checkpoint (no metadata '", key, "')");
  return it->second;
}

TrainState load_checkpoint(const std::string& path, WideResNet& model, Optimizer& optimizer,
                           ReplayBuffer& buffer) {
  return load_checkpoint(safetensors::File::read(path), model, optimizer, buffer);
}

TrainState load_checkpoint(const std::string& path, WideResNet& model, Optimizer& optimizer,
                           ReplayBuffer& buffer, const BufferShard& shard) {
  return load_checkpoint(safetensors::File::read(path), model, optimizer, buffer, shard);
}

TrainState load_checkpoint(const safetensors::File& f, WideResNet& model, Optimizer& optimizer,
                           ReplayBuffer& buffer) {
  return load_checkpoint(f, model, optimizer, buffer, make_buffer_shard(buffer.size(), 1, 1, 0));
}

TrainState load_checkpoint(const safetensors::File& f, WideResNet& model, Optimizer& optimizer,
                           ReplayBuffer& buffer, const BufferShard& shard) {
  const std::string& path = f.path();
  JEM_CHECK(meta(f, "format") == kCheckpointFormat, path, ": checkpoint format '",
            meta(f, "format"), "', expected ", kCheckpointFormat);
  const Tensor& buf = buffer.data();
  JEM_CHECK(shard.local_size() == buf.dim(0), path, ": internal: a shard of ", shard.local_size(),
            " slots for a local buffer of ", buf.dim(0));
  model.load(f);
  optimizer.load(f);
  auto data = f.f32_checked("replay_buffer", {shard.global_size, buf.dim(1), buf.dim(2), buf.dim(3)});
  if (shard.world > 1) {
    // This rank's slots, in local order, moved to the front (each row moves forward or stays).
    const std::size_t row = std::size_t(buf.dim(1) * buf.dim(2) * buf.dim(3));
    for (int i = 0; i < shard.local_size(); ++i)
      std::copy_n(data.begin() + std::ptrdiff_t(std::size_t(shard.global_row(i)) * row), row,
                  data.begin() + std::ptrdiff_t(std::size_t(i) * row));
  }
  model.backend().upload(data.data(), buf);
  TrainState s;
  try {
    s.iteration = std::stoll(meta(f, "iteration"));
    s.lr_factor = std::stod(meta(f, "lr_factor"));
    s.retries = std::stoi(meta(f, "retries"));
    s.sampler_seed = std::stoull(meta(f, "sampler_seed"));
  } catch (const std::logic_error& e) {  // stoll & co. on a damaged value
    JEM_FAIL(path, ": damaged training state in the metadata (", e.what(), ")");
  }
  // Parsable but impossible values would otherwise be trained from (found by fuzz_checkpoint).
  JEM_CHECK(s.iteration >= 0 && std::isfinite(s.lr_factor) && s.lr_factor > 0 && s.retries >= 0, path,
            ": damaged training state in the metadata (iteration ", s.iteration, ", lr_factor ", s.lr_factor,
            ", retries ", s.retries, ")");
  return s;
}

bool load_model_weights(const safetensors::File& f, WideResNet& model, const std::string& which) {
  JEM_CHECK(which == "auto" || which == "ema" || which == "raw", "weights '", which, "': expected auto, ema or raw");
  model.load(f);
  const bool has = f.contains("optim.ema");
  JEM_CHECK(has || which != "ema", f.path(), ": no moving average of the parameters (tensor 'optim.ema'; train with ",
            "ema > 0), use --weights raw");
  if (!has || which == "raw") return false;
  const Tensor& p = model.param_buffer();
  model.backend().upload(f.f32_checked("optim.ema", {p.numel()}).data(), p);
  return true;
}

WrnConfig checkpoint_model_config(const std::string& path) {
  return checkpoint_model_config(safetensors::File::read(path));
}

WrnConfig checkpoint_model_config(const safetensors::File& f) {
  const std::string& path = f.path();
  WrnConfig c;
  try {
    c.depth = std::stoi(meta(f, "depth"));
    c.width = std::stoi(meta(f, "width"));
    c.in_channels = std::stoi(meta(f, "channels"));
    c.image_size = std::stoi(meta(f, "image_size"));
    c.n_classes = std::stoi(meta(f, "n_classes"));
    auto it = f.metadata().find("slope");  // absent in converted official checkpoints: 0.2
    if (it != f.metadata().end()) c.slope = std::stof(it->second);
  } catch (const std::logic_error& e) {
    JEM_FAIL(path, ": damaged model description in the metadata (", e.what(), ")");
  }
  c.validate();
  return c;
}

std::string checkpoint_config(const std::string& path) {
  const auto f = safetensors::File::read(path);
  return meta(f, "config");
}

std::string checkpoint_name(std::int64_t iteration) {
  char name[64];
  std::snprintf(name, sizeof name, "ckpt_%09lld.safetensors", static_cast<long long>(iteration));
  return name;
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    // Exactly ckpt_<9 digits>.safetensors: temp files ("...safetensors.tmp.<pid>") do not count.
    if (name.size() == 26 && name.rfind("ckpt_", 0) == 0 &&
        name.compare(14, std::string::npos, ".safetensors") == 0)
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());  // zero-padded iterations sort by name
  return out;
}

}  // namespace jem
