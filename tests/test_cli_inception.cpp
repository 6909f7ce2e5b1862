// `jem inception-check`: runs a converted weights file and prints the output shapes; a missing
// file is a one-line error naming it and a non-zero exit.
#include <gtest/gtest.h>

#include <filesystem>

#include "inception_weights.hpp"
#include "test_support.hpp"

namespace jem::test {
namespace {

TEST(InceptionCheckCli, RunsRandomWeightsAndPrintsShapes) {
  const std::string dir = temp_dir("cli_inception");
  const std::string weights = write_random_weights(dir);
  std::string out;
  const int rc =
      run_command(jem_binary() + " inception-check --inception " + weights +
                      " --device cpu --threads 2 --batch 2 --size 28 --channels 1" + " --repeats 1",
                  &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("input [2, 1, 28, 28] -> features [2, 2048], logits [2, 1008]"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("all outputs finite"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}

TEST(InceptionCheckCli, MissingFileIsAOneLineError) {
  const std::string missing = temp_dir("cli_inception_missing") + "/absent.safetensors";
  std::string out;
  const int rc =
      run_command(jem_binary() + " inception-check --inception " + missing + " --device cpu", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("jem: error: "), std::string::npos) << out;
  EXPECT_NE(out.find(missing), std::string::npos) << out;
}

}  // namespace
}  // namespace jem::test
