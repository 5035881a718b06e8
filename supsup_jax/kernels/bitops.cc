// Bit-matrix products for the mask bank (supsup_jax/bank.py), as XLA FFI custom calls on CPU.
//
// bits: uint8[k, nb], row i holds task i's mask packed 8 weights per byte, little bit order
// (bit b of byte j is weight 8j+b). Two products, never unpacking bits into floats in memory:
//   SupsupBitsMatvec:  out[i] = sum_j bit(i, j) * v[j]       (dL/dalpha, SPEC 6; active rows)
//   SupsupBitsVecmat:  out[j] = sum_i alpha[i] * bit(i, j)   (the superposed mask, Eq. 2)
// With AVX-512 a 16-bit slice of a row is directly a lane mask, so one masked add handles 16
// weights; otherwise a portable loop that the compiler vectorises as it can. Rows (matvec) or
// column blocks (vecmat) are split across threads.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
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

#if defined(__AVX512F__)
// 16 bits at any byte address as a lane mask (memcpy: rows of odd length are unaligned).
inline __mmask16 Mask16(const uint8_t* p) {
  uint16_t m;
  std::memcpy(&m, p, 2);
  return _cvtu32_mask16(m);
}
#endif

// Bytes of a row handled per block of matvec: that block's 128 KiB of v (8 floats per byte)
// stays in L2 while every row of the thread's share streams past it.
constexpr int64_t kBlock = 4096;

// out[r] += <rows[r], v> for R rows at once, over nbytes bytes. Each 16 floats of v are loaded
// once for the R rows, and a row's 16 bits load straight into a lane mask.
template <int R>
void RowsDot(const uint8_t* const* rows, const float* v, int64_t nbytes, float* const* out) {
  int64_t j = 0;
#if defined(__AVX512F__)
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
#endif
  for (; j < nbytes; ++j) {
    for (int r = 0; r < R; ++r) {
      const uint8_t b = rows[r][j];
      float t = 0.f;
      for (int q = 0; q < 8; ++q) t += ((b >> q) & 1) ? v[8 * j + q] : 0.f;
      *out[r] += t;
    }
  }
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
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < k; ++i) {
    o[i] = 0.f;
    if (active.typed_data()[i]) idx.push_back(i);
  }
  const int64_t n = static_cast<int64_t>(idx.size());
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

// out[8*j0 .. 8*(j0+len)) = sum_i alpha_i * bits of row i there; len <= 16 bytes.
void ColumnChunk(const uint8_t* b, const float* alpha, int64_t k, int64_t nb, int64_t j0,
                 int64_t len, float* o) {
#if defined(__AVX512F__)
  if (len == 16) {
    __m512 acc[8];
    for (int c = 0; c < 8; ++c) acc[c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; ++i) {
      if (alpha[i] == 0.f) continue;  // Binary's eliminated tasks and empty slots
      const __m512 a = _mm512_set1_ps(alpha[i]);
      const uint8_t* m = b + i * nb + j0;
      for (int c = 0; c < 8; ++c) acc[c] = _mm512_mask_add_ps(acc[c], Mask16(m + 2 * c), acc[c], a);
    }
    for (int c = 0; c < 8; ++c) _mm512_storeu_ps(o + 16 * c, acc[c]);
    return;
  }
#endif
  float acc[128] = {0.f};
  for (int64_t i = 0; i < k; ++i) {
    const float a = alpha[i];
    if (a == 0.f) continue;
    const uint8_t* row = b + i * nb + j0;
    for (int64_t j = 0; j < len; ++j)
      for (int t = 0; t < 8; ++t) acc[8 * j + t] += ((row[j] >> t) & 1) ? a : 0.f;
  }
  std::memcpy(o, acc, sizeof(float) * 8 * len);
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
  const int64_t chunks = (nb + 15) / 16;
  ParallelFor(chunks, NumThreads(k * nb), [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t j0 = 16 * c;
      ColumnChunk(b, a, k, nb, j0, std::min<int64_t>(16, nb - j0), o + 8 * j0);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

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
