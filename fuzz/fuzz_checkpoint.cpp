// Fuzz target: the checkpoint load path (load_checkpoint,
// checkpoint_model_config, checkpoint_config) into a tiny WRN-10-1 on 1x4x4
// images with a 2-entry replay buffer.
//
// The input is the START of a checkpoint file: the 8-byte header length and the
// JSON header (plus anything after it). The target appends the zero bytes of a
// real checkpoint's data section (~1 MB of weights, optimizer moments, buffer)
// so that the fuzzer spends its time on what can be malformed in a small space
// (lengths, JSON, dtypes, shapes, offsets, names, the metadata) instead of
// mutating a megabyte of floats. Truncated data sections are covered by
// fuzz_safetensors, which feeds its input as it is.
//
// Seed: JEM_FUZZ_WRITE_SEED=FILE fuzz_checkpoint writes the header of a real
// checkpoint of this model to FILE (scripts/fuzz.sh --seeds does it).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <vector>

#include "fuzz_support.hpp"
#include "jem/checkpoint.hpp"
#include "jem/error.hpp"
#include "jem/optimizer.hpp"
#include "jem/runtime.hpp"
#include "jem/safetensors.hpp"
#include "jem/sampler.hpp"
#include "jem/wide_resnet.hpp"

namespace {

struct Tiny {
  std::unique_ptr<jem::Backend> backend = jem::make_backend("cpu", 1);
  jem::WrnConfig config = [] {
    jem::WrnConfig c;
    c.depth = 10;
    c.width = 1;
    c.in_channels = 1;
    c.image_size = 4;
    c.n_classes = 2;
    return c;
  }();
  jem::WideResNet model{config, *backend, 2};
  jem::Optimizer optimizer{*backend, jem::OptimizerConfig{}, model.num_params()};
  jem::ReplayBuffer buffer{*backend, 2, 1, 4, 1};
  std::size_t data_bytes = 0;  // size of a real checkpoint's data section
};

Tiny* g_tiny = nullptr;  // built once: the fuzz loop must not rebuild a model per input

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_tiny = new Tiny;
  g_tiny->model.init(1);
  g_tiny->buffer.init_uniform(1);
  g_tiny->optimizer.reset();
  // A real checkpoint of this model: its data size, and (on request) its header
  // as the seed.
  const std::string path = jem::fuzz::scratch_file("real_ckpt", nullptr, 0);
  jem::save_checkpoint(path, g_tiny->model, g_tiny->optimizer, g_tiny->buffer, jem::TrainState{}, "seed = 1\n");
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t(std::uint8_t(bytes[i])) << (8 * i);
  g_tiny->data_bytes = bytes.size() - 8 - n;
  if (const char* seed = std::getenv("JEM_FUZZ_WRITE_SEED")) {
    std::ofstream out(seed, std::ios::binary);
    out.write(bytes.data(), std::streamsize(8 + n));
  }
  std::remove(path.c_str());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> bytes(data, data + size);
  bytes.resize(size + g_tiny->data_bytes, 0);
  try {
    const auto f = jem::safetensors::File::from_bytes(std::move(bytes), "fuzz.safetensors");
    try {
      (void)jem::checkpoint_model_config(f);
    } catch (const jem::Error& e) {
      jem::fuzz::rejected(e);
    }
    const jem::TrainState s = jem::load_checkpoint(f, g_tiny->model, g_tiny->optimizer, g_tiny->buffer);
    // A state the trainer cannot continue from must be rejected by the reader,
    // not loaded.
    if (s.iteration < 0 || !(s.lr_factor > 0) || s.retries < 0) __builtin_trap();
  } catch (const jem::Error& e) {
    jem::fuzz::rejected(e);
  }
  return 0;
}
