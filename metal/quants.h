// quants.h -- GGUF block formats dequantized in MSL, shared by the embed, mat-vec and matmul
// kernels. Exact mirrors of the CPU's dequant_row (cpp/cpu/quants.cpp) and of the CUDA
// device's dq1 (cpp/cuda/quants.cuh): same layout, same operations.
//   dq1(T, row, e)       element e of a row
//   dq8(T, row, g, w)    elements [8g, 8g+8) of a row; every block format's sub-structure is
//                        8-element aligned, so a group never straddles a scale
// T is a compile-time constant at every call (a template parameter of the kernel), so the
// switch folds away.
#ifndef LLMETAL_METAL_QUANTS_H
#define LLMETAL_METAL_QUANTS_H
#include "../cpp/kargs.h"

// Every block starts 2-byte aligned (block sizes are even, GGUF data is 32-byte aligned).
inline float ldh(device const uchar* p) { return (float)(*(device const half*)p); }
inline uint ld32_2(device const uchar* p) {   // 4 bytes at a 2-byte boundary
    device const ushort* q = (device const ushort*)p;
    return (uint)q[0] | ((uint)q[1] << 16);
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (0..7) packed in 12 bytes (in device memory,
// or a copy in registers: P is the pointer type).
template <class P>
inline void scale_min_k4(int j, P q, thread int& sc, thread int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q3_K: the signed 6-bit scale of sub-block s (0..15), packed in 12 bytes: low 4 bits in
// byte s (low nibble) or s - 8 (high nibble), top 2 bits at bit 2 (s / 4) of byte 8 + s % 4.
inline int scale_q3k(int s, device const uchar* q) {
    int lo = s < 8 ? (q[s] & 0xF) : (q[s - 8] >> 4);
    int hi = (q[8 + s % 4] >> (2 * (s / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

// IQ4_XS: the non-linear 4-bit code book (ggml's kvalues_iq4nl; short, not char, whose sign
// differs between C++ targets where the emulator compiles this file).
constant short kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

inline float dq1(int T, device const uchar* row, int e) {
    switch (T) {
        case KT_F32: return ((device const float*)row)[e];
        case KT_F16: return (float)((device const half*)row)[e];
        case KT_BF16: return as_type<float>((uint)((device const ushort*)row)[e] << 16);
        case KT_Q4_0: {
            device const uchar* b = row + (e / 32) * 18;
            int j = e % 32;
            int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
            return (float)(q - 8) * ldh(b);
        }
        case KT_Q4_1: {
            device const uchar* b = row + (e / 32) * 20;
            int j = e % 32;
            int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
            return (float)q * ldh(b) + ldh(b + 2);
        }
        case KT_Q5_0: {
            device const uchar* b = row + (e / 32) * 22;
            int j = e % 32;
            uint qh = ld32_2(b + 2);
            int q = (j < 16 ? (b[6 + j] & 0xF) : (b[6 + j - 16] >> 4)) | (int)(((qh >> j) & 1) << 4);
            return (float)(q - 16) * ldh(b);
        }
        case KT_Q5_1: {
            device const uchar* b = row + (e / 32) * 24;
            int j = e % 32;
            uint qh = ld32_2(b + 4);
            int q = (j < 16 ? (b[8 + j] & 0xF) : (b[8 + j - 16] >> 4)) | (int)(((qh >> j) & 1) << 4);
            return (float)q * ldh(b) + ldh(b + 2);
        }
        case KT_Q8_0: {
            device const uchar* b = row + (e / 32) * 34;
            return (float)(as_type<char>(b[2 + e % 32])) * ldh(b);
        }
        case KT_Q4_K: {
            device const uchar* b = row + (e / 256) * 144;
            int w = e % 256, c = w / 64, l = w % 32, hi = (w % 64) >= 32 ? 1 : 0;
            int sc, m;
            scale_min_k4(2 * c + hi, b + 4, sc, m);
            float d1 = ldh(b) * (float)sc, o1 = ldh(b + 2) * (float)m;
            int q = hi ? (b[16 + c * 32 + l] >> 4) : (b[16 + c * 32 + l] & 0xF);
            return d1 * (float)q - o1;
        }
        case KT_Q5_K: {
            device const uchar* b = row + (e / 256) * 176;
            int w = e % 256, c = w / 64, l = w % 32, hi = (w % 64) >= 32 ? 1 : 0;
            int sc, m;
            scale_min_k4(2 * c + hi, b + 4, sc, m);
            float d1 = ldh(b) * (float)sc, o1 = ldh(b + 2) * (float)m;
            uchar ql = b[48 + c * 32 + l], qh = b[16 + l];
            int q = (hi ? (ql >> 4) : (ql & 0xF)) + (((qh >> (2 * c + hi)) & 1) ? 16 : 0);
            return d1 * (float)q - o1;
        }
        case KT_Q6_K: {
            device const uchar* b = row + (e / 256) * 210;
            int w = e % 256, hf = w / 128, r = w % 128, qd = r / 32, l = r % 32;
            device const uchar* ql = b + hf * 64;
            device const uchar* qh = b + 128 + hf * 32;
            device const uchar* sc = b + 192 + hf * 8;
            int lo = (qd & 1) ? ql[l + 32] : ql[l];
            int q = ((qd & 2) ? (lo >> 4) : (lo & 0xF)) | (((qh[l] >> (2 * qd)) & 3) << 4);
            return (ldh(b + 208) * (float)(as_type<char>(sc[l / 16 + 2 * qd]))) * (float)(q - 32);
        }
        case KT_Q2_K: {   // {scales[16]; qs[64]; f16 d; f16 dmin}: 16 sub-blocks of 16
            device const uchar* b = row + (e / 256) * 84;
            int w = e % 256, h = w / 128, j = (w % 128) / 32, l = w % 32, sc = b[w / 16];
            int q = (b[16 + 32 * h + l] >> (2 * j)) & 3;
            return (ldh(b + 80) * (float)(sc & 0xF)) * (float)q - ldh(b + 82) * (float)(sc >> 4);
        }
        case KT_Q3_K: {   // {hmask[32]; qs[64]; scales[12]; f16 d}: bit 4h + j of hmask[l] is bit 2
            device const uchar* b = row + (e / 256) * 110;
            int w = e % 256, h = w / 128, j = (w % 128) / 32, l = w % 32;
            int q = ((b[32 + 32 * h + l] >> (2 * j)) & 3) | (((b[l] >> (4 * h + j)) & 1) << 2);
            return (ldh(b + 108) * (float)scale_q3k(w / 16, b + 96)) * (float)(q - 4);
        }
        case KT_IQ4_XS: {   // {f16 d; u16 scales_h; scales_l[4]; qs[128]}: 8 sub-blocks of 32
            device const uchar* b = row + (e / 256) * 136;
            int w = e % 256, ib = w / 32, j = w % 32;
            int sh = (int)(*(device const ushort*)(b + 2));
            int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
            uchar qb = b[8 + 16 * ib + (j % 16)];
            int q = j < 16 ? (qb & 0xF) : (qb >> 4);
            return (ldh(b) * (float)(ls - 32)) * (float)kvalues_iq4nl[q];
        }
    }
    return 0.0f;
}

// Eight consecutive elements [8g, 8g+8): the block's scale(s) read once, then 8 quants (the
// tiled matmul's weight loads, and the mat-vec's units of Q2_K, Q3_K and IQ4_XS).
inline void dq8(int T, device const uchar* row, int g, thread float* w) {
    switch (T) {
        case KT_Q8_0: {
            device const uchar* b = row + (g / 4) * 34;
            float d = ldh(b);
            device const uchar* q = b + 2 + 8 * (g % 4);
            for (int i = 0; i < 8; ++i) w[i] = (float)(as_type<char>(q[i])) * d;
            return;
        }
        case KT_Q4_0: {
            device const uchar* b = row + (g / 4) * 18;
            float d = ldh(b);
            int s = g % 4;
            device const uchar* q = b + 2 + 8 * (s & 1);
            int shift = (s >> 1) * 4;   // groups 0,1: low nibbles of qs[0..15]; 2,3: high nibbles
            for (int i = 0; i < 8; ++i) w[i] = (float)((int)((q[i] >> shift) & 0xF) - 8) * d;
            return;
        }
        case KT_Q4_1: {
            device const uchar* b = row + (g / 4) * 20;
            float d = ldh(b), m = ldh(b + 2);
            int s = g % 4;
            device const uchar* q = b + 4 + 8 * (s & 1);
            int shift = (s >> 1) * 4;
            for (int i = 0; i < 8; ++i) w[i] = (float)((q[i] >> shift) & 0xF) * d + m;
            return;
        }
        // the 256-element formats: a group of 8 lies inside one scale's sub-block, so the scale
        // is decoded once per group (the formulas of dq1)
        case KT_Q4_K:
        case KT_Q5_K: {
            const int bytes = T == KT_Q4_K ? 144 : 176;
            device const uchar* b = row + (g / 32) * bytes;
            const int w0 = (8 * g) % 256, c = w0 / 64, l0 = w0 % 32, hi = (w0 % 64) >= 32 ? 1 : 0;
            int sc, m;
            scale_min_k4(2 * c + hi, b + 4, sc, m);
            const float d1 = ldh(b) * (float)sc, o1 = ldh(b + 2) * (float)m;
            device const uchar* q = b + (T == KT_Q4_K ? 16 : 48) + c * 32 + l0;
            for (int i = 0; i < 8; ++i) {
                int v = hi ? (q[i] >> 4) : (q[i] & 0xF);
                if (T == KT_Q5_K) v += ((b[16 + l0 + i] >> (2 * c + hi)) & 1) ? 16 : 0;
                w[i] = d1 * (float)v - o1;
            }
            return;
        }
        case KT_Q6_K: {
            device const uchar* b = row + (g / 32) * 210;
            const int w0 = (8 * g) % 256, hf = w0 / 128, r = w0 % 128, qd = r / 32, l0 = r % 32;
            device const uchar* ql = b + hf * 64 + ((qd & 1) ? 32 : 0) + l0;
            device const uchar* qh = b + 128 + hf * 32 + l0;
            const float ds = ldh(b + 208) * (float)(as_type<char>(b[192 + hf * 8 + l0 / 16 + 2 * qd]));
            for (int i = 0; i < 8; ++i) {
                const int lo = (qd & 2) ? (ql[i] >> 4) : (ql[i] & 0xF);
                w[i] = ds * (float)((lo | (((qh[i] >> (2 * qd)) & 3) << 4)) - 32);
            }
            return;
        }
        case KT_Q2_K: {
            device const uchar* b = row + (g / 32) * 84;
            const int w0 = (8 * g) % 256, h = w0 / 128, j = (w0 % 128) / 32, l0 = w0 % 32, sc = b[w0 / 16];
            const float d1 = ldh(b + 80) * (float)(sc & 0xF), o1 = ldh(b + 82) * (float)(sc >> 4);
            device const uchar* q = b + 16 + 32 * h + l0;
            for (int i = 0; i < 8; ++i) w[i] = d1 * (float)((q[i] >> (2 * j)) & 3) - o1;
            return;
        }
        case KT_Q3_K: {
            device const uchar* b = row + (g / 32) * 110;
            const int w0 = (8 * g) % 256, h = w0 / 128, j = (w0 % 128) / 32, l0 = w0 % 32;
            const float d1 = ldh(b + 108) * (float)scale_q3k(w0 / 16, b + 96);
            device const uchar* q = b + 32 + 32 * h + l0;
            for (int i = 0; i < 8; ++i) {
                const int v = ((q[i] >> (2 * j)) & 3) | (((b[l0 + i] >> (4 * h + j)) & 1) << 2);
                w[i] = d1 * (float)(v - 4);
            }
            return;
        }
        case KT_IQ4_XS: {
            device const uchar* b = row + (g / 32) * 136;
            const int w0 = (8 * g) % 256, ib = w0 / 32, j0 = w0 % 32;
            const int sh = (int)(*(device const ushort*)(b + 2));
            const int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
            const float d1 = ldh(b) * (float)(ls - 32);
            device const uchar* q = b + 8 + 16 * ib + (j0 % 16);
            for (int i = 0; i < 8; ++i) w[i] = d1 * (float)kvalues_iq4nl[j0 < 16 ? (q[i] & 0xF) : (q[i] >> 4)];
            return;
        }
        default:
            for (int i = 0; i < 8; ++i) w[i] = dq1(T, row, 8 * g + i);
            return;
    }
}

// ---- mat-vec lane units ------------------------------------------------------------------------
// The mat-vec (kernel_matmul_<t>, matmul.metal) hands each lane of a SIMD group one *unit* of a
// weight row at a time: MV_U(T) elements whose bytes no other lane reads, loaded with the widest
// loads the block's alignment allows and dequantized into registers once for every token of the
// batch. Unit ug of a row covers the elements mv_elem(T, ug, i), i < MV_U(T); a K chunk of the
// kernel is a multiple of MV_SPAN(T) elements, so the units sharing a block are in it together.
//   Q4_0 Q4_1 Q5_0 Q5_1 Q8_0  one 32-element block: scale(s) and quants, read once.
//   Q4_K Q5_K   16 bytes of qs (a uint4): 16 elements of sub-block 2c (low nibbles) and 16 of
//               2c+1 (high), c = 0..3, two units per c, so 8 lanes share a super-block. Its
//               16-byte header (d, dmin, 12 bytes of scales) is loaded by the first of the 8 and
//               handed to the others by one simd_shuffle; Q5_K's fifth bits (qh[32]: bit 2c, 2c+1
//               of qh[l] for the unit's column l) likewise, the half a unit needs loaded by lane
//               0 or 1 of the 8.
//   Q6_K        8 columns l of one 128-element half: ql[l], ql[l + 32] and qh[l] give 4 elements
//               each (24 bytes, as ushorts: the 210-byte blocks are only 2-byte aligned); the
//               half's 8 scale bytes and d come by simd_shuffle from lanes 0 and 1 of the 8.
//   F32 F16 BF16  8 elements, two 16-byte loads (1 element through dq1 when K % 8 != 0).
//   Q2_K Q3_K IQ4_XS  8 elements through dq8 (each unit reads its block's scales again).
// mv_dq must be called by every lane of the SIMD group (the shuffles); `ok` says whether the
// lane's unit exists, and only then does it read or write anything.
#define MV_GENERIC(T) ((T) == KT_Q2_K || (T) == KT_Q3_K || (T) == KT_IQ4_XS)
#define MV_FLOAT(T) ((T) == KT_F32 || (T) == KT_F16 || (T) == KT_BF16)
#define MV_U(T) (MV_GENERIC(T) || MV_FLOAT(T) ? 8 : 32)
#define MV_SPAN(T) (MV_FLOAT(T) ? 8 : ((T) == KT_Q4_0 || (T) == KT_Q4_1 || (T) == KT_Q5_0 || (T) == KT_Q5_1 || (T) == KT_Q8_0) ? 32 : 256)

// the element of a row that element i of unit ug is
inline int mv_elem(int T, int U, int ug, int i) {
    if (U == 32 && (T == KT_Q4_K || T == KT_Q5_K)) {
        const int c = (ug % 8) / 2, h = ug % 2;
        return (ug / 8) * 256 + 64 * c + 16 * h + (i < 16 ? i : 16 + i);
    }
    if (U == 32 && T == KT_Q6_K) {
        const int hf = (ug % 8) / 4, j = ug % 4;
        return (ug / 8) * 256 + 128 * hf + 32 * (i / 8) + 8 * j + i % 8;
    }
    return ug * U + i;
}

inline uint byte_of(uint v, int k) { return (v >> (8 * k)) & 0xFF; }

// w[0 .. U) = unit ug of `row` (U = MV_U(T), or 1 for float rows with K % 8 != 0)
template <int T, int U>
inline void mv_dq(device const uchar* row, int ug, bool ok, ushort lane, thread float* w) {
    if (U == 1) {
        if (ok) w[0] = dq1(T, row, ug);
        return;
    }
    switch (T) {
        case KT_F32: {
            if (!ok) return;
            device const float4* p = (device const float4*)row + 2 * ug;
            const float4 a = p[0], b = p[1];
            for (int i = 0; i < 4; ++i) { w[i] = a[i]; w[4 + i] = b[i]; }
            return;
        }
        case KT_F16: {
            if (!ok) return;
            device const half4* p = (device const half4*)row + 2 * ug;
            const half4 a = p[0], b = p[1];
            for (int i = 0; i < 4; ++i) { w[i] = (float)a[i]; w[4 + i] = (float)b[i]; }
            return;
        }
        case KT_BF16: {
            if (!ok) return;
            device const ushort4* p = (device const ushort4*)row + 2 * ug;
            const ushort4 a = p[0], b = p[1];
            for (int i = 0; i < 4; ++i) {
                w[i] = as_type<float>((uint)a[i] << 16);
                w[4 + i] = as_type<float>((uint)b[i] << 16);
            }
            return;
        }
        case KT_Q4_0: {   // {f16 d; qs[16]}: element j < 16 is the low nibble of qs[j], j >= 16 the high one of qs[j - 16]
            if (!ok) return;
            device const uchar* b = row + ug * 18;
            const float d = ldh(b);
            device const ushort* q = (device const ushort*)(b + 2);
            for (int p = 0; p < 8; ++p) {
                const uint v = q[p];
                w[2 * p] = (float)((int)(v & 0xF) - 8) * d;
                w[2 * p + 1] = (float)((int)((v >> 8) & 0xF) - 8) * d;
                w[16 + 2 * p] = (float)((int)((v >> 4) & 0xF) - 8) * d;
                w[17 + 2 * p] = (float)((int)(v >> 12) - 8) * d;
            }
            return;
        }
        case KT_Q4_1: {   // {f16 d; f16 m; qs[16]}: 20-byte blocks, 4-byte aligned
            if (!ok) return;
            device const uchar* b = row + ug * 20;
            const float d = ldh(b), m = ldh(b + 2);
            device const uint* q = (device const uint*)(b + 4);
            for (int p = 0; p < 4; ++p) {
                const uint v = q[p];
                for (int k = 0; k < 4; ++k) {
                    w[4 * p + k] = (float)(byte_of(v, k) & 0xF) * d + m;
                    w[16 + 4 * p + k] = (float)(byte_of(v, k) >> 4) * d + m;
                }
            }
            return;
        }
        case KT_Q5_0: {   // {f16 d; qh[4]; qs[16]}: bit j of qh is element j's fifth bit
            if (!ok) return;
            device const uchar* b = row + ug * 22;
            const float d = ldh(b);
            const uint qh = ld32_2(b + 2);
            device const ushort* q = (device const ushort*)(b + 6);
            for (int p = 0; p < 8; ++p) {
                const uint v = q[p];
                for (int k = 0; k < 2; ++k) {
                    const int j = 2 * p + k;
                    const uint by = byte_of(v, k);
                    w[j] = (float)((int)((by & 0xF) | (((qh >> j) & 1) << 4)) - 16) * d;
                    w[16 + j] = (float)((int)((by >> 4) | (((qh >> (16 + j)) & 1) << 4)) - 16) * d;
                }
            }
            return;
        }
        case KT_Q5_1: {   // {f16 d; f16 m; qh[4]; qs[16]}: 24-byte blocks, 8-byte aligned
            if (!ok) return;
            device const uchar* b = row + ug * 24;
            const float d = ldh(b), m = ldh(b + 2);
            device const uint* q = (device const uint*)(b + 4);
            const uint qh = q[0];
            for (int p = 0; p < 4; ++p) {
                const uint v = q[1 + p];
                for (int k = 0; k < 4; ++k) {
                    const int j = 4 * p + k;
                    w[j] = (float)((byte_of(v, k) & 0xF) | (((qh >> j) & 1) << 4)) * d + m;
                    w[16 + j] = (float)((byte_of(v, k) >> 4) | (((qh >> (16 + j)) & 1) << 4)) * d + m;
                }
            }
            return;
        }
        case KT_Q8_0: {   // {f16 d; int8 qs[32]}: 34-byte blocks, 2-byte aligned
            if (!ok) return;
            device const uchar* b = row + ug * 34;
            const float d = ldh(b);
            device const ushort* q = (device const ushort*)(b + 2);
            for (int p = 0; p < 16; ++p) {
                const uint v = q[p];
                w[2 * p] = (float)as_type<char>((uchar)(v & 0xFF)) * d;
                w[2 * p + 1] = (float)as_type<char>((uchar)(v >> 8)) * d;
            }
            return;
        }
        case KT_Q4_K:
        case KT_Q5_K: {   // {f16 d; f16 dmin; scales[12]; (Q5_K: qh[32];) qs[128]}
            const int bytes = T == KT_Q4_K ? 144 : 176, qs_at = T == KT_Q4_K ? 16 : 48;
            device const uchar* b = row + (ug / 8) * bytes;
            const int li = ug % 8, c = li / 2, h = li % 2;
            const ushort first = lane & ~7;   // the lane holding unit 0 of this super-block
            uint4 hd = uint4(0), qh = uint4(0);
            if (ok && li == 0) hd = *(device const uint4*)b;
            if (T == KT_Q5_K && ok && li < 2) qh = *(device const uint4*)(b + 16 + 16 * li);
            hd = simd_shuffle(hd, first);
            if (T == KT_Q5_K) qh = simd_shuffle(qh, first + h);
            if (!ok) return;
            uchar sb[12];
            for (int k = 0; k < 4; ++k) {
                sb[k] = (uchar)byte_of(hd.y, k);
                sb[4 + k] = (uchar)byte_of(hd.z, k);
                sb[8 + k] = (uchar)byte_of(hd.w, k);
            }
            int sc0, mn0, sc1, mn1;
            scale_min_k4(2 * c, (thread const uchar*)sb, sc0, mn0);
            scale_min_k4(2 * c + 1, (thread const uchar*)sb, sc1, mn1);
            const half2 dm = as_type<half2>(hd.x);
            const float d0 = (float)dm.x * (float)sc0, o0 = (float)dm.y * (float)mn0;
            const float d1 = (float)dm.x * (float)sc1, o1 = (float)dm.y * (float)mn1;
            const uint4 q = *(device const uint4*)(b + qs_at + 32 * c + 16 * h);
            for (int k = 0; k < 16; ++k) {
                const uint by = byte_of(q[k / 4], k % 4);
                int lo = (int)(by & 0xF), hi = (int)(by >> 4);
                if (T == KT_Q5_K) {
                    const uint hb = byte_of(qh[k / 4], k % 4);
                    lo += ((hb >> (2 * c)) & 1) ? 16 : 0;
                    hi += ((hb >> (2 * c + 1)) & 1) ? 16 : 0;
                }
                w[k] = d0 * (float)lo - o0;
                w[16 + k] = d1 * (float)hi - o1;
            }
            return;
        }
        case KT_Q6_K: {   // {ql[128]; qh[64]; int8 scales[16]; f16 d}: 210-byte blocks, 2-byte aligned
            device const uchar* b = row + (ug / 8) * 210;
            const int li = ug % 8, hf = li / 4, j = li % 4;
            const ushort first = lane & ~7;
            ushort4 sv = ushort4(0);
            half dv = (half)0.0f;
            if (ok && li < 2) {
                device const ushort* s = (device const ushort*)(b + 192 + 8 * li);
                sv.x = s[0];
                sv.y = s[1];
                sv.z = s[2];
                sv.w = s[3];
            }
            if (ok && li == 0) dv = *(device const half*)(b + 208);
            sv = simd_shuffle(sv, first + hf);
            dv = simd_shuffle(dv, first);
            if (!ok) return;
            float ds[4];   // d * the scale of the 16 columns holding l = 8j .. 8j + 7, per quarter qd
            for (int qd = 0; qd < 4; ++qd)
                ds[qd] = (float)dv * (float)as_type<char>((uchar)byte_of(sv[qd], j / 2));
            device const ushort* ql0 = (device const ushort*)(b + 64 * hf + 8 * j);
            device const ushort* ql1 = (device const ushort*)(b + 64 * hf + 32 + 8 * j);
            device const ushort* qh = (device const ushort*)(b + 128 + 32 * hf + 8 * j);
            for (int p = 0; p < 4; ++p) {
                const uint a0 = ql0[p], a1 = ql1[p], hh = qh[p];
                for (int e = 0; e < 2; ++e) {
                    const int k = 2 * p + e;
                    const uint l0 = byte_of(a0, e), l1 = byte_of(a1, e), hb = byte_of(hh, e);
                    w[k] = ds[0] * (float)((int)((l0 & 0xF) | ((hb & 3) << 4)) - 32);
                    w[8 + k] = ds[1] * (float)((int)((l1 & 0xF) | (((hb >> 2) & 3) << 4)) - 32);
                    w[16 + k] = ds[2] * (float)((int)((l0 >> 4) | (((hb >> 4) & 3) << 4)) - 32);
                    w[24 + k] = ds[3] * (float)((int)((l1 >> 4) | (((hb >> 6) & 3) << 4)) - 32);
                }
            }
            return;
        }
        default:   // Q2_K Q3_K IQ4_XS: 8 elements through dq8
            if (ok) dq8(T, row, ug, w);
            return;
    }
}
#endif
