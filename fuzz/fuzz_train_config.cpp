// Fuzz target: the TOML config file reader (`--config FILE`), then validate()
// and the to_toml() round trip, which must give back the same struct for every
// config validate() accepts.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "jem/error.hpp"
#include "jem/train_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = jem::fuzz::scratch_file("config.toml", data, size);
  jem::TrainConfig cfg;
  try {
    cfg = jem::parse_train_config({"--config", path});
    jem::validate(cfg, 10);
  } catch (const jem::Error& e) {
    jem::fuzz::rejected(e);
    return 0;
  }
  const std::string text = jem::to_toml(cfg);
  const std::string again =
      jem::fuzz::scratch_file("config_again.toml", reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
  if (!(jem::parse_train_config({"--config", again}) == cfg)) __builtin_trap();
  return 0;
}
