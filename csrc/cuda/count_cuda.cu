// CUDA twin of the fused counting pass: the launches (grid from occupancy and the SM count) of the
// kernels in count_kernel.cuh. Built into a static library; never includes pybind11.
#include "count_cuda.h"
#include "count_kernel.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

namespace fastneurons {
namespace {

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

// Resident warps one wave can hold on `device` for count_kernel<kDType> (occupancy x SM count),
// computed once per device and element type.
template <int32_t kDType>
int64_t resident_warps(int device) {
  static std::mutex mutex;
  static std::map<int, int64_t> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(device);
  if (found != cache.end()) return found->second;
  int sms = 0, blocks_per_sm = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, count_kernel<kDType>,
                                                      kThreadsPerBlock, 0),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  const int64_t warps = std::max<int64_t>(1, int64_t(sms) * blocks_per_sm * kWarpsPerBlock);
  cache[device] = warps;
  return warps;
}

template <int32_t kDType>
void launch(const CountArgs& a, cudaStream_t stream) {
  const int64_t rows = a.B * a.S;
  const int64_t chunks = row_chunks(rows, a.W, resident_warps<kDType>(a.device_index));
  const int64_t blocks = (a.W * chunks + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const Shape shape{a.B, a.S, a.F, a.W, a.T, a.stride_b, a.stride_s, a.threshold};
  auto* active = reinterpret_cast<unsigned long long*>(a.active);
  auto* pos_active = reinterpret_cast<unsigned long long*>(a.pos_active);
  auto* nan_count = reinterpret_cast<unsigned long long*>(a.nan_count);
  count_kernel<kDType><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
      static_cast<const char*>(a.pre), a.positions, a.counted, a.bits, active, pos_active, nan_count,
      shape, chunks);
}

}  // namespace

void count_cuda(const CountArgs& a, cudaStream_t stream) {
  if (a.B * a.S == 0 || a.W == 0) return;
  if (a.pos_type != kPosInt64) throw std::invalid_argument("CUDA pos_active must be int64");
  DeviceGuard guard(a.device_index);
  if (a.dtype == kFloat32) {
    launch<kFloat32>(a, stream);
  } else if (a.dtype == kFloat16) {
    launch<kFloat16>(a, stream);
  } else {
    launch<kBFloat16>(a, stream);
  }
  check(cudaGetLastError(), "count_kernel launch");
}

void read_bytes_cuda(const void* data, int64_t nbytes, int64_t* out, int32_t device,
                     cudaStream_t stream) {
  if (nbytes < 16) return;
  DeviceGuard guard(device);
  int sms = 0, blocks_per_sm = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, read_kernel, kThreadsPerBlock, 0),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  const int64_t n16 = nbytes / 16;
  const int64_t wanted = (n16 + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t(sms) * blocks_per_sm));
  read_kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
      static_cast<const uint4*>(data), n16, reinterpret_cast<unsigned long long*>(out));
  check(cudaGetLastError(), "read_kernel launch");
}

int32_t cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state
    return 0;
  }
  return count;
}

int32_t cuda_runtime_version() {
  int runtime = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  return runtime;
}

int32_t cuda_driver_version() {
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  cudaGetLastError();
  return driver;
}

std::vector<int32_t> cuda_device_capabilities() {
  std::vector<int32_t> capabilities;
  for (int device = 0; device < cuda_device_count(); ++device) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    capabilities.push_back(10 * major + minor);
  }
  cudaGetLastError();
  return capabilities;
}

}  // namespace fastneurons
