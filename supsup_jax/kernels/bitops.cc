// Bit-matrix products for the mask bank (supsup_jax/bank.py), as XLA FFI custom calls on CPU.
//
// bits: uint8[k, nb], row i holds task i's mask packed 8 weights per byte, little bit order
// (bit b of byte j is weight 8j+b). Two products, never unpacking bits into floats in memory:
//   SupsupBitsMatvec:  out[i] = sum_j bit(i, j) * v[j]       (dL/dalpha, SPEC 6; active rows)
//   SupsupBitsVecmat:  out[j] = sum_i alpha[i] * bit(i, j)   (the superposed mask, Eq. 2)
//
// One source, three instruction-set variants, chosen by the macro the build defines
// (supsup_jax/kernels/__init__.py builds each with its own flags, never -march=native):
//   SUPSUP_AVX512:  16 bits of a row are directly a lane mask; one masked add per 16 weights
//                   (AVX-512 F and BW: 32 16-bit counters per masked add when counting).
//   SUPSUP_AVX2:    a byte indexes a 256-entry table of 8-lane masks (8 KiB, stays in L1);
//                   and + add per 8 weights.
//   (neither):      portable C++: the same table as 0/1 floats and a multiply-add over 8 lanes,
//                   which compilers vectorise on their own (SSE2, NEON, ...); no intrinsics.
// Matvec from enough rows (32 AVX-512, 8 AVX2, 16 portable): tables of partial sums, in
// registers looked up by permutes for a group of rows (MatvecPerm), portable in memory, 256 per
// byte (MatvecTable).
// Vecmat: with equal weights (uniform alpha) an exact count per weight (CountBlock: from 64 rows,
// 32 portable, bit-sliced carry-save adders over 16 rows at a time), else rows streamed into L1
// float accumulators per column block. Rows or column blocks are split
// across threads. The portable routines also handle every variant's tails.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#if defined(SUPSUP_AVX512) || defined(SUPSUP_AVX2)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

int NumThreads(int64_t work_bytes) {
  int n = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("SUPSUP_JAX_KERNEL_THREADS")) n = std::atoi(env);
  // Below ~1 MB of bits a thread costs more than it saves.
  int64_t by_work = std::max<int64_t>(1, work_bytes >> 20);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, by_work)));
}

template <typename F>
void ParallelFor(int64_t n, int threads, F f) {
  if (threads <= 1 || n <= 1) { f(0, n); return; }
  threads = static_cast<int>(std::min<int64_t>(threads, n));
  std::vector<std::thread> pool;
  int64_t step = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    int64_t lo = t * step, hi = std::min(n, lo + step);
    if (lo < hi) pool.emplace_back(f, lo, hi);
  }
  f(0, std::min(n, step));
  for (auto& th : pool) th.join();
}

// bits[b][q] = bit q of byte b as a float (portable), masks[b][q] as a lane mask (AVX2).
// constexpr: built at compile time, so loading a variant runs none of its instructions.
struct Tables {
  alignas(64) float bits[256][8] = {};
  alignas(64) uint32_t masks[256][8] = {};
  constexpr Tables() {
    for (int b = 0; b < 256; ++b)
      for (int q = 0; q < 8; ++q) {
        bits[b][q] = static_cast<float>((b >> q) & 1);
        masks[b][q] = ((b >> q) & 1) ? 0xFFFFFFFFu : 0u;
      }
  }
};
constexpr Tables kTables{};

// MatvecTable reads a short segment of each row in turn, a stride no hardware prefetcher
// follows: ask for the rows ahead (a compiler builtin on GCC and clang, nothing elsewhere).
constexpr int64_t kAhead = 16;
inline void Prefetch(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p);
#endif
}
// Into L2 only: MatvecPerm asks for a whole group of rows at once, and into L1 those requests
// hold the miss buffers that its table loads need (benchmarks/README.md).
inline void PrefetchL2(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 0, 2);
#endif
}

// Bytes of a row handled per block of matvec: that block's 128 KiB of v (8 floats per byte)
// stays in L2 while every row of the thread's share streams past it.
constexpr int64_t kBlock = 4096;

// Portable: out[r] += <rows[r][j0..nbytes), v> for R rows at once, 8 float lanes per byte.
template <int R>
void RowsDotPortable(const uint8_t* const* rows, const float* v, int64_t j0, int64_t nbytes,
                     float* const* out) {
  if (j0 >= nbytes) return;
  float acc[R][8] = {};
  for (int64_t j = j0; j < nbytes; ++j) {
    const float* vj = v + 8 * j;
    for (int r = 0; r < R; ++r) {
      const float* t = kTables.bits[rows[r][j]];
      for (int q = 0; q < 8; ++q) acc[r][q] += t[q] * vj[q];
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = 0.f;
    for (int q = 0; q < 8; ++q) s += acc[r][q];
    *out[r] += s;
  }
}

#if defined(SUPSUP_AVX512)
// 16 bits at any byte address as a lane mask (memcpy: rows of odd length are unaligned).
inline __mmask16 Mask16(const uint8_t* p) {
  uint16_t m;
  std::memcpy(&m, p, 2);
  return _cvtu32_mask16(m);
}
#endif

// out[r] += <rows[r], v> for R rows at once, over nbytes bytes; each load of v serves R rows.
template <int R>
void RowsDot(const uint8_t* const* rows, const float* v, int64_t nbytes, float* const* out) {
  int64_t j = 0;
#if defined(SUPSUP_AVX512)
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (; j + 4 <= nbytes; j += 4) {
    const __m512 v0 = _mm512_loadu_ps(v + 8 * j), v1 = _mm512_loadu_ps(v + 8 * j + 16);
    for (int r = 0; r < R; ++r) {
      const __mmask16 m0 = Mask16(rows[r] + j);
      const __mmask16 m1 = Mask16(rows[r] + j + 2);
      acc[r][0] = _mm512_mask_add_ps(acc[r][0], m0, acc[r][0], v0);
      acc[r][1] = _mm512_mask_add_ps(acc[r][1], m1, acc[r][1], v1);
    }
  }
  for (int r = 0; r < R; ++r) *out[r] += _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
#elif defined(SUPSUP_AVX2)
  const float* masks = reinterpret_cast<const float*>(kTables.masks);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (; j < nbytes; ++j) {
    const __m256 vj = _mm256_loadu_ps(v + 8 * j);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_add_ps(acc[r], _mm256_and_ps(_mm256_load_ps(masks + 8 * rows[r][j]), vj));
  }
  for (int r = 0; r < R; ++r) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    *out[r] += _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
  }
#endif
  RowsDotPortable<R>(rows, v, j, nbytes, out);
}

// Whether x[0 .. n) is all zeros (a stretch of v the table paths skip: One-Shot's v = x dy^T * W
// is zero on the rows of the inputs ReLU zeroed, a large share of every hidden layer's bits).
inline bool AllZero(const float* x, int64_t n) {
  for (int64_t q = 0; q < n; ++q)
    if (x[q] != 0.f) return false;
  return true;
}

#if !defined(SUPSUP_AVX512) && !defined(SUPSUP_AVX2)
// Matvec by tables of partial sums, for many rows: for a block of kTab byte positions, sums[j][c]
// = sum of v over the set bits of byte value c (256 floats per position, built once and shared
// by every row), so each row-byte costs one lookup and one add, for any ISA.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
constexpr int kFirstByteShift = 56, kByteStep = -8;  // byte q of a loaded uint64
#else
constexpr int kFirstByteShift = 0, kByteStep = 8;
#endif
constexpr int64_t kTab = 32;  // 32 KiB of tables, in L1 (measured against 16 .. 1024)

// sums[j][16 h + l] = low[l] + high[h]: each nibble table is the outer sum of two tables of bit
// pairs, then a 16 x 16 outer sum. GCC and clang get it as 4-float vectors (the generic vector
// extension: SSE2, NEON, ... as the build allows; no intrinsics), kept in registers.
#if defined(__GNUC__)
typedef float F4 __attribute__((vector_size(16)));
void BuildSums(const float* v, int64_t len, float (*sums)[256]) {
  for (int64_t j = 0; j < len; ++j) {
    const float* x = v + 8 * j;
    const F4 p0 = {0.f, x[0], x[1], x[0] + x[1]}, p2 = {0.f, x[4], x[5], x[4] + x[5]};
    const F4 low[4] = {p0, p0 + x[2], p0 + x[3], p0 + (x[2] + x[3])};
    const F4 hi4[4] = {p2, p2 + x[6], p2 + x[7], p2 + (x[6] + x[7])};
    float high[16];
    std::memcpy(high, hi4, sizeof high);
    for (int h = 0; h < 16; ++h) {
      const F4 hv = F4{} + high[h];
      for (int m = 0; m < 4; ++m) {
        const F4 s = low[m] + hv;
        std::memcpy(&sums[j][16 * h + 4 * m], &s, sizeof s);
      }
    }
  }
}
#else
void BuildSums(const float* v, int64_t len, float (*sums)[256]) {
  for (int64_t j = 0; j < len; ++j) {
    const float* x = v + 8 * j;
    const float p0[4] = {0.f, x[0], x[1], x[0] + x[1]}, p1[4] = {0.f, x[2], x[3], x[2] + x[3]};
    const float p2[4] = {0.f, x[4], x[5], x[4] + x[5]}, p3[4] = {0.f, x[6], x[7], x[6] + x[7]};
    float low[16], high[16];
    for (int m = 0; m < 4; ++m)
      for (int l = 0; l < 4; ++l) {
        low[4 * m + l] = p0[l] + p1[m];
        high[4 * m + l] = p2[l] + p3[m];
      }
    for (int h = 0; h < 16; ++h)
      for (int l = 0; l < 16; ++l) sums[j][16 * h + l] = low[l] + high[h];
  }
}
#endif

// part[i] += <row idx[i], v> over bytes [c0, c1) (a multiple of kTab, or nb), for i < n.
// Threads split the columns, so each builds only its own tables.
void MatvecTable(const uint8_t* b, int64_t nb, const float* v, const int64_t* idx, int64_t n,
                 int64_t c0, int64_t c1, float* part) {
  alignas(64) float sums[kTab][256];
  for (int64_t j0 = c0; j0 < c1; j0 += kTab) {
    const int64_t len = std::min(kTab, c1 - j0);
    if (AllZero(v + 8 * j0, 8 * len)) continue;  // as MatvecPerm's chunks
    BuildSums(v + 8 * j0, len, sums);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      const uint8_t* r0 = b + idx[i] * nb + j0;
      const uint8_t* r1 = b + idx[i + 1] * nb + j0;
      const uint8_t* r2 = b + idx[i + 2] * nb + j0;
      const uint8_t* r3 = b + idx[i + 3] * nb + j0;
      if (i + 4 + kAhead / 2 < n) {
        for (int r = 0; r < 4; ++r) Prefetch(b + idx[i + kAhead / 2 + r] * nb + j0);
      }
      // Two sums per row: eight independent add chains hide the adds' latency.
      float s[4][2] = {};
      int64_t j = 0;
      for (; j + 8 <= len; j += 8) {
        uint64_t w[4];
        std::memcpy(&w[0], r0 + j, 8), std::memcpy(&w[1], r1 + j, 8);
        std::memcpy(&w[2], r2 + j, 8), std::memcpy(&w[3], r3 + j, 8);
        for (int q = 0; q < 8; ++q) {
          const float* t = sums[j + q];
          const int shift = kFirstByteShift + kByteStep * q;
          for (int r = 0; r < 4; ++r) s[r][q & 1] += t[(w[r] >> shift) & 0xFF];
        }
      }
      for (; j < len; ++j) {
        const float* t = sums[j];
        s[0][0] += t[r0[j]], s[1][0] += t[r1[j]], s[2][0] += t[r2[j]], s[3][0] += t[r3[j]];
      }
      for (int r = 0; r < 4; ++r) part[i + r] += s[r][0] + s[r][1];
    }
    for (; i < n; ++i) {
      const uint8_t* r0 = b + idx[i] * nb + j0;
      float s0 = 0.f;
      for (int64_t j = 0; j < len; ++j) s0 += sums[j][r0[j]];
      part[i] += s0;
    }
  }
}
#else  // AVX-512 and AVX2
// AVX-512 and AVX2 keep their tables in registers: the partial sums of a few bits of one field
// of a dword are one vector, and one permute looks them up for a group of rows at once (lane r:
// row r's bits). The group's bytes are transposed (a lane holds one row's dword), and a shift
// selects each field (the permute reads an index's low bits). Per field: shift, permute, add.
//   AVX-512: 16 rows, 4-bit fields (nibbles, 16 sums), 2 permutes per byte.
//   AVX2:    8 rows, ten 3-bit fields and one 2-bit field per dword (8 sums each; fields
//            may straddle bytes), 11 permutes per 4 bytes.
// Columns are taken in blocks of kPerm bytes (rows read in runs that long: shorter runs were
// bound by their scattered reads), all rows of the group per block.
constexpr int64_t kPerm = 1024;  // bytes per block: its tables 128 / 88 KiB, in L2
alignas(64) const uint8_t kZeroBytes[kPerm] = {};  // pads the last group of rows

#if defined(SUPSUP_AVX512)
typedef __m512 VecF;
constexpr int kGroup = 16, kFields = 8;  // tables per dword
constexpr int64_t kChunk = 64;  // bytes of each row per transpose

inline void Transpose(__m512i* r) {  // 16 x 16 dwords
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// t[2 j + h] lane l = the sum of v[8 j + 4 h + q] over the bits q set in l.
void BuildFieldTables(const float* v, int64_t len, VecF* t) {
  for (int64_t p = 0; p < 2 * len; ++p) {
    const float* x = v + 4 * p;
    __m512 s = _mm512_maskz_mov_ps(0xAAAA, _mm512_set1_ps(x[0]));
    s = _mm512_mask_add_ps(s, 0xCCCC, s, _mm512_set1_ps(x[1]));
    s = _mm512_mask_add_ps(s, 0xF0F0, s, _mm512_set1_ps(x[2]));
    t[p] = _mm512_mask_add_ps(s, 0xFF00, s, _mm512_set1_ps(x[3]));
  }
}

// acc += lookups of one transposed chunk (z[d] lane r: bytes 4d .. 4d + 3 of row r).
inline void ChunkSums(const __m512i* z, const VecF* t, VecF* acc) {
  for (int d = 0; d < 16; ++d)
    for (int q = 0; q < 8; ++q)  // nibble q of the dword: byte 4d + q / 2
      acc[q & 3] = _mm512_add_ps(
          acc[q & 3], _mm512_permutexvar_ps(_mm512_srli_epi32(z[d], 4 * q), t[8 * d + q]));
}
typedef __m512i VecI;
inline VecI LoadI(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline VecF ZeroF() { return _mm512_setzero_ps(); }
inline void StoreF(float* p, VecF x) { _mm512_storeu_ps(p, x); }
#else
typedef __m256 VecF;
constexpr int kGroup = 8, kFields = 11;  // tables per dword
constexpr int64_t kChunk = 32;

inline void Transpose(__m256i* r) {  // 8 x 8 dwords
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(_mm256_castsi256_ps(r[i]), _mm256_castsi256_ps(r[i + 1]));
    t[i + 1] = _mm256_unpackhi_ps(_mm256_castsi256_ps(r[i]), _mm256_castsi256_ps(r[i + 1]));
  }
  for (int i = 0; i < 8; i += 4) {
    s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_castps_si256(_mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
    r[i + 4] = _mm256_castps_si256(_mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
  }
}

// t[11 d + f] lane l = the sum of v[32 d + 3 f + q] over the bits q set in l: dword d's bits
// as ten 3-bit fields and one of 2 (f = 10, bits 30-31), which may straddle its bytes.
void BuildFieldTables(const float* v, int64_t len, VecF* t) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t d = 0; d < len / 4; ++d) {
    const float* x = v + 32 * d;
    for (int f = 0; f < 11; ++f) {
      __m256 s = _mm256_blend_ps(zero, _mm256_set1_ps(x[3 * f]), 0xAA);
      s = _mm256_add_ps(s, _mm256_blend_ps(zero, _mm256_set1_ps(x[3 * f + 1]), 0xCC));
      if (f < 10) s = _mm256_add_ps(s, _mm256_blend_ps(zero, _mm256_set1_ps(x[3 * f + 2]), 0xF0));
      t[11 * d + f] = s;
    }
  }
}

inline void ChunkSums(const __m256i* z, const VecF* t, VecF* acc) {
  for (int d = 0; d < 8; ++d)
    for (int f = 0; f < 11; ++f)
      acc[f & 3] = _mm256_add_ps(
          acc[f & 3], _mm256_permutevar8x32_ps(t[11 * d + f], _mm256_srli_epi32(z[d], 3 * f)));
}
typedef __m256i VecI;
inline VecI LoadI(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline VecF ZeroF() { return _mm256_setzero_ps(); }
inline void StoreF(float* p, VecF x) { _mm256_storeu_ps(p, x); }
#endif

// MatvecTable's contract, by register tables.
void MatvecPerm(const uint8_t* b, int64_t nb, const float* v, const int64_t* idx, int64_t n,
                int64_t c0, int64_t c1, float* part) {
  // Too big for a stack (96-128 KiB); aligned for the vector loads.
  VecF* tables =
      static_cast<VecF*>(std::aligned_alloc(64, sizeof(VecF) * kFields * (kPerm / 4)));
  const uint8_t* rows[kGroup];
  int64_t chunks[kPerm / kChunk];
  for (int64_t j0 = c0; j0 < c1; j0 += kPerm) {
    const int64_t len = std::min(kPerm, c1 - j0), full = len / kChunk * kChunk;
    BuildFieldTables(v + 8 * j0, full, tables);
    // The bytes of chunks where v is all zero are never read.
    int64_t nc = 0;
    for (int64_t c = 0; c < full; c += kChunk)
      if (!AllZero(v + 8 * (j0 + c), 8 * kChunk)) chunks[nc++] = c;
    for (int64_t i = 0; i < n; i += kGroup) {
      for (int r = 0; r < kGroup; ++r) rows[r] = i + r < n ? b + idx[i + r] * nb + j0 : kZeroBytes;
      for (int64_t r = i + kGroup; r < std::min(n, i + 2 * kGroup); ++r)
        for (int64_t k = 0; k < nc; ++k)
          for (int64_t c = chunks[k]; c < chunks[k] + kChunk; c += 64)
            PrefetchL2(b + idx[r] * nb + j0 + c);
      VecF acc[4] = {ZeroF(), ZeroF(), ZeroF(), ZeroF()};
      for (int64_t k = 0; k < nc; ++k) {
        const int64_t c = chunks[k];
        VecI z[kGroup];
        for (int r = 0; r < kGroup; ++r) z[r] = LoadI(rows[r] + c);
        Transpose(z);
        ChunkSums(z, tables + kFields * (c / 4), acc);
      }
      alignas(64) float o[kGroup];
      StoreF(o, (acc[0] + acc[1]) + (acc[2] + acc[3]));
      for (int r = 0; r < kGroup && i + r < n; ++r) {
        part[i + r] += o[r];
        if (full < len) {  // the block's last bytes, fewer than a chunk
          const uint8_t* tail = rows[r] + full;
          float* out = part + i + r;
          RowsDot<1>(&tail, v + 8 * (j0 + full), len - full, &out);
        }
      }
    }
  }
  std::free(tables);
}
#endif

// From how many rows the tables beat the variant's direct loop (measured, benchmarks/README.md);
// SUPSUP_JAX_TABLE_ROWS overrides it (to measure the crossover).
#if defined(SUPSUP_AVX512)
constexpr int64_t kTableRows = 32;
#elif defined(SUPSUP_AVX2)
constexpr int64_t kTableRows = 8;
#else
constexpr int64_t kTableRows = 16;
#endif

// A crossover in rows: the environment variable `name` if set (read per call, for measuring),
// else the measured default.
int64_t RowsFromEnv(const char* name, int64_t fallback) {
  const char* env = std::getenv(name);
  return env ? std::atoll(env) : fallback;
}

// Rows with active[i] == 0 are skipped and get 0 (Binary needs only its remaining candidates).
ffi::Error MatvecImpl(ffi::Buffer<ffi::U8> bits, ffi::Buffer<ffi::F32> v,
                      ffi::Buffer<ffi::U8> active, ffi::ResultBuffer<ffi::F32> out) {
  auto dims = bits.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("bits must be uint8[k, nb]");
  const int64_t k = dims[0], nb = dims[1];
  if (v.element_count() != 8 * nb)
    return ffi::Error::InvalidArgument("v must have 8 * nb elements");
  if (active.element_count() != k) return ffi::Error::InvalidArgument("active must have k rows");
  const uint8_t* b = bits.typed_data();
  const float* x = v.typed_data();
  float* o = out->typed_data();
  if (nb == 0) {  // no weights: every product is 0
    std::fill(o, o + k, 0.f);
    return ffi::Error::Success();
  }
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < k; ++i) {
    o[i] = 0.f;
    if (active.typed_data()[i]) idx.push_back(i);
  }
  const int64_t n = static_cast<int64_t>(idx.size());
  if (n >= RowsFromEnv("SUPSUP_JAX_TABLE_ROWS", kTableRows)) {
#if defined(SUPSUP_AVX512) || defined(SUPSUP_AVX2)
    constexpr int64_t unit = kPerm;
    auto table = MatvecPerm;
#else
    constexpr int64_t unit = kTab;
    auto table = MatvecTable;
#endif
    const int64_t blocks = (nb + unit - 1) / unit;
    const int threads = static_cast<int>(std::min<int64_t>(NumThreads(n * nb), blocks));
    std::vector<std::vector<float>> parts(threads, std::vector<float>(n, 0.f));
    const int64_t per = (blocks + threads - 1) / threads;
    ParallelFor(threads, threads, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t)
        table(b, nb, x, idx.data(), n, std::min(nb, t * per * unit),
              std::min(nb, (t + 1) * per * unit), parts[t].data());
    });
    for (const auto& part : parts)
      for (int64_t i = 0; i < n; ++i) o[idx[i]] += part[i];
    return ffi::Error::Success();
  }
  ParallelFor(n, NumThreads(n * nb), [&](int64_t lo, int64_t hi) {
    constexpr int R = 8;
    const uint8_t* rows[R];
    float* outs[R];
    for (int64_t j0 = 0; j0 < nb; j0 += kBlock) {
      const int64_t len = std::min(kBlock, nb - j0);
      int64_t i = lo;
      for (; i + R <= hi; i += R) {
        for (int r = 0; r < R; ++r) rows[r] = b + idx[i + r] * nb + j0, outs[r] = o + idx[i + r];
        RowsDot<R>(rows, x + 8 * j0, len, outs);
      }
      for (; i < hi; ++i) {
        rows[0] = b + idx[i] * nb + j0, outs[0] = o + idx[i];
        RowsDot<1>(rows, x + 8 * j0, len, outs);
      }
    }
  });
  return ffi::Error::Success();
}

// Vecmat streams each row's bytes of one column block of kCols bytes into float accumulators
// for that block (8 * kCols floats = 32 KiB, kept in L1), four rows per pass over them: rows are
// read sequentially (a stride down the rows would defeat the hardware prefetcher).
constexpr int64_t kCols = 1024;

// acc[0 .. 8 len) += sum_r a[r] * bits of rows[r][0 .. len), R rows.
template <int R>
void AccumulateRows(const uint8_t* const* rows, const float* a, int64_t len, float* acc) {
  int64_t j = 0;
#if defined(SUPSUP_AVX512)
  __m512 av[R];
  for (int r = 0; r < R; ++r) av[r] = _mm512_set1_ps(a[r]);
  for (; j + 2 <= len; j += 2) {
    __m512 x = _mm512_loadu_ps(acc + 8 * j);
    for (int r = 0; r < R; ++r) x = _mm512_mask_add_ps(x, Mask16(rows[r] + j), x, av[r]);
    _mm512_storeu_ps(acc + 8 * j, x);
  }
#elif defined(SUPSUP_AVX2)
  const float* masks = reinterpret_cast<const float*>(kTables.masks);
  __m256 av[R];
  for (int r = 0; r < R; ++r) av[r] = _mm256_set1_ps(a[r]);
  for (; j < len; ++j) {
    __m256 x = _mm256_loadu_ps(acc + 8 * j);
    for (int r = 0; r < R; ++r)
      x = _mm256_add_ps(x, _mm256_and_ps(_mm256_load_ps(masks + 8 * size_t{rows[r][j]}), av[r]));
    _mm256_storeu_ps(acc + 8 * j, x);
  }
#endif
  float ar[R];  // local copies: no aliasing with acc, so the 8 lanes stay in registers
  for (int r = 0; r < R; ++r) ar[r] = a[r];
  for (; j < len; ++j) {
    float x[8];
    std::memcpy(x, acc + 8 * j, sizeof x);
    for (int r = 0; r < R; ++r) {
      const float* t = kTables.bits[rows[r][j]];
      for (int q = 0; q < 8; ++q) x[q] += t[q] * ar[r];
    }
    std::memcpy(acc + 8 * j, x, sizeof x);
  }
}

// Vecmat with one weight for every selected row (uniform alpha: One-Shot's superposition, each
// Binary round): out[j] = alpha * (how many rows have bit j set), the count exact in integers
// and one rounding per output (per 65528 rows) instead of one per row. Counting directly:
// portable adds a row-byte's entry in a table of bytes as 8 counts (4 KiB, one 8-lane add);
// AVX-512 and AVX2 add 32 counters per instruction (below). Many rows: bit-sliced first.
constexpr int64_t kCountCols = 512;  // bytes of a row per column block: 8 KiB of counters
constexpr int64_t kMaxCount = 65528;  // rows counted (a multiple of 8) before a flush to floats

struct CountTable {
  alignas(16) uint16_t c[256][8] = {};
  constexpr CountTable() {
    for (int b = 0; b < 256; ++b)
      for (int q = 0; q < 8; ++q) c[b][q] = static_cast<uint16_t>((b >> q) & 1);
  }
};
constexpr CountTable kCountTable{};

#if defined(__GNUC__)
typedef uint16_t U16x8 __attribute__((vector_size(16)));
#endif

// cnt[0 .. len) += counts of R rows' bytes [0, len): the counters are loaded and stored once
// per R rows.
template <int R>
inline void CountRows(const uint8_t* const* rows, int64_t len, uint16_t (*cnt)[8]) {
  int64_t j = 0;
#if defined(SUPSUP_AVX512)
  // 32 bits of a row are directly the lane mask of 32 counters: one masked add per 4 bytes.
  const __m512i one = _mm512_set1_epi16(1);
  for (; j + 4 <= len; j += 4) {
    __m512i c = _mm512_loadu_si512(cnt[j]);
    for (int r = 0; r < R; ++r) {
      uint32_t m;
      std::memcpy(&m, rows[r] + j, 4);
      c = _mm512_mask_add_epi16(c, _cvtu32_mask32(m), c, one);
    }
    _mm512_storeu_si512(cnt[j], c);
  }
#endif
#if defined(__GNUC__)
  for (; j < len; ++j) {
    U16x8 c, t;
    std::memcpy(&c, cnt[j], sizeof c);
    for (int r = 0; r < R; ++r) {
      std::memcpy(&t, kCountTable.c[rows[r][j]], sizeof t);
      c += t;
    }
    std::memcpy(cnt[j], &c, sizeof c);
  }
#else
  for (; j < len; ++j)
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < 8; ++q) cnt[j][q] += kCountTable.c[rows[r][j]][q];
#endif
}

#if defined(SUPSUP_AVX2)
// AVX2 counts in 8-bit lanes first, 32 weights per add: 4 bytes of a row become 32 bytes of
// 0 / -1 (broadcast, a byte shuffle, and + compare with each lane's bit), then subtracted.
constexpr int64_t kSmallRows = 248;  // rows an 8-bit counter takes before it is widened

inline __m256i ExpandBits32(const uint8_t* p) {
  int32_t w;
  std::memcpy(&w, p, 4);
  // Both 128-bit lanes hold the word; the low lane spreads bytes 0, 1, the high one 2, 3.
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  const __m256i x = _mm256_shuffle_epi8(_mm256_set1_epi32(w), spread);
  return _mm256_cmpeq_epi8(_mm256_and_si256(x, bit), bit);
}

// c8[0 .. 8 len) += bits of R rows' bytes [0, len).
template <int R>
inline void CountRowsSmall(const uint8_t* const* rows, int64_t len, uint8_t* c8) {
  int64_t j = 0;
  for (; j + 4 <= len; j += 4) {
    __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c8 + 8 * j));
    for (int r = 0; r < R; ++r) c = _mm256_sub_epi8(c, ExpandBits32(rows[r] + j));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c8 + 8 * j), c);
  }
  for (; j < len; ++j)
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < 8; ++q) c8[8 * j + q] += (rows[r][j] >> q) & 1;
}
#endif

// Counters of one column block: 16-bit counts per weight; AVX2 adds 8-bit counts first and
// widens them before any could wrap.
struct Counter {
  alignas(64) uint16_t cnt[kCountCols][8];
#if defined(SUPSUP_AVX2)
  alignas(64) uint8_t c8[kCountCols * 8];
  int64_t pending = 0;  // rows added to c8 since it was last widened (over any columns)
  void Widen() {
    for (int64_t j = 0; j < 8 * kCountCols; ++j) cnt[j / 8][j % 8] += c8[j];
    std::memset(c8, 0, sizeof c8);
    pending = 0;
  }
#endif
  void Reset() {
    std::memset(cnt, 0, sizeof cnt);
#if defined(SUPSUP_AVX2)
    std::memset(c8, 0, sizeof c8);
    pending = 0;
#endif
  }
  // Counts of bytes [j0, j0 + len) of the block += bits of R rows (pointers at byte j0).
  template <int R>
  void Add(const uint8_t* const* rows, int64_t j0, int64_t len) {
#if defined(SUPSUP_AVX2)
    if (pending + R > kSmallRows) Widen();
    CountRowsSmall<R>(rows, len, c8 + 8 * j0);
    pending += R;
#else
    CountRows<R>(rows, len, cnt + j0);
#endif
  }
  void Finish() {
#if defined(SUPSUP_AVX2)
    Widen();
#endif
  }
};

// Many rows are first added bit-sliced (Harley-Seal carry-save adders, as in fast popcounts):
// per weight, bits `ones, twos, fours, eights` hold its count mod 16 over the rows so far, and
// every 16 rows give one row of `sixteens` (the carries), which the Counter adds. Plain bitwise
// operations on the widest vector the variant has (GCC / clang vector extension, 64-bit words
// elsewhere), so 16 rows cost 15 adders of 5 operations per vector instead of 16 counting adds
// per 32 (AVX-512) or 8 (portable) weights.
#if defined(__GNUC__)
#if defined(SUPSUP_AVX512)
constexpr int64_t kVB = 64;
#elif defined(SUPSUP_AVX2)
constexpr int64_t kVB = 32;
#else
constexpr int64_t kVB = 16;
#endif
typedef uint64_t Bits __attribute__((vector_size(kVB)));
#else
constexpr int64_t kVB = 8;
typedef uint64_t Bits;
#endif
// Fewer rows count directly (crossovers measured on a 1M-weight layer, benchmarks/README.md).
#if defined(SUPSUP_AVX512) || defined(SUPSUP_AVX2)
constexpr int64_t kSliceRows = 64;
#else
constexpr int64_t kSliceRows = 32;
#endif
alignas(64) const uint8_t kZeroRow[kCountCols] = {};  // pads a last group to 16 rows

inline void Csa(Bits& h, Bits& l, Bits a, Bits b, Bits c) {
  const Bits u = a ^ b;
  h = (a & b) | (u & c);
  l = u ^ c;
}

inline Bits LoadBits(const uint8_t* p) {
  Bits x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// Add 16 rows' bytes [0, len) (len a multiple of kVB) into the planes; write their carries.
// Each row is a short run of bytes (the block) far from the next: prefetch the next 16 rows'.
void AddSixteen(const uint8_t* const* g, const uint8_t* const* next, int64_t len,
                Bits (*planes)[kCountCols / kVB], uint8_t* sixteens) {
  for (int64_t v = 0; v < len / kVB; ++v) {
    const int64_t o = v * kVB;
    if (o % 64 == 0)
      for (int r = 0; r < 16; ++r) Prefetch(next[r] + o);
    Bits ones = planes[0][v], twos = planes[1][v], fours = planes[2][v],
         eights = planes[3][v];
    Bits twos_a, twos_b, fours_a, fours_b, eights_a, eights_b, six;
    Csa(twos_a, ones, ones, LoadBits(g[0] + o), LoadBits(g[1] + o));
    Csa(twos_b, ones, ones, LoadBits(g[2] + o), LoadBits(g[3] + o));
    Csa(fours_a, twos, twos, twos_a, twos_b);
    Csa(twos_a, ones, ones, LoadBits(g[4] + o), LoadBits(g[5] + o));
    Csa(twos_b, ones, ones, LoadBits(g[6] + o), LoadBits(g[7] + o));
    Csa(fours_b, twos, twos, twos_a, twos_b);
    Csa(eights_a, fours, fours, fours_a, fours_b);
    Csa(twos_a, ones, ones, LoadBits(g[8] + o), LoadBits(g[9] + o));
    Csa(twos_b, ones, ones, LoadBits(g[10] + o), LoadBits(g[11] + o));
    Csa(fours_a, twos, twos, twos_a, twos_b);
    Csa(twos_a, ones, ones, LoadBits(g[12] + o), LoadBits(g[13] + o));
    Csa(twos_b, ones, ones, LoadBits(g[14] + o), LoadBits(g[15] + o));
    Csa(fours_b, twos, twos, twos_a, twos_b);
    Csa(eights_b, fours, fours, fours_a, fours_b);
    Csa(six, eights, eights, eights_a, eights_b);
    planes[0][v] = ones, planes[1][v] = twos, planes[2][v] = fours, planes[3][v] = eights;
    std::memcpy(sixteens + o, &six, sizeof six);
  }
}

// `sliced`: whether these rows are many enough to add bit-sliced.
void CountBlock(const uint8_t* b, int64_t nb, const int64_t* idx, int64_t n, float alpha,
                int64_t j0, int64_t len, bool sliced, float* out) {
  constexpr int R = 8;
  Counter counter;
  const uint8_t* rows[16];
  const uint8_t* next[16];
  // Bytes [0, sl) of the block are added bit-sliced, the rest (and every byte of few rows)
  // directly: the planes are whole vectors, and a row's bytes past the block are not ours.
  const int64_t sl = sliced ? len / kVB * kVB : 0;
  Bits planes[4][kCountCols / kVB];
  alignas(64) uint8_t carries[R][kCountCols];
  std::memset(out, 0, sizeof(float) * 8 * len);
  for (int64_t i0 = 0; i0 < n; i0 += kMaxCount) {
    counter.Reset();
    const int64_t i1 = std::min(n, i0 + kMaxCount);
    if (sl > 0) {
      std::memset(planes, 0, sizeof planes);
      int c = 0;
      auto row = [&](int64_t i) { return i < i1 ? b + idx[i] * nb + j0 : kZeroRow; };
      for (int r = 0; r < 16; ++r) next[r] = row(i0 + r);
      for (int64_t i = i0; i < i1; i += 16) {
        for (int r = 0; r < 16; ++r) rows[r] = next[r], next[r] = row(i + 16 + r);
        AddSixteen(rows, next, sl, planes, carries[c]);
        if (++c == R) {
          for (int r = 0; r < R; ++r) rows[r] = carries[r];
          counter.Add<R>(rows, 0, sl);
          c = 0;
        }
      }
      for (int r = 0; r < c; ++r) {
        rows[0] = carries[r];
        counter.Add<1>(rows, 0, sl);
      }
    }
    if (sl < len) {
      int64_t i = i0;
      for (; i + R <= i1; i += R) {
        for (int r = 0; r < R; ++r) rows[r] = b + idx[i + r] * nb + j0 + sl;
        counter.Add<R>(rows, sl, len - sl);
      }
      for (; i < i1; ++i) {
        rows[0] = b + idx[i] * nb + j0 + sl;
        counter.Add<1>(rows, sl, len - sl);
      }
    }
    counter.Finish();
    // count = 16 * (carries counted) + the planes' 4-bit remainder: at most kMaxCount, exact in
    // 16 bits.
    const uint8_t* pb = reinterpret_cast<const uint8_t*>(planes);
    const int64_t stride = sizeof(planes[0]);
    for (int64_t j = 0; j < sl; ++j) {
      uint16_t* c = counter.cnt[j];
      for (int q = 0; q < 8; ++q) c[q] *= 16;
      for (int p = 0; p < 4; ++p) {
        const uint16_t* t = kCountTable.c[pb[p * stride + j]];
        for (int q = 0; q < 8; ++q) c[q] += t[q] << p;
      }
    }
    for (int64_t j = 0; j < len; ++j)
      for (int q = 0; q < 8; ++q)
        out[8 * j + q] += alpha * static_cast<float>(counter.cnt[j][q]);
  }
}

ffi::Error VecmatImpl(ffi::Buffer<ffi::F32> alpha, ffi::Buffer<ffi::U8> bits,
                      ffi::ResultBuffer<ffi::F32> out) {
  auto dims = bits.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("bits must be uint8[k, nb]");
  const int64_t k = dims[0], nb = dims[1];
  if (alpha.element_count() != k)
    return ffi::Error::InvalidArgument("alpha must have k elements");
  const uint8_t* b = bits.typed_data();
  const float* a = alpha.typed_data();
  float* o = out->typed_data();
  std::vector<int64_t> idx;  // rows with alpha != 0: Binary's survivors, never empty slots
  for (int64_t i = 0; i < k; ++i)
    if (a[i] != 0.f) idx.push_back(i);
  const int64_t n = static_cast<int64_t>(idx.size());
  // Counting needs a finite alpha: 0 * inf would put NaN where no row has the bit.
  bool equal = n > 0 && std::isfinite(a[idx[0]]);
  for (int64_t i = 1; i < n && equal; ++i) equal = a[idx[i]] == a[idx[0]];
  if (equal) {
    const int64_t blocks = (nb + kCountCols - 1) / kCountCols;
    const bool sliced = n >= RowsFromEnv("SUPSUP_JAX_SLICE_ROWS", kSliceRows);
    ParallelFor(blocks, NumThreads(n * nb), [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        const int64_t j0 = kCountCols * c;
        CountBlock(b, nb, idx.data(), n, a[idx[0]], j0, std::min(kCountCols, nb - j0), sliced,
                   o + 8 * j0);
      }
    });
    return ffi::Error::Success();
  }
  const int64_t blocks = (nb + kCols - 1) / kCols;
  ParallelFor(blocks, NumThreads(n * nb), [&](int64_t lo, int64_t hi) {
    constexpr int R = 4;
    const uint8_t* rows[R];
    float ar[R];
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t j0 = kCols * c, len = std::min(kCols, nb - j0);
      float* acc = o + 8 * j0;  // accumulate in place: this block's outputs are in L1 anyway
      std::memset(acc, 0, sizeof(float) * 8 * len);
      int64_t i = 0;
      for (; i + R <= n; i += R) {
        for (int r = 0; r < R; ++r) rows[r] = b + idx[i + r] * nb + j0, ar[r] = a[idx[i + r]];
        AccumulateRows<R>(rows, ar, len, acc);
      }
      for (; i < n; ++i) {
        rows[0] = b + idx[i] * nb + j0, ar[0] = a[idx[i]];
        AccumulateRows<1>(rows, ar, len, acc);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// Whether this CPU runs the variant this file was built as (checked before it is registered, so
// a wrong guess about the CPU can never execute an illegal instruction). Built for the baseline
// ISA, so that the check itself runs anywhere.
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("arch=x86-64")))
#endif
extern "C" int SupsupBitsVariantSupported() {
#if defined(SUPSUP_AVX512)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx2");
#elif defined(SUPSUP_AVX2)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return 1;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SupsupBitsMatvec, MatvecImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SupsupBitsVecmat, VecmatImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
