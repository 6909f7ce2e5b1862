#include "reference_model.hpp"

#include <string>

namespace jem::test {

WrnConfig reference_config(const safetensors::File& f) {
  const auto& m = f.metadata();
  WrnConfig c;
  c.depth = std::stoi(m.at("depth"));
  c.width = std::stoi(m.at("width"));
  c.in_channels = std::stoi(m.at("channels"));
  c.image_size = std::stoi(m.at("image_size"));
  c.n_classes = std::stoi(m.at("n_classes"));
  return c;
}

}  // namespace jem::test
