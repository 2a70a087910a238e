// attention.cuh -- attention kernels beyond the flash-decoding one in kernels.cuh:
//
//   kernel_attention_prefill<HD>   prompts of 16+ tokens, head size 64 / 128: one block per
//                                  (tile of 64 queries, head); the queries go to fp16 once; the
//                                  visible keys stream through shared memory 64 at a time (K
//                                  and V, double-buffered, cp.async); per tile S = Q K^T
//                                  (mma.sync m16n8k16, float), scale / softcap / causal and
//                                  window masks, an online softmax (running max and sum per
//                                  query row), then O += P V with P rounded to fp16.
//   kernel_attention_decode<DPL>   fewer tokens, head size 64 / 128: float arithmetic, built
//                                  for latency, its key splits merged inside it; for one token
//                                  it can also apply the rope and store the K/V row (AdRope)
//                                  and quantize its output for the o projection (see below).
//   kernel_attention_probs         the probabilities alone, [head, query, key], for inspection
//                                  (Stage::attention_probs, eager runs only; see its comment).
//
// Both compute what kernel_attention (kernels.cuh; every other shape) does:
// out[t, h] = sum_j softmax_j(scale * q[t, h] . k[j, g]) v[j, g] over the keys j visible from
// position pos0 + t (causal, within the window), g = h's K/V head. The prefill kernel's fp16
// operands (q, and the probabilities before P V) put it about 1e-6 (NMSE) from the float
// kernels; K and V are fp16 in the cache for all of them.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "../kargs.h"
#include "geometry.h"
#include "kernels.cuh"
#include "gemm.cuh"   // cp_async16_zfill, ldsm_x4, mma_16816

namespace llmetal_cuda {

// FA_BQ, FA_BK, FA_THREADS, fa_smem: geometry.h

__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, uint32_t addr) {   // transposed 8x8 blocks
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ uint32_t pack_h2(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *(const uint32_t*)&h;
}

// Rows of HD halves (HD / 8 chunks of 16 B; 128 or 256 B). 8 rows at one chunk would share a
// bank group; XOR-ing the chunk with row % 8 spreads them over all 8 (conflict-free ldmatrix).
template <int HD>
__device__ __forceinline__ uint32_t fa_swz(int row, int chunk) {
    return (uint32_t)(row * (HD * 2) + ((chunk ^ (row & 7)) << 4));
}

template <int HD>
__global__ void __launch_bounds__(FA_THREADS)
kernel_attention_prefill(kargs_attention a, const float* q, const __half* kc, const __half* vc, float* out,
                         const kstep* step) {
    static_assert(HD % 16 == 0 && HD <= 128, "head size");
    constexpr int CH = HD / 8;            // 16-byte chunks a row
    constexpr int TILE = FA_BK * HD * 2;  // bytes of one K (or V) tile
    extern __shared__ __align__(128) uint8_t fsm[];
    pdl_enter();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.y, g = h / (a.n_heads / a.n_kv_heads), kv_dim = a.n_kv_heads * HD;
    const int t0 = blockIdx.x * FA_BQ, t1 = min(a.n_tokens, t0 + FA_BQ);   // queries [t0, t1)
    const int pos0 = step->pos0;
    const int pmax = pos0 + t1 - 1;                                        // last key any query sees
    const int lo = a.window > 0 ? max(0, pos0 + t0 - a.window + 1) : 0;   // first one
    const uint32_t sQ = (uint32_t)__cvta_generic_to_shared(fsm), sKV = sQ + FA_BQ * HD * 2;

    // K and V rows [j0, j0 + 64) into stage s; rows past pmax are zero-filled (never NaN:
    // a masked probability is 0, and 0 * NaN would still poison P V)
    auto load = [&](int j0, int s) {
        const uint32_t K = sKV + s * 2 * TILE, V = K + TILE;
        for (int i = tid; i < FA_BK * CH; i += FA_THREADS) {
            const int r = i / CH, c = i % CH, j = j0 + r;
            const bool ok = j <= pmax;
            const int64_t off = (int64_t)(ok ? j : 0) * kv_dim + g * HD + 8 * c;
            cp_async16_zfill(K + fa_swz<HD>(r, c), kc + off, ok);
            cp_async16_zfill(V + fa_swz<HD>(r, c), vc + off, ok);
        }
    };
    load(lo, 0);
    cp_async_commit();

    // the query tile to fp16 (rows past the prompt are zeros), then each warp's 16 rows into
    // A fragments, kept for the whole key loop
    for (int i = tid; i < FA_BQ * CH; i += FA_THREADS) {
        const int r = i / CH, c = i % CH, t = t0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (t < t1) {
            const float4* src = (const float4*)(q + ((int64_t)t * a.n_heads + h) * HD + 8 * c);
            const float4 x = src[0], y = src[1];
            v = make_uint4(pack_h2(x.x, x.y), pack_h2(x.z, x.w), pack_h2(y.x, y.y), pack_h2(y.z, y.w));
        }
        *(uint4*)(fsm + fa_swz<HD>(r, c)) = v;
    }
    __syncthreads();
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) ldsm_x4(qf[kk], sQ + fa_swz<HD>(16 * warp + (lane & 15), 2 * kk + (lane >> 4)));

    // this thread's two query rows: r = lane / 4 and r + 8 of the warp's 16
    const int qr = lane >> 2, qc = lane & 3;
    int qpos[2], qlo[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        qpos[e] = pos0 + t0 + 16 * warp + qr + 8 * e;
        qlo[e] = a.window > 0 ? qpos[e] - a.window + 1 : 0;
    }
    float o[HD / 8][4];   // O: n8 tiles over the head dims
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
    float mx[2] = {-INFINITY, -INFINITY}, sum[2] = {0.f, 0.f};   // sum: this thread's part of the row

    int s = 0;
    for (int j0 = lo; j0 <= pmax; j0 += FA_BK, s ^= 1) {
        if (j0 + FA_BK <= pmax) load(j0 + FA_BK, s ^ 1);   // the next tile flies while this one is used
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const uint32_t K = sKV + s * 2 * TILE, V = K + TILE;

        // S = Q K^T: 16 rows x 64 keys a warp, 8 n8 tiles
        float sc[FA_BK / 8][4];
#pragma unroll
        for (int n = 0; n < FA_BK / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) sc[n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
            for (int jj = 0; jj < FA_BK / 16; ++jj) {
                uint32_t b[4];
                ldsm_x4(b, K + fa_swz<HD>(16 * jj + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
                mma_16816(sc[2 * jj], qf[kk], b[0], b[1]);
                mma_16816(sc[2 * jj + 1], qf[kk], b[2], b[3]);
            }
        }
        // scale, softcap, masks; the running max of each row (over its 4 lanes)
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < FA_BK / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1, j = j0 + 8 * n + 2 * qc + (e & 1);
                float v = sc[n][e] * a.scale;
                if (a.softcap > 0.f) v = a.softcap * tanhf(v / a.softcap);
                if (j > qpos[r] || j < qlo[r]) v = -INFINITY;
                sc[n][e] = v;
                tmax[r] = fmaxf(tmax[r], v);
            }
        }
        float corr[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
            tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
            const float m = fmaxf(mx[r], tmax[r]);
            base[r] = m == -INFINITY ? 0.f : m;   // a row with no visible key yet: exp(-inf) = 0
            corr[r] = __expf(mx[r] - base[r]);
            mx[r] = m;
            sum[r] *= corr[r];
        }
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            o[n][0] *= corr[0]; o[n][1] *= corr[0];
            o[n][2] *= corr[1]; o[n][3] *= corr[1];
        }
        // P (fp16 A fragments, straight from the S accumulators) times V
#pragma unroll
        for (int kk = 0; kk < FA_BK / 16; ++kk) {
            float p[2][4];
#pragma unroll
            for (int u = 0; u < 2; ++u)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    p[u][e] = __expf(sc[2 * kk + u][e] - base[e >> 1]);
                    sum[e >> 1] += p[u][e];
                }
            const uint32_t pa[4] = {pack_h2(p[0][0], p[0][1]), pack_h2(p[0][2], p[0][3]),
                                    pack_h2(p[1][0], p[1][1]), pack_h2(p[1][2], p[1][3])};
#pragma unroll
            for (int dd = 0; dd < HD / 16; ++dd) {
                uint32_t b[4];
                ldsm_x4_t(b, V + fa_swz<HD>(16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1), 2 * dd + (lane >> 4)));
                mma_16816(o[2 * dd], pa, b[0], b[1]);
                mma_16816(o[2 * dd + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads();   // stage s is refilled two tiles later
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
        sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int t = t0 + 16 * warp + qr + 8 * r;
        if (t >= t1) continue;
        const float inv = 1.f / sum[r];
        float* dst = out + ((int64_t)t * a.n_heads + h) * HD;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n)
            *(float2*)(dst + 8 * n + 2 * qc) = make_float2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    }
}

// ---- attention for a few queries (decode) ------------------------------------------------------
// kernel_attention_decode<DPL>: one block per (split of the keys, K/V head, query token). Its
// warps are G query heads (the K/V head's GQA group) x AD_WPH = 4: per pass over 32 of the
// split's keys, the 4 warps of a head take 8 each, so a K or V row comes from DRAM once per
// group (the other heads' warps read it from L1). Built for latency: at decode a block's work
// is small and what costs is the chain of dependent memory round trips and the instruction
// chain of one warp
// (ncu on an H100, SmolLM2 at position 64, when one warp took all 32 keys of a head: 3 warps
// busy per block, ~700 instructions each at ~16 cycles apiece; with 4 warps a head, each warp
// loads and weighs a quarter of the keys: docs/log/cuda-rounds.md, round 9). A warp's chain is:
// q (into shared memory) with the position, then per pass every load of its 8 keys at once --
//   K: 4 lanes a key, each a quarter of the row (DPL 16-byte pieces);
//   V: for each of the 8 keys, the lane's DPL = head_dim / 32 values (one coalesced row read)
// -- then the scores (q from shared memory; the quarters summed by two shuffles), the max and
// sum over the 8 keys (online softmax over passes), and the probability-weighted V rows (each
// key's probability by a shuffle). A key past the split's last visible key reads that key's
// row (finite data): its score is masked to -inf and its weight is 0. Then the 4 warps of a
// head merge their (max, sum, values) in shared memory. A split of more than 32 keys takes
// further passes (the host's splits: 128 keys for head size 64, 32 for 128; see attention_split).
//
// The splits are merged inside this kernel. Only the live splits run (those holding a visible
// key: s < ns = (pos - lo) / chunk + 1; the grid has the splits of the whole context so that a
// graph can hold it). With one live split its block writes the outputs. With several, each
// block writes its heads' (M, L, acc) to `part`, then counts itself in count[t][g]; the last
// block of the group to arrive reads every live split's partials, merges them, writes the
// outputs and resets the counter for the next launch. Up to AD_MF live splits (256 or 1024 keys of
// context) the merge issues every partial load at once (one L2 round trip instead of three;
// the same arithmetic in the same order). (The separate merge kernel,
// kernel_attention_combine, cost ~5.6 us a layer on the H100: its own start and the round
// trips before its first store.) With xq.q set, the outputs are also quantized to 8 bits
// (32-value blocks) for the matmul that reads them next (the o projection): no quantize stage.
// AD_KEYS, AD_WPH, AD_KW, AD_LPK, AD_GMAX, AD_QMAX, AD_COUNTERS: geometry.h
constexpr int AD_MF = 8;                 // live splits up to which the merge loads all at once

// A lane's DPL outputs of query head qi (dims lane*DPL ..): to out, and to 8 bits when asked
// (32 / DPL lanes hold one 32-value block: max, scale and sum by shuffles among them).
template <int DPL>
__device__ __forceinline__ void ad_store(float* out, const Q8Act& xq, int64_t qi, int lane, const float* v) {
    constexpr int HD = 32 * DPL;
    const int64_t i0 = qi * HD + lane * DPL;
#pragma unroll
    for (int e = 0; e < DPL; ++e) out[i0 + e] = v[e];
    if (!xq.q) return;
    float amax = 0.f;
#pragma unroll
    for (int e = 0; e < DPL; ++e) amax = fmaxf(amax, fabsf(v[e]));
#pragma unroll
    for (int o = 1; o < 32 / DPL; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    int qs = 0;
#pragma unroll
    for (int e = 0; e < DPL; ++e) qs += store_q8(v[e], amax, i0 + e, 32, xq);
#pragma unroll
    for (int o = 1; o < 32 / DPL; o <<= 1) qs += __shfl_xor_sync(0xffffffffu, qs, o);
    if (i0 % 32 == 0) xq.s[i0 / 32] = qs;
}

// Shared memory where the AD_WPH warps of each head merge: (M, L, acc[HD]) per warp.
struct AdMerge {
    float M[AD_GMAX * AD_WPH], L[AD_GMAX * AD_WPH];
    float acc[AD_WPH * AD_QMAX];   // [warp][HD] for the block's G * AD_WPH warps (G * HD <= AD_QMAX)
};

// Every warp of the block (G heads x AD_WPH) over keys [j0, j1) of split s; then per head: the
// output (ns == 1) or the split's (M, L, acc) in part[qi][s]. Called by every thread (barrier).
// The split goes in passes of AD_KEYS keys: the block copies a pass's K and V rows of its K/V
// head into shared memory once (cp.async; `ring`: AD_STAGES stages of ad_stage(HD) bytes, with
// AD_STAGES - 1 passes in flight while one is weighed) and every query head's warps read them
// there -- from the global memory each row would be read G times. Warp (h, sub) takes keys
// sub * AD_KW .. + AD_KW - 1 of each pass, 4 lanes a key; lane qd of a key holds the 16-byte
// pieces qd, qd + 4, ... of its row (the same q pieces), so a load phase's 8 lanes read 8
// different bank quads of the padded rows.
template <int DPL, class C>
__device__ __forceinline__ void attention_decode_split(const C& cx, const kargs_attention& a, const __half* kc, const __half* vc,
                                                       const float* sq, float* out, float* part, int n_splits, int ns,
                                                       int s, int g, int t, int j0, int j1, const Q8Act& xq,
                                                       AdMerge& mg, uint8_t* ring) {
    constexpr int HD = 32 * DPL;
    constexpr int KROW = ad_krow(HD), KB = AD_KEYS * KROW, STAGE = ad_stage(HD);
    constexpr int PR = HD * 2 / 16;   // 16-byte pieces of a row
    using VW = typename std::conditional<DPL == 2, uint32_t, uint2>::type;   // a lane's V values of a row
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = warp / AD_WPH, sub = warp % AD_WPH;   // query head within the group; which 8 keys
    const int G = a.n_heads / a.n_kv_heads, kv_dim = a.n_kv_heads * HD;
    const int kq = lane / AD_LPK, qd = lane % AD_LPK;   // this lane's key of the 8, and which pieces of its row
    constexpr int NP = PR / AD_LPK;                      // pieces a lane
    const int npass = (j1 - j0 + AD_KEYS - 1) / AD_KEYS;
    // pass i's rows into stage i % AD_STAGES (rows past the split repeat its last: finite values
    // that weigh 0); every thread commits a group per call, empty or not, so the waits count passes
    auto issue = [&](int i) {
        if (i < npass) {
            uint8_t* st = ring + (i % AD_STAGES) * STAGE;
            for (int c = threadIdx.x; c < 2 * AD_KEYS * PR; c += cx.n()) {
                const int v = c / (AD_KEYS * PR), r = c / PR % AD_KEYS, pc = c % PR;
                const int64_t row = min(j0 + i * AD_KEYS + r, j1 - 1);
                const __half* src = (v ? vc : kc) + row * kv_dim + g * HD + pc * 8;
                cp_async_l1(v ? st + KB + r * HD * 2 + pc * 16 : st + r * KROW + pc * 16, src);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < AD_STAGES - 1; ++i) issue(i);
    float M = -INFINITY, L = 0.f, acc[DPL];
#pragma unroll
    for (int e = 0; e < DPL; ++e) acc[e] = 0.f;
    for (int i = 0; i < npass; ++i) {
        cp_async_wait<AD_STAGES - 2>();   // this thread's copies of pass i have landed ...
        cx.sync();                        // ... and everyone's; pass i - 1's stage is free again
        issue(i + AD_STAGES - 1);
        const int jb = j0 + i * AD_KEYS + sub * AD_KW;   // this warp's first key of the pass
        if (jb >= j1) continue;   // (uniform in the warp) none of its keys in the split
        const uint8_t* st = ring + (i % AD_STAGES) * STAGE;
        const uint8_t* kr = st + (sub * AD_KW + kq) * KROW;
        float sc = 0.f;   // this lane's pieces of the score
#pragma unroll
        for (int c = 0; c < NP; ++c) {
            const int pc = c * AD_LPK + qd;
            const uint4 k8 = *(const uint4*)(kr + pc * 16);
            const __half2* kh = (const __half2*)&k8;
            const float* qp = sq + h * HD + pc * 8;
            const float4 qa = *(const float4*)qp, qb = *(const float4*)(qp + 4);
            const float2 k0 = __half22float2(kh[0]), k1 = __half22float2(kh[1]);
            const float2 k2 = __half22float2(kh[2]), k3 = __half22float2(kh[3]);
            sc += qa.x * k0.x + qa.y * k0.y + qa.z * k1.x + qa.w * k1.y + qb.x * k2.x + qb.y * k2.y +
                  qb.z * k3.x + qb.w * k3.y;
        }
#pragma unroll
        for (int o = 1; o < AD_LPK; o <<= 1)   // the 4 lanes: every lane of the key holds the whole score
            sc += __shfl_xor_sync(0xffffffffu, sc, o);
        float v = sc * a.scale;
        if (a.softcap > 0.f) v = a.softcap * tanhf(v / a.softcap);
        v = jb + kq < j1 ? v : -INFINITY;
        float m = v;   // over the 8 keys (lanes AD_LPK apart hold different keys)
#pragma unroll
        for (int o = AD_LPK; o < 32; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        const float mn = fmaxf(M, m);
        if (mn == -INFINITY) continue;   // (uniform) no finite score yet: nothing to add
        const float corr = __expf(M - mn);
        const float p = __expf(v - mn);   // 0 past the split
        float ps = p;   // each key once: lanes AD_LPK apart
#pragma unroll
        for (int o = AD_LPK; o < 32; o <<= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
        L = L * corr + ps;
        M = mn;
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[e] *= corr;
        // the probability-weighted V rows
        const uint8_t* vb = st + KB + sub * AD_KW * HD * 2 + lane * DPL * 2;
#pragma unroll
        for (int k = 0; k < AD_KW; ++k) {
            const VW vr = *(const VW*)(vb + k * HD * 2);
            const __half2* vh = (const __half2*)&vr;
            const float pk = __shfl_sync(0xffffffffu, p, AD_LPK * k);
#pragma unroll
            for (int w2 = 0; w2 < DPL / 2; ++w2) {
                const float2 f = __half22float2(vh[w2]);
                acc[2 * w2] += pk * f.x;
                acc[2 * w2 + 1] += pk * f.y;
            }
        }
    }
    cp_async_wait<0>();   // (only empty groups are left: the ring is free for whatever runs next)
    // the AD_WPH warps of each head merge in shared memory (warp sub 0's first key is j0,
    // visible, so the head's max is finite); warp sub 0 then writes the head's result
    if (lane == 0) { mg.M[warp] = M; mg.L[warp] = L; }
#pragma unroll
    for (int e = 0; e < DPL; ++e) mg.acc[warp * HD + lane * DPL + e] = acc[e];
    cx.sync();
    if (sub != 0 || h >= G) return;
    float Mx = mg.M[warp];
#pragma unroll
    for (int i = 1; i < AD_WPH; ++i) Mx = fmaxf(Mx, mg.M[warp + i]);
    float Lx = 0.f, ax[DPL];
#pragma unroll
    for (int e = 0; e < DPL; ++e) ax[e] = 0.f;
#pragma unroll
    for (int i = 0; i < AD_WPH; ++i) {
        const float mi = mg.M[warp + i];
        const float w = mi == -INFINITY ? 0.f : __expf(mi - Mx);
        Lx += w * mg.L[warp + i];
#pragma unroll
        for (int e = 0; e < DPL; ++e) ax[e] += w * mg.acc[(warp + i) * HD + lane * DPL + e];
    }
    const int64_t qi = (int64_t)t * a.n_heads + g * G + h;
    if (ns == 1) {
#pragma unroll
        for (int e = 0; e < DPL; ++e) ax[e] /= Lx;
        ad_store<DPL>(out, xq, qi, lane, ax);
    } else {
        float* pr = part + (qi * n_splits + s) * (HD + 2);
        if (lane == 0) { pr[0] = Mx; pr[1] = Lx; }
#pragma unroll
        for (int e = 0; e < DPL; ++e) pr[2 + lane * DPL + e] = ax[e];
    }
}

// The fused stage rope(q), rope(k), kv_store(k), kv_store(v), attention for ONE token (see
// kernel_attention_decode): the rotation's cosines and sines (one per pair, the same for every
// head) are computed before waiting on the previous kernel, as kernel_rope_kv_store computes
// them; every block rotates its group's q in shared memory; the block of the split that holds
// the position (the last live one) rotates the token's k of its K/V head, writes it back and
// writes the token's K and V rows to the caches before its own keys are read (no other block
// reads that row). The rotated q is written back by the block that finishes last (every other
// block has read q by then), so q, k and the caches end as the split stages leave them.
struct AdRope {
    kargs_rope r;        // q's rope (n_rot == head_dim; k's heads: n_kv_heads)
    const float* ff;     // frequency factors [n_rot / 2] or null
    float* k;            // [n_kv_heads * head_dim] the token's k, rotated in place
    const float* v;      // [n_kv_heads * head_dim] the token's v
    int* err;            // ERR_KV_POS when the position is outside the cache
    int on;
    const double* pw;    // [n_rot / 2] freq_base^(-2i / n_rot) (kernel_rope_powers)
};

struct AttArgs {
    kargs_attention a;
    float* q;
    __half* kc;
    __half* vc;
    float* out;
    float* part;
    int n_splits, chunk;
    const kstep* step;
    int* count;
    Q8Act xq;
    AdRope rope;
};
// The keys a split takes for the token at pos: the planned chunk, or more where the visible keys
// would need more than n_splits chunks -- the planner caps a one-token decode's blocks at n_sm *
// AD_BLOCKS_SM (planner.cpp attention_split), so at a long position each block takes more
// passes instead of more blocks running (every block computes the same chunk from pos).
__device__ __forceinline__ int ad_chunk(int window, int pos, int n_splits, int chunk) {
    const int lo = window > 0 ? max(0, pos - window + 1) : 0;
    return max(chunk, (pos - lo + n_splits) / n_splits);   // ceil(visible keys / n_splits)
}
// The splits that hold a visible key for the token at pos (the others' blocks do nothing).
__device__ __forceinline__ int ad_live_splits(int window, int pos, int n_splits, int chunk) {
    const int lo = window > 0 ? max(0, pos - window + 1) : 0;
    return min(n_splits, (pos - lo) / ad_chunk(window, pos, n_splits, chunk) + 1);
}

template <int DPL, class C>
__device__ __forceinline__ void attention_decode_body(const C& cx, const AttArgs& p, uint8_t* ring) {
    const kargs_attention& a = p.a;
    float* q = p.q;
    __half *kc = p.kc, *vc = p.vc;
    float *out = p.out, *part = p.part;
    const int n_splits = p.n_splits;
    const kstep* step = p.step;
    const Q8Act& xq = p.xq;
    const AdRope& rope = p.rope;
    constexpr int HD = 32 * DPL;
    static_assert(DPL == 2 || DPL == 4, "head size 64 or 128");
    __shared__ __align__(16) float sq[AD_QMAX];
    __shared__ float rc[HD / 2], rs[HD / 2], sk[HD], sv[HD];
    __shared__ int last;
    const int s = cx.x(), g = cx.y(), t = cx.z();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int G = a.n_heads / a.n_kv_heads, kv_dim = a.n_kv_heads * HD;
    const int pos = step->pos0 + t;   // set by a copy before the launch: readable before pdl_wait
    const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
    const int chunk = ad_chunk(a.window, pos, n_splits, p.chunk);
    const int ns = ad_live_splits(a.window, pos, n_splits, p.chunk);
    if (s >= ns) return;   // the whole block: none of its keys is visible
    if (rope.on)
        for (int i = threadIdx.x; i < HD / 2; i += cx.n()) rope_cs_pw(rope.r, rope.ff, rope.pw[i], pos, i, &rc[i], &rs[i]);
    // this split's visible keys, in the cache (a position past it is an error the step reports,
    // ERR_KV_POS below; the longer splits of ad_chunk would otherwise read rows up to it)
    const int j0 = lo + s * chunk, j1 = min(min(pos + 1, j0 + chunk), a.n_ctx);
    // The cache rows before the token's were written by earlier launches and are not written by
    // this one (its single token writes row pos): they do not depend on the previous kernel, so
    // the split's first K and V rows are requested into the L1 now, while that kernel drains;
    // the passes' copies below (through the L1) then find them there.
    if (rope.on) {
        constexpr int LPR = HD * 2 / 128;   // 128-byte lines of a row's head
        const int nk = min(min(min(j1, pos), a.n_ctx) - j0, AD_PF_KEYS);   // (rows of the cache only, also when pos is past it)
        for (int i = threadIdx.x; i < 2 * LPR * nk; i += cx.n()) {
            const int r = i / (2 * LPR), c = i % (2 * LPR);
            const __half* p = (c < LPR ? kc : vc) + (int64_t)(j0 + r) * kv_dim + g * HD + (c % LPR) * 64;
            asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
        }
    }
    cx.enter();
    float* qg = q + ((int64_t)t * a.n_heads + g * G) * HD;   // the group's G query vectors
    for (int i = threadIdx.x; i < G * HD; i += cx.n()) sq[i] = qg[i];
    const bool kv_block = rope.on && s == ns - 1;   // this block writes the token's K / V rows
    if (kv_block)   // the token's k and v, read in the same round trip as q
        for (int i = threadIdx.x; i < HD; i += cx.n()) { sk[i] = rope.k[g * HD + i]; sv[i] = rope.v[g * HD + i]; }
    cx.sync();
    if (rope.on) {
        float y0, y1;
        int i0, i1;
        for (int pi = threadIdx.x; pi < G * HD / 2; pi += cx.n()) {
            const int i = pi % (HD / 2);
            rope_pair(rope.r, sq + (pi / (HD / 2)) * HD, i, rc[i], rs[i], &i0, &i1, &y0, &y1);
        }
        if (kv_block) {
            if (pos >= a.n_ctx) {
                if (threadIdx.x == 0) atomicExch(rope.err, ERR_KV_POS);
            } else {
                __half* kr = kc + (int64_t)pos * kv_dim + g * HD;
                for (int i = threadIdx.x; i < HD / 2; i += cx.n()) {
                    rope_pair(rope.r, sk, i, rc[i], rs[i], &i0, &i1, &y0, &y1);
                    rope.k[g * HD + i0] = y0; rope.k[g * HD + i1] = y1;
                    kr[i0] = __float2half_rn(y0); kr[i1] = __float2half_rn(y1);
                }
                for (int i = threadIdx.x; i < HD; i += cx.n())
                    vc[(int64_t)pos * kv_dim + g * HD + i] = __float2half_rn(sv[i]);
            }
        }
        cx.sync();   // rotated q in sq; this block's K / V row written (visible to the block)
    }
    __shared__ AdMerge mg;
    attention_decode_split<DPL>(cx, a, kc, vc, sq, out, part, n_splits, ns, s, g, t, j0, j1, xq, mg, ring);
    if (ns == 1) {
        if (rope.on)
            for (int i = threadIdx.x; i < G * HD; i += cx.n()) qg[i] = sq[i];
        return;
    }
    // count this split in (its partials written and visible first); the last one merges
    __threadfence();
    cx.sync();
    int* cnt = p.count + t * a.n_kv_heads + g;
    if (threadIdx.x == 0) last = atomicAdd(cnt, 1) == ns - 1;
    cx.sync();
    if (!last) return;
    __threadfence();
    if (threadIdx.x == 0) *cnt = 0;
    if (rope.on)
        for (int i = threadIdx.x; i < G * HD; i += cx.n()) qg[i] = sq[i];
    for (int h = warp; h < G; h += cx.n() / 32) {   // one head a warp (G <= the block's warps)
        const int64_t qi = (int64_t)t * a.n_heads + g * G + h;
        const float* pr = part + qi * n_splits * (HD + 2);   // split j at pr + j * (HD + 2); read from L2
        if (ns <= AD_MF) {
            // Few splits (short contexts): every partial this lane needs in one round trip --
            // lane j's (M_j, L_j) and this lane's DPL values of every split -- then the same
            // arithmetic, in the same order, as the general path below.
            float m = -INFINITY, l = 0.f, pv[AD_MF][DPL];
            if (lane < ns) { m = __ldcg(pr + lane * (HD + 2)); l = __ldcg(pr + lane * (HD + 2) + 1); }
#pragma unroll
            for (int k = 0; k < AD_MF; ++k)
#pragma unroll
                for (int e = 0; e < DPL; ++e) pv[k][e] = k < ns ? __ldcg(pr + k * (HD + 2) + 2 + lane * DPL + e) : 0.f;
            float M = m;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
            const float w = lane < ns && m != -INFINITY ? __expf(m - M) : 0.f;
            const float L = warp_sum(w * l);
            float acc[DPL];
#pragma unroll
            for (int e = 0; e < DPL; ++e) acc[e] = 0.f;
#pragma unroll
            for (int k = 0; k < AD_MF; ++k) {
                if (k >= ns) break;
                const float wk = __shfl_sync(0xffffffffu, w, k);
#pragma unroll
                for (int e = 0; e < DPL; ++e) acc[e] += wk * pv[k][e];
            }
#pragma unroll
            for (int e = 0; e < DPL; ++e) acc[e] /= L;
            ad_store<DPL>(out, xq, qi, lane, acc);
            continue;
        }
        float M = -INFINITY;
        for (int j = lane; j < ns; j += 32) M = fmaxf(M, __ldcg(pr + j * (HD + 2)));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        float L = 0.f, acc[DPL];
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[e] = 0.f;
        for (int jb = 0; jb < ns; jb += 32) {
            const int j = jb + lane;
            float w = 0.f;   // split j's weight exp(M_j - M), held by lane j % 32
            if (j < ns) {
                const float m = __ldcg(pr + j * (HD + 2));
                w = m == -INFINITY ? 0.f : __expf(m - M);
                L += w * __ldcg(pr + j * (HD + 2) + 1);
            }
            const int nk = min(32, ns - jb);
#pragma unroll 8
            for (int k = 0; k < nk; ++k) {
                const float wk = __shfl_sync(0xffffffffu, w, k);
                const float* pv = pr + (jb + k) * (HD + 2) + 2 + lane * DPL;
#pragma unroll
                for (int e = 0; e < DPL; ++e) acc[e] += wk * __ldcg(pv + e);
            }
        }
        L = warp_sum(L);
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[e] /= L;
        ad_store<DPL>(out, xq, qi, lane, acc);
    }
}
template <int DPL>
__global__ void __launch_bounds__(AD_GMAX * AD_WPH * 32)   // launched with G * AD_WPH warps
kernel_attention_decode(AttArgs p) {
    extern __shared__ __align__(16) uint8_t ad_ring[];   // ad_smem(HD) bytes: the passes' K / V stages
    attention_decode_body<DPL>(Launched{}, p, ad_ring);
}

// ---- the attention's probabilities, for inspection ----------------------------------------------
// kernel_attention_probs (Stage::attention_probs; eager runs only, never in a decode plan):
// out[h, t, j] (j < n_keys) = softmax_j(scale * q[t, h] . k[j, g]) over the keys query t reads,
// 0 for every other key, with kernel_attention's float arithmetic (lanes over head_dim, warp_sum,
// tanhf softcap, __expf). Grid (n_heads, n_tokens), ATT_WARPS warps a block; warp w takes keys
// lo + w, lo + w + ATT_WARPS, ...: its k-th key's score is kept in out by lane k % 32, which
// alone turns it into exp(s - max) and then into the probability, so no thread reads what
// another wrote there. The maximum and the sum go through shared memory.
__global__ void __launch_bounds__(ATT_WARPS * 32)
kernel_attention_probs(kargs_attention_probs p, const float* q, const __half* kc, float* out, const kstep* step) {
    pdl_enter();
    const kargs_attention& a = p.a;
    const int h = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hd = a.head_dim, kv_dim = a.n_kv_heads * hd, nk = p.n_keys;
    const int g = h / (a.n_heads / a.n_kv_heads);
    const int pos = step->pos0 + t;
    const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
    float* o = out + ((int64_t)h * a.n_tokens + t) * nk;

    const float* qr = q + ((int64_t)t * a.n_heads + h) * hd;
    float qv[ATT_MAXD];
#pragma unroll
    for (int i = 0; i < ATT_MAXD; ++i) {
        const int d = lane + 32 * i;
        qv[i] = d < hd ? qr[d] : 0.f;
    }
    float mx = -INFINITY;   // the same on every lane (warp_sum gives every lane the same sum)
    for (int j = lo + warp, k = 0; j <= pos; j += ATT_WARPS, ++k) {
        const __half* kr = kc + (int64_t)j * kv_dim + g * hd;
        float d0 = 0.f;
#pragma unroll
        for (int i = 0; i < ATT_MAXD; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) d0 += qv[i] * __half2float(kr[d]);
        }
        float sc = warp_sum(d0) * a.scale;
        if (a.softcap > 0.f) sc = a.softcap * tanhf(sc / a.softcap);
        if ((k & 31) == lane) o[j] = sc;
        mx = fmaxf(mx, sc);
    }
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    if (lane == 0) s_m[warp] = mx;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; ++w) M = fmaxf(M, s_m[w]);

    float sum = 0.f;   // exp(s - M) of this thread's own keys
    for (int j = lo + warp + ATT_WARPS * lane; j <= pos; j += ATT_WARPS * 32) {
        const float e = __expf(o[j] - M);
        o[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) s_l[warp] = sum;
    __syncthreads();
    float L = 0.f;
    for (int w = 0; w < ATT_WARPS; ++w) L += s_l[w];
    const float inv = 1.f / L;
    for (int j = lo + warp + ATT_WARPS * lane; j <= pos; j += ATT_WARPS * 32) o[j] *= inv;
    for (int j = threadIdx.x; j < lo; j += blockDim.x) o[j] = 0.f;   // keys this query does not read
    for (int j = pos + 1 + threadIdx.x; j < nk; j += blockDim.x) o[j] = 0.f;
}

}  // namespace llmetal_cuda
