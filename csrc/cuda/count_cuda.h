// CUDA twin of the fused counting pass (one warp per 64-neuron word, ballots).
// Plain C++ header: no pybind11, no torch; only the CUDA runtime API types.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "../counting.h"

namespace fastneurons {

// One pass over the rows of `args` (device pointers) on `stream`: asynchronous, no host sync,
// no allocation. Throws std::runtime_error if the launch fails.
void count_cuda(const CountArgs& args, cudaStream_t stream);

// Reads the 16-byte vectors of `nbytes` device bytes at `data` (16-byte aligned) on `stream` and
// XORs them into *out (device int64): the plain read of HBM that bounds the counting pass.
void read_bytes_cuda(const void* data, int64_t nbytes, int64_t* out, int32_t device, cudaStream_t stream);

// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int32_t cuda_device_count();

// Versions as CUDA encodes them (1000 * major + 10 * minor): the runtime linked into _C (static cudart,
// hence the nvcc that built it) and the newest CUDA the installed driver supports (0 without a driver).
int32_t cuda_runtime_version();
int32_t cuda_driver_version();

// Compute capability (10 * major + minor) of each visible device; empty without a driver or device.
std::vector<int32_t> cuda_device_capabilities();

}  // namespace fastneurons
