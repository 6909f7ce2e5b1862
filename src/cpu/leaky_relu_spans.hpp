// The CPU backend's LeakyReLU passes over one contiguous span, shared by the unfused ops
// (cpu_backend.cpp, which split a tensor into spans across threads) and the fused convolution
// ops (conv2d.cpp, which run them on each image right after the convolution wrote it). One
// definition for both keeps the two ways bit-identical.
//
// Each is compiled for AVX-512, AVX2 and baseline x86-64, and the CPU's widest is used
// (leaky_relu_spans.cpp): the fused ops run them on cache-resident images, where the vector
// width, not memory, bounds them.
#pragma once

#include <cstdint>

namespace jem::cpu {

// y = leaky_relu(x)   (y may be x)
void leaky_relu_span(std::int64_t n, const float* x, float* y, float slope);
// y = leaky_relu(x + bias)   (one channel's plane; y may be x)
void bias_leaky_relu_span(std::int64_t n, const float* x, float bias, float* y, float slope);
// dx = dy * (x > 0 ? 1 : slope)   (dx may be dy)
void leaky_relu_grad_span(std::int64_t n, const float* x, const float* dy, float* dx, float slope);
// dx = dy * (x > 0 ? 1 : slope) + other   (dx may be dy or other)
void leaky_relu_grad_add_span(std::int64_t n, const float* x, const float* dy, const float* other,
                              float* dx, float slope);

}  // namespace jem::cpu
