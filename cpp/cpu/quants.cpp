// quants.cpp -- scalar code for every supported GGUF block format: dequantization of rows,
// quantization of activation rows to BlockQ8 / BlockQ8K, and the portable row-dot kernels
// (the "scalar" SIMD level, and the reference the SIMD kernels are tested against: they
// compute the same integer dot products, so they agree to float rounding).
// Block layouts follow ggml's definitions (see gguf.quants for the Python equivalent that
// the tests compare against).
#include "quants.h"

#include <algorithm>
#include <cmath>
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
        case KT_Q2_K:  // {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}
            for (int64_t i = 0; i < n; i += 256, b += 84) {
                // 16 sub-blocks of 16: value e is bits 2j of qs[32 h + l] (e = 128 h + 32 j + l),
                // scaled by the low nibble of scales[e / 16], minus dmin times its high nibble
                float d = h2f(b + 80), dmin = h2f(b + 82);
                for (int e = 0; e < 256; ++e) {
                    int h = e / 128, j = (e % 128) / 32, l = e % 32, sc = b[e / 16];
                    int q = (b[16 + 32 * h + l] >> (2 * j)) & 3;
                    *y++ = d * (sc & 0xF) * q - dmin * (sc >> 4);
                }
            }
            return;
        case KT_Q3_K:  // {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}
            for (int64_t i = 0; i < n; i += 256, b += 110) {
                // value e = 128 h + 32 j + l: low 2 bits as in Q2_K, third bit at bit 4 h + j of
                // hmask[l]; (q - 4) times d times the signed 6-bit scale of sub-block e / 16
                float d = h2f(b + 108);
                int8_t sc[16];
                unpack_scales_q3k(b + 96, sc);
                for (int e = 0; e < 256; ++e) {
                    int h = e / 128, j = (e % 128) / 32, l = e % 32;
                    int q = ((b[32 + 32 * h + l] >> (2 * j)) & 3) | (((b[l] >> (4 * h + j)) & 1) << 2);
                    *y++ = d * sc[e / 16] * (q - 4);
                }
            }
            return;
        case KT_IQ4_XS:  // {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}
            for (int64_t i = 0; i < n; i += 256, b += 136) {
                float d = h2f(b);
                int8_t ls[8];
                unpack_scales_iq4xs(b, ls);
                for (int ib = 0; ib < 8; ++ib, y += 32) {
                    const uint8_t* qs = b + 8 + 16 * ib;
                    float dl = d * ls[ib];
                    for (int j = 0; j < 16; ++j) {
                        y[j] = dl * kvalues_iq4nl[qs[j] & 0xF];
                        y[j + 16] = dl * kvalues_iq4nl[qs[j] >> 4];
                    }
                }
            }
            return;
    }
    throw Error("dequant_row: unsupported type id " + std::to_string(t));
}

// ---- activation quantization ------------------------------------------------------------

int act_format(int t) {
    switch (t) {
        case KT_F32: case KT_F16: case KT_BF16: return 0;
        case KT_Q4_0: case KT_Q4_1: case KT_Q5_0: case KT_Q5_1: case KT_Q8_0: return 1;
        case KT_Q2_K: case KT_Q3_K: case KT_Q4_K: case KT_Q5_K: case KT_Q6_K: case KT_IQ4_XS: return 2;
    }
    throw Error("matmul: unsupported weight type id " + std::to_string(t));
}

size_t act_row_bytes(int format, int K) {
    if (format == 1) return (size_t)(K / 32) * sizeof(BlockQ8);
    if (format == 2) return (size_t)(K / 256) * sizeof(BlockQ8K);
    return (size_t)K * sizeof(float);
}

// Symmetric 8-bit: d = max|x| / 127, q = round(x / d) in [-127, 127]. (-128 is never
// produced, which keeps the x86 sign trick for Q8_0 weights free of overflow.)
// Written so the compiler vectorizes it even for baseline x86-64 (SSE2): a plain max, and
// rounding by the 1.5 * 2^23 trick (adding and subtracting it rounds |v| < 2^22 to the
// nearest integer, ties to even, exactly as nearbyint does in the default rounding mode).
static inline float q8_scale(const float* x, int n, float* inv) {
    // the largest |x| over 8 interleaved partial maxima (n is a multiple of 32), which the
    // compiler turns into vector max instructions; the same value as one running maximum
    // (a NaN is never taken either way: the comparison is false)
    float m[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; i += 8)
        for (int l = 0; l < 8; ++l) {
            const float a = std::fabs(x[i + l]);
            m[l] = m[l] < a ? a : m[l];
        }
    float amax = 0;
    for (int l = 0; l < 8; ++l) amax = amax < m[l] ? m[l] : amax;
    float d = amax / 127.0f;
    *inv = d > 0 ? 1.0f / d : 0.0f;
    return d;
}

static inline int round_q8(float v) {
    const float magic = 12582912.0f;  // 1.5 * 2^23
    return (int)((v + magic) - magic);
}

void quantize_row_q8(const float* x, BlockQ8* y, int K) {
    for (int b = 0; b < K / 32; ++b, x += 32, ++y) {
        float inv, d = q8_scale(x, 32, &inv);
        int sum = 0;
        for (int i = 0; i < 32; ++i) {
            int q = round_q8(x[i] * inv);
            y->qs[i] = (int8_t)q;
            sum += q;
        }
        y->d = d;
        y->s = d * (float)sum;
        y->sum = sum;
    }
}

void repack_q8_0_x16(const uint8_t* src, size_t row_bytes, int K, int g0, int g1, uint8_t* dst) {
    const int nb = K / 32;
    for (int g = g0; g < g1; ++g) {
        for (int b = 0; b < nb; ++b) {
            uint8_t* o = dst + ((size_t)g * nb + b) * kQ8x16BlockBytes;
            for (int r = 0; r < 16; ++r) {
                const uint8_t* blk = src + (size_t)(g * 16 + r) * row_bytes + (size_t)b * 34;
                std::memcpy(o + 2 * r, blk, 2);   // the f16 scale
                for (int k = 0; k < 8; ++k)
                    for (int i = 0; i < 4; ++i) o[32 + 64 * k + 4 * r + i] = blk[2 + 4 * k + i] ^ 0x80;
            }
        }
    }
}

void quantize_row_q8k(const float* x, BlockQ8K* y, int K) {
    for (int b = 0; b < K / 256; ++b, x += 256, ++y) {
        float inv, d = q8_scale(x, 256, &inv);
        for (int j = 0; j < 16; ++j) {
            int sum = 0;
            for (int i = 16 * j; i < 16 * j + 16; ++i) {
                int q = round_q8(x[i] * inv);
                y->qs[i] = (int8_t)q;
                sum += q;
            }
            y->bsums[j] = (int16_t)sum;
        }
        y->d = d;
    }
}

// ---- scalar row-dot kernels ---------------------------------------------------------------
namespace {

// Float weights: element loaders.
inline float load_f32(const uint8_t* w, int i) { float f; std::memcpy(&f, w + 4 * i, 4); return f; }
inline float load_f16(const uint8_t* w, int i) { return h2f(w + 2 * i); }
inline float load_bf16(const uint8_t* w, int i) {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    return bf16_to_f32(h);
}

template <float (*Load)(const uint8_t*, int)>
void dot_float(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    for (int j = 0; j < nx; ++j) {
        const float* xr = (const float*)(x + j * xs);
        float acc[4] = {0, 0, 0, 0};
        int k = 0;
        for (; k + 4 <= K; k += 4)
            for (int u = 0; u < 4; ++u) acc[u] += Load(w, k + u) * xr[k + u];
        for (; k < K; ++k) acc[0] += Load(w, k) * xr[k];
        y[j] = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    }
}

// 32-element formats: unpack one block to 32 small integers q, its scale d and the
// coefficient `off` of the activation block sum: dot = d * da * dot(q, a) + off * sa.
struct Q32 { int q[32]; float d, off; };

inline void unpack_q4_0(const uint8_t* b, Q32* u) {      // {f16 d; u8 qs[16]}, value q - 8
    u->d = h2f(b); u->off = -8 * u->d;
    for (int j = 0; j < 16; ++j) { u->q[j] = b[2 + j] & 0xF; u->q[j + 16] = b[2 + j] >> 4; }
}
inline void unpack_q4_1(const uint8_t* b, Q32* u) {      // {f16 d; f16 m; u8 qs[16]}, q*d + m
    u->d = h2f(b); u->off = h2f(b + 2);
    for (int j = 0; j < 16; ++j) { u->q[j] = b[4 + j] & 0xF; u->q[j + 16] = b[4 + j] >> 4; }
}
inline void unpack_q5(const uint8_t* qh_p, const uint8_t* qs, Q32* u) {  // 4 low bits + 1 high bit
    uint32_t qh;
    std::memcpy(&qh, qh_p, 4);
    for (int j = 0; j < 16; ++j) {
        u->q[j] = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
        u->q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    }
}
inline void unpack_q5_0(const uint8_t* b, Q32* u) {      // {f16 d; u32 qh; u8 qs[16]}, q - 16
    u->d = h2f(b); u->off = -16 * u->d;
    unpack_q5(b + 2, b + 6, u);
}
inline void unpack_q5_1(const uint8_t* b, Q32* u) {      // {f16 d; f16 m; u32 qh; u8 qs[16]}
    u->d = h2f(b); u->off = h2f(b + 2);
    unpack_q5(b + 4, b + 8, u);
}
inline void unpack_q8_0(const uint8_t* b, Q32* u) {      // {f16 d; i8 qs[32]}
    u->d = h2f(b); u->off = 0;
    for (int j = 0; j < 32; ++j) u->q[j] = (int8_t)b[2 + j];
}

template <void (*Unpack)(const uint8_t*, Q32*), int BlockBytes>
void dot_q32(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    float acc[4] = {0, 0, 0, 0};
    Q32 u;
    for (int b = 0; b < K / 32; ++b, w += BlockBytes) {
        Unpack(w, &u);
        for (int j = 0; j < nx; ++j) {
            const BlockQ8& a = ((const BlockQ8*)(x + j * xs))[b];
            int s = 0;
            for (int i = 0; i < 32; ++i) s += u.q[i] * a.qs[i];
            acc[j] += u.d * a.d * (float)s + u.off * a.s;
        }
    }
    for (int j = 0; j < nx; ++j) y[j] = acc[j];
}

// Q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]} and Q5_K {..., u8 qh[32]; u8 qs[128]}:
// sub-block j (32 values) is d*sc[j]*q - dmin*m[j]. qs byte l of 32-byte chunk c holds
// value l of sub-block 2c (low nibble) and 2c+1 (high nibble); Q5_K's bit 2c / 2c+1 of
// qh[l] is the fifth bit of those.
template <bool Q5>
void dot_qk45(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    const int bb = Q5 ? 176 : 144;
    float acc[4] = {0, 0, 0, 0};
    int q[256];
    uint8_t sc[8], m[8];
    for (int b = 0; b < K / 256; ++b, w += bb) {
        float d = h2f(w), dmin = h2f(w + 2);
        unpack_scales_k4(w + 4, sc, m);
        const uint8_t* qh = w + 16;
        const uint8_t* qs = w + (Q5 ? 48 : 16);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) {
                q[64 * c + l] = qs[32 * c + l] & 0xF;
                q[64 * c + 32 + l] = qs[32 * c + l] >> 4;
                if (Q5) {
                    q[64 * c + l] |= ((qh[l] >> (2 * c)) & 1) << 4;
                    q[64 * c + 32 + l] |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                }
            }
        for (int j = 0; j < nx; ++j) {
            const BlockQ8K& a = ((const BlockQ8K*)(x + j * xs))[b];
            int isum = 0, msum = 0;
            for (int s = 0; s < 8; ++s) {
                int dot = 0;
                for (int i = 32 * s; i < 32 * s + 32; ++i) dot += q[i] * a.qs[i];
                isum += sc[s] * dot;
                msum += m[s] * (a.bsums[2 * s] + a.bsums[2 * s + 1]);
            }
            acc[j] += a.d * (d * (float)isum - dmin * (float)msum);
        }
    }
    for (int j = 0; j < nx; ++j) y[j] = acc[j];
}

// Sum over the 16 sub-blocks of 16 of a 256 block: sc[s] * (codes . activations - off *
// the sub-block's activation sum), for types whose value is d * sc * (q - off) (Q6_K: 32,
// Q3_K: 4).
inline int dot_16x16(const int* q, const int8_t* sc, const BlockQ8K& a, int off) {
    int isum = 0;
    for (int s = 0; s < 16; ++s) {
        int dot = 0;
        for (int i = 16 * s; i < 16 * s + 16; ++i) dot += q[i] * a.qs[i];
        isum += sc[s] * (dot - off * a.bsums[s]);
    }
    return isum;
}

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: 16 sub-blocks of 16 with int8
// scales, value d*sc*(q - 32), q six bits: see dequant_row for which bits go where.
void dot_q6_k(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    float acc[4] = {0, 0, 0, 0};
    int q[256];
    for (int b = 0; b < K / 256; ++b, w += 210) {
        const uint8_t* ql = w;
        const uint8_t* qh = w + 128;
        const int8_t* sc = (const int8_t*)(w + 192);
        float d = h2f(w + 208);
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 32; ++l) {
                int* o = q + 128 * h;
                const uint8_t* L = ql + 64 * h;
                uint8_t H = qh[32 * h + l];
                o[l] = (L[l] & 0xF) | ((H & 3) << 4);
                o[l + 32] = (L[l + 32] & 0xF) | (((H >> 2) & 3) << 4);
                o[l + 64] = (L[l] >> 4) | (((H >> 4) & 3) << 4);
                o[l + 96] = (L[l + 32] >> 4) | (((H >> 6) & 3) << 4);
            }
        for (int j = 0; j < nx; ++j) {
            const BlockQ8K& a = ((const BlockQ8K*)(x + j * xs))[b];
            acc[j] += d * a.d * (float)dot_16x16(q, sc, a, 32);
        }
    }
    for (int j = 0; j < nx; ++j) y[j] = acc[j];
}

// Q2_K / Q3_K: the 256 codes of a block in value order. Value e = 128 h + 32 j + l takes
// bits 2j of qs[32 h + l] (Q2_K: 0..3); Q3_K adds bit 4 h + j of hmask[l] as bit 2 (0..7).
template <bool Q3>
inline void unpack_q23k(const uint8_t* qs, const uint8_t* hmask, int* q) {
    for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j)
            for (int l = 0; l < 32; ++l) {
                int v = (qs[32 * h + l] >> (2 * j)) & 3;
                if (Q3) v |= ((hmask[l] >> (4 * h + j)) & 1) << 2;
                q[128 * h + 32 * j + l] = v;
            }
}

// Q2_K {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}: 16 sub-blocks of 16, value
// d * (sc & 15) * q - dmin * (sc >> 4): the mins through the activation sums per 16.
void dot_q2_k(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    float acc[4] = {0, 0, 0, 0};
    int q[256];
    for (int b = 0; b < K / 256; ++b, w += 84) {
        const float d = h2f(w + 80), dmin = h2f(w + 82);
        unpack_q23k<false>(w + 16, nullptr, q);
        for (int j = 0; j < nx; ++j) {
            const BlockQ8K& a = ((const BlockQ8K*)(x + j * xs))[b];
            int isum = 0, msum = 0;
            for (int s = 0; s < 16; ++s) {
                int dot = 0;
                for (int i = 16 * s; i < 16 * s + 16; ++i) dot += q[i] * a.qs[i];
                isum += (w[s] & 0xF) * dot;
                msum += (w[s] >> 4) * a.bsums[s];
            }
            acc[j] += a.d * (d * (float)isum - dmin * (float)msum);
        }
    }
    for (int j = 0; j < nx; ++j) y[j] = acc[j];
}

// Q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}: 16 sub-blocks of 16, value
// d * sc * (q - 4) with sc the signed 6-bit scale: the -4 through the sums per 16.
void dot_q3_k(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    float acc[4] = {0, 0, 0, 0};
    int q[256];
    int8_t sc[16];
    for (int b = 0; b < K / 256; ++b, w += 110) {
        const float d = h2f(w + 108);
        unpack_scales_q3k(w + 96, sc);
        unpack_q23k<true>(w + 32, w, q);
        for (int j = 0; j < nx; ++j) {
            const BlockQ8K& a = ((const BlockQ8K*)(x + j * xs))[b];
            acc[j] += d * a.d * (float)dot_16x16(q, sc, a, 4);
        }
    }
    for (int j = 0; j < nx; ++j) y[j] = acc[j];
}

// IQ4_XS {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: 8 sub-blocks of 32, value
// d * ls * kvalues_iq4nl[q] (see quants.h); the table values are the integers dotted.
void dot_iq4_xs(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    float acc[4] = {0, 0, 0, 0};
    int q[256];
    int8_t ls[8];
    for (int b = 0; b < K / 256; ++b, w += 136) {
        const float d = h2f(w);
        unpack_scales_iq4xs(w, ls);
        for (int ib = 0; ib < 8; ++ib)
            for (int l = 0; l < 16; ++l) {
                q[32 * ib + l] = kvalues_iq4nl[w[8 + 16 * ib + l] & 0xF];
                q[32 * ib + l + 16] = kvalues_iq4nl[w[8 + 16 * ib + l] >> 4];
            }
        for (int j = 0; j < nx; ++j) {
            const BlockQ8K& a = ((const BlockQ8K*)(x + j * xs))[b];
            int isum = 0;
            for (int s = 0; s < 8; ++s) {
                int dot = 0;
                for (int i = 32 * s; i < 32 * s + 32; ++i) dot += q[i] * a.qs[i];
                isum += ls[s] * dot;
            }
            acc[j] += d * a.d * (float)isum;
        }
    }
    for (int j = 0; j < nx; ++j) y[j] = acc[j];
}

}  // namespace

RowDot rowdot_scalar(int t) {
    switch (t) {
        case KT_F32: return dot_float<load_f32>;
        case KT_F16: return dot_float<load_f16>;
        case KT_BF16: return dot_float<load_bf16>;
        case KT_Q4_0: return dot_q32<unpack_q4_0, 18>;
        case KT_Q4_1: return dot_q32<unpack_q4_1, 20>;
        case KT_Q5_0: return dot_q32<unpack_q5_0, 22>;
        case KT_Q5_1: return dot_q32<unpack_q5_1, 24>;
        case KT_Q8_0: return dot_q32<unpack_q8_0, 34>;
        case KT_Q4_K: return dot_qk45<false>;
        case KT_Q5_K: return dot_qk45<true>;
        case KT_Q6_K: return dot_q6_k;
        case KT_Q2_K: return dot_q2_k;
        case KT_Q3_K: return dot_q3_k;
        case KT_IQ4_XS: return dot_iq4_xs;
    }
    return nullptr;
}

}  // namespace llmetal::cpu
