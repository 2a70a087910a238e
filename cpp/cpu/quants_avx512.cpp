// quants_avx512.cpp -- the AVX-512 level's row-dot kernels: quants_x86.h compiled for
// AVX-512 F/BW/VL + VNNI, so its integer multiply-accumulates are vpdpbusd / vpdpwssd.
// matmul_kernel uses these only on CPUs with AVX512_VNNI (others get the AVX2 kernels).
// No AMX instruction is ever emitted.
#include "quants.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../kargs.h"
#include "f16.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace llmetal::cpu {

#if defined(__x86_64__) || defined(_M_X64)
namespace avx512 {
#define X86_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define X86_VNNI 1
#define X86_VREGS 32
// gcc 12's AVX-512 headers use _mm512_undefined_*() as pass-through operands and then
// warn that they are uninitialized once inlined (a header false positive): silenced here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "quants_x86.h"
#include "gemm_x86.h"

// quantize_row_q8 / quantize_row_q8k (quants.cpp) on 16 lanes, the same bytes: the largest |x|
// is a maximum in any order (vmaxps keeps its second operand when the first is NaN, as the
// scalar comparison skips a NaN), and vcvtps2dq rounds x * inv to nearest even as the scalar
// (v + 1.5 * 2^23) - 1.5 * 2^23 does for |v| <= 127.x (a NaN becomes 0 in both).
static inline __attribute__((target(X86_TARGET))) __m512 absmax16(__m512 m, __m512 x) {
    return _mm512_max_ps(_mm512_abs_ps(x), m);
}
static __attribute__((target(X86_TARGET))) void quantize_q8(const float* x, BlockQ8* y, int K) {
    for (int b = 0; b < K / 32; ++b, x += 32, ++y) {
        const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(absmax16(absmax16(_mm512_setzero_ps(), x0), x1));
        const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        const __m512 iv = _mm512_set1_ps(inv);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, iv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, iv));
        _mm_storeu_si128((__m128i*)y->qs, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i*)(y->qs + 16), _mm512_cvtepi32_epi8(q1));
        const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        y->d = d;
        y->s = d * (float)sum;
        y->sum = sum;
    }
}
static __attribute__((target(X86_TARGET))) void quantize_q8k(const float* x, BlockQ8K* y, int K) {
    for (int b = 0; b < K / 256; ++b, x += 256, ++y) {
        __m512 m = _mm512_setzero_ps();
        for (int i = 0; i < 256; i += 16) m = absmax16(m, _mm512_loadu_ps(x + i));
        const float amax = _mm512_reduce_max_ps(m);
        const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        const __m512 iv = _mm512_set1_ps(inv);
        for (int j = 0; j < 16; ++j) {
            const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * j), iv));
            _mm_storeu_si128((__m128i*)(y->qs + 16 * j), _mm512_cvtepi32_epi8(q));
            y->bsums[j] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        y->d = d;
    }
}
#pragma GCC diagnostic pop
#undef X86_TARGET
#undef X86_VNNI
#undef X86_VREGS
}  // namespace avx512

RowDot rowdot_avx512(int t) { return avx512::x86_table(t); }
RowDot2 rowdot2_avx512(int t) { return avx512::x86_table2(t); }
AttnChunk attn_chunk_avx512() { return avx512::attn_chunk; }
const Rows16Level* rows16_avx512() { return &avx512::x86_rows16_level; }
GluRow glu_avx512(bool gelu) { return gelu ? avx512::glu_row<true> : avx512::glu_row<false>; }
ArgmaxRow argmax_avx512() { return avx512::argmax_row; }
RowDot16 rowdot16_q8_0_avx512() { return avx512::rowdot16_q8_0; }
QuantizeQ8 quantize_q8_avx512() { return avx512::quantize_q8; }
QuantizeQ8K quantize_q8k_avx512() { return avx512::quantize_q8k; }
#else
RowDot rowdot_avx512(int) { return nullptr; }
RowDot2 rowdot2_avx512(int) { return nullptr; }
AttnChunk attn_chunk_avx512() { return nullptr; }
const Rows16Level* rows16_avx512() { return nullptr; }
GluRow glu_avx512(bool) { return nullptr; }
ArgmaxRow argmax_avx512() { return nullptr; }
RowDot16 rowdot16_q8_0_avx512() { return nullptr; }
QuantizeQ8 quantize_q8_avx512() { return nullptr; }
QuantizeQ8K quantize_q8k_avx512() { return nullptr; }
#endif

}  // namespace llmetal::cpu
