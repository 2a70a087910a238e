// matvec.cuh -- the CUDA device's decode matmuls (mat-vec, 1..8 tokens); the prefill GEMM is in
// gemm.cuh. The kernels:
//
//   kernel_quantize_q8<QB>   decode: activations -> 8-bit integers with one float scale per
//                            QB values (QB = 32 for the 32-element weight formats, 256 for the
//                            K-quants), rounded exactly as the CPU device does
//                            (cpp/cpu/quants.cpp quantize_row_q8 / _q8k: d = amax/127,
//                            q = round-half-even(x / d)), so the integer dots below give the
//                            CPU's numbers up to the order of the float sums.
//   kernel_mmvq<T, NT, S>    decode (1..8 tokens): persistent warps, each owning a few whole
//                            weight rows. A warp streams its rows' ~2 KB windows through a
//                            ring of 4 shared-memory slots by cp.async (16-byte coalesced
//                            copies, 3 windows in flight while one is computed), then each
//                            lane unpacks a piece of 32 weights (a whole block of the
//                            32-value formats) to words of four bytes and dots them with the
//                            8-bit activations by dp4a. Per piece:
//                              acc += xd * (d * dot(w, xq) + m * sum(xq))
//                            d: the block (or sub-block) scale, m: its min (Q4_1, Q5_1,
//                            Q4_K, Q5_K, Q2_K); the zero points of Q4_0 / Q5_0 / Q6_K / Q3_K (8, 16, 32, 4)
//                            come off the integer sums as z * sum(xq), exactly. sum(xq) per
//                            32 values is written by the stage that quantizes x.
//   kernel_mmvq_group<T, NT, GS>  2-3 weights of one input (Q/K/V, gate/up) in one launch.
//   kernel_mv_f16<NT>        decode with F16 weights: the same window, float activations.
// Which one runs, and with how many warps, is the planner's choice (planner.cpp).
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

#include "../kargs.h"
#include "quants.cuh"
#include "kernels.cuh"   // block_amax, store_q8

namespace llmetal_cuda {

// ---- stage 1: activation quantization ---------------------------------------------------------
// One thread per value, blocks of 256 threads; QB consecutive threads share a scale.
// xq: q [T][K] int8, d [T][K/QB] float, s [T][K/32] int (see Q8Act).
struct QuantArgs {
    const float* x;
    Q8Act xq;
    int64_t n;   // T*K, a multiple of QB
};
template <int QB, class C>
__device__ __forceinline__ void quantize_q8_body(const C& cx, const QuantArgs& p) {
    cx.enter();
    const int64_t i = (int64_t)cx.x() * 256 + threadIdx.x;
    const float v = i < p.n ? p.x[i] : 0.f;
    const float amax = block_amax<QB>(v, cx);
    const int q = i < p.n ? store_q8(v, amax, i, QB, p.xq) : 0;
    q8_sum32(q, i & ~31ll, i < p.n, p.xq);
}
template <int QB>
__global__ void __launch_bounds__(256) kernel_quantize_q8(QuantArgs p) { quantize_q8_body<QB>(Launched{}, p); }

// ---- stage 2: quantized mat-vec ---------------------------------------------------------------
// MV_ROWS, MV_WIN and each format's window (MVQ<T>::NB blocks) and activation block
// (MVQ<T>::QB): geometry.h
constexpr int MV_LD = (MV_WIN + 511) / 512;   // 16-byte loads per lane per window (at most)

// Shared-memory reads at 2-byte alignment (block formats of even size): 4 bytes / 8 bytes.
__device__ __forceinline__ int sm32_2(const uint8_t* p) {
    const uint16_t* q = (const uint16_t*)p;
    return (int)((uint32_t)q[0] | ((uint32_t)q[1] << 16));
}

// ---- one "piece" of a weight block per lane ---------------------------------------------------
// A piece is the bytes of one block that a lane dots at once: a whole block (32 weights) for
// the 32-value formats (PPB = 1 piece a block), 32 of the 256 weights for the K-quants
// (PPB = 8). load() reads it from the shared-memory window and unpacks it to words of four
// bytes; dot() dots them with the block's 8-bit activations (x: its first value; 16-byte
// loads through the read-only cache: they are a few KB, read by every warp) and returns the
// piece's sum in units of the activation scale:
//     sum over sub-blocks of  d_w * dot(q, xq) + m_w * sum(xq)
// m_w: the min of Q4_1 / Q5_1 / Q4_K / Q5_K; for Q4_0 / Q5_0 / Q6_K, q is the unsigned code
// and the zero point z = 8, 16, 32 enters as - z * sum(xq), exactly, in integers. sum(xq) over
// 32 values comes precomputed with the activations (xs, see Q8Act): per piece only the dots.
// Lanes take consecutive pieces, so a warp reads a contiguous stretch of the window.
constexpr int M4 = 0x0F0F0F0F;
__device__ __forceinline__ int dp4(int a, int b, int c) { return __dp4a(a, b, c); }
__device__ __forceinline__ int dot16(const int* q, int4 v, int c) {
    return dp4(q[0], v.x, dp4(q[1], v.y, dp4(q[2], v.z, dp4(q[3], v.w, c))));
}
__device__ __forceinline__ int sum4(int2 v) { return dp4(0x01010101, v.x, dp4(0x01010101, v.y, 0)); }
__device__ __forceinline__ int2 ldx2(const int8_t* p) { return ldact((const int2*)p); }
__device__ __forceinline__ int4 ldx4(const int8_t* p) { return ldact((const int4*)p); }
// The 8-bit activations of one 32-value block (values 0-15 in lo, 16-31 in hi) and their sum:
// what a piece of the 32-value formats dots with. Loaded apart from the dot so that
// kernel_mmvq can fetch them before it waits for the weights (see mmvq_rows).
struct Xb { int4 lo, hi; int s; };
__device__ __forceinline__ Xb ldxb(const int8_t* x, const int* xs) { return {ldx4(x), ldx4(x + 16), ldact(xs)}; }

// The blocks of Q4_0 (18 B), Q5_0 (22 B) and Q8_0 (34 B) are only 2-byte aligned: read the
// N aligned words that cover the block and return the bit offset of its first byte in r[0]
// (0 or 16). Byte 2 + 4i of the block (the first word after the 2-byte scale) is then
// after_scale(r, i, sh). Reading whole words costs one shared load per 4 bytes instead of two
// 2-byte loads and a merge; the word past a block's end belongs to the next block or to the
// window slot's tail (see MV_WIN), never outside the ring.
// (The aligned address is b minus its offset, not b with its low bits masked: a pointer rebuilt
// from an integer loses its shared-memory origin, and the compiler then emits generic loads,
// which wait like global ones -- seen as 15% of the Q4_0 mat-vec's stall samples.)
template <int N>
__device__ __forceinline__ int block_words(const uint8_t* b, uint32_t* r) {
    const int mis = (int)((uintptr_t)b & 3);   // 0 or 2
    const uint32_t* w = (const uint32_t*)(b - mis);
#pragma unroll
    for (int i = 0; i < N; ++i) r[i] = w[i];
    return mis * 8;
}
__device__ __forceinline__ int after_scale(const uint32_t* r, int i, int sh) {
    return (int)__funnelshift_rc(r[i], r[i + 1], sh + 16);   // sh + 16 = 32: r[i + 1] whole
}
__device__ __forceinline__ float half_bits(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }
// 4 bits (one per value) -> bit 4 of each of 4 bytes: b * (1<<4 | 1<<11 | 1<<18 | 1<<25)
// puts bit k at 8k + 4 (the four shifted copies do not overlap: no carries).
__device__ __forceinline__ int spread4(uint32_t b) { return (int)(((b & 0xF) * 0x02040810u) & 0x10101010u); }

template <int T> struct Piece;

// Q8_0 (34 B: d, 32 x int8)
template <> struct Piece<KT_Q8_0> {
    static constexpr int PPB = 1;
    using X = Xb;   // a piece's activations (see mmvq_rows)
    static __device__ __forceinline__ X xload(const int8_t* x, const int* xs, int) { return ldxb(x, xs); }
    int q[8]; float d;
    __device__ __forceinline__ void load(const uint8_t* b, int) {
        uint32_t r[9];
        const int sh = block_words<9>(b, r);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = after_scale(r, i, sh);
        d = half_bits(r[0] >> sh);
    }
    __device__ __forceinline__ float dot(const Xb& x) const {
        return d * (float)(dot16(q, x.lo, 0) + dot16(q + 4, x.hi, 0));   // two chains of 4
    }
    __device__ __forceinline__ float dot(const int8_t* x, const int* xs) const { return dot(Xb{ldx4(x), ldx4(x + 16), 0}); }
};

// Q4_0 / Q4_1 / Q5_0 / Q5_1: qs byte j holds value j (low nibble) and value j + 16 (high), so
// qs word i holds values 4i..4i+3 (lo) and 16+4i.. (hi); Q5's fifth bit of value v is bit v
// of qh. The bytes stay the unsigned codes (0..15 or 0..31); the zero point z (8 or 16) comes
// off the integer sum as z * sum(x).
struct Piece32 {
    using X = Xb;
    static __device__ __forceinline__ X xload(const int8_t* x, const int* xs, int) { return ldxb(x, xs); }
    int lo[4], hi[4]; float d, m;
    __device__ __forceinline__ void unpack(const int* qw, uint32_t qh) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = (qw[i] & M4) | spread4(qh >> (4 * i));
            hi[i] = ((qw[i] >> 4) & M4) | spread4(qh >> (16 + 4 * i));
        }
    }
    __device__ __forceinline__ int idot(const Xb& x) const {
        return dot16(lo, x.lo, 0) + dot16(hi, x.hi, 0);   // two chains of 4 dp4a, not one of 8
    }
};
template <> struct Piece<KT_Q4_0> : Piece32 {   // 18 B: d, qs[16]; value = d (q - 8)
    static constexpr int PPB = 1;
    __device__ __forceinline__ void load(const uint8_t* b, int) {
        uint32_t r[5];
        const int sh = block_words<5>(b, r);
        const int qw[4] = {after_scale(r, 0, sh), after_scale(r, 1, sh), after_scale(r, 2, sh), after_scale(r, 3, sh)};
        unpack(qw, 0);
        d = half_bits(r[0] >> sh);
    }
    __device__ __forceinline__ float dot(const Xb& x) const { return d * (float)(idot(x) - 8 * x.s); }
    __device__ __forceinline__ float dot(const int8_t* x, const int* xs) const { return dot(ldxb(x, xs)); }
};
template <> struct Piece<KT_Q4_1> : Piece32 {   // 20 B: d, m, qs[16]; value = d q + m (4-byte aligned)
    static constexpr int PPB = 1;
    __device__ __forceinline__ void load(const uint8_t* b, int) {
        const int* w = (const int*)b;
        const int qw[4] = {w[1], w[2], w[3], w[4]};
        unpack(qw, 0);
        d = half_bits((uint32_t)w[0]); m = half_bits((uint32_t)w[0] >> 16);
    }
    __device__ __forceinline__ float dot(const Xb& x) const { return d * (float)idot(x) + m * (float)x.s; }
    __device__ __forceinline__ float dot(const int8_t* x, const int* xs) const { return dot(ldxb(x, xs)); }
};
template <> struct Piece<KT_Q5_0> : Piece32 {   // 22 B: d, qh[4], qs[16]; value = d (q - 16)
    static constexpr int PPB = 1;
    __device__ __forceinline__ void load(const uint8_t* b, int) {
        uint32_t r[6];
        const int sh = block_words<6>(b, r);
        const int qw[4] = {after_scale(r, 1, sh), after_scale(r, 2, sh), after_scale(r, 3, sh), after_scale(r, 4, sh)};
        unpack(qw, (uint32_t)after_scale(r, 0, sh));
        d = half_bits(r[0] >> sh);
    }
    __device__ __forceinline__ float dot(const Xb& x) const { return d * (float)(idot(x) - 16 * x.s); }
    __device__ __forceinline__ float dot(const int8_t* x, const int* xs) const { return dot(ldxb(x, xs)); }
};
template <> struct Piece<KT_Q5_1> : Piece32 {   // 24 B: d, m, qh[4], qs[16]; value = d q + m (8-byte aligned)
    static constexpr int PPB = 1;
    __device__ __forceinline__ void load(const uint8_t* b, int) {
        const int* w = (const int*)b;
        const int qw[4] = {w[2], w[3], w[4], w[5]};
        unpack(qw, (uint32_t)w[1]);
        d = half_bits((uint32_t)w[0]); m = half_bits((uint32_t)w[0] >> 16);
    }
    __device__ __forceinline__ float dot(const Xb& x) const { return d * (float)idot(x) + m * (float)x.s; }
    __device__ __forceinline__ float dot(const int8_t* x, const int* xs) const { return dot(ldxb(x, xs)); }
};

// Q4_K (144 B) / Q5_K (176 B): d, dmin, 12 bytes of 6-bit scales and mins, [Q5_K: qh[32]],
// qs[128]. Sub-block sb (32 values) lies in qs[32 (sb/2) ..], low nibbles for even sb, high
// for odd; Q5_K's fifth bit of value l of sub-block sb is bit sb of qh[l]. Piece pp: pair
// g = pp/2 of sub-blocks, half h = pp%2 of their values: 16 qs bytes, 16-byte aligned (both
// block sizes are multiples of 16), 16 values of sub-block 2g (lo) and 16 of 2g + 1 (hi).
// The mins of the pair's two sub-blocks multiply the whole sub-blocks' sums (xs): the h = 0
// piece adds them.
struct PieceK {
    // piece pp's activations: the 16 values of sub-block 2g and of 2g + 1 it dots, and (first
    // piece of the pair) the two sub-blocks' sums
    struct X { int4 lo, hi; int s0, s1; };
    static __device__ __forceinline__ X xload(const int8_t* x, const int* xs, int pp) {
        const int g = pp >> 1, h = pp & 1, off = 64 * g + 16 * h;
        return {ldx4(x + off), ldx4(x + off + 32), h == 0 ? ldact(xs + 2 * g) : 0, h == 0 ? ldact(xs + 2 * g + 1) : 0};
    }
    __device__ __forceinline__ float dot(const X& x) const {   // the same arithmetic as dot(x, xs)
        const int s0 = dot16(lo, x.lo, 0), s1 = dot16(hi, x.hi, 0);
        const float r = d * (float)(sc0 * s0 + sc1 * s1);
        return first ? r - dm * (float)(m0 * x.s0 + m1 * x.s1) : r;
    }
    int lo[4], hi[4], sc0, sc1, m0, m1, off, g; bool first; float d, dm;
    __device__ __forceinline__ void scales(const uint8_t* b, int g_, int h) {
        g = g_; first = h == 0;
        scale_min_k4(2 * g, b + 4, &sc0, &m0);
        scale_min_k4(2 * g + 1, b + 4, &sc1, &m1);
        d = ldh(b); dm = ldh(b + 2);
    }
    __device__ __forceinline__ float dot(const int8_t* x, const int* xs) const {
        const int s0 = dot16(lo, ldx4(x + off), 0), s1 = dot16(hi, ldx4(x + off + 32), 0);
        const float r = d * (float)(sc0 * s0 + sc1 * s1);
        return first ? r - dm * (float)(m0 * ldact(xs + 2 * g) + m1 * ldact(xs + 2 * g + 1)) : r;
    }
};
template <> struct Piece<KT_Q4_K> : PieceK {
    static constexpr int PPB = 8;
    __device__ __forceinline__ void load(const uint8_t* b, int pp) {
        const int g = pp >> 1, h = pp & 1;
        const int4 q = *(const int4*)(b + 16 + 32 * g + 16 * h);
        const int qa[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) { lo[i] = qa[i] & M4; hi[i] = (qa[i] >> 4) & M4; }
        scales(b, g, h);
        off = 64 * g + 16 * h;
    }
};
template <> struct Piece<KT_Q5_K> : PieceK {
    static constexpr int PPB = 8;
    __device__ __forceinline__ void load(const uint8_t* b, int pp) {
        const int g = pp >> 1, h = pp & 1;
        const int4 q = *(const int4*)(b + 48 + 32 * g + 16 * h);
        const int4 e = *(const int4*)(b + 16 + 16 * h);
        const int qa[4] = {q.x, q.y, q.z, q.w}, ea[4] = {e.x, e.y, e.z, e.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = (qa[i] & M4) | (((ea[i] >> (2 * g)) & 0x01010101) << 4);
            hi[i] = ((qa[i] >> 4) & M4) | (((ea[i] >> (2 * g + 1)) & 0x01010101) << 4);
        }
        scales(b, g, h);
        off = 64 * g + 16 * h;
    }
};

// Q6_K (210 B): ql[128], qh[64], int8 scales[16], d. Value e = 128 hh + 32 qd + l: low 4 bits
// in ql[64 hh + 32 (qd & 1) + l] (high nibble for qd >= 2), top 2 bits at bit 2 qd of
// qh[32 hh + l]; 16-value sub-block e/16 has an int8 scale; value = d scale (q - 32).
// Piece pp: hh = pp/4, l = 8 (pp%4) .. +7, all four qd: 32 values from 8 + 8 + 8 bytes.
template <> struct Piece<KT_Q6_K> {
    static constexpr int PPB = 8;
    struct X { int2 v[4]; };   // piece pp's activations: 8 values for each of the four qd
    static __device__ __forceinline__ X xload(const int8_t* x, const int*, int pp) {
        const int off = 128 * (pp >> 2) + 8 * (pp & 3);
        return {{ldx2(x + off), ldx2(x + off + 32), ldx2(x + off + 64), ldx2(x + off + 96)}};
    }
    __device__ __forceinline__ float dot(const X& x) const {   // the same arithmetic as dot(x, xs)
        int s = 0;
#pragma unroll
        for (int qd = 0; qd < 4; ++qd) s += sc[qd] * (dp4(w[qd][0], x.v[qd].x, dp4(w[qd][1], x.v[qd].y, 0)) - 32 * sum4(x.v[qd]));
        return d * (float)s;
    }
    int w[4][2], sc[4], off; float d;
    __device__ __forceinline__ void load(const uint8_t* b, int pp) {
        const int hh = pp >> 2, l0 = 8 * (pp & 3);
        const uint8_t* qa = b + 64 * hh + l0;   // qd 0 (low nibbles), 2 (high)
        const uint8_t* qc = qa + 32;            // qd 1, 3
        const uint8_t* qh = b + 128 + 32 * hh + l0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int a = sm32_2(qa + 4 * i), c = sm32_2(qc + 4 * i), h = sm32_2(qh + 4 * i);
            w[0][i] = (a & M4) | ((h & 0x03030303) << 4);
            w[1][i] = (c & M4) | (((h >> 2) & 0x03030303) << 4);
            w[2][i] = ((a >> 4) & M4) | (((h >> 4) & 0x03030303) << 4);
            w[3][i] = ((c >> 4) & M4) | (((h >> 6) & 0x03030303) << 4);
        }
#pragma unroll
        for (int qd = 0; qd < 4; ++qd) sc[qd] = (int8_t)b[192 + 8 * hh + 2 * qd + (l0 >> 4)];
        d = ldh(b + 208); off = 128 * hh + l0;
    }
    __device__ __forceinline__ float dot(const int8_t* x, const int*) const {
        int s = 0;
#pragma unroll
        for (int qd = 0; qd < 4; ++qd) {
            const int2 v = ldx2(x + off + 32 * qd);   // codes 0..63; the zero point 32 as 32 sum(x)
            s += sc[qd] * (dp4(w[qd][0], v.x, dp4(w[qd][1], v.y, 0)) - 32 * sum4(v));
        }
        return d * (float)s;
    }
};

// Sum of 16 activation bytes.
__device__ __forceinline__ int sum16(int4 v) {
    return dp4(0x01010101, v.x, dp4(0x01010101, v.y, dp4(0x01010101, v.z, dp4(0x01010101, v.w, 0))));
}
// The 32 activations of a piece of 32 consecutive values (lo: the first 16, hi: the rest).
struct X32 { int4 lo, hi; };

// Q2_K (84 B: scales[16], qs[64], d, dmin) and Q3_K (110 B: hmask[32], qs[64], scales[12],
// d): 16 sub-blocks of 16. Piece pp: h = pp / 4, c = pp % 4, the 32 values 128h + 32c ..
// +31: bits 2c of qs[32h .. 32h+31] (Q3_K: bit 4h + c of hmask[0..31] is bit 2), two
// sub-blocks (8h + 2c: lo, + 1: hi). Q2_K: value d (sc & 15) q - dmin (sc >> 4); Q3_K:
// d sc (q - 4), the -4 (like the min) through the sums of the 16 activations. Q3_K's blocks
// are 2-byte aligned in the window: read by sm32_2.
template <bool Q3>
struct PieceQ23K {
    static constexpr int PPB = 8;
    using X = X32;
    static __device__ __forceinline__ X xload(const int8_t* x, const int*, int pp) {
        const int off = 128 * (pp >> 2) + 32 * (pp & 3);
        return {ldx4(x + off), ldx4(x + off + 16)};
    }
    int q[8], sc0, sc1, m0, m1, off; float d, dm;
    __device__ __forceinline__ void load(const uint8_t* b, int pp) {
        const int h = pp >> 2, c = pp & 3, s = 8 * h + 2 * c;
        const uint8_t* qs = b + (Q3 ? 32 : 16) + 32 * h;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            q[i] = (sm32_2(qs + 4 * i) >> (2 * c)) & 0x03030303;
            if (Q3) q[i] |= ((sm32_2(b + 4 * i) >> (4 * h + c)) & 0x01010101) << 2;
        }
        if (Q3) {
            sc0 = scale_q3k(s, b + 96); sc1 = scale_q3k(s + 1, b + 96);
            m0 = -4 * sc0; m1 = -4 * sc1;
            d = ldh(b + 108); dm = 0.f;
        } else {
            sc0 = b[s] & 0xF; sc1 = b[s + 1] & 0xF;
            m0 = b[s] >> 4; m1 = b[s + 1] >> 4;
            d = ldh(b + 80); dm = ldh(b + 82);
        }
        off = 128 * h + 32 * c;
    }
    __device__ __forceinline__ float dot(const X& x) const {
        const int s0 = dot16(q, x.lo, 0), s1 = dot16(q + 4, x.hi, 0);
        const int ms = m0 * sum16(x.lo) + m1 * sum16(x.hi);
        if (Q3) return d * (float)(sc0 * s0 + sc1 * s1 + ms);
        return d * (float)(sc0 * s0 + sc1 * s1) - dm * (float)ms;
    }
    __device__ __forceinline__ float dot(const int8_t* x, const int*) const {
        return dot(X{ldx4(x + off), ldx4(x + off + 16)});
    }
};
template <> struct Piece<KT_Q2_K> : PieceQ23K<false> {};
template <> struct Piece<KT_Q3_K> : PieceQ23K<true> {};

// IQ4_XS (136 B: d, scales_h, scales_l[4], qs[128]): piece pp is sub-block pp (32 values):
// its 16 qs bytes (8-byte aligned) hold value j (low nibble) and j + 16 (high), codes into
// kvalues_iq4nl (iq4nl_lut: 4 at a time); value d * scale * kvalues_iq4nl[code].
template <> struct Piece<KT_IQ4_XS> {
    static constexpr int PPB = 8;
    using X = X32;
    static __device__ __forceinline__ X xload(const int8_t* x, const int*, int pp) {
        return {ldx4(x + 32 * pp), ldx4(x + 32 * pp + 16)};
    }
    int lo[4], hi[4], sc, off; float d;
    __device__ __forceinline__ void load(const uint8_t* b, int pp) {
        const int2 u = *(const int2*)(b + 8 + 16 * pp), v = *(const int2*)(b + 16 + 16 * pp);
        const int qa[4] = {u.x, u.y, v.x, v.y};
#pragma unroll
        for (int i = 0; i < 4; ++i) { lo[i] = iq4nl_lut(qa[i] & M4); hi[i] = iq4nl_lut((qa[i] >> 4) & M4); }
        sc = scale_iq4xs(pp, b);
        d = ldh(b);
        off = 32 * pp;
    }
    __device__ __forceinline__ float dot(const X& x) const {
        return d * (float)(sc * (dot16(lo, x.lo, 0) + dot16(hi, x.hi, 0)));
    }
    __device__ __forceinline__ float dot(const int8_t* x, const int*) const {
        return dot(X{ldx4(x + off), ldx4(x + off + 16)});
    }
};

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

// ---- the quantized mat-vec: persistent warps, a ring of asynchronous copies ------------------
// Each warp owns rows r, r + nwarps, r + 2 nwarps, ... (the host picks nwarps so that every warp
// gets the same number of rows and all warps are resident at once) and walks the windows of
// those rows as one sequence, keeping MV_STAGES - 1 windows of it in flight while it computes
// the current one: cp.async copies the weights from global to the warp's ring slot without
// passing through registers, so the next windows -- also those of the next row -- are already
// on their way while this one is dotted. The activations are read from global memory (a few
// KB, in the L1 after the first warps). Each lane dots whole pieces of blocks (see Piece), the
// warp reduces by shuffles when a row ends, and lane 0 writes it: no shared reduction and no
// block-wide barrier.
constexpr int MV_STAGES = 4;   // ring slots a warp (cp_async: kernels.cuh)


// Copy `nbytes` (a multiple of vw) from src to the slot: asynchronous for vw 16, 8, 4;
// rows only 2-byte aligned are copied synchronously.
__device__ __forceinline__ void window_copy(uint8_t* dst, const uint8_t* src, int nbytes, int vw, int lane) {
    if (vw >= 4) {
        for (int i = lane * vw; i < nbytes; i += 32 * vw) cp_async(dst + i, src + i, vw);
    } else {
        for (int i = lane; i < nbytes / 2; i += 32) ((uint16_t*)dst)[i] = __ldg((const uint16_t*)src + i);
    }
}

// The rows of one weight that warp gw (of nwarps working on it) computes, in groups of S
// warps (S = 1, 2 or 4; S divides nwarps and MV_ROWS, so a group lies in one block): group
// rg = gw / S owns rows rg, rg + nwarps / S, ..., and its warp k = gw % S takes windows k,
// k + S, k + 2S, ... of each of them. S > 1 is for rows of several windows in matrices of few
// rows (the FFN down projection: K = 14336 is 4 windows of Q4_0, 4096 rows for ~3200
// resident warps): the work spreads over more warps, and the S partial sums of a row meet in
// shared memory (`red`, two slots so the next row's writes never meet this row's reads) after
// a barrier of the group's warps, added in warp order by warp k = 0.
// y[t, n] = sum_k W[n, k] x[t, k] for t < n_tokens <= NT, from the quantized activations
// (xq: see Q8Act; one scale per QK values, QB = QK for every format here).
// A row's sum depends only on the row and S (its windows in order, the same lanes, the same
// shuffle tree), not on how rows are spread over warps: kernel_mmvq and kernel_mmvq_group give
// bit-identical results (the host picks S from the matrix alone, the same for both).
// BW: warps of the block (the `red` slots; the persistent kernel's blocks have PK_WARPS).
template <int T, int NT, int BW, class C>
__device__ __forceinline__ void mmvq_rows(const C& cx, const kargs_matmul& a, const uint8_t* W, const Q8Act& xq,
                                          float* y, int vw, int nwarps, int gw, uint8_t* slots, int lane,
                                          int S, float (*red)[BW][NT], const float* bias = nullptr) {
    constexpr int QK = QT<T>::QK, BB = QT<T>::BB, NB = MVQ<T>::NB, PPB = Piece<T>::PPB;
    static_assert(MVQ<T>::QB == QK, "one activation scale per weight block");
    constexpr int WB = NB * BB;                         // bytes of a full window
    constexpr int IT = (NB * PPB + 31) / 32;            // pieces per lane of a full window
    static_assert(WB <= MV_WIN && WB % 16 == 0, "window");
    const int rg = gw / S, k = gw % S, ngroups = nwarps / S;
    if (gw >= nwarps || rg >= a.n_out) return;   // whole groups leave; no block barrier follows
                                                 // (and touch no memory: no pdl_wait needed)
    const int K = a.n_in, nblocks = K / QK, nwin = (nblocks + NB - 1) / NB, mc = min(NT, a.n_tokens);
    const int nrows = (a.n_out - rg + ngroups - 1) / ngroups;
    const int nwk = (nwin - k + S - 1) / S;   // windows of a row this warp takes (S <= nwin)
    const int total = nrows * nwk;            // windows this warp computes

    // issue window i of the sequence (row rg + (i / nwk) ngroups, window k + (i % nwk) S) into
    // its slot; one commit group per window, empty past the end, so the group count stays uniform
    auto issue = [&](int i) {
        if (i < total) {
            const int r = rg + (i / nwk) * ngroups, w = k + (i % nwk) * S;
            const int nb = min(NB, nblocks - w * NB);
            window_copy(slots + (i % MV_STAGES) * MV_WIN, W + (uint64_t)r * a.row_bytes + (uint64_t)w * WB,
                        nb * BB, vw, lane);
        }
        cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < MV_STAGES - 1; ++i) issue(i);
    // The weights are never written: their first windows are fetched before waiting for the
    // kernel that writes the activations (see pdl_wait), so that round trip overlaps its drain.
    cx.wait();
    cx.release();

    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.f;
    // One token (the decode step): a lane's activations for a window -- the 8-bit values of
    // its IT pieces, their sums and scales -- do not depend on the weights, so they are
    // loaded before waiting for the window's copies, and while the warp stays on the same
    // window of every row (nwk == 1: rows of one window, or S windows split over S warps) they
    // are loaded once and kept in registers. Loaded inside each piece instead, every piece
    // waited for its own L1 / L2 round trip behind the window (ncu: a third of the Q4_0
    // mat-vec's stall samples, on the first dot of each window).
#ifdef LLMETAL_PERSISTENT_TU
    // Not inside kernel_persistent: there this body is one of several callees on 128 registers a
    // thread, and holding the window's activations in registers spills in this loop (ptxas -v);
    // each piece loads its own activations instead.
    constexpr bool XREG = false;
#else
    constexpr bool XREG = NT == 1;
#endif
    typename Piece<T>::X xa[XREG ? IT : 1];
    float xd[XREG ? IT : 1];
    int w = k, r = rg, par = 0;   // the window being computed, its row, the `red` slot
    for (int i = 0; i < total; ++i) {
        issue(i + MV_STAGES - 1);
        const int np = min(NB, nblocks - w * NB) * PPB, b0 = w * NB;
        const bool full = NB * PPB % 32 == 0 && np == NB * PPB;   // every lane has IT pieces
        if constexpr (XREG) {
            if (i == 0 || nwk > 1) {
#pragma unroll
                for (int j = 0; j < IT; ++j) {
                    const int p = lane + 32 * j, blk = b0 + p / PPB;
                    if (full || p < np) {
                        xa[j] = Piece<T>::xload(xq.q + blk * QK, xq.s + blk * (QK / 32), p % PPB);
                        xd[j] = ldact(xq.d + blk);
                    }
                }
            }
        }
        cp_async_wait<MV_STAGES - 1>();   // this lane's copies of window i have landed
        __syncwarp();                     // ... and every lane's
        const uint8_t* sm = slots + (i % MV_STAGES) * MV_WIN;
        auto piece = [&](int p) {
            const int kb = p / PPB;
            Piece<T> pc;
            pc.load(sm + kb * BB, p % PPB);
            const int blk = b0 + kb;
#pragma unroll
            for (int t = 0; t < NT; ++t)
                if (t < mc)
                    acc[t] += ldact(xq.d + (int64_t)t * nblocks + blk) *
                              pc.dot(xq.q + (int64_t)t * K + blk * QK, xq.s + (int64_t)t * (K / 32) + blk * (QK / 32));
        };
        // A full window gives every lane exactly IT pieces (where NB * PPB is a multiple of
        // 32): no guard, so the compiler can issue all their loads before the first dot
        // (with a guard per piece they waited one at a time). Same pieces, same order.
        if constexpr (XREG) {   // the same sums as piece(), from the registers
            auto piece_x = [&](int j) {
                const int p = lane + 32 * j;
                Piece<T> pc;
                pc.load(sm + p / PPB * BB, p % PPB);
                acc[0] += xd[j] * pc.dot(xa[j]);
            };
            if (full) {
#pragma unroll
                for (int j = 0; j < IT; ++j) piece_x(j);
            } else {
#pragma unroll
                for (int j = 0; j < IT; ++j)
                    if (lane + 32 * j < np) piece_x(j);
            }
        } else if (full) {
#pragma unroll
            for (int j = 0; j < IT; ++j) piece(lane + 32 * j);
        } else {
#pragma unroll
            for (int j = 0; j < IT; ++j)
                if (lane + 32 * j < np) piece(lane + 32 * j);
        }
        __syncwarp();   // the slot is refilled by a later issue
        if ((w += S) >= nwin) {   // this warp's part of the row is done: reduce over the warp
#pragma unroll
            for (int t = 0; t < NT; ++t) {
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
            }
            const int wb = threadIdx.x >> 5;   // this warp in the block
            if (S == 1) {
#pragma unroll
                for (int t = 0; t < NT; ++t)
                    if (lane == 0 && t < mc) y[(int64_t)t * a.n_out + r] = bias ? acc[t] + bias[r] : acc[t];
            } else {   // ... then over the group's S warps, in warp order
                if (lane == 0) {
#pragma unroll
                    for (int t = 0; t < NT; ++t) red[par][wb][t] = acc[t];
                }
                asm volatile("bar.sync %0, %1;" ::"r"(1 + wb / S), "r"(32 * S) : "memory");
                if (k == 0 && lane == 0) {
#pragma unroll
                    for (int t = 0; t < NT; ++t) {
                        float v = red[par][wb][t];
                        for (int j = 1; j < S; ++j) v += red[par][wb + j][t];
                        if (t < mc) y[(int64_t)t * a.n_out + r] = bias ? v + bias[r] : v;
                    }
                }
                par ^= 1;
            }
#pragma unroll
            for (int t = 0; t < NT; ++t) acc[t] = 0.f;
            w = k;
            r += ngroups;
        }
    }
    cp_async_wait<0>();
}

// S (1, 2 or 4 warps a row, from the host's plan) is a template parameter: each S gets its own
// kernel, with S's divisions as shifts and, for S = 1, none of the cross-warp sum's code. With S
// a runtime value 8B Q4_0 tg128 was 2.5% lower; with the three S as branches of one kernel
// (three times the code of one) SmolLM2's was 2% lower (docs/log/cuda-rounds.md, round 12).
template <int T, int NT, int S>
__global__ void __launch_bounds__(MV_ROWS * 32)
kernel_mmvq(kargs_matmul a, const uint8_t* W, Q8Act xq, float* y, int vw, int nwarps) {
    __shared__ __align__(16) uint8_t ring[MV_ROWS][MV_STAGES][MV_WIN];
    __shared__ float red[S > 1 ? 2 : 1][MV_ROWS][NT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    mmvq_rows<T, NT, MV_ROWS>(Launched{}, a, W, xq, y, vw, nwarps, blockIdx.x * MV_ROWS + warp, ring[warp][0], lane, S,
                              red);
}

// ---- several weights of the same input in one launch (Q/K/V, gate/up) -----------------------
// The weights of a group share the type, K and the token count, and read the same 8-bit
// activations; each has its own rows, output, load width and S (warps a row: the host gives
// each weight the S kernel_mmvq would use for it alone, so both kernels sum every row the same
// way and give the same bits). The grid's warps are laid out weight after weight, largest S
// first: warps [0, nwarps[0]) walk weight 0's rows, the next nwarps[1] weight 1's, ... -- each
// exactly as kernel_mmvq would with that many warps; every weight starts at a multiple of its
// S, so a group of S warps lies in one block -- and one launch (one start-up, one drain)
// covers what were 2 or 3 small launches.
// MVG_MAX (3): geometry.h
struct MvGroup {
    const uint8_t* W[MVG_MAX];
    float* y[MVG_MAX];
    const float* bias[MVG_MAX];   // a row added to each output as it is stored (null: none)
    uint64_t row_bytes[MVG_MAX];
    int n_out[MVG_MAX], vw[MVG_MAX], nwarps[MVG_MAX], S[MVG_MAX];
    int n;   // weights in the group (2 or 3)
};
// Weight j's field of the group (j < MVG_MAX = 3), by selects rather than an index: with
// `g.W[j]` etc. under a loop the compiler copied the whole group to local memory and read it
// back at every kernel start (ptxas: a 128-byte stack). Without that copy and with S a template
// parameter of kernel_mmvq, 8B Q4_0 tg128 went from 433 to 471 t/s on an H100, most of it by
// elimination from this (docs/log/cuda-rounds.md, round 12).
template <class F> __device__ __forceinline__ F mvg_pick(const F (&f)[MVG_MAX], int j) {
    return j == 0 ? f[0] : j == 1 ? f[1] : f[2];
}
struct MvArgs {
    kargs_matmul a;
    MvGroup g;
    Q8Act xq;
};
// Warp gw of the launch (or of the persistent kernel's instruction) works on weight j's warp gw'
// (warps laid out weight after weight, see above).
// GS = false: every weight of the group has S = 1 (the host checks), a constant here, so the
// kernel carries none of the S > 1 code (SmolLM2's groups). GS = true: each weight's S is a
// constant in one of three branches, as in kernel_mmvq<T, NT, S> (8B's Q/K/V mixes S = 1 and 2).
template <int T, int NT, bool GS, int BW, class C>
__device__ __forceinline__ void mmvq_group_warp(const C& cx, const MvArgs& p, int gw, uint8_t* slots, int lane,
                                                float (*red)[BW][NT]) {
    const MvGroup& g = p.g;
    int j = 0;
    if (gw >= g.nwarps[0]) {
        gw -= g.nwarps[0];
        j = 1;
        if (gw >= g.nwarps[1]) {
            gw -= g.nwarps[1];
            j = 2;
        }
    }
    const int nw = mvg_pick(g.nwarps, j);
    if (j >= g.n || gw >= nw) return;
    kargs_matmul a = p.a;
    a.n_out = mvg_pick(g.n_out, j);
    a.row_bytes = mvg_pick(g.row_bytes, j);
    const uint8_t* W = mvg_pick(g.W, j);
    float* y = mvg_pick(g.y, j);
    const float* bias = mvg_pick(g.bias, j);
    const int vw = mvg_pick(g.vw, j), S = mvg_pick(g.S, j);
    if constexpr (!GS) mmvq_rows<T, NT, BW>(cx, a, W, p.xq, y, vw, nw, gw, slots, lane, 1, red, bias);
    else if (S == 1) mmvq_rows<T, NT, BW>(cx, a, W, p.xq, y, vw, nw, gw, slots, lane, 1, red, bias);
    else if (S == 2) mmvq_rows<T, NT, BW>(cx, a, W, p.xq, y, vw, nw, gw, slots, lane, 2, red, bias);
    else mmvq_rows<T, NT, BW>(cx, a, W, p.xq, y, vw, nw, gw, slots, lane, 4, red, bias);
}
template <int T, int NT, bool GS>
__global__ void __launch_bounds__(MV_ROWS * 32)
kernel_mmvq_group(MvArgs p) {
    __shared__ __align__(16) uint8_t ring[MV_ROWS][MV_STAGES][MV_WIN];
    __shared__ float red[GS ? 2 : 1][MV_ROWS][NT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    mmvq_group_warp<T, NT, GS, MV_ROWS>(Launched{}, p, blockIdx.x * MV_ROWS + warp, ring[warp][0], lane, red);
}

// F16 weights, float activations (the CPU device keeps them float too): K % 8 == 0.
template <int NT>
__global__ void __launch_bounds__(MV_ROWS * 32)
kernel_mv_f16(kargs_matmul a, const uint8_t* W, const float* x, float* y, int vw, int split) {
    __shared__ __align__(16) uint8_t win[MV_ROWS][MV_WIN];
    __shared__ float red[MV_ROWS][NT];
    pdl_enter();
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

}  // namespace llmetal_cuda
