// Runs the CUDA kernels of csrc/cuda/count_kernel.cuh on the CPU: every warp as 32 std::threads that
// meet at a barrier for each ballot and shuffle, warps one after another, atomics as std::atomic_ref.
// count_kernel's results are compared with the CPU twin (count_cpu) on random cases (dtypes, widths,
// padding of every kind, positions past the table, strided rows, one to many row chunks per word), and
// read_kernel's checksum with a plain XOR. Prints "ok <cases>" or the first mismatch (exit 1).
// Built and run by tests/test_cuda_emulation.py: g++ -std=c++20 -pthread -Icsrc (no CUDA needed).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

// ---- the CUDA built-ins the kernels use ----------------------------------------------------------
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
struct uint4 { unsigned x, y, z, w; };
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;
using std::min;

struct Warp {
  std::barrier<> meet{32};
  unsigned long long slots[32];
};
thread_local Warp* this_warp = nullptr;

template <class T> T __ldg(const T* p) { return *p; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

inline unsigned __ballot_sync(unsigned, bool vote) {
  const unsigned lane = threadIdx.x & 31;
  this_warp->slots[lane] = vote;
  this_warp->meet.arrive_and_wait();
  unsigned result = 0;
  for (unsigned i = 0; i < 32; ++i) result |= static_cast<unsigned>(this_warp->slots[i] != 0) << i;
  this_warp->meet.arrive_and_wait();
  return result;
}

template <class T> T __shfl_down_sync(unsigned, T value, int offset) {
  const unsigned lane = threadIdx.x & 31;
  this_warp->slots[lane] = static_cast<unsigned long long>(value);
  this_warp->meet.arrive_and_wait();
  const T result = lane + offset < 32 ? static_cast<T>(this_warp->slots[lane + offset]) : value;
  this_warp->meet.arrive_and_wait();
  return result;
}

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline unsigned long long atomicXor(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_xor(v);
}

#include "cpu/count_cpu.h"
#include "cuda/count_kernel.cuh"

using namespace fastneurons;

// Runs `kernel` on a grid of `blocks` blocks of kThreadsPerBlock threads, one warp at a time.
template <class Kernel>
void launch_emulated(int64_t blocks, Kernel kernel) {
  gridDim.x = static_cast<unsigned>(blocks);
  blockDim.x = kThreadsPerBlock;
  for (int64_t block = 0; block < blocks; ++block) {
    for (int warp = 0; warp < kWarpsPerBlock; ++warp) {
      Warp state;
      std::vector<std::thread> lanes;
      for (int lane = 0; lane < 32; ++lane) {
        lanes.emplace_back([&, lane] {
          this_warp = &state;
          blockIdx.x = static_cast<unsigned>(block);
          threadIdx.x = static_cast<unsigned>(warp * 32 + lane);
          kernel();
        });
      }
      for (auto& t : lanes) t.join();
    }
  }
}

uint16_t float_to_half_bits(float f) {  // exact for the small values used here (multiples of 1/4, |f| <= 2)
  if (f != f) return 0x7e00;
  if (f == 0.0f) return std::signbit(f) ? 0x8000 : 0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const int32_t exponent = static_cast<int32_t>((u >> 23) & 0xff) - 127 + 15;
  return static_cast<uint16_t>(sign | (exponent << 10) | ((u >> 13) & 0x3ffu));
}

struct Case {
  int32_t dtype;
  int64_t B, S, F, T, pad_s, pad_b, resident_warps;
  bool with_bits, with_nans;
};

bool run_case(const Case& c, std::mt19937_64& rng, int index) {
  const int64_t W = (c.F + 63) / 64, rows = c.B * c.S;
  const int64_t stride_s = c.F + c.pad_s, stride_b = c.S * stride_s + c.pad_b;
  const int64_t elements = c.B * stride_b + 64;
  const int64_t elem = c.dtype == kFloat32 ? 4 : 2;
  std::vector<char> pre(elements * elem);
  std::uniform_int_distribution<int> value(-8, 8), percent(0, 99);
  for (int64_t i = 0; i < elements; ++i) {
    float f = value(rng) / 4.0f;
    if (percent(rng) < 2) f = NAN;
    if (c.dtype == kFloat32) {
      std::memcpy(pre.data() + 4 * i, &f, 4);
    } else {
      uint32_t u;
      std::memcpy(&u, &f, 4);
      const uint16_t h = c.dtype == kFloat16 ? float_to_half_bits(f) : static_cast<uint16_t>(u >> 16);
      std::memcpy(pre.data() + 2 * i, &h, 2);
    }
  }
  std::vector<int32_t> positions(rows);
  std::vector<uint8_t> counted(rows);
  for (int64_t b = 0; b < c.B; ++b) {
    const int kind = percent(rng) % 4;
    const int64_t length = std::uniform_int_distribution<int64_t>(0, c.S)(rng);
    for (int64_t s = 0; s < c.S; ++s) {
      int32_t p = kind == 0 ? static_cast<int32_t>(s)                                  // full
                : kind == 1 ? (s < length ? static_cast<int32_t>(s) : -1)               // right padded
                : kind == 2 ? (s >= c.S - length ? static_cast<int32_t>(s - (c.S - length)) : -1)  // left
                            : static_cast<int32_t>(std::uniform_int_distribution<int>(-3, c.T + 2)(rng));
      if (percent(rng) < 3) p = -2 - percent(rng);   // any negative position is padding
      positions[b * c.S + s] = p;
      counted[b * c.S + s] = p >= 0 && percent(rng) < 80;
    }
  }
  CountArgs a;
  a.pre = pre.data();
  a.positions = positions.data();
  a.counted = counted.data();
  a.B = c.B, a.S = c.S, a.F = c.F, a.W = W, a.T = c.T, a.stride_b = stride_b, a.stride_s = stride_s;
  a.threshold = 0.25f;
  a.dtype = c.dtype;
  a.threads = 1;
  std::vector<int64_t> active_cpu(c.F, 5), pos_cpu(c.T * c.F, 7), bits_cpu(rows * W, -1), nan_cpu(1, 3);
  std::vector<int64_t> active_gpu = active_cpu, pos_gpu = pos_cpu, bits_gpu = bits_cpu, nan_gpu = nan_cpu;
  a.active = active_cpu.data(), a.pos_active = pos_cpu.data();
  a.bits = c.with_bits ? bits_cpu.data() : nullptr;
  a.nan_count = c.with_nans ? nan_cpu.data() : nullptr;
  count_cpu(a);

  const int64_t chunks = row_chunks(rows, W, c.resident_warps);
  const int64_t blocks = (W * chunks + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const Shape shape{c.B, c.S, c.F, W, c.T, stride_b, stride_s, a.threshold};
  auto* active = reinterpret_cast<unsigned long long*>(active_gpu.data());
  auto* pos_active = reinterpret_cast<unsigned long long*>(pos_gpu.data());
  auto* nans = c.with_nans ? reinterpret_cast<unsigned long long*>(nan_gpu.data()) : nullptr;
  int64_t* bits = c.with_bits ? bits_gpu.data() : nullptr;
  launch_emulated(blocks, [&] {
    if (c.dtype == kFloat32) {
      count_kernel<kFloat32>(pre.data(), positions.data(), counted.data(), bits, active, pos_active, nans, shape, chunks);
    } else if (c.dtype == kFloat16) {
      count_kernel<kFloat16>(pre.data(), positions.data(), counted.data(), bits, active, pos_active, nans, shape, chunks);
    } else {
      count_kernel<kBFloat16>(pre.data(), positions.data(), counted.data(), bits, active, pos_active, nans, shape, chunks);
    }
  });
  const char* what = active_cpu != active_gpu ? "active" : pos_cpu != pos_gpu ? "pos_active"
                   : bits_cpu != bits_gpu ? "bits" : nan_cpu != nan_gpu ? "nan_count" : nullptr;
  if (what != nullptr) {
    std::printf("case %d: %s differs (dtype %d, B %lld, S %lld, F %lld, T %lld, chunks %lld)\n", index, what,
                c.dtype, (long long)c.B, (long long)c.S, (long long)c.F, (long long)c.T, (long long)chunks);
    return false;
  }
  return true;
}

bool check_read_kernel(std::mt19937_64& rng) {
  std::vector<uint4> data(1000);
  uint64_t expected = 0;
  for (auto& v : data) {
    v = {static_cast<unsigned>(rng()), static_cast<unsigned>(rng()), static_cast<unsigned>(rng()),
         static_cast<unsigned>(rng())};
    expected ^= (uint64_t(v.y) << 32 | v.x) ^ (uint64_t(v.w) << 32 | v.z);
  }
  unsigned long long out = 0;
  launch_emulated(2, [&] { read_kernel(data.data(), static_cast<int64_t>(data.size()), &out); });
  if (out != expected) std::printf("read_kernel: checksum differs\n");
  return out == expected;
}

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 120;
  std::mt19937_64 rng(12345);
  const int64_t widths[] = {1, 31, 63, 64, 65, 130, 200};
  const int64_t residents[] = {1, 3, 16, 100000};
  int done = 0;
  for (int i = 0; i < cases; ++i) {
    Case c;
    c.dtype = i % 3;
    c.F = widths[(i / 3) % 7];
    c.B = 1 + static_cast<int64_t>(rng() % 5);
    c.S = 1 + static_cast<int64_t>(rng() % 70);
    c.T = 1 + static_cast<int64_t>(rng() % (c.S + 3));
    c.pad_s = static_cast<int64_t>(rng() % 3) * 8;
    c.pad_b = static_cast<int64_t>(rng() % 2) * 40;
    c.resident_warps = residents[(i / 21) % 4];
    c.with_bits = i % 5 != 4;
    c.with_nans = i % 7 != 6;
    if (!run_case(c, rng, i)) return 1;
    ++done;
  }
  if (!check_read_kernel(rng)) return 1;
  std::printf("ok %d\n", done);
  return 0;
}
