// matmul.metal -- y[t, n] = sum_k W[n, k] x[t, k], W in its GGUF block format.
//
// kernel_matmul_<t> (mat-vec, decode and small batches): one SIMD group per output row n,
// MV_SG rows per threadgroup, MV_MT tokens per grid row. Lanes take consecutive groups of 8
// elements, so a SIMD group reads one contiguous span of the weight row per step; simd_sum
// reduces. The weight row is read once per MV_MT tokens: at decode it streams the weights
// once, which is the whole cost of a decode step. (The CUDA device's kernel_matmul, warp for
// SIMD group.)
//
// kernel_matmul_mm_<t> (prefill, n_in % 32 == 0): a threadgroup computes a 32x32 tile of y
// with simdgroup_float8x8 matrices; per K step every thread dequantizes one group of 8
// weights and loads 8 activations into threadgroup memory, then each SIMD group multiplies
// its 16x16 block as 2x2 8x8 tiles.
#include <metal_stdlib>
using namespace metal;
#include "quants.h"
#include "../cpp/metal/kargs_metal.h"

template <int T>
kernel void kernel_matmul(constant kargs_matmul& a [[buffer(0)]],
                          device const uchar* W [[buffer(1)]],
                          device const float* x [[buffer(2)]],
                          device float* y [[buffer(3)]],
                          uint3 tgpig [[threadgroup_position_in_grid]],
                          ushort tiisg [[thread_index_in_simdgroup]],
                          ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    const int n = (int)tgpig.x * MV_SG + sgitg;
    const bool active = n < a.n_out;          // uniform per SIMD group: guards work, not simd_sum
    const int m0 = (int)tgpig.y * MV_MT;
    const int mc = min(MV_MT, a.n_tokens - m0);
    float acc[MV_MT];
    for (int m = 0; m < MV_MT; ++m) acc[m] = 0.0f;
    if (active) {
        device const uchar* row = W + (ulong)n * a.row_bytes;
        device const float* xb = x + (long)m0 * a.n_in;
        if (a.n_in % 8 == 0) {
            const int ng = a.n_in / 8;
            for (int g = tiisg; g < ng; g += 32) {
                float w[8];
                dq8(T, row, g, w);
                for (int m = 0; m < mc; ++m) {
                    device const float* xp = xb + (long)m * a.n_in + 8 * g;
                    acc[m] += w[0] * xp[0] + w[1] * xp[1] + w[2] * xp[2] + w[3] * xp[3] +
                              w[4] * xp[4] + w[5] * xp[5] + w[6] * xp[6] + w[7] * xp[7];
                }
            }
        } else {   // odd row lengths (float weights only): one element per lane per step
            for (int k = tiisg; k < a.n_in; k += 32) {
                float wk = dq1(T, row, k);
                for (int m = 0; m < mc; ++m) acc[m] += wk * xb[(long)m * a.n_in + k];
            }
        }
    }
    // mc is uniform over the threadgroup, so every lane makes the same simd_sum calls
    for (int m = 0; m < mc; ++m) {
        float s = simd_sum(acc[m]);
        if (active && tiisg == 0) y[(long)(m0 + m) * a.n_out + n] = s;
    }
}

template <int T>
kernel void kernel_matmul_mm(constant kargs_matmul& a [[buffer(0)]],
                             device const uchar* W [[buffer(1)]],
                             device const float* x [[buffer(2)]],
                             device float* y [[buffer(3)]],
                             threadgroup float* sh [[threadgroup(0)]],
                             uint3 tgpig [[threadgroup_position_in_grid]],
                             ushort tiitg [[thread_index_in_threadgroup]],
                             ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    // sh holds sw[MM_TK][MM_TN] (the weight tile, transposed: k major) then sx[MM_TM][MM_TK]
    threadgroup float* sw = sh;
    threadgroup float* sx = sh + MM_TK * MM_TN;
    const int n0 = (int)tgpig.x * MM_TN, m0 = (int)tgpig.y * MM_TM;
    const int r = tiitg / 4, gq = tiitg % 4;            // this thread's row in the tile, group of 8
    const int sm = (sgitg / 2) * 16, sn = (sgitg % 2) * 16;   // this SIMD group's 16x16 block

    simdgroup_float8x8 acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

    for (int k0 = 0; k0 < a.n_in; k0 += MM_TK) {
        float w[8];
        if (n0 + r < a.n_out) {
            dq8(T, W + (ulong)(n0 + r) * a.row_bytes, k0 / 8 + gq, w);
        } else {
            for (int i = 0; i < 8; ++i) w[i] = 0.0f;
        }
        for (int i = 0; i < 8; ++i) sw[(gq * 8 + i) * MM_TN + r] = w[i];
        const bool tok = m0 + r < a.n_tokens;
        device const float* xp = x + (long)(m0 + r) * a.n_in + k0 + gq * 8;
        for (int i = 0; i < 8; ++i) sx[r * MM_TK + gq * 8 + i] = tok ? xp[i] : 0.0f;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int kk = 0; kk < MM_TK; kk += 8) {
            simdgroup_float8x8 ma[2], mb[2];
            for (int i = 0; i < 2; ++i) simdgroup_load(ma[i], sx + (sm + 8 * i) * MM_TK + kk, MM_TK);
            for (int j = 0; j < 2; ++j) simdgroup_load(mb[j], sw + kk * MM_TN + sn + 8 * j, MM_TN);
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 2; ++j)
                    simdgroup_multiply_accumulate(acc[2 * i + j], ma[i], mb[j], acc[2 * i + j]);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    // stage the 32x32 tile in threadgroup memory, then write the part inside y
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
            simdgroup_store(acc[2 * i + j], sh + (sm + 8 * i) * MM_TN + sn + 8 * j, MM_TN);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int e = tiitg; e < MM_TM * MM_TN; e += MM_THREADS) {
        const int m = e / MM_TN, nn = e % MM_TN;
        if (m0 + m < a.n_tokens && n0 + nn < a.n_out) y[(long)(m0 + m) * a.n_out + n0 + nn] = sh[e];
    }
}

typedef decltype(kernel_matmul<KT_F32>) kernel_matmul_t;
template [[host_name("kernel_matmul_f32")]] kernel kernel_matmul_t kernel_matmul<KT_F32>;
template [[host_name("kernel_matmul_f16")]] kernel kernel_matmul_t kernel_matmul<KT_F16>;
template [[host_name("kernel_matmul_bf16")]] kernel kernel_matmul_t kernel_matmul<KT_BF16>;
template [[host_name("kernel_matmul_q4_0")]] kernel kernel_matmul_t kernel_matmul<KT_Q4_0>;
template [[host_name("kernel_matmul_q4_1")]] kernel kernel_matmul_t kernel_matmul<KT_Q4_1>;
template [[host_name("kernel_matmul_q5_0")]] kernel kernel_matmul_t kernel_matmul<KT_Q5_0>;
template [[host_name("kernel_matmul_q5_1")]] kernel kernel_matmul_t kernel_matmul<KT_Q5_1>;
template [[host_name("kernel_matmul_q8_0")]] kernel kernel_matmul_t kernel_matmul<KT_Q8_0>;
template [[host_name("kernel_matmul_q4_k")]] kernel kernel_matmul_t kernel_matmul<KT_Q4_K>;
template [[host_name("kernel_matmul_q5_k")]] kernel kernel_matmul_t kernel_matmul<KT_Q5_K>;
template [[host_name("kernel_matmul_q6_k")]] kernel kernel_matmul_t kernel_matmul<KT_Q6_K>;
template [[host_name("kernel_matmul_q2_k")]] kernel kernel_matmul_t kernel_matmul<KT_Q2_K>;
template [[host_name("kernel_matmul_q3_k")]] kernel kernel_matmul_t kernel_matmul<KT_Q3_K>;
template [[host_name("kernel_matmul_iq4_xs")]] kernel kernel_matmul_t kernel_matmul<KT_IQ4_XS>;

typedef decltype(kernel_matmul_mm<KT_F32>) kernel_matmul_mm_t;
template [[host_name("kernel_matmul_mm_f32")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_F32>;
template [[host_name("kernel_matmul_mm_f16")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_F16>;
template [[host_name("kernel_matmul_mm_bf16")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_BF16>;
template [[host_name("kernel_matmul_mm_q4_0")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q4_0>;
template [[host_name("kernel_matmul_mm_q4_1")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q4_1>;
template [[host_name("kernel_matmul_mm_q5_0")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q5_0>;
template [[host_name("kernel_matmul_mm_q5_1")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q5_1>;
template [[host_name("kernel_matmul_mm_q8_0")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q8_0>;
template [[host_name("kernel_matmul_mm_q4_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q4_K>;
template [[host_name("kernel_matmul_mm_q5_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q5_K>;
template [[host_name("kernel_matmul_mm_q6_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q6_K>;
template [[host_name("kernel_matmul_mm_q2_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q2_K>;
template [[host_name("kernel_matmul_mm_q3_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q3_K>;
template [[host_name("kernel_matmul_mm_iq4_xs")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_IQ4_XS>;
