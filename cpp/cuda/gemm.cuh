// gemm.cuh -- the CUDA device's matmuls of more than 8 tokens on the tensor cores (mma.sync
// m16n8k16, float accumulators, a 4-stage pipeline, 128-row tiles): prompts (more than
// GQ_MAX_TOKENS) dequantize the weights to fp16 in scratch memory, a chunk of rows at a time;
// a few tokens (9 to GQ_MAX_TOKENS) dequantize each tile into shared memory (kernel_gemm_q).
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

#include "../kargs.h"
#include "geometry.h"
#include "quants.cuh"
#include "kernels.cuh"   // pdl_enter

namespace llmetal_cuda {

// ---- stage 3: prefill on tensor cores -----------------------------------------------------------
// Three kernels: the weights (a chunk of rows at a time) and the activations go to fp16 in
// scratch memory, then one GEMM on the tensor cores:
//   kernel_dequant_f16<T>  W rows -> fp16 [rows][K], each group of 8 through dq8h (the CPU's
//                          dequantization rounded to nearest fp16, quants.cuh);
//   kernel_f32_to_f16      x [M][K] float -> fp16;
//   kernel_gemm_f16        Y[m][n] = sum_k X[m][k] W[n][k], fp16 products summed in float.
// Dequantizing once per prompt chunk (not once per tile of tokens, as a fused kernel would)
// costs a write and a read of the fp16 copy (2 B per weight), small next to the products at
// 512 tokens (2 * 512 flops per weight).
template <int T>
__global__ void __launch_bounds__(256)
kernel_dequant_f16(const uint8_t* W, uint64_t row_bytes, int K, int rows, __half* out) {
    pdl_enter();   // `out` may still be read by the previous GEMM
    const int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x;   // group of 8 values
    const int gpr = K / 8;
    if (i >= (int64_t)rows * gpr) return;
    const int r = (int)(i / gpr), g = (int)(i % gpr);
    uint32_t h[4];
    dq8h<T>(W + (uint64_t)r * row_bytes, g, h);
    *(uint4*)(out + (int64_t)r * K + 8 * g) = make_uint4(h[0], h[1], h[2], h[3]);
}

__global__ void __launch_bounds__(256) kernel_f32_to_f16(const float* x, __half* out, int64_t n4) {
    pdl_enter();
    const int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x;   // group of 4 values
    if (i >= n4) return;
    const float4 v = ((const float4*)x)[i];
    const __half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
    ((uint2*)out)[i] = make_uint2(*(const uint32_t*)&a, *(const uint32_t*)&b);
}

// The GEMM. Block tile: BM tokens (128, or 64 when 128 would leave SMs idle) x GM_BN = 128
// weight rows, K in steps of GM_BK = 32 halves (64 bytes a row: 4 chunks of 16 B). GM_STAGES
// steps are in flight in shared memory, filled by cp.async (16 B, zero-filled past the last
// token / row), so the loads of step kt + 3 run while step kt is multiplied. 8 warps in a
// 2 (tokens) x 4 (rows) grid; each warp owns a BM/2 x 32 piece of Y as (BM/32) x 4
// mma.m16n8k16 tiles (64 or 32 float accumulators a thread), loading its operands with
// ldmatrix. Shared rows are 64 B, so 8 consecutive rows at the same chunk would hit 2 bank
// groups; the chunk index is XOR-ed with (row / 2) % 4, which spreads any 8 consecutive rows
// over all 8 groups (conflict-free ldmatrix).
// GM_BN, GM_BK, GM_STAGES, gm_tile, gm_smem: geometry.h

__device__ __forceinline__ uint32_t gm_swz(int row, int chunk) {   // byte offset in a tile
    return (uint32_t)(row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4));
}
__device__ __forceinline__ void cp_async16_zfill(uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void ldsm_x4(uint32_t* r, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void mma_16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// X [M][K], W [N][K] fp16 with K % 32 == 0 and 16-byte aligned rows; Y row stride ldy floats.
template <int BM>
__global__ void __launch_bounds__(256)
kernel_gemm_f16(const __half* X, const __half* W, float* Y, int M, int N, int K, int ldy) {
    constexpr int MI = BM / 32;   // m16 tiles a warp
    extern __shared__ __align__(128) uint8_t gsm[];
    pdl_enter();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * GM_BN;   // tokens fastest: the blocks
    const int wm = warp >> 2, wn = warp & 3;                   // of one weight slab run together
    const int nk = K / GM_BK;
    const uint32_t base = (uint32_t)__cvta_generic_to_shared(gsm);

    // stage s of step kt: BM x 4 chunks of X, 128 x 4 of W, 16 B each
    auto load = [&](int kt, int s) {
        const uint32_t A = base + s * gm_tile(BM), B = A + BM * 64;
#pragma unroll
        for (int i = 0; i < BM / 64; ++i) {
            const int idx = tid + 256 * i, r = idx >> 2, c = idx & 3;
            const bool va = m0 + r < M;
            cp_async16_zfill(A + gm_swz(r, c), X + (int64_t)(va ? m0 + r : 0) * K + kt * GM_BK + 8 * c, va);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int idx = tid + 256 * i, r = idx >> 2, c = idx & 3;
            const bool vb = n0 + r < N;
            cp_async16_zfill(B + gm_swz(r, c), W + (int64_t)(vb ? n0 + r : 0) * K + kt * GM_BK + 8 * c, vb);
        }
    };

    float acc[MI][4][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
    for (int s = 0; s < GM_STAGES - 1; ++s) {
        if (s < nk) load(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<GM_STAGES - 2>();   // step kt has landed (this thread's copies) ...
        __syncthreads();                  // ... everyone's; and step kt - 1's slot is free
        if (kt + GM_STAGES - 1 < nk) load(kt + GM_STAGES - 1, (kt + GM_STAGES - 1) % GM_STAGES);
        cp_async_commit();
        const uint32_t A = base + (kt % GM_STAGES) * gm_tile(BM), B = A + BM * 64;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {   // two k16 steps
            uint32_t af[MI][4], bf[2][4];
#pragma unroll
            for (int i = 0; i < MI; ++i)   // tokens BM/2 wm + 16 i ..: lanes 0-15 rows at k 0-7, 16-31 at k 8-15
                ldsm_x4(af[i], A + gm_swz(BM / 2 * wm + 16 * i + (lane & 15), 2 * kk + (lane >> 4)));
#pragma unroll
            for (int j = 0; j < 2; ++j)    // rows 32 wn + 16 j ..: (n 0-7, k lo), (n 0-7, k hi), (n 8-15, lo), (hi)
                ldsm_x4(bf[j], B + gm_swz(32 * wn + 16 * j + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_16816(acc[i][j], af[i], bf[j >> 1][2 * (j & 1)], bf[j >> 1][2 * (j & 1) + 1]);
        }
    }
    cp_async_wait<0>();

    // accumulator (i, j): rows g and g + 8 of the m16 tile, columns 2t, 2t + 1 of the n8 tile
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + 32 * wn + 8 * j + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + BM / 2 * wm + 16 * i + g + 8 * h;
                if (m < M) {
                    if (n < N) Y[(int64_t)m * ldy + n] = acc[i][j][2 * h];
                    if (n + 1 < N) Y[(int64_t)m * ldy + n + 1] = acc[i][j][2 * h + 1];
                }
            }
        }
    }
}

// ---- a few tokens: the GEMM reading quantized weights --------------------------------------
// A step of 9 to GQ_MAX_TOKENS rows (several sequences decoding together, a short prompt
// chunk) has too few tokens to pay for an fp16 copy of each weight (2 B a weight written and
// read again, against the 0.5-1 B of the quantized rows), so kernel_gemm_q streams the
// quantized rows as the mat-vecs do and dequantizes them into registers for the tensor cores.
//
// A block is GQ_WARPS warps of 32 weight rows each (GQ_ROWS = 128 rows); the block's warps walk
// the same windows of gq_window(T) values (whole blocks / super-blocks), so the activations a
// window needs are fetched into the L1 once for all four. Each warp copies its 32 rows' raw
// bytes of a window to its two-slot ring by cp.async (window i + 1 in flight while window i
// is computed); each 32-value chunk of a window is then two mma.m16n8k16 k steps per 16 rows
// and 8 tokens, the weights as the A operand (rows = m), the fp16 activations as B (tokens =
// n). The k order inside a chunk is permuted so that lane t's operands are 8 consecutive
// values: its A registers are dq8h (the CPU's dequantization, rounded to nearest fp16) of
// group t of the chunk for rows g and g + 8, its B registers one 16-byte load of activations
// [8t, 8t + 8) of token g; the same permutation on both sides leaves the dot product as it is.
// Few row tiles (4096 rows: 32 for 132 SMs) split K over grid.y: split s writes its slice of
// `part` ([S][M][N]) and kernel_splitk_sum adds the slices in split order (no atomics: the
// same bits every run); with one split the warps write Y.
// NT8: token tiles of 8 (M <= 8 NT8). nwp: windows a split. vw: copy width (planner.cpp).
template <int T, int NT8>
__global__ void __launch_bounds__(GQ_WARPS * 32)
kernel_gemm_q(const __half* X, const uint8_t* W, uint64_t row_bytes, float* Y, float* part, int M, int N, int K,
              int nwp, int vw) {
    constexpr int WV = gq_window(T), WB = WV / QT<T>::QK * QT<T>::BB;   // a row's window: values, bytes
    constexpr int RW = GQ_ROWS / GQ_WARPS;                                // rows a warp (32)
    extern __shared__ __align__(16) uint8_t gsm[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * GQ_ROWS + warp * RW;   // this warp's rows
    const int w0 = blockIdx.y * nwp, nmine = n0 < N ? min(K / WV - w0, nwp) : 0;   // a warp past N: none
    uint8_t* ring = gsm + warp * GQ_SLOTS * RW * WB;

    auto issue = [&](int i) {   // window w0 + i of the 32 rows into its slot (rows past N: row N - 1)
        if (i < nmine) {
            uint8_t* dst = ring + (i % GQ_SLOTS) * RW * WB;
            const uint8_t* src = W + (uint64_t)(w0 + i) * WB;
            if (vw >= 4) {
                for (int b = lane * vw; b < RW * WB; b += 32 * vw)
                    cp_async(dst + b, src + (uint64_t)min(n0 + b / WB, N - 1) * row_bytes + b % WB, vw);
            } else {
                for (int b = lane * 2; b < RW * WB; b += 64)
                    *(uint16_t*)(dst + b) = *(const uint16_t*)(src + (uint64_t)min(n0 + b / WB, N - 1) * row_bytes + b % WB);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < GQ_SLOTS - 1; ++i) issue(i);   // the weights are never written: fetched
    pdl_wait();                                        // before waiting for the previous kernel
    pdl_release();

    float acc[2][NT8][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < NT8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    for (int i = 0; i < nmine; ++i) {
        issue(i + GQ_SLOTS - 1);
        cp_async_wait<GQ_SLOTS - 1>();   // window i has landed (this lane's copies) ...
        __syncwarp();                    // ... and every lane's
        const uint8_t* sm = ring + (i % GQ_SLOTS) * RW * WB;
        const int64_t kw = (int64_t)(w0 + i) * WV;
#pragma unroll 2
        for (int c = 0; c < WV / 32; ++c) {
            uint32_t a[2][2][4];   // [rows 16 m..][k step][register]
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                uint32_t lo[4], hi[4];   // fp16 pairs of rows g and g + 8
                dq8h<T>(sm + (16 * m + g) * WB, 4 * c + t, lo);
                dq8h<T>(sm + (16 * m + g + 8) * WB, 4 * c + t, hi);
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                    a[m][s][0] = lo[2 * s];
                    a[m][s][1] = hi[2 * s];
                    a[m][s][2] = lo[2 * s + 1];
                    a[m][s][3] = hi[2 * s + 1];
                }
            }
#pragma unroll
            for (int j = 0; j < NT8; ++j) {
                const int tok = min(8 * j + g, M - 1);   // tokens past M: computed, never written
                const uint4 x = __ldg((const uint4*)(X + (int64_t)tok * K + kw + 32 * c + 8 * t));
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    mma_16816(acc[m][j], a[m][0], x.x, x.y);
                    mma_16816(acc[m][j], a[m][1], x.z, x.w);
                }
            }
        }
        __syncwarp();   // the slot is refilled by the next issue
    }
    cp_async_wait<0>();

    // acc[m][j]: rows 16 m + g (e 0, 1) and + 8 (e 2, 3), tokens 8 j + 2 t + (e & 1)
    float* out = gridDim.y == 1 ? Y : part + (int64_t)blockIdx.y * M * N;
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int j = 0; j < NT8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = n0 + 16 * m + g + 8 * (e >> 1), tok = 8 * j + 2 * t + (e & 1);
                if (r < N && tok < M) out[(int64_t)tok * N + r] = acc[m][j][e];
            }
}

// Y[i] = sum over s of part[s][i], s in order (i < n = M N).
__global__ void __launch_bounds__(256) kernel_splitk_sum(const float* part, float* Y, int64_t n, int S) {
    pdl_enter();
    const int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x;
    if (i >= n) return;
    float v = part[i];
    for (int s = 1; s < S; ++s) v += part[(int64_t)s * n + i];
    Y[i] = v;
}

}  // namespace llmetal_cuda
