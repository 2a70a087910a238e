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
#else
RowDot rowdot_avx512(int) { return nullptr; }
RowDot2 rowdot2_avx512(int) { return nullptr; }
AttnChunk attn_chunk_avx512() { return nullptr; }
const Rows16Level* rows16_avx512() { return nullptr; }
GluRow glu_avx512(bool) { return nullptr; }
ArgmaxRow argmax_avx512() { return nullptr; }
RowDot16 rowdot16_q8_0_avx512() { return nullptr; }
#endif

}  // namespace llmetal::cpu
