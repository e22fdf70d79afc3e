// CPU twin of the fused counting pass.
//
// Thread mapping: the W = ceil(F/64) words of a row are split into one contiguous range per
// OpenMP thread, so each thread owns neurons [64*w0, 64*w1) of every output and no write is
// shared. Each thread walks the rows position-major (for s in S: for b in B): with right padding
// the B rows at step s share position p = s (and whether they are counted), so their activations
// are summed in a small thread-local int32 buffer (the "group") that is added once per step to
// pos_active[p] and, for counted rows, to a thread-local int32 `active` buffer, itself added to
// `active` at the end. A group ends where the position or the counted flag changes.
// The rows' full words are handled by a row function compiled for AVX-512, AVX2 or plain C++
// (picked at run time, FASTNEURONS_CPU_ISA=generic|avx2|avx512 lowers it); it also prefetches the
// next row. A group's end (one pass adding it to pos_active[p] and the active buffer, clearing it) is
// compiled for the same ISA: with two rows per position it is as much work as the rows.
#include "count_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FN_X86_SIMD 1
#include <immintrin.h>
#define FN_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt")))
#define FN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt")))
#endif

// Inlined into each ISA's wrapper, so its loops are vectorised for that ISA.
#if defined(__GNUC__) || defined(__clang__)
#define FN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FN_ALWAYS_INLINE inline
#endif

namespace fastneurons {
namespace {

constexpr int64_t kWordBits = 64;
// Local int32 sums are moved to the int64 outputs before they could overflow.
constexpr int64_t kFlushRows = int64_t(1) << 30;

// The full words [0, words) of one non-pad row, as seen by the thread that owns them.
struct RowJob {
  const char* row;        // first owned neuron of this row
  const char* next_row;   // same neurons of the next row visited (prefetched), or null
  int64_t words;          // number of full 64-neuron words
  float threshold;
  int32_t* group_sum;     // [words * 64] rows of the current group
  int64_t* bits;          // [words] or null
};

// Generic C++: one word at a time; `len` < 64 only for the last word of the row.
template <int32_t kDType>
uint64_t count_word(const void* row, int64_t n0, int64_t len, float threshold, int32_t* group_sum,
                    int64_t& nans) {
  uint8_t on[kWordBits] = {0};
  int32_t nan_here = 0;
  for (int64_t j = 0; j < len; ++j) {
    const float v = load_as_float<kDType>(row, n0 + j);
    on[j] = is_active(v, threshold);
    nan_here += is_nan(v);
  }
  nans += nan_here;
  for (int64_t j = 0; j < len; ++j) group_sum[j] += on[j];
  // Pack 8 bytes of 0/1 into 8 bits: byte i of x * 0x0102040810204080 lands on bit 56 + i.
  uint64_t word = 0;
  for (int q = 0; q < 8; ++q) {
    uint64_t eight;
    std::memcpy(&eight, on + 8 * q, 8);
    word |= ((eight * 0x0102040810204080ull) >> 56) << (8 * q);
  }
  return word;
}

template <int32_t kDType>
int64_t count_row_generic(const RowJob& job) {
  int64_t nans = 0;
  for (int64_t w = 0; w < job.words; ++w) {
    const uint64_t word = count_word<kDType>(job.row, w * kWordBits, kWordBits, job.threshold,
                                             job.group_sum + w * kWordBits, nans);
    if (job.bits) job.bits[w] = static_cast<int64_t>(word);
  }
  return nans;
}

#if defined(FN_X86_SIMD)
template <int32_t kDType>
FN_TARGET_AVX2 inline __m256 load8_avx2(const char* row, int64_t i) {
  if (kDType == kFloat32) return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i));
  if (kDType == kFloat16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// AVX2: 8 neurons per compare; the all-ones compare lanes are subtracted from the int32 sums.
template <int32_t kDType>
FN_TARGET_AVX2 int64_t count_row_avx2(const RowJob& job) {
  constexpr int64_t elem = kDType == kFloat32 ? 4 : 2;
  const __m256 threshold = _mm256_set1_ps(job.threshold);
  const char* row = job.row;
  const char* next_row = job.next_row;
  int64_t* bits = job.bits;
  int64_t nans = 0;
  for (int64_t w = 0; w < job.words; ++w) {
    if (next_row) {
      for (int64_t line = 0; line < kWordBits * elem; line += 64) {
        _mm_prefetch(next_row + w * kWordBits * elem + line, _MM_HINT_T0);
      }
    }
    uint64_t word = 0;
    int32_t* group = job.group_sum + w * kWordBits;
    for (int q = 0; q < 8; ++q) {
      const __m256 v = load8_avx2<kDType>(row, w * kWordBits + 8 * q);
      const __m256i on = _mm256_castps_si256(_mm256_cmp_ps(v, threshold, _CMP_GT_OQ));
      nans += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
      word |= static_cast<uint64_t>(_mm256_movemask_ps(_mm256_castsi256_ps(on))) << (8 * q);
      __m256i* g = reinterpret_cast<__m256i*>(group + 8 * q);
      _mm256_storeu_si256(g, _mm256_sub_epi32(_mm256_loadu_si256(g), on));
    }
    if (bits) bits[w] = static_cast<int64_t>(word);
  }
  return nans;
}

template <int32_t kDType>
FN_TARGET_AVX512 inline __m512 load16_avx512(const char* row, int64_t i) {
  if (kDType == kFloat32) return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + i);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i));
  if (kDType == kFloat16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// AVX-512: 16 neurons per compare into a mask register; masked adds into the int32 sums.
template <int32_t kDType>
FN_TARGET_AVX512 int64_t count_row_avx512(const RowJob& job) {
  constexpr int64_t elem = kDType == kFloat32 ? 4 : 2;
  const __m512 threshold = _mm512_set1_ps(job.threshold);
  const __m512i one = _mm512_set1_epi32(1);
  const char* row = job.row;
  const char* next_row = job.next_row;
  int64_t* bits = job.bits;
  int64_t nans = 0;
  for (int64_t w = 0; w < job.words; ++w) {
    if (next_row) {
      for (int64_t line = 0; line < kWordBits * elem; line += 64) {
        _mm_prefetch(next_row + w * kWordBits * elem + line, _MM_HINT_T0);
      }
    }
    uint64_t word = 0;
    int32_t* group = job.group_sum + w * kWordBits;
    for (int q = 0; q < 4; ++q) {
      const __m512 v = load16_avx512<kDType>(row, w * kWordBits + 16 * q);
      const __mmask16 on = _mm512_cmp_ps_mask(v, threshold, _CMP_GT_OQ);
      nans += __builtin_popcount(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
      word |= static_cast<uint64_t>(on) << (16 * q);
      const __m512i g = _mm512_loadu_si512(group + 16 * q);
      _mm512_storeu_si512(group + 16 * q, _mm512_mask_add_epi32(g, on, g, one));
    }
    if (bits) bits[w] = static_cast<int64_t>(word);
  }
  return nans;
}
#endif  // FN_X86_SIMD

using RowFunction = int64_t (*)(const RowJob&);
// Ends a group: (pos_row or null, pos_type, active sums or null, group sums, neurons).
using FlushFunction = void (*)(void*, int32_t, int32_t*, int32_t*, int64_t);

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

Isa best_isa() {
#if defined(FN_X86_SIMD)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kGeneric;
}

// The best ISA the CPU has, lowered to FASTNEURONS_CPU_ISA when that names a lower one.
Isa selected_isa() {
  static const Isa best = best_isa();
  const char* env = std::getenv("FASTNEURONS_CPU_ISA");
  if (env == nullptr) return best;
  const std::string name(env);
  const Isa wanted = name == "generic" ? Isa::kGeneric : name == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
  return std::min(wanted, best);
}

template <int32_t kDType>
RowFunction row_function(Isa isa) {
#if defined(FN_X86_SIMD)
  if (isa == Isa::kAvx512) return &count_row_avx512<kDType>;
  if (isa == Isa::kAvx2) return &count_row_avx2<kDType>;
#endif
  (void)isa;
  return &count_row_generic<kDType>;
}

RowFunction row_function(int32_t dtype, Isa isa) {
  if (dtype == kFloat32) return row_function<kFloat32>(isa);
  if (dtype == kFloat16) return row_function<kFloat16>(isa);
  return row_function<kBFloat16>(isa);
}

// Thread-local state of one word range [w0, w1).
struct WordRange {
  int64_t w0 = 0, w1 = 0;
  std::vector<int32_t> group_sum;   // [(w1-w0)*64] rows of the current group
  std::vector<int32_t> active_sum;  // [(w1-w0)*64] counted rows of the finished groups
  int64_t group_position = -1;      // position shared by the rows of the group
  bool group_counted = false;       // whether the rows of the group are counted
  int64_t group_rows = 0;
  int64_t active_rows = 0;          // rows summed in active_sum
  int64_t nans = 0;
  FlushFunction flush = nullptr;    // ends a group (ISA-specific loops)
};

// Adds the thread's int32 active sums into `active` and clears them.
void flush_active(WordRange& range, const CountArgs& a) {
  const int64_t n0 = range.w0 * kWordBits, n1 = std::min(range.w1 * kWordBits, a.F);
  int32_t* local = range.active_sum.data();
  for (int64_t n = n0; n < n1; ++n) {
    a.active[n] += local[n - n0];
    local[n - n0] = 0;
  }
  range.active_rows = 0;
}

// Ends a group for the `len` neurons a thread owns, touching each array once: pos_row[n] += group[n]
// (null: the position is past the table; uint16 counts wrap, the caller drains them before they
// could), active[n] += group[n] (null: the rows are not counted), group[n] = 0.
template <typename Count>
FN_ALWAYS_INLINE void add_group_and_clear(Count* __restrict pos_row, int32_t* __restrict active,
                                          int32_t* __restrict group, int64_t len) {
  if (pos_row && active) {
    for (int64_t n = 0; n < len; ++n) {
      pos_row[n] = static_cast<Count>(pos_row[n] + group[n]);
      active[n] += group[n];
      group[n] = 0;
    }
  } else if (pos_row) {
    for (int64_t n = 0; n < len; ++n) {
      pos_row[n] = static_cast<Count>(pos_row[n] + group[n]);
      group[n] = 0;
    }
  } else if (active) {
    for (int64_t n = 0; n < len; ++n) {
      active[n] += group[n];
      group[n] = 0;
    }
  } else {
    for (int64_t n = 0; n < len; ++n) group[n] = 0;
  }
}

FN_ALWAYS_INLINE void flush_body(void* pos_row, int32_t pos_type, int32_t* active, int32_t* group,
                                 int64_t len) {
  if (pos_type == kPosUInt16) {
    add_group_and_clear(static_cast<uint16_t*>(pos_row), active, group, len);
  } else {
    add_group_and_clear(static_cast<int64_t*>(pos_row), active, group, len);
  }
}

// The same loops compiled for each ISA (a group ends every B rows: with few rows per position this
// is as much work as counting them).
void flush_generic(void* pos_row, int32_t pos_type, int32_t* active, int32_t* group, int64_t len) {
  flush_body(pos_row, pos_type, active, group, len);
}
#if defined(FN_X86_SIMD)
FN_TARGET_AVX2 void flush_avx2(void* pos_row, int32_t pos_type, int32_t* active, int32_t* group, int64_t len) {
  flush_body(pos_row, pos_type, active, group, len);
}
FN_TARGET_AVX512 void flush_avx512(void* pos_row, int32_t pos_type, int32_t* active, int32_t* group,
                                   int64_t len) {
  flush_body(pos_row, pos_type, active, group, len);
}
#endif

FlushFunction flush_function(Isa isa) {
#if defined(FN_X86_SIMD)
  if (isa == Isa::kAvx512) return &flush_avx512;
  if (isa == Isa::kAvx2) return &flush_avx2;
#endif
  (void)isa;
  return &flush_generic;
}

// Ends the current group: adds it to pos_active[p] and, if counted, to the active sums.
void flush_group(WordRange& range, const CountArgs& a) {
  if (range.group_rows == 0) return;
  const int64_t n0 = range.w0 * kWordBits, n1 = std::min(range.w1 * kWordBits, a.F);
  void* pos_row = nullptr;
  if (range.group_position < a.T) {
    const int64_t offset = range.group_position * a.F + n0;
    pos_row = a.pos_type == kPosUInt16 ? static_cast<void*>(static_cast<uint16_t*>(a.pos_active) + offset)
                                       : static_cast<void*>(static_cast<int64_t*>(a.pos_active) + offset);
  }
  range.flush(pos_row, a.pos_type, range.group_counted ? range.active_sum.data() : nullptr,
              range.group_sum.data(), n1 - n0);
  if (range.group_counted) {
    range.active_rows += range.group_rows;
    if (range.active_rows >= kFlushRows) flush_active(range, a);
  }
  range.group_rows = 0;
}

// Last, partial word of a row (F not a multiple of 64), in generic C++.
int64_t count_partial_word(const CountArgs& a, const void* row, WordRange& range,
                           int64_t* bits_row) {
  const int64_t w = a.W - 1, len = a.F - w * kWordBits;
  int32_t* group = range.group_sum.data() + (w - range.w0) * kWordBits;
  int64_t nans = 0;
  uint64_t word;
  if (a.dtype == kFloat32) {
    word = count_word<kFloat32>(row, w * kWordBits, len, a.threshold, group, nans);
  } else if (a.dtype == kFloat16) {
    word = count_word<kFloat16>(row, w * kWordBits, len, a.threshold, group, nans);
  } else {
    word = count_word<kBFloat16>(row, w * kWordBits, len, a.threshold, group, nans);
  }
  if (bits_row) bits_row[w] = static_cast<int64_t>(word);
  return nans;
}

void count_rows(const CountArgs& a, WordRange& range, RowFunction count_row) {
  const int64_t elem = a.dtype == kFloat32 ? 4 : 2;
  const bool partial_last = a.F % kWordBits != 0 && range.w1 == a.W;
  const int64_t full_words = range.w1 - range.w0 - (partial_last ? 1 : 0);
  const char* pre = static_cast<const char*>(a.pre) + range.w0 * kWordBits * elem;
  auto row_at = [&](int64_t b, int64_t s) {
    return pre + (b * a.stride_b + s * a.stride_s) * elem;
  };
  for (int64_t s = 0; s < a.S; ++s) {
    for (int64_t b = 0; b < a.B; ++b) {
      const int64_t r = b * a.S + s;
      int64_t* bits_row = a.bits ? a.bits + r * a.W : nullptr;
      const int64_t p = a.positions[r];
      if (p < 0) {
        if (bits_row) std::fill(bits_row + range.w0, bits_row + range.w1, int64_t(0));
        continue;
      }
      const bool counted = a.counted[r] != 0;
      if (p != range.group_position || counted != range.group_counted ||
          range.group_rows >= kFlushRows) {
        flush_group(range, a);
        range.group_position = p;
        range.group_counted = counted;
      }
      ++range.group_rows;
      RowJob job;
      job.row = row_at(b, s);
      job.next_row = b + 1 < a.B ? row_at(b + 1, s) : s + 1 < a.S ? row_at(0, s + 1) : nullptr;
      job.words = full_words;
      job.threshold = a.threshold;
      job.group_sum = range.group_sum.data();
      job.bits = bits_row ? bits_row + range.w0 : nullptr;
      range.nans += count_row(job);
      if (partial_last) {
        const char* row = job.row - range.w0 * kWordBits * elem;
        range.nans += count_partial_word(a, row, range, bits_row);
      }
    }
  }
  flush_group(range, a);
  flush_active(range, a);
}

int32_t thread_count(int32_t requested) { return requested > 0 ? requested : cpu_max_threads(); }

uint64_t xor_words(const uint64_t* data, int64_t count) {
  uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] ^= data[i + k];
  }
  for (; i < count; ++i) acc[0] ^= data[i];
  uint64_t x = 0;
  for (int k = 0; k < 8; ++k) x ^= acc[k];
  return x;
}

}  // namespace

int32_t cpu_max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

const char* cpu_isa_name() {
  switch (selected_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

void count_cpu(const CountArgs& a) {
  if (a.B * a.S == 0 || a.W == 0) return;
  const int32_t threads = static_cast<int32_t>(std::min<int64_t>(thread_count(a.threads), a.W));
  const Isa isa = selected_isa();
  const RowFunction count_row = row_function(a.dtype, isa);
  const FlushFunction flush = flush_function(isa);
  int64_t nans = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(+ : nans)
#endif
  {
#if defined(_OPENMP)
    const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t tid = 0, nt = 1;
#endif
    WordRange range;
    range.flush = flush;
    range.w0 = a.W * tid / nt;
    range.w1 = a.W * (tid + 1) / nt;
    if (range.w1 > range.w0) {
      range.active_sum.assign((range.w1 - range.w0) * kWordBits, 0);
      range.group_sum.assign((range.w1 - range.w0) * kWordBits, 0);
      count_rows(a, range, count_row);
      nans += range.nans;
    }
  }
  (void)threads;
  if (a.nan_count) *a.nan_count += nans;
}

uint64_t read_bytes_cpu(const void* data, int64_t nbytes, int32_t threads) {
  const uint64_t* words = static_cast<const uint64_t*>(data);
  const int64_t count = nbytes / 8;
  uint64_t checksum = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(thread_count(threads)) reduction(^ : checksum)
#endif
  {
#if defined(_OPENMP)
    const int64_t tid = omp_get_thread_num(), n = omp_get_num_threads();
#else
    const int64_t tid = 0, n = 1;
#endif
    const int64_t begin = count * tid / n, end = count * (tid + 1) / n;
    checksum ^= xor_words(words + begin, end - begin);
  }
  (void)threads;
  const uint8_t* tail = static_cast<const uint8_t*>(data) + count * 8;
  for (int64_t i = 0; i < nbytes - count * 8; ++i) checksum ^= uint64_t(tail[i]) << (8 * i);
  return checksum;
}

}  // namespace fastneurons
