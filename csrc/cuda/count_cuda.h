// CUDA twin of the fused counting pass (one warp per 64-neuron word, ballots).
// Plain C++ header: no pybind11, no torch; only the CUDA runtime API types.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "../counting.h"

namespace fastneurons {

// One pass over the rows of `args` (device pointers) on `stream`: asynchronous, no host sync,
// no allocation. Throws std::runtime_error if the launch fails.
void count_cuda(const CountArgs& args, cudaStream_t stream);

// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int32_t cuda_device_count();

// "nvcc X.Y, runtime A.B, driver C.D" for diagnostics (driver 0.0 without a driver).
std::string cuda_version_string();

}  // namespace fastneurons
