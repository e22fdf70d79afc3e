// CUDA twin of the fused counting pass. Built into a static library; never includes pybind11.
#include "count_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace fastneurons {
namespace {

constexpr int kWarpsPerBlock = 8;
// Enough warps to fill a large GPU several times over; more row groups only add atomics.
constexpr int64_t kTargetWarps = 8192;
// A warp handles at least this many rows, so the final per-lane atomics stay a small cost.
constexpr int64_t kMinRowsPerWarp = 16;

// Shapes: pre [B, S, F] (strides stride_b, stride_s, 1), positions/counted [B, S],
// bits [B, S, W], active [F], pos_active [T, F], nan_count [1].
// Thread mapping: 1-D grid of kWarpsPerBlock-warp blocks; global warp g handles word
// w = g % W for the rows r = k, k + G, k + 2G, ... with k = g / W and G = `groups` row groups.
// Lane j loads neurons 64w + j and 64w + 32 + j (two coalesced loads per row); two ballots give
// the 64-bit word, which lane 0 stores. `active` is summed in per-lane registers and added with
// one atomic per lane at the end; pos_active gets an atomic only where a bit is set; the NaN
// count is reduced over the warp and added once. Rows with position >= T add to pos_active
// nothing (the Python wrapper cannot check positions on the GPU without a sync).
template <int32_t kDType>
__global__ void count_kernel(CountArgs a, int64_t groups) {
  const int lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (g >= a.W * groups) return;  // uniform over the warp
  const int64_t w = g % a.W;
  const int64_t n_lo = w * 64 + lane, n_hi = n_lo + 32;
  const bool has_lo = n_lo < a.F, has_hi = n_hi < a.F;
  const int64_t elem = kDType == kFloat32 ? 4 : 2;
  const int64_t rows = a.B * a.S;
  unsigned long long active_lo = 0, active_hi = 0;
  int nans = 0;
  for (int64_t r = g / a.W; r < rows; r += groups) {
    const int64_t p = a.positions[r];
    if (p < 0) {
      if (a.bits != nullptr && lane == 0) a.bits[r * a.W + w] = 0;
      continue;
    }
    const int64_t b = r / a.S, s = r - b * a.S;
    const char* row = static_cast<const char*>(a.pre) + (b * a.stride_b + s * a.stride_s) * elem;
    const float v_lo = has_lo ? load_as_float<kDType>(row, n_lo) : 0.0f;
    const float v_hi = has_hi ? load_as_float<kDType>(row, n_hi) : 0.0f;
    const bool on_lo = has_lo && is_active(v_lo, a.threshold);
    const bool on_hi = has_hi && is_active(v_hi, a.threshold);
    nans += (has_lo && is_nan(v_lo)) + (has_hi && is_nan(v_hi));
    if (a.bits != nullptr) {
      const unsigned lo = __ballot_sync(0xffffffffu, on_lo);
      const unsigned hi = __ballot_sync(0xffffffffu, on_hi);
      if (lane == 0) {
        a.bits[r * a.W + w] = static_cast<int64_t>((static_cast<uint64_t>(hi) << 32) | lo);
      }
    }
    if (a.counted[r]) {
      active_lo += on_lo;
      active_hi += on_hi;
    }
    if (p < a.T) {
      auto* counts = reinterpret_cast<unsigned long long*>(a.pos_active + p * a.F);
      if (on_lo) atomicAdd(counts + n_lo, 1ull);
      if (on_hi) atomicAdd(counts + n_hi, 1ull);
    }
  }
  auto* active = reinterpret_cast<unsigned long long*>(a.active);
  if (active_lo) atomicAdd(active + n_lo, active_lo);
  if (active_hi) atomicAdd(active + n_hi, active_hi);
  if (a.nan_count != nullptr) {
    for (int offset = 16; offset > 0; offset /= 2) nans += __shfl_down_sync(0xffffffffu, nans, offset);
    if (lane == 0 && nans) {
      atomicAdd(reinterpret_cast<unsigned long long*>(a.nan_count),
                static_cast<unsigned long long>(nans));
    }
  }
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("fastneurons CUDA error in ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

// Makes `device` current for the lifetime of the guard (no sync).
struct DeviceGuard {
  int previous = -1;
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous), "cudaGetDevice");
    if (previous != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous) cudaSetDevice(previous);
  }
};

}  // namespace

void count_cuda(const CountArgs& a, cudaStream_t stream) {
  const int64_t rows = a.B * a.S;
  if (rows == 0 || a.W == 0) return;
  DeviceGuard guard(a.device_index);
  const int64_t by_work = (rows + kMinRowsPerWarp - 1) / kMinRowsPerWarp;
  const int64_t by_occupancy = (kTargetWarps + a.W - 1) / a.W;
  const int64_t groups = std::max<int64_t>(1, std::min(by_work, by_occupancy));
  const int64_t blocks = (a.W * groups + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const dim3 grid(static_cast<unsigned>(blocks)), block(32 * kWarpsPerBlock);
  if (a.dtype == kFloat32) {
    count_kernel<kFloat32><<<grid, block, 0, stream>>>(a, groups);
  } else if (a.dtype == kFloat16) {
    count_kernel<kFloat16><<<grid, block, 0, stream>>>(a, groups);
  } else {
    count_kernel<kBFloat16><<<grid, block, 0, stream>>>(a, groups);
  }
  check(cudaGetLastError(), "count_kernel launch");
}

int32_t cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state
    return 0;
  }
  return count;
}

std::string cuda_version_string() {
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  cudaGetLastError();
  auto dotted = [](int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); };
  return "nvcc " + std::to_string(__CUDACC_VER_MAJOR__) + "." + std::to_string(__CUDACC_VER_MINOR__) +
         ", runtime " + dotted(runtime) + ", driver " + dotted(driver);
}

}  // namespace fastneurons
