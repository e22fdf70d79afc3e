// CUDA twin of the fused counting pass. Built into a static library; never includes pybind11.
#include "count_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace fastneurons {
namespace {

constexpr int kWarpsPerBlock = 8;
// Enough warps to fill a large GPU several times over; more row chunks only add atomics.
constexpr int64_t kTargetWarps = 8192;
// A warp handles at least this many rows, so the final per-lane atomics stay a small cost.
constexpr int64_t kMinRowsPerWarp = 16;

// Shapes: pre [B, S, F] (strides stride_b, stride_s, 1), positions/counted [B, S],
// bits [B, S, W], active [F], pos_active [T, F], nan_count [1].
// Thread mapping: 1-D grid of kWarpsPerBlock-warp blocks; global warp g handles word
// w = g % W for one contiguous chunk k = g / W of the rows taken position-major
// (i = s * B + b), so that consecutive rows of a warp usually share their position.
// Lane j loads neurons 64w + j and 64w + 32 + j (two coalesced loads per row); two ballots give
// the 64-bit word, which lane 0 stores. Per-lane registers sum `active` (one atomic per lane at
// the end) and pos_active while the position stays the same (one atomic per lane and position
// run, only where the sum is non-zero). The NaN count is reduced over the warp and added once.
// Rows with position >= T add nothing to pos_active (the Python wrapper cannot check positions on
// the GPU without a sync); they still count in bits, active and nan_count.
template <int32_t kDType>
__global__ void count_kernel(CountArgs a, int64_t chunks) {
  const int lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (g >= a.W * chunks) return;  // uniform over the warp
  const int64_t w = g % a.W, k = g / a.W;
  const int64_t n_lo = w * 64 + lane, n_hi = n_lo + 32;
  const bool has_lo = n_lo < a.F, has_hi = n_hi < a.F;
  const int64_t elem = kDType == kFloat32 ? 4 : 2;
  const int64_t rows = a.B * a.S;
  const int64_t chunk = (rows + chunks - 1) / chunks;
  const int64_t first = k * chunk, last = min(rows, first + chunk);
  unsigned long long active_lo = 0, active_hi = 0;
  unsigned long long run_lo = 0, run_hi = 0;  // pos_active sums of the current position run
  int64_t run_position = -1;
  int nans = 0;
  auto flush_run = [&]() {
    if (run_position >= 0 && run_position < a.T) {
      auto* counts = reinterpret_cast<unsigned long long*>(a.pos_active + run_position * a.F);
      if (run_lo) atomicAdd(counts + n_lo, run_lo);
      if (run_hi) atomicAdd(counts + n_hi, run_hi);
    }
    run_lo = run_hi = 0;
  };
  for (int64_t i = first; i < last; ++i) {
    const int64_t s = i / a.B, b = i - s * a.B;
    const int64_t r = b * a.S + s;
    const int64_t p = a.positions[r];
    if (p < 0) {
      if (a.bits != nullptr && lane == 0) a.bits[r * a.W + w] = 0;
      continue;
    }
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
    if (p != run_position) {
      flush_run();
      run_position = p;
    }
    run_lo += on_lo;
    run_hi += on_hi;
  }
  flush_run();
  auto* active = reinterpret_cast<unsigned long long*>(a.active);
  if (active_lo) atomicAdd(active + n_lo, active_lo);
  if (active_hi) atomicAdd(active + n_hi, active_hi);
  if (a.nan_count != nullptr) {
    for (int offset = 16; offset > 0; offset /= 2) {
      nans += __shfl_down_sync(0xffffffffu, nans, offset);
    }
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
  const int64_t chunks = std::max<int64_t>(1, std::min(by_work, by_occupancy));
  const int64_t blocks = (a.W * chunks + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const dim3 grid(static_cast<unsigned>(blocks)), block(32 * kWarpsPerBlock);
  if (a.dtype == kFloat32) {
    count_kernel<kFloat32><<<grid, block, 0, stream>>>(a, chunks);
  } else if (a.dtype == kFloat16) {
    count_kernel<kFloat16><<<grid, block, 0, stream>>>(a, chunks);
  } else {
    count_kernel<kBFloat16><<<grid, block, 0, stream>>>(a, chunks);
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
  auto dotted = [](int v) {
    return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  };
  return "nvcc " + std::to_string(__CUDACC_VER_MAJOR__) + "." +
         std::to_string(__CUDACC_VER_MINOR__) + ", runtime " + dotted(runtime) + ", driver " +
         dotted(driver);
}

}  // namespace fastneurons
