// How the CUDA backend computes convolutions and GEMMs (all other ops are plain float math).
#pragma once

namespace jem::cuda {

// FP32: float FMA math only (CUDNN_FMA_MATH, CUBLAS_DEFAULT_MATH), deterministic cuDNN backward
//       algorithms; agrees with the CPU to a few ulp times sqrt(reduction length).
// TF32: tensor cores with inputs rounded to a 10-bit mantissa (CUDNN_TENSOR_OP_MATH,
//       CUBLAS_TF32_TENSOR_OP_MATH); ~1e-3 relative error, the fastest algorithm cuDNN finds.
enum class MathMode { FP32, TF32 };

inline const char* to_string(MathMode m) { return m == MathMode::FP32 ? "FP32" : "TF32"; }

}  // namespace jem::cuda
