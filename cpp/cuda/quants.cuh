// quants.cuh -- GGUF block formats dequantized on the GPU.
//
// Two entry points per weight type, both exact mirrors of the CPU's dequant_row
// (cpp/cpu/quants.cpp), including its order of float operations (explicit __fmul_rn /
// __fadd_rn, so nvcc cannot fuse a multiply and an add into one differently rounded FMA):
//   dq1<T>(row, e)        element e of a row (used by embed and by odd-length float rows);
//   dq8<T>(row, g, w[8])  elements [8g, 8g+8) of a row. Every block format's sub-structure
//                         is 8-element aligned, so one group never straddles a scale.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "../kargs.h"

namespace llmetal_cuda {

template <int T> struct QT;   // block size (elements) and bytes per block
template <> struct QT<KT_F32> { static constexpr int QK = 1, BB = 4; };
template <> struct QT<KT_F16> { static constexpr int QK = 1, BB = 2; };
template <> struct QT<KT_BF16> { static constexpr int QK = 1, BB = 2; };
template <> struct QT<KT_Q4_0> { static constexpr int QK = 32, BB = 18; };
template <> struct QT<KT_Q4_1> { static constexpr int QK = 32, BB = 20; };
template <> struct QT<KT_Q5_0> { static constexpr int QK = 32, BB = 22; };
template <> struct QT<KT_Q5_1> { static constexpr int QK = 32, BB = 24; };
template <> struct QT<KT_Q8_0> { static constexpr int QK = 32, BB = 34; };
template <> struct QT<KT_Q4_K> { static constexpr int QK = 256, BB = 144; };
template <> struct QT<KT_Q5_K> { static constexpr int QK = 256, BB = 176; };
template <> struct QT<KT_Q6_K> { static constexpr int QK = 256, BB = 210; };
template <> struct QT<KT_Q2_K> { static constexpr int QK = 256, BB = 84; };
template <> struct QT<KT_Q3_K> { static constexpr int QK = 256, BB = 110; };
template <> struct QT<KT_IQ4_XS> { static constexpr int QK = 256, BB = 136; };

// Every block starts 2-byte aligned (block sizes are even, GGUF data is 32-byte aligned).
__device__ __forceinline__ float ldh(const uint8_t* p) {
    return __half2float(*(const __half*)p);
}
__device__ __forceinline__ uint32_t ld32_2(const uint8_t* p) {   // 4 bytes at a 2-byte boundary
    const uint16_t* q = (const uint16_t*)p;
    return (uint32_t)q[0] | ((uint32_t)q[1] << 16);
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (0..7) packed in 12 bytes.
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q3_K: the signed 6-bit scale of sub-block s (0..15), packed in 12 bytes: low 4 bits in
// byte s (low nibble) or s - 8 (high nibble), top 2 bits at bit 2 (s / 4) of byte 8 + s % 4.
__device__ __forceinline__ int scale_q3k(int s, const uint8_t* q) {
    const int lo = s < 8 ? (q[s] & 0xF) : (q[s - 8] >> 4);
    const int hi = (q[8 + s % 4] >> (2 * (s / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

// IQ4_XS: ggml's code book kvalues_iq4nl {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13,
// 25, 38, 53, 69, 89, 113} as four little-endian words, looked up 4 bytes at a time: each
// byte of q (a code 0..15) -> the int8 code-book value, by two byte permutes (codes 0-7 and
// 8-15, selector bits 0-2) and a per-byte pick on bit 3.
__device__ __forceinline__ int iq4nl_lut(int q) {
    const uint32_t u = (uint32_t)q;
    const uint32_t sel = (u & 7) | ((u >> 4) & 0x70) | ((u >> 8) & 0x700) | ((u >> 12) & 0x7000);
    const uint32_t lo = __byte_perm(0xBFAD9881u, 0xF6EADDCFu, sel), hi = __byte_perm(0x26190D01u, 0x71594535u, sel);
    const uint32_t m = ((u >> 3) & 0x01010101u) * 0xFFu;
    return (int)((lo & ~m) | (hi & m));
}
__device__ __forceinline__ int iq4nl_value(int code) { return (int)(int8_t)(iq4nl_lut(code) & 0xFF); }
// IQ4_XS: the signed 6-bit scale of 32-value sub-block ib (0..7).
__device__ __forceinline__ int scale_iq4xs(int ib, const uint8_t* b) {
    const int sh = b[2] | (b[3] << 8);
    return (((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)) - 32;
}

// ---- one element ------------------------------------------------------------------------
template <int T> __device__ float dq1(const uint8_t* row, int e);

template <> __device__ __forceinline__ float dq1<KT_F32>(const uint8_t* row, int e) {
    return ((const float*)row)[e];
}
template <> __device__ __forceinline__ float dq1<KT_F16>(const uint8_t* row, int e) {
    return __half2float(((const __half*)row)[e]);
}
template <> __device__ __forceinline__ float dq1<KT_BF16>(const uint8_t* row, int e) {
    return __uint_as_float((uint32_t)((const uint16_t*)row)[e] << 16);
}
template <> __device__ __forceinline__ float dq1<KT_Q4_0>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 32) * 18;
    int j = e % 32;
    int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
    return __fmul_rn((float)(q - 8), ldh(b));
}
template <> __device__ __forceinline__ float dq1<KT_Q4_1>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 32) * 20;
    int j = e % 32;
    int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
    return __fadd_rn(__fmul_rn((float)q, ldh(b)), ldh(b + 2));
}
template <> __device__ __forceinline__ float dq1<KT_Q5_0>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 32) * 22;
    int j = e % 32;
    uint32_t qh = ld32_2(b + 2);
    int q = (j < 16 ? (b[6 + j] & 0xF) : (b[6 + j - 16] >> 4)) | (((qh >> j) & 1) << 4);
    return __fmul_rn((float)(q - 16), ldh(b));
}
template <> __device__ __forceinline__ float dq1<KT_Q5_1>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 32) * 24;
    int j = e % 32;
    uint32_t qh = ld32_2(b + 4);
    int q = (j < 16 ? (b[8 + j] & 0xF) : (b[8 + j - 16] >> 4)) | (((qh >> j) & 1) << 4);
    return __fadd_rn(__fmul_rn((float)q, ldh(b)), ldh(b + 2));
}
template <> __device__ __forceinline__ float dq1<KT_Q8_0>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 32) * 34;
    return __fmul_rn((float)(int8_t)b[2 + e % 32], ldh(b));
}
template <> __device__ __forceinline__ float dq1<KT_Q4_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 256) * 144;
    int w = e % 256, c = w / 64, l = w % 32, hi = (w % 64) >= 32;
    int sc, m;
    scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    float d1 = __fmul_rn(ldh(b), (float)sc), o1 = __fmul_rn(ldh(b + 2), (float)m);
    int q = hi ? (b[16 + c * 32 + l] >> 4) : (b[16 + c * 32 + l] & 0xF);
    return __fsub_rn(__fmul_rn(d1, (float)q), o1);
}
template <> __device__ __forceinline__ float dq1<KT_Q5_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 256) * 176;
    int w = e % 256, c = w / 64, l = w % 32, hi = (w % 64) >= 32;
    int sc, m;
    scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    float d1 = __fmul_rn(ldh(b), (float)sc), o1 = __fmul_rn(ldh(b + 2), (float)m);
    uint8_t ql = b[48 + c * 32 + l], qh = b[16 + l];
    int q = (hi ? (ql >> 4) : (ql & 0xF)) + ((qh >> (2 * c + hi)) & 1 ? 16 : 0);
    return __fsub_rn(__fmul_rn(d1, (float)q), o1);
}
template <> __device__ __forceinline__ float dq1<KT_Q6_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 256) * 210;
    int w = e % 256, half = w / 128, r = w % 128, qd = r / 32, l = r % 32;
    const uint8_t* ql = b + half * 64;
    const uint8_t* qh = b + 128 + half * 32;
    const int8_t* sc = (const int8_t*)(b + 192 + half * 8);
    int lo = (qd & 1) ? ql[l + 32] : ql[l];
    int q = ((qd & 2) ? (lo >> 4) : (lo & 0xF)) | (((qh[l] >> (2 * qd)) & 3) << 4);
    return __fmul_rn(__fmul_rn(ldh(b + 208), (float)sc[l / 16 + 2 * qd]), (float)(q - 32));
}

// Q2_K (84 B: scales[16], qs[64], d, dmin): value e = 128 h + 32 j + l is bits 2j of
// qs[32 h + l]; sub-block e / 16 has a 4-bit scale (low nibble) and min (high nibble).
template <> __device__ __forceinline__ float dq1<KT_Q2_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 256) * 84;
    int w = e % 256, h = w / 128, j = (w % 128) / 32, l = w % 32, sc = b[w / 16];
    int q = (b[16 + 32 * h + l] >> (2 * j)) & 3;
    return __fsub_rn(__fmul_rn(__fmul_rn(ldh(b + 80), (float)(sc & 0xF)), (float)q),
                     __fmul_rn(ldh(b + 82), (float)(sc >> 4)));
}
// Q3_K (110 B: hmask[32], qs[64], scales[12], d): Q2_K's low bits plus bit 4h + j of
// hmask[l] as bit 2; value d * scale * (q - 4).
template <> __device__ __forceinline__ float dq1<KT_Q3_K>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 256) * 110;
    int w = e % 256, h = w / 128, j = (w % 128) / 32, l = w % 32;
    int q = ((b[32 + 32 * h + l] >> (2 * j)) & 3) | (((b[l] >> (4 * h + j)) & 1) << 2);
    return __fmul_rn(__fmul_rn(ldh(b + 108), (float)scale_q3k(w / 16, b + 96)), (float)(q - 4));
}
// IQ4_XS (136 B: d, scales_h, scales_l[4], qs[128]): sub-block ib's 16 qs bytes hold value j
// (low nibble) and j + 16 (high); value d * scale * kvalues_iq4nl[code].
template <> __device__ __forceinline__ float dq1<KT_IQ4_XS>(const uint8_t* row, int e) {
    const uint8_t* b = row + (e / 256) * 136;
    int w = e % 256, ib = w / 32, j = w % 32;
    uint8_t qb = b[8 + 16 * ib + (j % 16)];
    int code = j < 16 ? (qb & 0xF) : (qb >> 4);
    return __fmul_rn(__fmul_rn(ldh(b), (float)scale_iq4xs(ib, b)), (float)iq4nl_value(code));
}

// ---- eight elements -----------------------------------------------------------------------
// Generic: eight single-element decodes (the compiler shares the block's scale loads).
template <int T> __device__ __forceinline__ void dq8(const uint8_t* row, int g, float* w) {
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = dq1<T>(row, 8 * g + i);
}
// The formats on the decode hot path get wide loads.
template <> __device__ __forceinline__ void dq8<KT_F32>(const uint8_t* row, int g, float* w) {
    const float4* p = (const float4*)row + 2 * g;   // rows of F32 with K % 8 == 0 are 32-byte aligned
    float4 a = p[0], b = p[1];
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w; w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}
template <> __device__ __forceinline__ void dq8<KT_F16>(const uint8_t* row, int g, float* w) {
    uint4 u = ((const uint4*)row)[g];
    const __half2* h = (const __half2*)&u;
#pragma unroll
    for (int i = 0; i < 4; ++i) { float2 f = __half22float2(h[i]); w[2 * i] = f.x; w[2 * i + 1] = f.y; }
}
template <> __device__ __forceinline__ void dq8<KT_BF16>(const uint8_t* row, int g, float* w) {
    uint4 u = ((const uint4*)row)[g];
    const uint32_t* v = (const uint32_t*)&u;
#pragma unroll
    for (int i = 0; i < 4; ++i) { w[2 * i] = __uint_as_float(v[i] << 16); w[2 * i + 1] = __uint_as_float(v[i] & 0xFFFF0000u); }
}
template <> __device__ __forceinline__ void dq8<KT_Q8_0>(const uint8_t* row, int g, float* w) {
    const uint8_t* b = row + (g / 4) * 34;
    float d = ldh(b);
    const uint16_t* q = (const uint16_t*)(b + 2 + 8 * (g % 4));
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint16_t v = q[i];
        w[2 * i] = __fmul_rn((float)(int8_t)(v & 0xFF), d);
        w[2 * i + 1] = __fmul_rn((float)(int8_t)(v >> 8), d);
    }
}
template <> __device__ __forceinline__ void dq8<KT_Q4_0>(const uint8_t* row, int g, float* w) {
    const uint8_t* b = row + (g / 4) * 18;
    float d = ldh(b);
    int s = g % 4;
    const uint16_t* q = (const uint16_t*)(b + 2 + 8 * (s & 1));
    int shift = (s >> 1) * 4;   // groups 0,1: low nibbles of qs[0..15]; groups 2,3: high nibbles
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint16_t v = q[i];
        w[2 * i] = __fmul_rn((float)((int)((v >> shift) & 0xF) - 8), d);
        w[2 * i + 1] = __fmul_rn((float)((int)((v >> (8 + shift)) & 0xF) - 8), d);
    }
}
template <> __device__ __forceinline__ void dq8<KT_Q4_1>(const uint8_t* row, int g, float* w) {
    const uint8_t* b = row + (g / 4) * 20;
    float d = ldh(b), m = ldh(b + 2);
    int s = g % 4;
    const uint16_t* q = (const uint16_t*)(b + 4 + 8 * (s & 1));
    int shift = (s >> 1) * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint16_t v = q[i];
        w[2 * i] = __fadd_rn(__fmul_rn((float)((v >> shift) & 0xF), d), m);
        w[2 * i + 1] = __fadd_rn(__fmul_rn((float)((v >> (8 + shift)) & 0xF), d), m);
    }
}


// Q5_0: values 8s..8s+7 of a block; fifth bits from qh (bit v for value v).
template <> __device__ __forceinline__ void dq8<KT_Q5_0>(const uint8_t* row, int g, float* w) {
    const uint8_t* b = row + (g / 4) * 22;
    float d = ldh(b);
    int s = g % 4;
    uint32_t qh = ld32_2(b + 2) >> (8 * s);
    const uint16_t* q = (const uint16_t*)(b + 6 + 8 * (s & 1));
    int shift = (s >> 1) * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint16_t v = q[i];
        int q0 = ((v >> shift) & 0xF) | (((qh >> (2 * i)) & 1) << 4);
        int q1 = ((v >> (8 + shift)) & 0xF) | (((qh >> (2 * i + 1)) & 1) << 4);
        w[2 * i] = __fmul_rn((float)(q0 - 16), d);
        w[2 * i + 1] = __fmul_rn((float)(q1 - 16), d);
    }
}
// Q4_K: group g covers values 8g..8g+7; sub-block (g%32)/4 shares one scale and min.
template <> __device__ __forceinline__ void dq8<KT_Q4_K>(const uint8_t* row, int g, float* w) {
    const uint8_t* b = row + (g / 32) * 144;
    int v = g % 32, sb = v / 4, p = v % 4;
    int sc, m;
    scale_min_k4(sb, b + 4, &sc, &m);
    float d1 = __fmul_rn(ldh(b), (float)sc), o1 = __fmul_rn(ldh(b + 2), (float)m);
    const uint8_t* q = b + 16 + 32 * (sb / 2) + 8 * p;
    int sh = 4 * (sb & 1);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __fsub_rn(__fmul_rn(d1, (float)((q[i] >> sh) & 0xF)), o1);
}
// Q6_K: group g covers values 8g..8g+7 (one half of a 16-value sub-block).
template <> __device__ __forceinline__ void dq8<KT_Q6_K>(const uint8_t* row, int g, float* w) {
    const uint8_t* b = row + (g / 32) * 210;
    int e0 = 8 * (g % 32), h = e0 / 128, qd = (e0 / 32) % 4, l0 = e0 % 32;
    const uint8_t* ql = b + 64 * h + 32 * (qd & 1) + l0;
    const uint8_t* qh = b + 128 + 32 * h + l0;
    float ds = __fmul_rn(ldh(b + 208), (float)(int8_t)b[192 + e0 / 16]);
    int sl = 4 * (qd >> 1), shh = 2 * qd;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        int q = ((ql[i] >> sl) & 0xF) | (((qh[i] >> shh) & 3) << 4);
        w[i] = __fmul_rn(ds, (float)(q - 32));
    }
}

// ---- eight elements as fp16 pairs (kernel_gemm_q's tensor-core operand) ---------------------
// h[i] holds elements 2i, 2i + 1 of dq8's group g rounded to nearest fp16 (low half first).
// Generic: dq8's floats converted. Q4_0 / Q8_0 build fp16 values from the codes directly: a
// code byte c under the fp16 bits 0x64 is 1024 + c (c < 1024, where the fp16 step is 1), and
// subtracting 1024 + the code's offset (8; 128 after the sign bit is flipped) leaves the signed
// code exactly; one fp16 multiply by the block's fp16 d then rounds the exact product once --
// the value dq8's float product rounds to -- with no int-to-float conversions. Q4_1:
// d c + m as one fp16 fma (dq8 rounds the product and the sum in float, then to fp16).
__device__ __forceinline__ __half2 h2bits(uint32_t v) { return *(__half2*)&v; }
__device__ __forceinline__ uint32_t bits_h2(__half2 v) { return *(uint32_t*)&v; }
// bytes c0 c1 c2 c3 of v -> (1024 + c0, 1024 + c1) and (1024 + c2, 1024 + c3)
__device__ __forceinline__ __half2 h1024_lo(uint32_t v) { return h2bits(__byte_perm(v, 0x64, 0x4140)); }
__device__ __forceinline__ __half2 h1024_hi(uint32_t v) { return h2bits(__byte_perm(v, 0x64, 0x4342)); }

template <int T> __device__ __forceinline__ void dq8h(const uint8_t* row, int g, uint32_t* h) {
    float w[8];
    dq8<T>(row, g, w);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = bits_h2(__floats2half2_rn(w[2 * i], w[2 * i + 1]));
}
template <> __device__ __forceinline__ void dq8h<KT_Q4_0>(const uint8_t* row, int g, uint32_t* h) {
    const uint8_t* b = row + (g / 4) * 18;
    const __half2 d = __half2half2(*(const __half*)b), off = __float2half2_rn(1024.f + 8.f);
    const int s = g % 4, shift = (s >> 1) * 4;   // groups 0,1: low nibbles of qs[0..15]; 2,3: high
    const uint16_t* q = (const uint16_t*)(b + 2 + 8 * (s & 1));
#pragma unroll
    for (int i = 0; i < 2; ++i) {   // codes of elements 4i .. 4i + 3, one a byte
        const uint32_t c = (__byte_perm(q[2 * i], q[2 * i + 1], 0x5410) >> shift) & 0x0F0F0F0Fu;
        h[2 * i] = bits_h2(__hmul2(__hsub2(h1024_lo(c), off), d));
        h[2 * i + 1] = bits_h2(__hmul2(__hsub2(h1024_hi(c), off), d));
    }
}
template <> __device__ __forceinline__ void dq8h<KT_Q4_1>(const uint8_t* row, int g, uint32_t* h) {
    const uint8_t* b = row + (g / 4) * 20;
    const __half2 d = __half2half2(*(const __half*)b), m = __half2half2(*(const __half*)(b + 2));
    const __half2 off = __float2half2_rn(1024.f);
    const int s = g % 4, shift = (s >> 1) * 4;
    const uint16_t* q = (const uint16_t*)(b + 4 + 8 * (s & 1));
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const uint32_t c = (__byte_perm(q[2 * i], q[2 * i + 1], 0x5410) >> shift) & 0x0F0F0F0Fu;
        h[2 * i] = bits_h2(__hfma2(__hsub2(h1024_lo(c), off), d, m));
        h[2 * i + 1] = bits_h2(__hfma2(__hsub2(h1024_hi(c), off), d, m));
    }
}
template <> __device__ __forceinline__ void dq8h<KT_Q8_0>(const uint8_t* row, int g, uint32_t* h) {
    const uint8_t* b = row + (g / 4) * 34;
    const __half2 d = __half2half2(*(const __half*)b), off = __float2half2_rn(1024.f + 128.f);
    const uint16_t* q = (const uint16_t*)(b + 2 + 8 * (g % 4));
#pragma unroll
    for (int i = 0; i < 2; ++i) {   // int8 codes + 128 (sign bit flipped): 0 .. 255
        const uint32_t c = __byte_perm(q[2 * i], q[2 * i + 1], 0x5410) ^ 0x80808080u;
        h[2 * i] = bits_h2(__hmul2(__hsub2(h1024_lo(c), off), d));
        h[2 * i + 1] = bits_h2(__hmul2(__hsub2(h1024_hi(c), off), d));
    }
}

}  // namespace llmetal_cuda
