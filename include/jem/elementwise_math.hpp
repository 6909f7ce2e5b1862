// Per-element math shared by the CPU backend and the CUDA kernels: written once, compiled for
// both, so that the CPU tests check what the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define JEM_HD __host__ __device__ __forceinline__
#else
#define JEM_HD inline
#endif

namespace jem {

JEM_HD float leaky_relu(float x, float slope) { return x > 0.0f ? x : slope * x; }

// Gradient through LeakyReLU given the forward INPUT x (x == 0 takes the negative side, as
// PyTorch does).
JEM_HD float leaky_relu_grad(float x, float dy, float slope) { return x > 0.0f ? dy : slope * dy; }

}  // namespace jem
