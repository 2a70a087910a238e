// matmul.metal -- y[t, n] = sum_k W[n, k] x[t, k], W in its GGUF block format.
//
// kernel_matmul_<t> (mat-vec: decode and batches of up to MV_MT tokens): a threadgroup of MV_SG
// SIMD groups computes MV_ROWS consecutive output rows, MV_R per SIMD group, for MV_MT tokens.
// At decode the weights are the whole cost, so each weight byte is read once and the
// activations cost little beside them:
//   * the threadgroup stages its tokens' activations in threadgroup memory, a chunk of K at a
//     time (MV_XS floats), so device memory sees them once per MV_ROWS rows;
//   * each lane takes one unit of a row at a time (quants.h, "mat-vec lane units": a block, or
//     a piece of a super-block that no other lane reads), loads it with wide loads, and
//     dequantizes it into registers; its activations for the first token stay in registers
//     across the SIMD group's MV_R rows (the other tokens' are read from threadgroup memory);
//   * simd_sum reduces each (row, token) once at the end.
// (The CUDA device's kernel_matmul, warp for SIMD group, does the same per row; there the L1
// cache keeps the activations.)
//
// kernel_matmul_mm_<t> (prefill, n_in % 32 == 0): a threadgroup of 4 SIMD groups computes a
// tile of MM_TN = 64 output rows x MM_TM = 32 tokens with simdgroup matrices. Per K step of 32
// every thread dequantizes 16 weights (two groups of 8) into the weight tile and loads 8
// activations into the activation tile; each SIMD group then multiplies its 32 rows x 16
// tokens as 4 x 2 8x8 matrices, accumulating in float. The weight tile is half precision
// (simdgroup_half8x8) for the block-quantized types and F16, whose dequantized values half
// holds to its 11-bit precision (F16: exactly); F32 and BF16 weights, whose range half lacks,
// stay float. The activations stay float (their range is the model's). Each weight row is read
// once per 32 tokens, each activation once per 64 rows.
#include <metal_stdlib>
using namespace metal;
#include "quants.h"
#include "../cpp/metal/kargs_metal.h"

// One staged chunk [k0, k0 + kn) of K: the SIMD group's rows n0 .. n0 + MV_R, units of U
// elements (U = MV_U(T), or 1 for float rows with K % 8 != 0). xs holds the mc tokens' chunks,
// kn floats each; acc the MV_R x MT sums (MT = 1 at decode: 8 accumulators, not 64).
template <int T, int U, int MT>
inline void mv_chunk(constant kargs_matmul& a, device const uchar* W, threadgroup const float* xs, int k0, int kn,
                     int n0, int mc, ushort tiisg, thread float* acc) {
    const int nu = kn / U;
    for (int u0 = 0; u0 < nu; u0 += 32) {   // uniform over the SIMD group: every lane calls mv_dq
        const int u = u0 + tiisg;
        const bool ok = u < nu;
        const int ug = k0 / U + u;          // the unit's index in the row
        float xr[U];                        // the first token's activations of this unit
        for (int i = 0; i < U; ++i) xr[i] = ok ? xs[mv_elem(T, U, ug, i) - k0] : 0.0f;
        for (int r = 0; r < MV_R; ++r) {
            if (n0 + r >= a.n_out) break;   // uniform: the same rows for every lane
            float w[U];
            mv_dq<T, U>(W + (ulong)(n0 + r) * a.row_bytes, ug, ok, tiisg, w);
            if (!ok) continue;
            float s = 0.0f;
            for (int i = 0; i < U; ++i) s += w[i] * xr[i];
            acc[r * MT] += s;
            for (int m = 1; m < min(mc, MT); ++m) {
                threadgroup const float* xm = xs + m * kn - k0;
                float t = 0.0f;
                for (int i = 0; i < U; ++i) t += w[i] * xm[mv_elem(T, U, ug, i)];
                acc[r * MT + m] += t;
            }
        }
    }
}

// The SIMD group's MV_R rows for tokens m0 .. m0 + mc (mc <= MT): stage each K chunk of the
// tokens' activations (the whole threadgroup), run it, reduce each sum once.
template <int T, int MT>
inline void mv_rows(constant kargs_matmul& a, device const uchar* W, device const float* x, device float* y,
                    threadgroup float4* xs4, int n0, int m0, int mc, ushort tiitg, ushort tiisg) {
    threadgroup float* xs = (threadgroup float*)xs4;
    const int K = a.n_in;
    // units of MV_U(T) elements; float rows of odd length go one element per unit
    const bool single = MV_FLOAT(T) && K % 8 != 0;
    const int span = single ? 4 : MV_SPAN(T);
    const int kc = max(span, (MV_XS / mc) / span * span);   // a chunk: a multiple of the span
    float acc[MV_R * MT];
    for (int i = 0; i < MV_R * MT; ++i) acc[i] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += kc) {
        const int kn = min(kc, K - k0);
        if (k0 > 0) threadgroup_barrier(mem_flags::mem_threadgroup);   // the previous chunk is used up
        if (K % 4 == 0) {   // 16-byte loads: every token's row and every chunk start at a multiple of 4
            const int kn4 = kn / 4;
            for (int i = tiitg; i < mc * kn4; i += MV_SG * 32) {
                const int m = i / kn4, k = i - m * kn4;
                xs4[i] = *((device const float4*)(x + (long)(m0 + m) * K + k0) + k);
            }
        } else {
            for (int i = tiitg; i < mc * kn; i += MV_SG * 32) {
                const int m = i / kn, k = i - m * kn;
                xs[i] = x[(long)(m0 + m) * K + k0 + k];
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (single) mv_chunk<T, 1, MT>(a, W, xs, k0, kn, n0, mc, tiisg, acc);
        else mv_chunk<T, MV_U(T), MT>(a, W, xs, k0, kn, n0, mc, tiisg, acc);
    }
    // rows and mc are uniform over the SIMD group, so every lane makes the same simd_sum calls
    for (int r = 0; r < MV_R; ++r) {
        if (n0 + r >= a.n_out) break;
        for (int m = 0; m < min(mc, MT); ++m) {
            const float s = simd_sum(acc[r * MT + m]);
            if (tiisg == 0) y[(long)(m0 + m) * a.n_out + n0 + r] = s;
        }
    }
}

template <int T>
kernel void kernel_matmul(constant kargs_matmul& a [[buffer(0)]],
                          device const uchar* W [[buffer(1)]],
                          device const float* x [[buffer(2)]],
                          device float* y [[buffer(3)]],
                          uint3 tgpig [[threadgroup_position_in_grid]],
                          ushort tiitg [[thread_index_in_threadgroup]],
                          ushort tiisg [[thread_index_in_simdgroup]],
                          ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float4 xs4[MV_XS / 4];
    const int n0 = (int)tgpig.x * MV_ROWS + (int)sgitg * MV_R;
    const int m0 = (int)tgpig.y * MV_MT;
    const int mc = min(MV_MT, a.n_tokens - m0);   // uniform over the threadgroup
    if (mc == 1) mv_rows<T, 1>(a, W, x, y, xs4, n0, m0, mc, tiitg, tiisg);   // decode
    else mv_rows<T, MV_MT>(a, W, x, y, xs4, n0, m0, mc, tiitg, tiisg);
}

template <int T, typename WT>
kernel void kernel_matmul_mm(constant kargs_matmul& a [[buffer(0)]],
                             device const uchar* W [[buffer(1)]],
                             device const float* x [[buffer(2)]],
                             device float* y [[buffer(3)]],
                             threadgroup float* sh [[threadgroup(0)]],
                             uint3 tgpig [[threadgroup_position_in_grid]],
                             ushort tiitg [[thread_index_in_threadgroup]],
                             ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    // sh (MM_TG_BYTES) holds sw[MM_TK][MM_TN] (the weight tile in WT, transposed: k major), then
    // sx[MM_TM][MM_TK] (the activations, float); at the end, the output tile [MM_TM][MM_TN] (float)
    threadgroup WT* sw = (threadgroup WT*)sh;
    threadgroup float* sx = sh + MM_TK * MM_TN * sizeof(WT) / sizeof(float);
    const int n0 = (int)tgpig.x * MM_TN, m0 = (int)tgpig.y * MM_TM;
    const int wr = tiitg / 2, wk = (tiitg % 2) * 16;       // this thread's weight row, first k of its 16
    const int xr = tiitg / 4, xk = (tiitg % 4) * 8;        // this thread's token, first k of its 8
    const int sm = (sgitg / 2) * 16, sn = (sgitg % 2) * 32;   // this SIMD group's 16 tokens x 32 rows

    simdgroup_float8x8 acc[2][4];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);

    for (int k0 = 0; k0 < a.n_in; k0 += MM_TK) {
        float w[16];
        if (n0 + wr < a.n_out) {
            device const uchar* row = W + (ulong)(n0 + wr) * a.row_bytes;
            dq8(T, row, (k0 + wk) / 8, w);
            dq8(T, row, (k0 + wk) / 8 + 1, w + 8);
        } else {
            for (int i = 0; i < 16; ++i) w[i] = 0.0f;
        }
        for (int i = 0; i < 16; ++i) sw[(wk + i) * MM_TN + wr] = (WT)w[i];
        if (m0 + xr < a.n_tokens) {   // n_in % 32 == 0: 16-byte aligned
            device const float4* xp = (device const float4*)(x + (long)(m0 + xr) * a.n_in + k0 + xk);
            const float4 v0 = xp[0], v1 = xp[1];
            for (int i = 0; i < 4; ++i) {
                sx[xr * MM_TK + xk + i] = v0[i];
                sx[xr * MM_TK + xk + 4 + i] = v1[i];
            }
        } else {
            for (int i = 0; i < 8; ++i) sx[xr * MM_TK + xk + i] = 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int kk = 0; kk < MM_TK; kk += 8) {
            simdgroup_float8x8 ma[2];
            simdgroup_matrix<WT, 8, 8> mb[4];
            for (int i = 0; i < 2; ++i) simdgroup_load(ma[i], sx + (sm + 8 * i) * MM_TK + kk, MM_TK);
            for (int j = 0; j < 4; ++j) simdgroup_load(mb[j], sw + kk * MM_TN + sn + 8 * j, MM_TN);
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 4; ++j) simdgroup_multiply_accumulate(acc[i][j], ma[i], mb[j], acc[i][j]);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    // stage the output tile in threadgroup memory, then write the part inside y
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) simdgroup_store(acc[i][j], sh + (sm + 8 * i) * MM_TN + sn + 8 * j, MM_TN);
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

typedef decltype(kernel_matmul_mm<KT_F32, float>) kernel_matmul_mm_t;
template [[host_name("kernel_matmul_mm_f32")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_F32, float>;
template [[host_name("kernel_matmul_mm_f16")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_F16, half>;
template [[host_name("kernel_matmul_mm_bf16")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_BF16, float>;
template [[host_name("kernel_matmul_mm_q4_0")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q4_0, half>;
template [[host_name("kernel_matmul_mm_q4_1")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q4_1, half>;
template [[host_name("kernel_matmul_mm_q5_0")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q5_0, half>;
template [[host_name("kernel_matmul_mm_q5_1")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q5_1, half>;
template [[host_name("kernel_matmul_mm_q8_0")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q8_0, half>;
template [[host_name("kernel_matmul_mm_q4_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q4_K, half>;
template [[host_name("kernel_matmul_mm_q5_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q5_K, half>;
template [[host_name("kernel_matmul_mm_q6_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q6_K, half>;
template [[host_name("kernel_matmul_mm_q2_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q2_K, half>;
template [[host_name("kernel_matmul_mm_q3_k")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_Q3_K, half>;
template [[host_name("kernel_matmul_mm_iq4_xs")]] kernel kernel_matmul_mm_t kernel_matmul_mm<KT_IQ4_XS, half>;
