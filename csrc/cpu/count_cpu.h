// CPU twin of the fused counting pass (OpenMP over 64-neuron words).
#pragma once

#include <cstdint>

#include "../counting.h"

namespace fastneurons {

// One pass over the rows of `args`: bits, active, pos_active and nan_count as in CountArgs.
void count_cpu(const CountArgs& args);

// Reads `nbytes` bytes at `data` with `threads` threads (0 = OpenMP default) and returns a
// checksum, so benchmarks can measure the plain read bandwidth of the same bytes.
uint64_t read_bytes_cpu(const void* data, int64_t nbytes, int32_t threads);

// Instruction set the CPU pass uses: "avx512", "avx2" or "generic" (FASTNEURONS_CPU_ISA lowers it).
const char* cpu_isa_name();

// Number of threads OpenMP would use by default (1 when built without OpenMP).
int32_t cpu_max_threads();

}  // namespace fastneurons
