// quants_avx2.cpp -- the AVX2 (+FMA +F16C) row-dot kernels: quants_x86.h compiled with
// that target attribute and vpmaddubsw + vpmaddwd as the integer multiply-accumulate.
#include "quants.h"

#include <algorithm>
#include <cmath>

#include "../kargs.h"
#include "f16.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace llmetal::cpu {

#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
#define X86_TARGET "avx2,fma,f16c"
#define X86_VNNI 0
#include "quants_x86.h"
#undef X86_TARGET
#undef X86_VNNI
}  // namespace avx2

RowDot rowdot_avx2(int t) { return avx2::x86_table(t); }
RowDot2 rowdot2_avx2(int t) { return avx2::x86_table2(t); }
AttnGroup attn_group_avx2() { return avx2::attn_group; }
F16Row f16_row_f16c() { return avx2::f16_row; }
GluRow glu_avx2(bool gelu) { return gelu ? avx2::glu_row<true> : avx2::glu_row<false>; }
ArgmaxRow argmax_avx2() { return avx2::argmax_row; }
AttnWeights attn_weights_avx2() { return avx2::attn_weights; }
#else
RowDot rowdot_avx2(int) { return nullptr; }
RowDot2 rowdot2_avx2(int) { return nullptr; }
AttnGroup attn_group_avx2() { return nullptr; }
F16Row f16_row_f16c() { return nullptr; }
GluRow glu_avx2(bool) { return nullptr; }
ArgmaxRow argmax_avx2() { return nullptr; }
AttnWeights attn_weights_avx2() { return nullptr; }
#endif

}  // namespace llmetal::cpu
