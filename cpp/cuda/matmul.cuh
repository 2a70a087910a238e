// matmul.cuh -- the CUDA device's matrix products, in three named stages:
//
//   kernel_quantize_q8<QB>   decode: activations -> 8-bit integers with one float scale per
//                            QB values (QB = 32 for the 32-element weight formats, 256 for the
//                            K-quants), rounded exactly as the CPU device does
//                            (cpp/cpu/quants.cpp quantize_row_q8 / _q8k: d = amax/127,
//                            q = round-half-even(x / d)), so the integer dots below give the
//                            CPU's numbers up to the order of the float sums.
//   kernel_mmvq<T, NT>       decode (1..8 tokens): one warp per weight row. The warp streams
//                            its row through a private shared-memory window with 16-byte
//                            coalesced loads (lane i loads bytes 16i.., the next chunk is
//                            fetched into registers while the current one is computed), then
//                            each lane takes 8-weight units of the blocks in the window,
//                            unpacks them to two words of four signed bytes and dots them with
//                            the 8-bit activations by dp4a. Per unit:
//                              acc += xd * (ud * dot(w, xq) + um * sum(xq))
//                            ud: the block (or sub-block) scale, um: its min (Q4_1, Q5_1,
//                            Q4_K, Q5_K); the zero points of Q4_0 / Q5_0 / Q6_K (8, 16, 32)
//                            are subtracted inside the integer words.
//   kernel_mv_f16<NT>        decode with F16 weights: the same window, float activations.
//   kernel_gemm_tc<T>        prefill (more than 8 tokens): tensor cores. A 128-row x 64-token
//                            tile per block; each 32-wide step dequantizes the weight tile to
//                            fp16 in shared memory (dq8, quants.cuh), converts the activation
//                            tile to fp16, and 8 warps run wmma 16x16x16 products into float
//                            accumulators.
#pragma once
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

#include "../kargs.h"
#include "quants.cuh"
#include "kernels.cuh"   // block_amax, store_q8

namespace llmetal_cuda {

// ---- stage 1: activation quantization ---------------------------------------------------------
// One thread per value, blocks of 256 threads; QB consecutive threads share a scale.
// xq [T][K] int8, xd [T][K/QB] float.
template <int QB>
__global__ void __launch_bounds__(256) kernel_quantize_q8(const float* x, int8_t* xq, float* xd, int K, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x;   // n = T*K, a multiple of QB
    const float v = i < n ? x[i] : 0.f;
    const float amax = block_amax<QB>(v);
    if (i < n) store_q8(v, amax, i, QB, xq, xd);
}

// ---- stage 2: quantized mat-vec ---------------------------------------------------------------
constexpr int MV_ROWS = 4;          // warps (= weight rows) per block
constexpr int MV_WIN = 2048;        // bytes of one warp's shared-memory window
constexpr int MV_LD = MV_WIN / 16 / 32;   // 16-byte loads per lane per window

// Blocks per window for each format: a whole number of blocks whose bytes are a multiple of
// 16, so every window but a row's last starts 16-byte aligned (given an aligned row).
template <int T> struct MVQ;
// Windows of about 2 KB: each warp keeps that much in flight while it computes the previous
// window (with 32 warps an SM, ~64 KB in flight: enough to cover DRAM latency at full rate).
template <> struct MVQ<KT_Q4_0> { static constexpr int NB = 112, QB = 32; };   // 2016 B
template <> struct MVQ<KT_Q4_1> { static constexpr int NB = 96, QB = 32; };    // 1920 B
template <> struct MVQ<KT_Q5_0> { static constexpr int NB = 88, QB = 32; };    // 1936 B
template <> struct MVQ<KT_Q5_1> { static constexpr int NB = 80, QB = 32; };    // 1920 B
template <> struct MVQ<KT_Q8_0> { static constexpr int NB = 56, QB = 32; };    // 1904 B
template <> struct MVQ<KT_Q4_K> { static constexpr int NB = 14, QB = 256; };   // 2016 B
template <> struct MVQ<KT_Q5_K> { static constexpr int NB = 11, QB = 256; };   // 1936 B
template <> struct MVQ<KT_Q6_K> { static constexpr int NB = 8, QB = 256; };    // 1680 B
template <> struct MVQ<KT_F16> { static constexpr int NB = 1024, QB = 1; };   // "blocks" = values

// Shared-memory reads at 2-byte alignment (block formats of even size): 4 bytes / 8 bytes.
__device__ __forceinline__ int sm32_2(const uint8_t* p) {
    const uint16_t* q = (const uint16_t*)p;
    return (int)((uint32_t)q[0] | ((uint32_t)q[1] << 16));
}
// 4 bits (one per value) -> bit 4 of each of 4 bytes
__device__ __forceinline__ int spread4(uint32_t b) {
    return (int)(((b & 1) | ((b & 2) << 7) | ((b & 4) << 14) | ((b & 8) << 21)) << 4);
}

// One unit = 8 consecutive weights of a row: w0/w1 = 4 signed bytes each, scale ud, min um.
struct Unit { int w0, w1; float ud, um; };

// Unpack unit u (0-based, 8 values each) of the window starting at block 0 = `s`.
template <int T> __device__ __forceinline__ Unit unit(const uint8_t* s, int u);

template <> __device__ __forceinline__ Unit unit<KT_Q8_0>(const uint8_t* s, int u) {
    const uint8_t* b = s + (u >> 2) * 34;
    const uint8_t* q = b + 2 + 8 * (u & 3);
    return {sm32_2(q), sm32_2(q + 4), ldh(b), 0.f};
}
template <> __device__ __forceinline__ Unit unit<KT_Q4_0>(const uint8_t* s, int u) {
    // values 8j..8j+7 of a block: j=0,1 low nibbles of qs[0..7], qs[8..15]; j=2,3 high nibbles
    const uint8_t* b = s + (u >> 2) * 18;
    const int j = u & 3, sh = 4 * (j >> 1);
    const uint8_t* q = b + 2 + 8 * (j & 1);
    int w0 = (sm32_2(q) >> sh) & 0x0F0F0F0F, w1 = (sm32_2(q + 4) >> sh) & 0x0F0F0F0F;
    return {(int)__vsub4(w0, 0x08080808), (int)__vsub4(w1, 0x08080808), ldh(b), 0.f};
}
template <> __device__ __forceinline__ Unit unit<KT_Q4_1>(const uint8_t* s, int u) {
    const uint8_t* b = s + (u >> 2) * 20;
    const int j = u & 3, sh = 4 * (j >> 1);
    const uint8_t* q = b + 4 + 8 * (j & 1);
    return {(sm32_2(q) >> sh) & 0x0F0F0F0F, (sm32_2(q + 4) >> sh) & 0x0F0F0F0F, ldh(b), ldh(b + 2)};
}
// Q5: the fifth bit of value v of the block is bit v of qh; unit j holds values 8j..8j+7.
template <> __device__ __forceinline__ Unit unit<KT_Q5_0>(const uint8_t* s, int u) {
    const uint8_t* b = s + (u >> 2) * 22;
    const int j = u & 3, sh = 4 * (j >> 1);
    const uint32_t hb = ((uint32_t)sm32_2(b + 2) >> (8 * j)) & 0xFF;
    const uint8_t* q = b + 6 + 8 * (j & 1);
    int w0 = ((sm32_2(q) >> sh) & 0x0F0F0F0F) | spread4(hb & 0xF);
    int w1 = ((sm32_2(q + 4) >> sh) & 0x0F0F0F0F) | spread4(hb >> 4);
    return {(int)__vsub4(w0, 0x10101010), (int)__vsub4(w1, 0x10101010), ldh(b), 0.f};
}
template <> __device__ __forceinline__ Unit unit<KT_Q5_1>(const uint8_t* s, int u) {
    const uint8_t* b = s + (u >> 2) * 24;
    const int j = u & 3, sh = 4 * (j >> 1);
    const uint32_t hb = ((uint32_t)sm32_2(b + 4) >> (8 * j)) & 0xFF;
    const uint8_t* q = b + 8 + 8 * (j & 1);
    int w0 = ((sm32_2(q) >> sh) & 0x0F0F0F0F) | spread4(hb & 0xF);
    int w1 = ((sm32_2(q + 4) >> sh) & 0x0F0F0F0F) | spread4(hb >> 4);
    return {w0, w1, ldh(b), ldh(b + 2)};
}
// Q4_K / Q5_K: 32 units a block; sub-block sb = v/4 (32 values, 6-bit scale and min), value
// 32*sb + l sits in qs[32*(sb/2) + l], low nibble for even sb, high for odd; Q5_K's fifth bit
// is bit sb of qh[l].
template <> __device__ __forceinline__ Unit unit<KT_Q4_K>(const uint8_t* s, int u) {
    const uint8_t* b = s + (u >> 5) * 144;
    const int v = u & 31, sb = v >> 2, p = v & 3, sh = 4 * (sb & 1);
    const uint8_t* q = b + 16 + 32 * (sb >> 1) + 8 * p;
    int sc, m;
    scale_min_k4(sb, b + 4, &sc, &m);
    return {(sm32_2(q) >> sh) & 0x0F0F0F0F, (sm32_2(q + 4) >> sh) & 0x0F0F0F0F, ldh(b) * (float)sc,
            -(ldh(b + 2) * (float)m)};
}
template <> __device__ __forceinline__ Unit unit<KT_Q5_K>(const uint8_t* s, int u) {
    const uint8_t* b = s + (u >> 5) * 176;
    const int v = u & 31, sb = v >> 2, p = v & 3, sh = 4 * (sb & 1);
    const uint8_t* q = b + 48 + 32 * (sb >> 1) + 8 * p;
    const uint8_t* h = b + 16 + 8 * p;
    int sc, m;
    scale_min_k4(sb, b + 4, &sc, &m);
    int w0 = ((sm32_2(q) >> sh) & 0x0F0F0F0F) | (((sm32_2(h) >> sb) & 0x01010101) << 4);
    int w1 = ((sm32_2(q + 4) >> sh) & 0x0F0F0F0F) | (((sm32_2(h + 4) >> sb) & 0x01010101) << 4);
    return {w0, w1, ldh(b) * (float)sc, -(ldh(b + 2) * (float)m)};
}
// Q6_K: 32 units a block. Value e = 128*h + 32*qd + l: low 4 bits in ql[64h + 32*(qd&1) + l]
// (high nibble for qd >= 2), top 2 bits at bit 2*qd of qh[32h + l]; 16-value sub-block e/16
// has an int8 scale; the value is d * scale * (q - 32).
template <> __device__ __forceinline__ Unit unit<KT_Q6_K>(const uint8_t* s, int u) {
    const uint8_t* b = s + (u >> 5) * 210;
    const int v = u & 31, e0 = 8 * v, h = e0 >> 7, qd = (e0 >> 5) & 3, l0 = e0 & 31;
    const uint8_t* ql = b + 64 * h + 32 * (qd & 1) + l0;
    const uint8_t* qh = b + 128 + 32 * h + l0;
    const int sl = 4 * (qd >> 1), shh = 2 * qd;
    int w0 = ((sm32_2(ql) >> sl) & 0x0F0F0F0F) | (((sm32_2(qh) >> shh) & 0x03030303) << 4);
    int w1 = ((sm32_2(ql + 4) >> sl) & 0x0F0F0F0F) | (((sm32_2(qh + 4) >> shh) & 0x03030303) << 4);
    const float sc = (float)(int8_t)b[192 + (e0 >> 4)];
    return {(int)__vsub4(w0, 0x20202020), (int)__vsub4(w1, 0x20202020), ldh(b + 208) * sc, 0.f};
}

// Copy `nbytes` of a row into the warp's window. vw (16, 8, 4 or 2) divides the row's start
// address and length; the 16-byte path is the hot one (weights of aligned rows).
__device__ __forceinline__ void window_load_slow(uint8_t* sm, const uint8_t* src, int nbytes, int vw, int lane) {
    if (vw == 8) {
        for (int i = lane; i < nbytes / 8; i += 32) ((uint2*)sm)[i] = __ldg((const uint2*)src + i);
    } else if (vw == 4) {
        for (int i = lane; i < nbytes / 4; i += 32) ((uint32_t*)sm)[i] = __ldg((const uint32_t*)src + i);
    } else {
        for (int i = lane; i < nbytes / 2; i += 32) ((uint16_t*)sm)[i] = __ldg((const uint16_t*)src + i);
    }
}

// Weights are read once per token: stream them past the L1 (ld.global.nc, no L1 allocation).
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// The row loop shared by the quantized and the F16 kernels: windows w0, w0 + step, ... of
// the row, with the next window's 16-byte loads in flight while `body(window, n_blocks,
// first_block)` computes the current one.
template <int BB, int NB, class Body>
__device__ __forceinline__ void stream_row(const uint8_t* row, int nblocks, int vw, uint8_t* sm, int lane,
                                           int w0, int step, Body body) {
    constexpr int WB = NB * BB;   // bytes of a full window (<= MV_WIN, a multiple of 16)
    static_assert(WB <= MV_WIN && WB % 16 == 0, "window");
    const int nwin = (nblocks + NB - 1) / NB;
    if (vw == 16) {
        uint4 r[MV_LD];
        auto fetch = [&](int w) {
            const int nb = min(NB, nblocks - w * NB), n16 = nb * BB / 16;
            const uint4* src = (const uint4*)(row + (int64_t)w * WB);
#pragma unroll
            for (int j = 0; j < MV_LD; ++j)
                if (lane + 32 * j < n16) r[j] = ld_stream(src + lane + 32 * j);
        };
        if (w0 < nwin) fetch(w0);
        for (int w = w0; w < nwin; w += step) {
            const int nb = min(NB, nblocks - w * NB), n16 = nb * BB / 16;
            __syncwarp();
#pragma unroll
            for (int j = 0; j < MV_LD; ++j)
                if (lane + 32 * j < n16) ((uint4*)sm)[lane + 32 * j] = r[j];
            __syncwarp();
            if (w + step < nwin) fetch(w + step);
            body(sm, nb, w * NB);
        }
    } else {
        for (int w = w0; w < nwin; w += step) {
            const int nb = min(NB, nblocks - w * NB);
            __syncwarp();
            window_load_slow(sm, row + (int64_t)w * WB, nb * BB, vw, lane);
            __syncwarp();
            body(sm, nb, w * NB);
        }
    }
}

// Sum each token's partial dots over the warp, then over the `split` warps of a row.
template <int NT>
__device__ __forceinline__ void row_out(float* acc, float (*red)[NT], float* y, const kargs_matmul& a, int n,
                                        bool valid, int mc, int lane, int warp, int split) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        float s = acc[t];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        acc[t] = s;
    }
    if (split > 1) {
        if (lane == 0) {
#pragma unroll
            for (int t = 0; t < NT; ++t) red[warp][t] = acc[t];
        }
        __syncthreads();
        if (warp % split == 0) {
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                float s = 0.f;
                for (int j = 0; j < split; ++j) s += red[warp + j][t];
                acc[t] = s;
            }
        }
    }
    if (valid && warp % split == 0 && lane == 0) {
#pragma unroll
        for (int t = 0; t < NT; ++t)
            if (t < mc) y[(int64_t)t * a.n_out + n] = acc[t];
    }
}

// y[t, n] = sum_k W[n, k] x[t, k] for t < n_tokens <= NT, from the quantized activations.
template <int T, int NT>
__global__ void __launch_bounds__(MV_ROWS * 32)
kernel_mmvq(kargs_matmul a, const uint8_t* W, const int8_t* xq, const float* xd, float* y, int vw, int split) {
    constexpr int QK = QT<T>::QK, BB = QT<T>::BB, NB = MVQ<T>::NB, QB = MVQ<T>::QB;
    constexpr int UPB = QK / 8;   // units per block
    __shared__ __align__(16) uint8_t win[MV_ROWS][MV_WIN];
    __shared__ float red[MV_ROWS][NT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // `split` warps (1, 2 or 4) share a row, taking every split-th window: small matrices
    // still put enough warps (and bytes in flight) on every SM
    const int n = blockIdx.x * (MV_ROWS / split) + warp / split;
    const bool valid = n < a.n_out;
    const int K = a.n_in, mc = min(NT, a.n_tokens), nxd = K / QB;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.f;
    if (valid) stream_row<BB, NB>(W + (uint64_t)n * a.row_bytes, K / QK, vw, win[warp], lane, warp % split, split,
                       [&](const uint8_t* sm, int nb, int b0) {
        const int nu = nb * UPB;
        for (int u = lane; u < nu; u += 32) {
            const Unit w = unit<T>(sm, u);
            const int e = b0 * QK + 8 * u;   // first value of the unit in the row
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t < mc) {
                    const int2 xv = *(const int2*)(xq + (int64_t)t * K + e);
                    const float d = xd[t * nxd + e / QB];
                    const int dot = __dp4a(w.w0, xv.x, __dp4a(w.w1, xv.y, 0));
                    float r = w.ud * (float)dot;
                    if (T == KT_Q4_1 || T == KT_Q5_1 || T == KT_Q4_K || T == KT_Q5_K)
                        r += w.um * (float)__dp4a(0x01010101, xv.x, __dp4a(0x01010101, xv.y, 0));
                    acc[t] += d * r;
                }
            }
        }
    });
    row_out<NT>(acc, red, y, a, n, valid, mc, lane, warp, split);
}

// F16 weights, float activations (the CPU device keeps them float too): K % 8 == 0.
template <int NT>
__global__ void __launch_bounds__(MV_ROWS * 32)
kernel_mv_f16(kargs_matmul a, const uint8_t* W, const float* x, float* y, int vw, int split) {
    __shared__ __align__(16) uint8_t win[MV_ROWS][MV_WIN];
    __shared__ float red[MV_ROWS][NT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n = blockIdx.x * (MV_ROWS / split) + warp / split;
    const bool valid = n < a.n_out;
    const int K = a.n_in, mc = min(NT, a.n_tokens);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.f;
    if (valid) stream_row<2, 1024>(W + (uint64_t)n * a.row_bytes, K, vw, win[warp], lane, warp % split, split,
                        [&](const uint8_t* sm, int nv, int e0) {
        for (int u = lane; u < nv / 8; u += 32) {
            const uint4 hv = ((const uint4*)sm)[u];
            const __half2* h = (const __half2*)&hv;
            float w[8];
#pragma unroll
            for (int i = 0; i < 4; ++i) { float2 f = __half22float2(h[i]); w[2 * i] = f.x; w[2 * i + 1] = f.y; }
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                if (t < mc) {
                    const float4* xp = (const float4*)(x + (int64_t)t * K + e0 + 8 * u);
                    const float4 p = xp[0], q = xp[1];
                    acc[t] += w[0] * p.x + w[1] * p.y + w[2] * p.z + w[3] * p.w +
                              w[4] * q.x + w[5] * q.y + w[6] * q.z + w[7] * q.w;
                }
            }
        }
    });
    row_out<NT>(acc, red, y, a, n, valid, mc, lane, warp, split);
}

// ---- stage 3: prefill on tensor cores -----------------------------------------------------------
// Block tile: TC_BN weight rows x TC_BM tokens, K in steps of 32. 8 warps in a 2 (tokens) x 4
// (rows) grid, each owning a 32 x 32 piece of the output as 2 x 2 wmma 16x16 float fragments.
// Loading a step: weights, 128 rows x 32 values = 512 groups of 8 (2 per thread) through dq8;
// activations, 64 tokens x 32 floats = 512 groups of 4 (2 per thread). Both go to registers
// first, so the next step's global loads overlap this step's products; two shared buffers
// let one barrier per step suffice.
constexpr int TC_BN = 128, TC_BM = 64, TC_BK = 32, TC_LD = TC_BK + 8;   // +8 halves: no bank conflicts

template <int T>
__global__ void __launch_bounds__(256)
kernel_gemm_tc(kargs_matmul a, const uint8_t* W, const float* x, float* y) {
    using namespace nvcuda;
    struct Bufs { __half w[2][TC_BN][TC_LD]; __half x[2][TC_BM][TC_LD]; };
    constexpr int SMEM = sizeof(Bufs) > TC_BM * TC_BN * 4 ? sizeof(Bufs) : TC_BM * TC_BN * 4;
    __shared__ __align__(32) uint8_t smem[SMEM];
    Bufs& S = *(Bufs*)smem;
    const int tid = threadIdx.x, warp = tid >> 5;
    const int m0 = blockIdx.x * TC_BM, n0 = blockIdx.y * TC_BN;   // tokens fastest: tiles of one
    const int K = a.n_in, nk = K / TC_BK;                         // weight slab share the L2

    uint4 wr[2];      // 8 halves each
    uint2 xr[2][2];   // 4 halves each (2 float4 -> 2 x 4 halves)
    auto fetch = [&](int kt) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int g = tid + 256 * i, r = g >> 2, c = g & 3;   // row r, group c (8 values)
            float w[8];
            if (n0 + r < a.n_out) {
                dq8<T>(W + (uint64_t)(n0 + r) * a.row_bytes, kt * 4 + c, w);
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j) w[j] = 0.f;
            }
            __half2 h[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) h[j] = __floats2half2_rn(w[2 * j], w[2 * j + 1]);
            wr[i] = *(uint4*)h;
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int g = tid + 256 * i, r = g >> 3, c = g & 7;   // token r, group c (4 values)
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (m0 + r < a.n_tokens) v = *(const float4*)(x + (int64_t)(m0 + r) * K + kt * TC_BK + 4 * c);
            __half2 h0 = __floats2half2_rn(v.x, v.y), h1 = __floats2half2_rn(v.z, v.w);
            xr[i][0] = make_uint2(*(uint32_t*)&h0, *(uint32_t*)&h1);
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int g = tid + 256 * i;
            *(uint4*)&S.w[buf][g >> 2][8 * (g & 3)] = wr[i];
            *(uint2*)&S.x[buf][g >> 3][4 * (g & 7)] = xr[i][0];
        }
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    const int wm = warp >> 2, wn = warp & 3;   // this warp: tokens 32*wm.., rows 32*wn..

    fetch(0);
    for (int kt = 0; kt < nk; ++kt) {
        const int buf = kt & 1;
        store(buf);
        __syncthreads();
        if (kt + 1 < nk) fetch(kt + 1);
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &S.x[buf][32 * wm + 16 * i][kk], TC_LD);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &S.w[buf][32 * wn + 16 * j][kk], TC_LD);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
    }
    __syncthreads();   // the buffers become the output tile
    float* out = (float*)smem;   // [TC_BM][TC_BN]
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(out + (32 * wm + 16 * i) * TC_BN + 32 * wn + 16 * j, acc[i][j], TC_BN,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < TC_BM * TC_BN; idx += 256) {
        const int r = idx / TC_BN, c = idx % TC_BN;
        if (m0 + r < a.n_tokens && n0 + c < a.n_out) y[(int64_t)(m0 + r) * a.n_out + n0 + c] = out[idx];
    }
}

}  // namespace llmetal_cuda
