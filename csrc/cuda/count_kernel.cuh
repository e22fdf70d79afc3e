// The device code of the CUDA twin: count_kernel<dtype> (the pass) and read_kernel (a plain read of
// the same bytes). Only CUDA built-ins and counting.h: count_cuda.cu launches these kernels, and
// tests/cuda_emulation/ runs them on the CPU, one std::thread per lane, against the CPU twin.
#pragma once

#include <cstdint>

#include "../counting.h"

namespace fastneurons {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = 32 * kWarpsPerBlock;
// Resident blocks per SM the kernel is compiled for (at most 64 registers a thread, no spills with
// nvcc 13 for sm_90): 32 warps per SM.
constexpr int kMinBlocksPerSM = 4;
// A warp handles at least this many rows, so the final per-lane atomics stay a small cost.
constexpr int64_t kMinRowsPerWarp = 16;
// Rows a warp loads before it uses any of them: their loads are independent, so 4 rows x 256 B
// (float32) or x 128 B (16-bit) per warp are in flight. 8 rows for 16-bit types needed 115 registers
// (2 blocks per SM) or spilled at 64; gpu_check.py's bandwidth fraction says whether more is needed.
constexpr int kRowsInFlight32 = 4, kRowsInFlight16 = 4;

// Row chunks per word for a grid of at most one wave of `resident_warps` warps (rounding down: a
// second, partial wave would take as long as the first), never chunks under kMinRowsPerWarp rows.
inline int64_t row_chunks(int64_t rows, int64_t words, int64_t resident_warps) {
  const int64_t by_occupancy = resident_warps / words;
  const int64_t by_work = (rows + kMinRowsPerWarp - 1) / kMinRowsPerWarp;
  const int64_t chunks = by_occupancy < by_work ? by_occupancy : by_work;
  return chunks > 1 ? chunks : 1;
}

// Sizes of one pass (CountArgs without its pointers).
struct Shape {
  int64_t B, S, F, W, T, stride_b, stride_s;
  float threshold;
};

// The per-lane sums of one warp, flushed with one atomic per lane.
struct LaneSums {
  unsigned long long active_lo = 0, active_hi = 0;
  unsigned long long run_lo = 0, run_hi = 0;  // pos_active of the current position run
  int64_t run_position = -1;
  int nans = 0;
};

// pos_active of the run that just ended (rows of one position), if the position is in the table.
__device__ __forceinline__ void flush_run(LaneSums& sums, unsigned long long* __restrict__ pos_active,
                                          const Shape& shape, int64_t n_lo, int64_t n_hi) {
  if (sums.run_position >= 0 && sums.run_position < shape.T) {
    unsigned long long* counts = pos_active + sums.run_position * shape.F;
    if (sums.run_lo) atomicAdd(counts + n_lo, sums.run_lo);
    if (sums.run_hi) atomicAdd(counts + n_hi, sums.run_hi);
  }
  sums.run_lo = sums.run_hi = 0;
}

// A float16 or bfloat16 value from its 16 bits.
template <int32_t kDType>
__device__ __forceinline__ float half_bits_to_float(uint32_t bits16) {
  if constexpr (kDType == kFloat16) {
    return half_to_float(static_cast<uint16_t>(bits16));
  } else {
    return bfloat16_to_float(static_cast<uint16_t>(bits16));
  }
}

// Shapes: pre [B, S, F] (strides stride_b, stride_s, 1), positions/counted [B, S],
// bits [B, S, W] (or null), active [F], pos_active [T, F], nan_count [1] (or null).
// Thread mapping: 1-D grid of kWarpsPerBlock-warp blocks, sized from occupancy and the SM count;
// global warp g handles word w = g % W for one contiguous chunk k = g / W of the rows taken
// position-major (i = s * B + b), so that consecutive rows of a warp usually share their position.
// Lane j reads neurons 64w + j and 64w + 32 + j (two coalesced loads per row); two ballots give the
// 64-bit word, which lane 0 stores. The warp loads kRows rows (positions, counted flags and values,
// pad rows included: they are valid memory) before it uses any, so their loads overlap; 16-bit
// values are kept as raw bits (both of a lane's in one register) until they are compared.
// Per-lane registers sum `active` (one atomic per lane at the end) and pos_active while the
// position stays the same (one atomic per lane and position run, only where non-zero). The NaN
// count is reduced over the warp and added once. Any position < 0 is padding (bits row zeroed,
// nothing counted). Rows with position >= T add nothing to pos_active (no check without a host
// sync); they still count in bits, active and nan_count. Integer atomics: results are exact and
// independent of the schedule, bit-identical to the CPU twin.
template <int32_t kDType>
__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSM)
count_kernel(const char* __restrict__ pre, const int32_t* __restrict__ positions,
             const uint8_t* __restrict__ counted, int64_t* __restrict__ bits,
             unsigned long long* __restrict__ active, unsigned long long* __restrict__ pos_active,
             unsigned long long* __restrict__ nan_count, const Shape shape, const int64_t chunks) {
  constexpr int kRows = kDType == kFloat32 ? kRowsInFlight32 : kRowsInFlight16;
  constexpr int64_t kElem = kDType == kFloat32 ? 4 : 2;
  const int lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (g >= shape.W * chunks) return;  // uniform over the warp
  const int64_t w = g % shape.W, k = g / shape.W;
  const int64_t n_lo = w * 64 + lane, n_hi = n_lo + 32;
  const bool has_lo = n_lo < shape.F, has_hi = n_hi < shape.F;
  const int64_t rows = shape.B * shape.S;
  const int64_t chunk = (rows + chunks - 1) / chunks;
  const int64_t first = k * chunk, last = min(rows, first + chunk);
  LaneSums sums;
  int64_t s = first / shape.B, b = first - s * shape.B;  // of the next row to load
  for (int64_t base = first; base < last; base += kRows) {
    const int64_t group_s = s, group_b = b;
    int32_t p[kRows];
    bool c[kRows];
    // Raw bits of the lane's two values: float32 in lo_bits / hi_bits, 16-bit types both in lo_bits.
    uint32_t lo_bits[kRows], hi_bits[kDType == kFloat32 ? kRows : 1];
#pragma unroll
    for (int q = 0; q < kRows; ++q) {  // issue every load of the group first
      const bool in = base + q < last;  // uniform over the warp
      const int64_t r = b * shape.S + s;
      const char* row = pre + (b * shape.stride_b + s * shape.stride_s) * kElem;
      p[q] = in ? __ldg(positions + r) : -1;
      c[q] = in && __ldg(counted + r) != 0;
      if constexpr (kDType == kFloat32) {
        const float* values = reinterpret_cast<const float*>(row);
        lo_bits[q] = in && has_lo ? __float_as_uint(__ldg(values + n_lo)) : 0u;
        hi_bits[q] = in && has_hi ? __float_as_uint(__ldg(values + n_hi)) : 0u;
      } else {
        const unsigned short* values = reinterpret_cast<const unsigned short*>(row);
        const uint32_t lo = in && has_lo ? __ldg(values + n_lo) : 0u;
        const uint32_t hi = in && has_hi ? __ldg(values + n_hi) : 0u;
        lo_bits[q] = lo | (hi << 16);
      }
      if (++b == shape.B) {
        b = 0;
        ++s;
      }
    }
    int64_t row_s = group_s, row_b = group_b;
#pragma unroll
    for (int q = 0; q < kRows; ++q) {
      if (base + q >= last) break;  // uniform over the warp
      const int64_t r = row_b * shape.S + row_s;
      if (++row_b == shape.B) {
        row_b = 0;
        ++row_s;
      }
      if (p[q] < 0) {
        if (bits != nullptr && lane == 0) bits[r * shape.W + w] = 0;
        continue;
      }
      float v_lo, v_hi;
      if constexpr (kDType == kFloat32) {
        v_lo = __uint_as_float(lo_bits[q]);
        v_hi = __uint_as_float(hi_bits[q]);
      } else {
        v_lo = half_bits_to_float<kDType>(lo_bits[q] & 0xffffu);
        v_hi = half_bits_to_float<kDType>(lo_bits[q] >> 16);
      }
      const bool on_lo = has_lo && is_active(v_lo, shape.threshold);
      const bool on_hi = has_hi && is_active(v_hi, shape.threshold);
      sums.nans += (has_lo && is_nan(v_lo)) + (has_hi && is_nan(v_hi));
      if (bits != nullptr) {
        const unsigned lo = __ballot_sync(0xffffffffu, on_lo);
        const unsigned hi = __ballot_sync(0xffffffffu, on_hi);
        if (lane == 0) {
          bits[r * shape.W + w] = static_cast<int64_t>((static_cast<uint64_t>(hi) << 32) | lo);
        }
      }
      if (c[q]) {
        sums.active_lo += on_lo;
        sums.active_hi += on_hi;
      }
      if (p[q] != sums.run_position) {
        flush_run(sums, pos_active, shape, n_lo, n_hi);
        sums.run_position = p[q];
      }
      sums.run_lo += on_lo;
      sums.run_hi += on_hi;
    }
  }
  flush_run(sums, pos_active, shape, n_lo, n_hi);
  if (sums.active_lo) atomicAdd(active + n_lo, sums.active_lo);
  if (sums.active_hi) atomicAdd(active + n_hi, sums.active_hi);
  if (nan_count != nullptr) {
    int nans = sums.nans;
    for (int offset = 16; offset > 0; offset /= 2) {
      nans += __shfl_down_sync(0xffffffffu, nans, offset);
    }
    if (lane == 0 && nans) atomicAdd(nan_count, static_cast<unsigned long long>(nans));
  }
}

// Shapes: data [n16] 16-byte vectors, out [1]. Thread mapping: grid-stride loop, each thread XORs
// every grid-th vector; each warp XOR-reduces and lane 0 does one atomicXor, so that no load is dead.
__global__ void __launch_bounds__(kThreadsPerBlock)
read_kernel(const uint4* __restrict__ data, int64_t n16, unsigned long long* __restrict__ out) {
  unsigned long long x = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n16; i += stride) {
    const uint4 v = __ldg(data + i);
    x ^= (static_cast<unsigned long long>(v.x) | (static_cast<unsigned long long>(v.y) << 32)) ^
         (static_cast<unsigned long long>(v.z) | (static_cast<unsigned long long>(v.w) << 32));
  }
  for (int offset = 16; offset > 0; offset /= 2) x ^= __shfl_down_sync(0xffffffffu, x, offset);
  if ((threadIdx.x & 31) == 0 && x) atomicXor(out, x);
}

}  // namespace
}  // namespace fastneurons
