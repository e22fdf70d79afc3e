// Shared definitions of the fused counting pass: the argument struct both twins take, and the
// per-value math (fp16/bf16 -> float, threshold compare) written once for host and device.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FN_HOST_DEVICE inline
#endif

namespace fastneurons {

// Element type of the pre-activations (codes used by fastneurons/kernels.py).
enum DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Element type of pos_active: int64 totals, or uint16 counts of recent rows that the caller adds into
// int64 totals before any position could pass 65,535 rows (CPU only: a quarter of the traffic of
// int64 rows, which is what a pass costs when few rows share a position).
enum PosType : int32_t { kPosInt64 = 0, kPosUInt16 = 1 };

// Everything one fused counting pass needs; see docs/design.md "Kernel contract".
// Rows are (b, s) pairs, row r = b * S + s. Strides are in elements of `pre`.
struct CountArgs {
  const void* pre = nullptr;         // [B, S, F] (strides stride_b, stride_s, 1)
  const int32_t* positions = nullptr;  // [B, S] contiguous, -1 = padding
  const uint8_t* counted = nullptr;  // [B, S] contiguous bool
  int64_t* active = nullptr;         // [F], accumulated
  void* pos_active = nullptr;        // [T, F] of pos_type, accumulated
  int64_t* bits = nullptr;           // [B, S, W] or null, overwritten
  int64_t* nan_count = nullptr;      // [1] or null, accumulated
  int64_t B = 0, S = 0, F = 0, W = 0, T = 0;
  int64_t stride_b = 0, stride_s = 0;
  float threshold = 0.0f;
  int32_t dtype = kFloat32;
  int32_t pos_type = kPosInt64;
  int32_t threads = 0;      // CPU: OpenMP threads (0 = OpenMP default)
  int32_t device_index = 0;  // CUDA: device of the tensors
};

FN_HOST_DEVICE float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// IEEE binary16 -> float32 (exact), branch-free enough to vectorise on the CPU.
FN_HOST_DEVICE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  // Normal numbers: rebias the exponent (15 -> 127); inf/NaN: all-ones exponent.
  uint32_t u = ((exponent + 112u) << 23) | (mantissa << 13);
  u = exponent == 0x1fu ? (0x7f800000u | (mantissa << 13)) : u;
  // Zero and subnormals: mantissa * 2^-24 is exact in float32.
  const float magnitude = exponent == 0 ? static_cast<float>(mantissa) * 5.9604644775390625e-8f
                                        : bits_to_float(u);
  return sign ? -magnitude : magnitude;
}

// bfloat16 is the top half of a float32.
FN_HOST_DEVICE float bfloat16_to_float(uint16_t b) {
  return bits_to_float(static_cast<uint32_t>(b) << 16);
}

// Element i of a row as float32, for the three supported element types.
template <int32_t kDType>
FN_HOST_DEVICE float load_as_float(const void* row, int64_t i) {
  if (kDType == kFloat32) return static_cast<const float*>(row)[i];
  if (kDType == kFloat16) return half_to_float(static_cast<const uint16_t*>(row)[i]);
  return bfloat16_to_float(static_cast<const uint16_t*>(row)[i]);
}

// A neuron is active iff its pre-activation exceeds the threshold; NaN compares false.
FN_HOST_DEVICE bool is_active(float value, float threshold) { return value > threshold; }

FN_HOST_DEVICE bool is_nan(float value) { return value != value; }

}  // namespace fastneurons
