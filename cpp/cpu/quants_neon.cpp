// quants_neon.cpp -- the arm64 NEON row-dot kernels (Apple CPUs and other arm64).
// NEON is part of the arm64 baseline, so no target attribute is needed. The 8-bit dot
// product uses sdot (vdotq_s32) when the build targets the dotprod extension (Apple M1+
// builds do, e.g. -march=armv8.2-a+dotprod / -mcpu=apple-m1), else vmull_s8 + vpadalq_s16.
//
// Same math as the scalar kernels (quants.cpp): weight blocks are unpacked to small
// integers (unsigned 4/5/6-bit values fit in int8 lanes), dotted with the 8-bit activation
// blocks, and the format's offset / min is applied through the activation block sums.
#include "quants.h"

#include "../kargs.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace llmetal::cpu {

#if defined(__aarch64__)
namespace {

// acc (4 x int32) += sums of 4 products of a and b (16 int8 each).
inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    // products fit int16 (|a| <= 128, |b| <= 127); pairs of them too (<= 32512)
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_s8(p, vget_high_s8(a), vget_high_s8(b));
    return vpadalq_s16(acc, p);
#endif
}

inline float h2f(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// ---- float weights --------------------------------------------------------------------
struct LoadF32 {
    static float32x4_t v4(const uint8_t* w, int i) { return vld1q_f32((const float*)w + i); }
    static float one(const uint8_t* w, int i) { return ((const float*)w)[i]; }
};
struct LoadF16 {
    static float32x4_t v4(const uint8_t* w, int i) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t*)(w + 2 * i))));
    }
    static float one(const uint8_t* w, int i) { return h2f(w + 2 * i); }
};
struct LoadBF16 {  // bf16 is the top half of an f32
    static float32x4_t v4(const uint8_t* w, int i) {
        return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t*)(w + 2 * i)), 16));
    }
    static float one(const uint8_t* w, int i) {
        uint32_t u = (uint32_t)(w[2 * i] | (w[2 * i + 1] << 8)) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};

template <class L>
struct DotFloat {
    template <int NX>
    static void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const float* xr[NX];
        float32x4_t a0[NX], a1[NX];
        for (int j = 0; j < NX; ++j) {
            xr[j] = (const float*)(x + j * xs);
            a0[j] = a1[j] = vdupq_n_f32(0);
        }
        int k = 0;
        for (; k + 8 <= K; k += 8) {
            float32x4_t w0 = L::v4(w, k), w1 = L::v4(w, k + 4);
            for (int j = 0; j < NX; ++j) {
                a0[j] = vfmaq_f32(a0[j], w0, vld1q_f32(xr[j] + k));
                a1[j] = vfmaq_f32(a1[j], w1, vld1q_f32(xr[j] + k + 4));
            }
        }
        for (int j = 0; j < NX; ++j) {
            float s = vaddvq_f32(vaddq_f32(a0[j], a1[j]));
            for (int i = k; i < K; ++i) s += L::one(w, i) * xr[j][i];
            y[j] = s;
        }
    }
};

// ---- 32-value block formats (activations in BlockQ8) ----------------------------------
// q(b, lo, hi): values 0..15 / 16..31 as int8; d the scale; off the coefficient of the
// activation block sum (dot = d * da * dot(q, a) + off * s).

inline void nibbles(const uint8_t* qs, int8x16_t* lo, int8x16_t* hi) {  // low nibbles = 0..15
    uint8x16_t t = vld1q_u8(qs);
    *lo = vreinterpretq_s8_u8(vandq_u8(t, vdupq_n_u8(0x0F)));
    *hi = vreinterpretq_s8_u8(vshrq_n_u8(t, 4));
}
// 16 bits -> 16 bytes, byte i = 0x10 where bit i is set (the fifth bit of a Q5 value).
inline int8x16_t fifth_bits(uint32_t bits16) {
    static const uint8_t mask_bytes[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)bits16), vdup_n_u8((uint8_t)(bits16 >> 8)));
    uint8x16_t set = vtstq_u8(v, vld1q_u8(mask_bytes));
    return vreinterpretq_s8_u8(vandq_u8(set, vdupq_n_u8(0x10)));
}
inline void q5_values(const uint8_t* qh_p, const uint8_t* qs, int8x16_t* lo, int8x16_t* hi) {
    uint32_t qh;
    std::memcpy(&qh, qh_p, 4);
    nibbles(qs, lo, hi);
    *lo = vorrq_s8(*lo, fifth_bits(qh & 0xFFFF));
    *hi = vorrq_s8(*hi, fifth_bits(qh >> 16));
}

struct Q4_0 {  // {f16 d; u8 qs[16]}: value (q - 8) * d
    static constexpr int Bytes = 18;
    static void q(const uint8_t* b, int8x16_t* lo, int8x16_t* hi) { nibbles(b + 2, lo, hi); }
    static float d(const uint8_t* b) { return h2f(b); }
    static float off(const uint8_t* b) { return -8.0f * h2f(b); }
};
struct Q4_1 {  // {f16 d; f16 m; u8 qs[16]}: value q * d + m
    static constexpr int Bytes = 20;
    static void q(const uint8_t* b, int8x16_t* lo, int8x16_t* hi) { nibbles(b + 4, lo, hi); }
    static float d(const uint8_t* b) { return h2f(b); }
    static float off(const uint8_t* b) { return h2f(b + 2); }
};
struct Q5_0 {  // {f16 d; u32 qh; u8 qs[16]}: value (q - 16) * d
    static constexpr int Bytes = 22;
    static void q(const uint8_t* b, int8x16_t* lo, int8x16_t* hi) { q5_values(b + 2, b + 6, lo, hi); }
    static float d(const uint8_t* b) { return h2f(b); }
    static float off(const uint8_t* b) { return -16.0f * h2f(b); }
};
struct Q5_1 {  // {f16 d; f16 m; u32 qh; u8 qs[16]}: value q * d + m
    static constexpr int Bytes = 24;
    static void q(const uint8_t* b, int8x16_t* lo, int8x16_t* hi) { q5_values(b + 4, b + 8, lo, hi); }
    static float d(const uint8_t* b) { return h2f(b); }
    static float off(const uint8_t* b) { return h2f(b + 2); }
};
struct Q8_0 {  // {f16 d; i8 qs[32]}: value q * d (signed: sdot takes it as is)
    static constexpr int Bytes = 34;
    static void q(const uint8_t* b, int8x16_t* lo, int8x16_t* hi) {
        *lo = vld1q_s8((const int8_t*)(b + 2));
        *hi = vld1q_s8((const int8_t*)(b + 18));
    }
    static float d(const uint8_t* b) { return h2f(b); }
    static float off(const uint8_t*) { return 0.0f; }
};

template <class B>
struct DotQ32 {
    template <int NX>
    static void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const BlockQ8* xb[NX];
        float32x4_t acc[NX];
        float corr[NX];
        for (int j = 0; j < NX; ++j) {
            xb[j] = (const BlockQ8*)(x + j * xs);
            acc[j] = vdupq_n_f32(0);
            corr[j] = 0;
        }
        for (int b = 0; b < K / 32; ++b, w += B::Bytes) {
            int8x16_t lo, hi;
            B::q(w, &lo, &hi);  // unpacked once, used by every activation row
            const float d = B::d(w), off = B::off(w);
            for (int j = 0; j < NX; ++j) {
                const BlockQ8& a = xb[j][b];
                int32x4_t p = dot16(vdupq_n_s32(0), lo, vld1q_s8(a.qs));
                p = dot16(p, hi, vld1q_s8(a.qs + 16));
                acc[j] = vfmaq_n_f32(acc[j], vcvtq_f32_s32(p), d * a.d);
                corr[j] += off * a.s;
            }
        }
        for (int j = 0; j < NX; ++j) y[j] = vaddvq_f32(acc[j]) + corr[j];
    }
};

// ---- K-quants (activations in BlockQ8K) -------------------------------------------------

// Q4_K / Q5_K: see quants_x86.h for the layout. Chunk c (32 bytes of qs) holds sub-block
// 2c (low nibbles) and 2c+1 (high nibbles); Q5_K's fifth bits are bits 2c, 2c+1 of qh[l].
template <bool Q5>
struct DotQ45K {
    template <int NX>
    static void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const BlockQ8K* xb[NX];
        float acc[NX];
        for (int j = 0; j < NX; ++j) {
            xb[j] = (const BlockQ8K*)(x + j * xs);
            acc[j] = 0;
        }
        const uint8x16_t m4 = vdupq_n_u8(0x0F), one = vdupq_n_u8(1);
        for (int b = 0; b < K / 256; ++b, w += (Q5 ? 176 : 144)) {
            const float d = h2f(w), dmin = h2f(w + 2);
            uint8_t sc[8], m[8];
            unpack_scales_k4(w + 4, sc, m);
            const uint8_t* qs = w + (Q5 ? 48 : 16);
            uint8x16_t qh0 = vdupq_n_u8(0), qh1 = vdupq_n_u8(0);
            if (Q5) { qh0 = vld1q_u8(w + 16); qh1 = vld1q_u8(w + 32); }
            int32x4_t isum[NX];
            for (int j = 0; j < NX; ++j) isum[j] = vdupq_n_s32(0);
            for (int c = 0; c < 4; ++c) {
                uint8x16_t r0 = vld1q_u8(qs + 32 * c), r1 = vld1q_u8(qs + 32 * c + 16);
                uint8x16_t l0 = vandq_u8(r0, m4), l1 = vandq_u8(r1, m4);   // sub-block 2c
                uint8x16_t h0 = vshrq_n_u8(r0, 4), h1 = vshrq_n_u8(r1, 4); // sub-block 2c+1
                if (Q5) {  // qh is shifted right by 2 per chunk, so its bits 0 and 1 are ours
                    l0 = vorrq_u8(l0, vshlq_n_u8(vandq_u8(qh0, one), 4));
                    l1 = vorrq_u8(l1, vshlq_n_u8(vandq_u8(qh1, one), 4));
                    h0 = vorrq_u8(h0, vshlq_n_u8(vandq_u8(vshrq_n_u8(qh0, 1), one), 4));
                    h1 = vorrq_u8(h1, vshlq_n_u8(vandq_u8(vshrq_n_u8(qh1, 1), one), 4));
                    qh0 = vshrq_n_u8(qh0, 2);
                    qh1 = vshrq_n_u8(qh1, 2);
                }
                for (int j = 0; j < NX; ++j) {
                    const int8_t* a = xb[j][b].qs + 64 * c;
                    int32x4_t p0 = dot16(dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(l0), vld1q_s8(a)),
                                         vreinterpretq_s8_u8(l1), vld1q_s8(a + 16));
                    int32x4_t p1 = dot16(dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(h0), vld1q_s8(a + 32)),
                                         vreinterpretq_s8_u8(h1), vld1q_s8(a + 48));
                    isum[j] = vmlaq_n_s32(isum[j], p0, sc[2 * c]);
                    isum[j] = vmlaq_n_s32(isum[j], p1, sc[2 * c + 1]);
                }
            }
            // mins: sum_s m[s] * (activation sum of sub-block s = two sums per 16)
            const int16x8_t m16 = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m)));
            for (int j = 0; j < NX; ++j) {
                const BlockQ8K& a = xb[j][b];
                int16x8_t s32 = vpaddq_s16(vld1q_s16(a.bsums), vld1q_s16(a.bsums + 8));
                int32x4_t ms = vmull_s16(vget_low_s16(m16), vget_low_s16(s32));
                ms = vmlal_s16(ms, vget_high_s16(m16), vget_high_s16(s32));
                acc[j] += a.d * (d * (float)vaddvq_s32(isum[j]) - dmin * (float)vaddvq_s32(ms));
            }
        }
        for (int j = 0; j < NX; ++j) y[j] = acc[j];
    }
};

// Q6_K: see quants_x86.h. Per half (128 values), value l + 32k takes its low 4 bits from
// ql[l] (k=0), ql[l+32] (1), ql[l]>>4 (2), ql[l+32]>>4 (3) and bits 2k, 2k+1 of qh[l].
struct DotQ6K {
    template <int NX>
    static void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const BlockQ8K* xb[NX];
        float acc[NX];
        for (int j = 0; j < NX; ++j) {
            xb[j] = (const BlockQ8K*)(x + j * xs);
            acc[j] = 0;
        }
        const uint8x16_t m4 = vdupq_n_u8(0x0F), m2 = vdupq_n_u8(3);
        for (int b = 0; b < K / 256; ++b, w += 210) {
            const int8_t* sc = (const int8_t*)(w + 192);
            const float d = h2f(w + 208);
            int32x4_t isum[NX];
            // the -32 offset: -32 * sum_s sc[s] * (activation sum of sub-block s)
            const int8x16_t sc8 = vld1q_s8(sc);
            const int16x8_t sl = vmovl_s8(vget_low_s8(sc8)), sh = vmovl_s8(vget_high_s8(sc8));
            for (int j = 0; j < NX; ++j) {
                const int16_t* bs = xb[j][b].bsums;
                int16x8_t b0 = vld1q_s16(bs), b1 = vld1q_s16(bs + 8);
                int32x4_t o = vmull_s16(vget_low_s16(sl), vget_low_s16(b0));
                o = vmlal_s16(o, vget_high_s16(sl), vget_high_s16(b0));
                o = vmlal_s16(o, vget_low_s16(sh), vget_low_s16(b1));
                o = vmlal_s16(o, vget_high_s16(sh), vget_high_s16(b1));
                isum[j] = vmulq_n_s32(o, -32);
            }
            for (int h = 0; h < 2; ++h) {
                const uint8_t* ql = w + 64 * h;
                const uint8_t* qhp = w + 128 + 32 * h;
                for (int half16 = 0; half16 < 2; ++half16) {  // values l = 16*half16 .. +15
                    const int o16 = 16 * half16;
                    uint8x16_t l0 = vld1q_u8(ql + o16), l1 = vld1q_u8(ql + 32 + o16), hb = vld1q_u8(qhp + o16);
                    int8x16_t q[4];
                    q[0] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(hb, m2), 4)));
                    q[1] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m2), 4)));
                    q[2] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m2), 4)));
                    q[3] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4)));
                    for (int k = 0; k < 4; ++k) {
                        // values 128h + 32k + o16 .. +15 = sub-block 8h + 2k + half16
                        const int s = 8 * h + 2 * k + half16;
                        for (int j = 0; j < NX; ++j) {
                            const int8_t* a = xb[j][b].qs + 128 * h + 32 * k + o16;
                            isum[j] = vmlaq_n_s32(isum[j], dot16(vdupq_n_s32(0), q[k], vld1q_s8(a)), sc[s]);
                        }
                    }
                }
            }
            for (int j = 0; j < NX; ++j) acc[j] += d * xb[j][b].d * (float)vaddvq_s32(isum[j]);
        }
        for (int j = 0; j < NX; ++j) y[j] = acc[j];
    }
};

// Q2_K / Q3_K: see quants_x86.h. The 32 values 128h + 32c .. +31 are bits 2c of qs[32h ..
// 32h+31] (Q3_K: plus bit 4h + c of hmask[0..31] as bit 2): 16 bytes are one sub-block.
template <bool Q3>
struct DotQ23K {
    template <int NX>
    static void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const BlockQ8K* xb[NX];
        float acc[NX];
        for (int j = 0; j < NX; ++j) {
            xb[j] = (const BlockQ8K*)(x + j * xs);
            acc[j] = 0;
        }
        const uint8x16_t m2 = vdupq_n_u8(3), one = vdupq_n_u8(1);
        for (int b = 0; b < K / 256; ++b, w += (Q3 ? 110 : 84)) {
            int8_t sc[16];   // the scale of each sub-block
            int16x8_t off_lo, off_hi;   // Q2_K: the mins; Q3_K: -4 * the scales
            if (Q3) {
                unpack_scales_q3k(w + 96, sc);
                const int8x16_t s8 = vld1q_s8(sc);
                off_lo = vmulq_n_s16(vmovl_s8(vget_low_s8(s8)), -4);
                off_hi = vmulq_n_s16(vmovl_s8(vget_high_s8(s8)), -4);
            } else {
                const uint8x16_t s8 = vld1q_u8(w);
                for (int s = 0; s < 16; ++s) sc[s] = (int8_t)(w[s] & 0xF);
                const uint8x16_t m8 = vshrq_n_u8(s8, 4);
                off_lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m8)));
                off_hi = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(m8)));
            }
            int32x4_t isum[NX], osum[NX];
            for (int j = 0; j < NX; ++j) {
                const int16_t* bs = xb[j][b].bsums;
                int16x8_t b0 = vld1q_s16(bs), b1 = vld1q_s16(bs + 8);
                int32x4_t o = vmull_s16(vget_low_s16(off_lo), vget_low_s16(b0));
                o = vmlal_s16(o, vget_high_s16(off_lo), vget_high_s16(b0));
                o = vmlal_s16(o, vget_low_s16(off_hi), vget_low_s16(b1));
                osum[j] = vmlal_s16(o, vget_high_s16(off_hi), vget_high_s16(b1));
                isum[j] = vdupq_n_s32(0);
            }
            uint8x16_t hm0 = vdupq_n_u8(0), hm1 = vdupq_n_u8(0);
            if (Q3) { hm0 = vld1q_u8(w); hm1 = vld1q_u8(w + 16); }
            const uint8_t* qs = w + (Q3 ? 32 : 16);
            for (int h = 0; h < 2; ++h) {
                uint8x16_t r0 = vld1q_u8(qs + 32 * h), r1 = vld1q_u8(qs + 32 * h + 16);
                for (int c = 0; c < 4; ++c) {
                    uint8x16_t q0 = vandq_u8(r0, m2), q1 = vandq_u8(r1, m2);
                    r0 = vshrq_n_u8(r0, 2);
                    r1 = vshrq_n_u8(r1, 2);
                    if (Q3) {  // hm is shifted right by 1 per chunk, so its bit 0 is ours
                        q0 = vorrq_u8(q0, vshlq_n_u8(vandq_u8(hm0, one), 2));
                        q1 = vorrq_u8(q1, vshlq_n_u8(vandq_u8(hm1, one), 2));
                        hm0 = vshrq_n_u8(hm0, 1);
                        hm1 = vshrq_n_u8(hm1, 1);
                    }
                    const int s = 8 * h + 2 * c;
                    for (int j = 0; j < NX; ++j) {
                        const int8_t* a = xb[j][b].qs + 128 * h + 32 * c;
                        isum[j] = vmlaq_n_s32(isum[j], dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(q0), vld1q_s8(a)), sc[s]);
                        isum[j] = vmlaq_n_s32(isum[j], dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(q1), vld1q_s8(a + 16)),
                                              sc[s + 1]);
                    }
                }
            }
            const float d = h2f(w + (Q3 ? 108 : 80));
            for (int j = 0; j < NX; ++j) {
                const float da = xb[j][b].d;
                if (Q3) acc[j] += d * da * (float)vaddvq_s32(vaddq_s32(isum[j], osum[j]));
                else acc[j] += da * (d * (float)vaddvq_s32(isum[j]) - h2f(w + 82) * (float)vaddvq_s32(osum[j]));
            }
        }
        for (int j = 0; j < NX; ++j) y[j] = acc[j];
    }
};

// IQ4_XS: see quants_x86.h. The nibbles index the code book by vqtbl1q (signed bytes, dotted
// with the signed activations directly).
struct DotIQ4XS {
    template <int NX>
    static void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const BlockQ8K* xb[NX];
        float acc[NX];
        for (int j = 0; j < NX; ++j) {
            xb[j] = (const BlockQ8K*)(x + j * xs);
            acc[j] = 0;
        }
        const int8x16_t table = vld1q_s8(kvalues_iq4nl);
        const uint8x16_t m4 = vdupq_n_u8(0x0F);
        for (int b = 0; b < K / 256; ++b, w += 136) {
            int8_t ls[8];
            unpack_scales_iq4xs(w, ls);
            int32x4_t isum[NX];
            for (int j = 0; j < NX; ++j) isum[j] = vdupq_n_s32(0);
            for (int ib = 0; ib < 8; ++ib) {
                const uint8x16_t r = vld1q_u8(w + 8 + 16 * ib);
                const int8x16_t v0 = vqtbl1q_s8(table, vandq_u8(r, m4)), v1 = vqtbl1q_s8(table, vshrq_n_u8(r, 4));
                for (int j = 0; j < NX; ++j) {
                    const int8_t* a = xb[j][b].qs + 32 * ib;
                    const int32x4_t p = dot16(dot16(vdupq_n_s32(0), v0, vld1q_s8(a)), v1, vld1q_s8(a + 16));
                    isum[j] = vmlaq_n_s32(isum[j], p, ls[ib]);
                }
            }
            const float d = h2f(w);
            for (int j = 0; j < NX; ++j) acc[j] += d * xb[j][b].d * (float)vaddvq_s32(isum[j]);
        }
        for (int j = 0; j < NX; ++j) y[j] = acc[j];
    }
};

template <class Kern>
void rowdot(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    switch (nx) {
        case 1: Kern::template run<1>(K, w, x, xs, y); break;
        case 2: Kern::template run<2>(K, w, x, xs, y); break;
        case 3: Kern::template run<3>(K, w, x, xs, y); break;
        default: Kern::template run<4>(K, w, x, xs, y); break;
    }
}

}  // namespace

RowDot rowdot_neon(int t) {
    switch (t) {
        case KT_F32: return rowdot<DotFloat<LoadF32>>;
        case KT_F16: return rowdot<DotFloat<LoadF16>>;
        case KT_BF16: return rowdot<DotFloat<LoadBF16>>;
        case KT_Q4_0: return rowdot<DotQ32<Q4_0>>;
        case KT_Q4_1: return rowdot<DotQ32<Q4_1>>;
        case KT_Q5_0: return rowdot<DotQ32<Q5_0>>;
        case KT_Q5_1: return rowdot<DotQ32<Q5_1>>;
        case KT_Q8_0: return rowdot<DotQ32<Q8_0>>;
        case KT_Q4_K: return rowdot<DotQ45K<false>>;
        case KT_Q5_K: return rowdot<DotQ45K<true>>;
        case KT_Q6_K: return rowdot<DotQ6K>;
        case KT_Q2_K: return rowdot<DotQ23K<false>>;
        case KT_Q3_K: return rowdot<DotQ23K<true>>;
        case KT_IQ4_XS: return rowdot<DotIQ4XS>;
    }
    return nullptr;
}
#else
RowDot rowdot_neon(int) { return nullptr; }
#endif

}  // namespace llmetal::cpu
