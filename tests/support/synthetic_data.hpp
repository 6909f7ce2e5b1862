// A small synthetic data set in the real MNIST file format, for end-to-end tests of training:
// class k lights up a k-dependent block of pixels on a noisy background, so a tiny network
// learns it within tens of iterations.
#pragma once

#include <string>

namespace jem::test {

// Writes train-images-idx3-ubyte / train-labels-idx1-ubyte / t10k-* (raw IDX) into `dir`.
void write_synthetic_mnist(const std::string& dir, int n_train, int n_test, int size, int classes,
                           unsigned seed = 1);

}  // namespace jem::test
