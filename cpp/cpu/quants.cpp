// quants.cpp -- scalar dequantization of every supported GGUF block format.
// Block layouts follow ggml's definitions (see gguf.quants for the Python equivalent that
// the tests compare against).
#include "quants.h"

#include <cstring>

#include "../engine.h"
#include "f16.h"

namespace llmetal::cpu {

static inline float h2f(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
}

// Q4_K / Q5_K: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed in 12 bytes.
static inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void dequant_row(int t, const void* src_, float* y, int64_t n) {
    const uint8_t* b = (const uint8_t*)src_;
    switch (t) {
        case KT_F32:
            std::memcpy(y, b, n * 4);
            return;
        case KT_F16:
            for (int64_t i = 0; i < n; ++i) y[i] = h2f(b + 2 * i);
            return;
        case KT_BF16:
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, b + 2 * i, 2);
                y[i] = bf16_to_f32(h);
            }
            return;
        case KT_Q4_0:  // {f16 d; u8 qs[16]}: low nibbles are x[0..15], high x[16..31]
            for (int64_t i = 0; i < n; i += 32, b += 18, y += 32) {
                float d = h2f(b);
                for (int j = 0; j < 16; ++j) {
                    y[j] = ((b[2 + j] & 0xF) - 8) * d;
                    y[j + 16] = ((b[2 + j] >> 4) - 8) * d;
                }
            }
            return;
        case KT_Q4_1:  // {f16 d; f16 m; u8 qs[16]}
            for (int64_t i = 0; i < n; i += 32, b += 20, y += 32) {
                float d = h2f(b), m = h2f(b + 2);
                for (int j = 0; j < 16; ++j) {
                    y[j] = (b[4 + j] & 0xF) * d + m;
                    y[j + 16] = (b[4 + j] >> 4) * d + m;
                }
            }
            return;
        case KT_Q5_0:  // {f16 d; u32 qh; u8 qs[16]}: bit j of qh is the 5th bit of x[j]
            for (int64_t i = 0; i < n; i += 32, b += 22, y += 32) {
                float d = h2f(b);
                uint32_t qh;
                std::memcpy(&qh, b + 2, 4);
                for (int j = 0; j < 16; ++j) {
                    int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = (((b[6 + j] & 0xF) | h0) - 16) * d;
                    y[j + 16] = (((b[6 + j] >> 4) | h1) - 16) * d;
                }
            }
            return;
        case KT_Q5_1:  // {f16 d; f16 m; u32 qh; u8 qs[16]}
            for (int64_t i = 0; i < n; i += 32, b += 24, y += 32) {
                float d = h2f(b), m = h2f(b + 2);
                uint32_t qh;
                std::memcpy(&qh, b + 4, 4);
                for (int j = 0; j < 16; ++j) {
                    int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = ((b[8 + j] & 0xF) | h0) * d + m;
                    y[j + 16] = ((b[8 + j] >> 4) | h1) * d + m;
                }
            }
            return;
        case KT_Q8_0:  // {f16 d; i8 qs[32]}
            for (int64_t i = 0; i < n; i += 32, b += 34, y += 32) {
                float d = h2f(b);
                for (int j = 0; j < 32; ++j) y[j] = (int8_t)b[2 + j] * d;
            }
            return;
        case KT_Q4_K:  // {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}
            for (int64_t i = 0; i < n; i += 256, b += 144) {
                float d = h2f(b), dmin = h2f(b + 2);
                const uint8_t* sc = b + 4;
                const uint8_t* q = b + 16;
                for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
                    int s1, m1, s2, m2;
                    scale_min_k4(is, sc, &s1, &m1);
                    scale_min_k4(is + 1, sc, &s2, &m2);
                    float d1 = d * s1, o1 = dmin * m1, d2 = d * s2, o2 = dmin * m2;
                    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - o1;
                    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - o2;
                }
            }
            return;
        case KT_Q5_K:  // {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
            for (int64_t i = 0; i < n; i += 256, b += 176) {
                float d = h2f(b), dmin = h2f(b + 2);
                const uint8_t* sc = b + 4;
                const uint8_t* qh = b + 16;
                const uint8_t* ql = b + 48;
                uint8_t u1 = 1, u2 = 2;
                for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
                    int s1, m1, s2, m2;
                    scale_min_k4(is, sc, &s1, &m1);
                    scale_min_k4(is + 1, sc, &s2, &m2);
                    float d1 = d * s1, o1 = dmin * m1, d2 = d * s2, o2 = dmin * m2;
                    for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - o1;
                    for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - o2;
                }
            }
            return;
        case KT_Q6_K:  // {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}
            for (int64_t i = 0; i < n; i += 256, b += 210) {
                const uint8_t* ql = b;
                const uint8_t* qh = b + 128;
                const int8_t* sc = (const int8_t*)(b + 192);
                float d = h2f(b + 208);
                for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
                    for (int l = 0; l < 32; ++l) {
                        int is = l / 16;
                        int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                        int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                        int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                        int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                        y[l] = d * sc[is] * q1;
                        y[l + 32] = d * sc[is + 2] * q2;
                        y[l + 64] = d * sc[is + 4] * q3;
                        y[l + 96] = d * sc[is + 6] * q4;
                    }
                }
            }
            return;
    }
    throw Error("dequant_row: unsupported type id " + std::to_string(t));
}

void matmul_rows_scalar(int t, const uint8_t* W, uint64_t rb, int K, int n0, int n1,
                        const float* x, int M, int64_t ldx, float* y, int64_t ldy, float* tmp) {
    for (int n = n0; n < n1; ++n) {
        dequant_row(t, W + (uint64_t)n * rb, tmp, K);
        for (int m = 0; m < M; ++m) {
            const float* xr = x + m * ldx;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int k = 0;
            for (; k + 8 <= K; k += 8)
                for (int u = 0; u < 8; ++u) acc[u] += tmp[k + u] * xr[k + u];
            float s = 0;
            for (; k < K; ++k) s += tmp[k] * xr[k];
            y[m * ldy + n] = s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        }
    }
}

}  // namespace llmetal::cpu
