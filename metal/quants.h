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

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (0..7) packed in 12 bytes.
inline void scale_min_k4(int j, device const uchar* q, thread int& sc, thread int& m) {
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

// Eight consecutive elements [8g, 8g+8). The formats on the decode hot path read their block
// header once; the rest go through dq1.
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
        default:
            for (int i = 0; i < 8; ++i) w[i] = dq1(T, row, 8 * g + i);
            return;
    }
}
#endif
