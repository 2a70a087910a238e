// quants_x86.h -- the x86 row-dot kernels, written once and compiled twice:
//   quants_avx2.cpp   X86_TARGET "avx2,fma,f16c"                       X86_VNNI 0  X86_VREGS 16
//   quants_avx512.cpp X86_TARGET "...,avx512f,avx512bw,avx512vl,avx512vnni" X86_VNNI 1  X86_VREGS 32
// Each includes this file inside its own namespace after defining X86_TARGET (the
// function target attribute), X86_VNNI and X86_VREGS (the vector registers the target
// has: AVX-512 adds ymm16-31, which the attention kernel's register blocking uses). Every
// function here carries the target attribute, so the files are compiled
// without -march and the kernels run only where matmul_kernel chose them.
//
// The integer work is on 256-bit vectors in both builds; the AVX-512 build differs in its
// two multiply-accumulate steps, which become single VNNI instructions on ymm registers
// (vpdpbusd: u8 x s8 sums of 4 into int32; vpdpwssd: s16 x s16 sums of 2 into int32).
// (llama.cpp's AVX-512 quantized dots are likewise 256-bit with VNNI.)
//
// Conventions: a 32-value weight block is unpacked to 32 unsigned bytes `q` (values
// 0..31) and dotted with the signed activation bytes by vpmaddubsw / vpdpbusd; the
// format's offset (q - 8, q - 16, + min) is applied through the activation block sum.
// Q8_0 weights are signed: dot(w, a) = dot(|w|, sign(w) * a) keeps the unsigned form.
// (The includer includes <immintrin.h> at global scope first.)

#define TGT __attribute__((target(X86_TARGET)))

// ---- small helpers ------------------------------------------------------------------

static inline TGT float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline TGT float h2f(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// acc (8 x int32) += sums of 4 products u8 (u) x s8 (s).
static inline TGT __m256i dot_us(__m256i acc, __m256i u, __m256i s) {
#if X86_VNNI
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    // vpmaddubsw: pairs into int16 (no saturation here: |u| <= 128, |s| <= 127 gives at
    // most 32512), then vpmaddwd with ones: pairs into int32.
    __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}

// acc (8 x int32) += sums of 2 products s16 x s16.
static inline TGT __m256i madd_acc(__m256i acc, __m256i a, __m256i b) {
#if X86_VNNI
    return _mm256_dpwssd_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

// 32 bits -> 32 bytes, byte i = 0xFF where bit i is set.
static inline TGT __m256i bits_to_bytes(uint32_t bits) {
    // Each 128-bit lane holds the 4 bytes of `bits`; bytes 8k..8k+7 take byte k.
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), pick);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

// 16 bytes of nibbles -> 32 bytes: low nibbles are values 0..15, high nibbles 16..31.
static inline TGT __m256i nibbles_32(const uint8_t* p) {
    __m128i t = _mm_loadu_si128((const __m128i*)p);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

static inline TGT __m256i load32(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }

// ---- float weights: f32 FMA dot -------------------------------------------------------

struct LoadF32 {
    static TGT __m256 v8(const uint8_t* w, int i) { return _mm256_loadu_ps((const float*)w + i); }
    static TGT float one(const uint8_t* w, int i) { return ((const float*)w)[i]; }
};
struct LoadF16 {
    static TGT __m256 v8(const uint8_t* w, int i) {
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + 2 * i)));
    }
    static TGT float one(const uint8_t* w, int i) { return h2f(w + 2 * i); }
};
struct LoadBF16 {  // bf16 is the top half of an f32
    static TGT __m256 v8(const uint8_t* w, int i) {
        __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(w + 2 * i)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    }
    static TGT float one(const uint8_t* w, int i) {
        uint32_t u = (uint32_t)(w[2 * i] | (w[2 * i + 1] << 8)) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};

template <class L>
struct DotFloat {
    template <int NX>
    static TGT void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const float* xr[NX];
        __m256 a0[NX], a1[NX];  // two accumulators per row hide the FMA latency
        for (int j = 0; j < NX; ++j) {
            xr[j] = (const float*)(x + j * xs);
            a0[j] = a1[j] = _mm256_setzero_ps();
        }
        int k = 0;
        for (; k + 16 <= K; k += 16) {
            __m256 w0 = L::v8(w, k), w1 = L::v8(w, k + 8);
            for (int j = 0; j < NX; ++j) {
                a0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr[j] + k), a0[j]);
                a1[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr[j] + k + 8), a1[j]);
            }
        }
        for (int j = 0; j < NX; ++j) {
            float s = hsum(_mm256_add_ps(a0[j], a1[j]));
            for (int i = k; i < K; ++i) s += L::one(w, i) * xr[j][i];
            y[j] = s;
        }
    }
};

// ---- 32-value block formats (activations in BlockQ8) ----------------------------------
// Each decoder: Bytes per block, q(b) = the 32 values as bytes, d(b) the scale, off(b) the
// coefficient of the activation block sum s (dot = d * da * dot(q, a) + off * s).

struct Q4_0 {  // {f16 d; u8 qs[16]}: value (q - 8) * d
    static constexpr int Off = 8;         // value d * (q - Off) (as an exact integer term)
    static constexpr bool Min = false;      // value d * q + m (a float min)
    static constexpr int Bytes = 18;
    static constexpr bool Signed = false;
    static constexpr bool HasOff = true;   // the block has an offset / min term
    static TGT __m256i q(const uint8_t* b) { return nibbles_32(b + 2); }
    static TGT float d(const uint8_t* b) { return h2f(b); }
    static TGT float off(const uint8_t* b) { return -8.0f * h2f(b); }
};
struct Q4_1 {  // {f16 d; f16 m; u8 qs[16]}: value q * d + m
    static constexpr int Off = 0;         // value d * (q - Off) (as an exact integer term)
    static constexpr bool Min = true;      // value d * q + m (a float min)
    static constexpr int Bytes = 20;
    static constexpr bool Signed = false;
    static constexpr bool HasOff = true;   // the block has an offset / min term
    static TGT __m256i q(const uint8_t* b) { return nibbles_32(b + 4); }
    static TGT float d(const uint8_t* b) { return h2f(b); }
    static TGT float off(const uint8_t* b) { return h2f(b + 2); }
};
// Q5: the nibbles plus bit i of the 32-bit qh as the fifth bit of value i.
static inline TGT __m256i q5_values(const uint8_t* qh_p, const uint8_t* qs) {
    uint32_t qh;
    std::memcpy(&qh, qh_p, 4);
    __m256i hi = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(nibbles_32(qs), hi);
}
struct Q5_0 {  // {f16 d; u32 qh; u8 qs[16]}: value (q - 16) * d
    static constexpr int Off = 16;         // value d * (q - Off) (as an exact integer term)
    static constexpr bool Min = false;      // value d * q + m (a float min)
    static constexpr int Bytes = 22;
    static constexpr bool Signed = false;
    static constexpr bool HasOff = true;   // the block has an offset / min term
    static TGT __m256i q(const uint8_t* b) { return q5_values(b + 2, b + 6); }
    static TGT float d(const uint8_t* b) { return h2f(b); }
    static TGT float off(const uint8_t* b) { return -16.0f * h2f(b); }
};
struct Q5_1 {  // {f16 d; f16 m; u32 qh; u8 qs[16]}: value q * d + m
    static constexpr int Off = 0;         // value d * (q - Off) (as an exact integer term)
    static constexpr bool Min = true;      // value d * q + m (a float min)
    static constexpr int Bytes = 24;
    static constexpr bool Signed = false;
    static constexpr bool HasOff = true;   // the block has an offset / min term
    static TGT __m256i q(const uint8_t* b) { return q5_values(b + 4, b + 8); }
    static TGT float d(const uint8_t* b) { return h2f(b); }
    static TGT float off(const uint8_t* b) { return h2f(b + 2); }
};
struct Q8_0 {  // {f16 d; i8 qs[32]}: value q * d, q signed
    static constexpr int Off = 0;         // value d * (q - Off) (as an exact integer term)
    static constexpr bool Min = false;      // value d * q + m (a float min)
    static constexpr int Bytes = 34;
    static constexpr bool Signed = true;
    static constexpr bool HasOff = false;
    static TGT __m256i q(const uint8_t* b) { return load32(b + 2); }
    static TGT float d(const uint8_t* b) { return h2f(b); }
    static TGT float off(const uint8_t*) { return 0.0f; }
};

template <class B>
struct DotQ32 {
    template <int NX>
    static TGT void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const BlockQ8* xb[NX];
        __m256 acc[NX];
        float corr[NX];
        for (int j = 0; j < NX; ++j) {
            xb[j] = (const BlockQ8*)(x + j * xs);
            acc[j] = _mm256_setzero_ps();
            corr[j] = 0;
        }
        for (int b = 0; b < K / 32; ++b, w += B::Bytes) {
            const __m256i q = B::q(w);  // unpacked once, used by every activation row
            const float d = B::d(w), off = B::off(w);
            const __m256i uq = B::Signed ? _mm256_abs_epi8(q) : q;
            for (int j = 0; j < NX; ++j) {
                const BlockQ8& a = xb[j][b];
                __m256i s = load32(a.qs);
                if (B::Signed) s = _mm256_sign_epi8(s, q);
                __m256i p = dot_us(_mm256_setzero_si256(), uq, s);
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * a.d), acc[j]);
                if (B::HasOff) corr[j] += off * a.s;   // Q8_0 has no offset: skip the sum
            }
        }
        for (int j = 0; j < NX; ++j) y[j] = hsum(acc[j]) + corr[j];
    }
};

#if X86_VNNI
// Q8_0 on 512-bit vectors (AVX-512 VNNI build only): 8 blocks per step, two blocks per zmm.
// Per step and activation row the float work is done once for 8 blocks, not per block:
//   - the 8 weight scales (f16, 34 bytes apart) and the 8 activation scales (40 bytes
//     apart) are collected into one vector each; one multiply gives the 8 products
//     d_w * d_a (vpgatherdd for this was slower than the scalar loads: 30 against 25 ns
//     per 1024-value row in L1);
//   - each zmm of int32 sums (lanes 0-7 block 2p, lanes 8-15 block 2p+1) is converted once
//     and accumulated by one FMA with the scale pair spread to its halves (vpermps).
// The sign trick is the 256-bit one: dot(w, a) = dot(|w|, a negated where w < 0); AVX-512
// has no vpsignb, so the negation is a subtraction masked by w's sign bits.
// Blocks past the last multiple of 8 go through the 256-bit loop.
struct DotQ8_0_512 {
    static TGT __m512i load2(const uint8_t* p, size_t stride) {   // 32 bytes at p, 32 at p + stride
        return _mm512_inserti64x4(_mm512_zextsi256_si512(load32(p)), load32(p + stride), 1);
    }
    template <int NX>
    static TGT void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        const BlockQ8* xb[NX];
        __m512 acc[NX][2];   // two FMA chains per row (independent FMA chains)
        for (int j = 0; j < NX; ++j) {
            xb[j] = (const BlockQ8*)(x + j * xs);
            acc[j][0] = acc[j][1] = _mm512_setzero_ps();
        }
        // pair p of a group: lanes 0-7 take scale 2p, lanes 8-15 scale 2p+1
        __m512i spread[4];
        for (int p = 0; p < 4; ++p)
            spread[p] = _mm512_inserti64x4(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1);
        const int nb = K / 32, ng = nb / 8;
        for (int g = 0; g < ng; ++g, w += 8 * 34) {
            // the f16 weight scales of the 8 blocks, converted together
            uint16_t h[8];
            for (int b = 0; b < 8; ++b) std::memcpy(&h[b], w + 34 * b, 2);
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)h));
            __m512i uq[4];
            __mmask64 neg[4];
            for (int p = 0; p < 4; ++p) {
                const __m512i q = load2(w + 2 + 68 * p, 34);
                neg[p] = _mm512_movepi8_mask(q);
                uq[p] = _mm512_abs_epi8(q);
            }
            for (int j = 0; j < NX; ++j) {
                const BlockQ8* a = xb[j] + 8 * g;
                const __m256 da = _mm256_setr_ps(a[0].d, a[1].d, a[2].d, a[3].d, a[4].d, a[5].d, a[6].d, a[7].d);
                const __m512 s8 = _mm512_zextps256_ps512(_mm256_mul_ps(dw, da));
                for (int p = 0; p < 4; ++p) {
                    __m512i s = load2((const uint8_t*)a[2 * p].qs, sizeof(BlockQ8));
                    s = _mm512_mask_sub_epi8(s, neg[p], _mm512_setzero_si512(), s);
                    const __m512i dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), uq[p], s);
                    acc[j][p & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_permutexvar_ps(spread[p], s8),
                                                    acc[j][p & 1]);
                }
            }
        }
        for (int j = 0; j < NX; ++j) {
            // the remaining blocks, one at a time on 256 bits
            __m256 tail = _mm256_setzero_ps();
            const uint8_t* wb = w;
            for (int b = 8 * ng; b < nb; ++b, wb += 34) {
                const __m256i q = Q8_0::q(wb);
                const BlockQ8& a = xb[j][b];
                const __m256i p = dot_us(_mm256_setzero_si256(), _mm256_abs_epi8(q), _mm256_sign_epi8(load32(a.qs), q));
                tail = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(Q8_0::d(wb) * a.d), tail);
            }
            y[j] = _mm512_reduce_add_ps(_mm512_add_ps(acc[j][0], acc[j][1])) + hsum(tail);
        }
    }
};
#endif

#if X86_VNNI
// Q8_0 repacked in groups of 16 rows (quants.h, repack_q8_0_x16): lane r of every vector is
// row r. Per block: the 16 scales in one conversion, the 512 value bytes in 8 zmm loads
// shared by the NX activation rows, then per activation row 8 vpdpbusd (unsigned weights x
// 4 signed activation bytes broadcast), in two chains, the first starting at the -128 *
// sum correction, one conversion and one FMA for all 16 rows.
template <int NX>
static TGT void q8_0x16_run(int K, const uint8_t* wg, const uint8_t* x, size_t xs, const int32_t* xc,
                            size_t xcs, float* y, size_t ys) {
    const BlockQ8* xb[NX];
    const int32_t* cj[NX];
    __m512 acc[NX];
    for (int j = 0; j < NX; ++j) {
        xb[j] = (const BlockQ8*)(x + j * xs);
        cj[j] = xc + j * xcs;
        acc[j] = _mm512_setzero_ps();
    }
    const int nb = K / 32;
    for (int b = 0; b < nb; ++b, wg += kQ8x16BlockBytes) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)wg));
        __m512i wv[8];
        for (int k = 0; k < 8; ++k) wv[k] = _mm512_loadu_si512(wg + 32 + 64 * k);
        for (int j = 0; j < NX; ++j) {
            const BlockQ8& a = xb[j][b];
            int32_t a4[8];
            std::memcpy(a4, a.qs, 32);
            __m512i d0 = _mm512_set1_epi32(cj[j][b]), d1 = _mm512_setzero_si512();
            for (int k = 0; k < 8; k += 2) {
                d0 = _mm512_dpbusd_epi32(d0, wv[k], _mm512_set1_epi32(a4[k]));
                d1 = _mm512_dpbusd_epi32(d1, wv[k + 1], _mm512_set1_epi32(a4[k + 1]));
            }
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1)),
                                     _mm512_mul_ps(dw, _mm512_set1_ps(a.d)), acc[j]);
        }
    }
    for (int j = 0; j < NX; ++j) _mm512_storeu_ps(y + j * ys, acc[j]);
}

static TGT void rowdot16_q8_0(int K, const uint8_t* wg, const uint8_t* x, size_t xs, const int32_t* xc,
                              size_t xcs, int nx, float* y, size_t ys) {
    switch (nx) {
        case 1: q8_0x16_run<1>(K, wg, x, xs, xc, xcs, y, ys); break;
        case 2: q8_0x16_run<2>(K, wg, x, xs, xc, xcs, y, ys); break;
        case 3: q8_0x16_run<3>(K, wg, x, xs, xc, xcs, y, ys); break;
        case 4: q8_0x16_run<4>(K, wg, x, xs, xc, xcs, y, ys); break;
        case 5: q8_0x16_run<5>(K, wg, x, xs, xc, xcs, y, ys); break;
        case 6: q8_0x16_run<6>(K, wg, x, xs, xc, xcs, y, ys); break;
        case 7: q8_0x16_run<7>(K, wg, x, xs, xc, xcs, y, ys); break;
        default: q8_0x16_run<8>(K, wg, x, xs, xc, xcs, y, ys); break;
    }
}
#endif

// Two weight rows (w and w + ws) against NX activation rows: each activation block is loaded
// once for both rows (prefill: the loads and scale broadcasts are shared by the tile).
// y[r * 4 + j] = dot(row r, activation row j). Same arithmetic per (row, token) as DotQ32.
template <class B>
struct DotQ32x2 {
    template <int NX>
    static TGT void run(int K, const uint8_t* w, size_t ws, const uint8_t* x, size_t xs, float* y) {
        const BlockQ8* xb[NX];
        __m256 acc0[NX], acc1[NX];
        float corr0[NX], corr1[NX];
        for (int j = 0; j < NX; ++j) {
            xb[j] = (const BlockQ8*)(x + j * xs);
            acc0[j] = acc1[j] = _mm256_setzero_ps();
            corr0[j] = corr1[j] = 0;
        }
        const uint8_t* w1 = w + ws;
        for (int b = 0; b < K / 32; ++b, w += B::Bytes, w1 += B::Bytes) {
            const __m256i q0 = B::q(w), q1 = B::q(w1);
            const float d0 = B::d(w), d1 = B::d(w1);
            const float off0 = B::HasOff ? B::off(w) : 0.0f, off1 = B::HasOff ? B::off(w1) : 0.0f;
            const __m256i uq0 = B::Signed ? _mm256_abs_epi8(q0) : q0;
            const __m256i uq1 = B::Signed ? _mm256_abs_epi8(q1) : q1;
            for (int j = 0; j < NX; ++j) {
                const BlockQ8& a = xb[j][b];
                const __m256i s = load32(a.qs);
                const __m256i s0 = B::Signed ? _mm256_sign_epi8(s, q0) : s;
                const __m256i s1 = B::Signed ? _mm256_sign_epi8(s, q1) : s;
                const __m256i p0 = dot_us(_mm256_setzero_si256(), uq0, s0);
                const __m256i p1 = dot_us(_mm256_setzero_si256(), uq1, s1);
                acc0[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(d0 * a.d), acc0[j]);
                acc1[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(d1 * a.d), acc1[j]);
                if (B::HasOff) {
                    corr0[j] += off0 * a.s;
                    corr1[j] += off1 * a.s;
                }
            }
        }
        for (int j = 0; j < NX; ++j) {
            y[j] = hsum(acc0[j]) + corr0[j];
            y[4 + j] = hsum(acc1[j]) + corr1[j];
        }
    }
};

// ---- K-quants (activations in BlockQ8K) -------------------------------------------------
// The super-block loop every format's run() shares: B::ints gives the integer sums of one
// super-block, scaled in float by d (and, for the formats with a min, -dmin) times the
// activation super-block's scale; the 8 lanes are added at the end.
template <class B, int NX>
static TGT void ksuper_run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
    const BlockQ8K* xb[NX];
    __m256 acc[NX];
    for (int j = 0; j < NX; ++j) {
        xb[j] = (const BlockQ8K*)(x + j * xs);
        acc[j] = _mm256_setzero_ps();
    }
    for (int b = 0; b < K / 256; ++b, w += B::Bytes) {
        const BlockQ8K* xa[NX];
        for (int j = 0; j < NX; ++j) xa[j] = xb[j] + b;
        __m256i isum[NX], msum[NX];
        B::template ints<NX>(w, xa, isum, msum);
        const float dw = B::d(w), dm = B::dmin(w);
        for (int j = 0; j < NX; ++j) {
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_set1_ps(dw * xa[j]->d), acc[j]);
            if constexpr (B::Min)
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum[j]), _mm256_set1_ps(-dm * xa[j]->d), acc[j]);
        }
    }
    for (int j = 0; j < NX; ++j) y[j] = hsum(acc[j]);
}

// Each format's ints<NX>(w, xa, isum, msum) gives the exact integer sums of one super-block
// against the activation super-blocks xa[j], as 8 int32 lanes whose total is the sum:
// isum = sum_s sc_s * dot_s (a constant offset folded in), msum = sum_s m_s * bsum_s (the
// formats with a min; zero for the others). run() scales them in float per super-block;
// gemm_x86.h adds up the lanes of 16 rows and scales them its own way.

// Q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]} and Q5_K {..., u8 qh[32]; u8 qs[128]}:
// 8 sub-blocks of 32, value d*sc[s]*q - dmin*m[s]. The 32-byte chunk c of qs holds
// sub-block 2c in its low nibbles and 2c+1 in its high nibbles; for Q5_K, bits 2c and
// 2c+1 of qh[l] are the fifth bits of value l of those sub-blocks.
template <bool Q5>
struct DotQ45K {
    static constexpr int Bytes = Q5 ? 176 : 144;
    static constexpr bool Min = true;
    static TGT float d(const uint8_t* w) { return h2f(w); }
    static TGT float dmin(const uint8_t* w) { return h2f(w + 2); }
    template <int NX>
    static TGT void ints(const uint8_t* w, const BlockQ8K* const* xa, __m256i* isum, __m256i* msum) {
        const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
        uint8_t sc[8], m[8];
        unpack_scales_k4(w + 4, sc, m);
        const uint8_t* qs = w + (Q5 ? 48 : 16);
        __m256i qh = Q5 ? load32(w + 16) : _mm256_setzero_si256();
        for (int j = 0; j < NX; ++j) isum[j] = _mm256_setzero_si256();
        for (int c = 0; c < 4; ++c) {
            __m256i raw = load32(qs + 32 * c);
            __m256i q0 = _mm256_and_si256(raw, m4);
            __m256i q1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if (Q5) {  // qh is shifted right by 2 per chunk, so its bits 0 and 1 are ours
                q0 = _mm256_or_si256(q0, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
                q1 = _mm256_or_si256(q1, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
                qh = _mm256_srli_epi16(qh, 2);
            }
            const __m256i s0 = _mm256_set1_epi16(sc[2 * c]), s1 = _mm256_set1_epi16(sc[2 * c + 1]);
            for (int j = 0; j < NX; ++j) {
                const int8_t* a = xa[j]->qs + 64 * c;
                isum[j] = madd_acc(isum[j], _mm256_maddubs_epi16(q0, load32(a)), s0);
                isum[j] = madd_acc(isum[j], _mm256_maddubs_epi16(q1, load32(a + 32)), s1);
            }
        }
        // mins: sum_s m[s] * (sum of the activations of sub-block s), from the sums per 16
        __m128i m8 = _mm_loadl_epi64((const __m128i*)m);
        const __m256i mdup = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));  // m0 m0 m1 m1 ...
        for (int j = 0; j < NX; ++j) msum[j] = _mm256_madd_epi16(mdup, load32(xa[j]->bsums));
    }
    template <int NX>
    static TGT void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        ksuper_run<DotQ45K<Q5>, NX>(K, w, x, xs, y);
    }
};

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: 16 sub-blocks of 16, value
// d*sc[s]*(q - 32), q six bits. In each half (128 values), value l + 32k (k = 0..3) takes
// its low 4 bits from ql[l] (k=0), ql[l+32] (1), ql[l]>>4 (2), ql[l+32]>>4 (3) and its top
// 2 bits from bits 2k, 2k+1 of qh[l].
struct DotQ6K {
    static constexpr int Bytes = 210;
    static constexpr bool Min = false;
    static TGT float d(const uint8_t* w) { return h2f(w + 208); }
    static TGT float dmin(const uint8_t*) { return 0.0f; }
    template <int NX>
    static TGT void ints(const uint8_t* w, const BlockQ8K* const* xa, __m256i* isum, __m256i* msum) {
        const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
        const int8_t* sc = (const int8_t*)(w + 192);
        // the -32 offset: -32 * sum_s sc[s] * (sum of the activations of sub-block s)
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)sc));
        for (int j = 0; j < NX; ++j) {
            isum[j] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                       _mm256_slli_epi32(_mm256_madd_epi16(sc16, load32(xa[j]->bsums)), 5));
            msum[j] = _mm256_setzero_si256();
        }
        for (int h = 0; h < 2; ++h) {
            const __m256i l0 = load32(w + 64 * h), l1 = load32(w + 64 * h + 32);
            const __m256i qh = load32(w + 128 + 32 * h);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
            for (int k = 0; k < 4; ++k) {
                // 32 values = 2 sub-blocks: int16 lanes 0-7 take sc[2k'], lanes 8-15 sc[2k'+1]
                const int s = 8 * h + 2 * k;
                const __m256i s16 = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1]), _mm_set1_epi16(sc[s]));
                for (int j = 0; j < NX; ++j) {
                    const int8_t* a = xa[j]->qs + 128 * h + 32 * k;
                    isum[j] = madd_acc(isum[j], _mm256_maddubs_epi16(q[k], load32(a)), s16);
                }
            }
        }
    }
    template <int NX>
    static TGT void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        ksuper_run<DotQ6K, NX>(K, w, x, xs, y);
    }
};

// Q2_K {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin} and Q3_K {u8 hmask[32]; u8 qs[64];
// u8 scales[12]; f16 d}: 16 sub-blocks of 16. The 32 values 128h + 32j .. +31 are bits 2j of
// qs[32h .. 32h+31] (Q3_K: plus bit 4h + j of hmask[0..31] as bit 2), so each 32-byte load
// of qs serves 4 chunks, shifted right by 2 per chunk; a chunk is 2 sub-blocks (int16 lanes
// 0-7 and 8-15 after vpmaddubsw), scaled by vpmaddwd / vpdpwssd.
// Q2_K: value d * (sc & 15) * q - dmin * (sc >> 4); Q3_K: d * sc6 * (q - 4), sc6 signed.
template <bool Q3>
struct DotQ23K {
    static constexpr int Bytes = Q3 ? 110 : 84;
    static constexpr bool Min = !Q3;
    static TGT float d(const uint8_t* w) { return h2f(w + (Q3 ? 108 : 80)); }
    static TGT float dmin(const uint8_t* w) { return Q3 ? 0.0f : h2f(w + 82); }
    template <int NX>
    static TGT void ints(const uint8_t* w, const BlockQ8K* const* xa, __m256i* isum, __m256i* msum) {
        const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
        int16_t sc[16];   // the scale of each sub-block
        if (Q3) {
            int8_t s8[16];
            unpack_scales_q3k(w + 96, s8);
            for (int s = 0; s < 16; ++s) sc[s] = s8[s];
            // the -4 offset: -4 * sum_s sc[s] * (sum of the activations of sub-block s)
            const __m256i sc16 = _mm256_loadu_si256((const __m256i*)sc);
            for (int j = 0; j < NX; ++j) {
                isum[j] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                           _mm256_slli_epi32(_mm256_madd_epi16(sc16, load32(xa[j]->bsums)), 2));
                msum[j] = _mm256_setzero_si256();
            }
        } else {
            for (int s = 0; s < 16; ++s) sc[s] = w[s] & 0xF;
            // mins: sum_s (sc[s] >> 4) * (sum of the activations of sub-block s)
            const __m256i mins = _mm256_cvtepu8_epi16(_mm_srli_epi16(_mm_andnot_si128(_mm_set1_epi8(0x0F),
                                                                                   _mm_loadu_si128((const __m128i*)w)), 4));
            for (int j = 0; j < NX; ++j) {
                isum[j] = _mm256_setzero_si256();
                msum[j] = _mm256_madd_epi16(mins, load32(xa[j]->bsums));
            }
        }
        __m256i hm = Q3 ? load32(w) : _mm256_setzero_si256();
        const uint8_t* qs = w + (Q3 ? 32 : 16);
        for (int h = 0; h < 2; ++h) {
            __m256i raw = load32(qs + 32 * h);
            for (int c = 0; c < 4; ++c) {
                __m256i q = _mm256_and_si256(raw, m2);
                raw = _mm256_srli_epi16(raw, 2);
                if (Q3) {  // hm is shifted right by 1 per chunk, so its bit 0 is ours
                    q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(hm, one), 2));
                    hm = _mm256_srli_epi16(hm, 1);
                }
                const int s = 8 * h + 2 * c;
                const __m256i s16 = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1]), _mm_set1_epi16(sc[s]));
                for (int j = 0; j < NX; ++j) {
                    const int8_t* a = xa[j]->qs + 128 * h + 32 * c;
                    isum[j] = madd_acc(isum[j], _mm256_maddubs_epi16(q, load32(a)), s16);
                }
            }
        }
    }
    template <int NX>
    static TGT void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        ksuper_run<DotQ23K<Q3>, NX>(K, w, x, xs, y);
    }
};

// IQ4_XS {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: 8 sub-blocks of 32, value
// d * ls * kvalues_iq4nl[q]. The nibbles index the table by vpshufb; the table values are
// signed, so the dot uses Q8_0's sign trick: dot(v, a) = dot(|v|, a negated where v < 0).
struct DotIQ4XS {
    static constexpr int Bytes = 136;
    static constexpr bool Min = false;
    static TGT float d(const uint8_t* w) { return h2f(w); }
    static TGT float dmin(const uint8_t*) { return 0.0f; }
    template <int NX>
    static TGT void ints(const uint8_t* w, const BlockQ8K* const* xa, __m256i* isum, __m256i* msum) {
        const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)kvalues_iq4nl));
        int8_t ls[8];
        unpack_scales_iq4xs(w, ls);
        for (int j = 0; j < NX; ++j) isum[j] = msum[j] = _mm256_setzero_si256();
        for (int ib = 0; ib < 8; ++ib) {
            const __m256i v = _mm256_shuffle_epi8(table, nibbles_32(w + 8 + 16 * ib));
            const __m256i uv = _mm256_abs_epi8(v), s16 = _mm256_set1_epi16(ls[ib]);
            for (int j = 0; j < NX; ++j) {
                const __m256i a = _mm256_sign_epi8(load32(xa[j]->qs + 32 * ib), v);
                isum[j] = madd_acc(isum[j], _mm256_maddubs_epi16(uv, a), s16);
            }
        }
    }
    template <int NX>
    static TGT void run(int K, const uint8_t* w, const uint8_t* x, size_t xs, float* y) {
        ksuper_run<DotIQ4XS, NX>(K, w, x, xs, y);
    }
};

// ---- the kernel table ---------------------------------------------------------------------

// RowDot entry: picks the instantiation for the number of activation rows.
template <class Kern>
TGT void rowdot(int K, const uint8_t* w, const uint8_t* x, size_t xs, int nx, float* y) {
    switch (nx) {
        case 1: Kern::template run<1>(K, w, x, xs, y); break;
        case 2: Kern::template run<2>(K, w, x, xs, y); break;
        case 3: Kern::template run<3>(K, w, x, xs, y); break;
        default: Kern::template run<4>(K, w, x, xs, y); break;
    }
}

template <class Kern>
TGT void rowdot2(int K, const uint8_t* w, size_t ws, const uint8_t* x, size_t xs, int nx, float* y) {
    switch (nx) {
        case 1: Kern::template run<1>(K, w, ws, x, xs, y); break;
        case 2: Kern::template run<2>(K, w, ws, x, xs, y); break;
        case 3: Kern::template run<3>(K, w, ws, x, xs, y); break;
        default: Kern::template run<4>(K, w, ws, x, xs, y); break;
    }
}

// Two-row tiles exist for the 32-value block formats; each (row, token) gets the operations
// the row kernel gives it, so a batch's results equal its tokens' one by one.
static RowDot2 x86_table2(int t) {
    switch (t) {
        case KT_Q4_0: return rowdot2<DotQ32x2<Q4_0>>;
        case KT_Q4_1: return rowdot2<DotQ32x2<Q4_1>>;
        case KT_Q5_0: return rowdot2<DotQ32x2<Q5_0>>;
        case KT_Q5_1: return rowdot2<DotQ32x2<Q5_1>>;
#if !X86_VNNI   // the AVX-512 level's Q8_0 row kernel (DotQ8_0_512) sums in another order: no tile
        case KT_Q8_0: return rowdot2<DotQ32x2<Q8_0>>;
#endif
    }
    return nullptr;
}

static RowDot x86_table(int t) {
    switch (t) {
        case KT_F32: return rowdot<DotFloat<LoadF32>>;
        case KT_F16: return rowdot<DotFloat<LoadF16>>;
        case KT_BF16: return rowdot<DotFloat<LoadBF16>>;
        case KT_Q4_0: return rowdot<DotQ32<Q4_0>>;
        case KT_Q4_1: return rowdot<DotQ32<Q4_1>>;
        case KT_Q5_0: return rowdot<DotQ32<Q5_0>>;
        case KT_Q5_1: return rowdot<DotQ32<Q5_1>>;
#if X86_VNNI
        case KT_Q8_0: return rowdot<DotQ8_0_512>;
#else
        case KT_Q8_0: return rowdot<DotQ32<Q8_0>>;
#endif
        case KT_Q4_K: return rowdot<DotQ45K<false>>;
        case KT_Q5_K: return rowdot<DotQ45K<true>>;
        case KT_Q6_K: return rowdot<DotQ6K>;
        case KT_Q2_K: return rowdot<DotQ23K<false>>;
        case KT_Q3_K: return rowdot<DotQ23K<true>>;
        case KT_IQ4_XS: return rowdot<DotIQ4XS>;
    }
    return nullptr;
}

// ---- attention: one chunk of keys of one token -------------------------------------------
// AttnChunk entry (quants.h): the math of attention_chunk_scalar (kernels.cpp), with the nq
// query heads that share a KV head computed together, so each f16 K / V row is loaded and
// converted (F16C) once per group:
//   1. scores q . K_j in f32, 8 keys at a time (attn_score8);
//   2. per row: x = scale * s (softcap * tanh(x / softcap) when softcap > 0), m = max x,
//      e_j = exp(x_j - m), l = sum e_j, all on vectors (attn_softmax);
//   3. o = sum_j e_j V_j, 16 (AVX-512 level: 32) output columns held in registers over a
//      block of keys (attn_values).
// Memory: a cache row holds the K (or V) of every KV head, and a call covers ng adjacent KV
// heads, usually all of them (decode). Steps 1 and 3 walk the keys in order, every head of a
// block of keys before the next block, so the rows are read from memory whole and in order,
// once: a stream the hardware prefetchers follow. Step 1 prefetches each block's K rows whole
// before its first head runs (all their lines requested at once), and the V rows of the same
// keys, which step 3 then finds in the caches. (Measured on Zen 4, SmolLM2's cache: 30
// layers, 4096 keys, rows of 3 heads x 128 bytes. A plain read loop, one thread: 10-11 ms
// sweeping one head's 128 bytes of every row at a time, 4 ms reading the rows whole and in
// order. In this kernel, 2 threads: prefetching K 8 to 32 rows ahead was slower than
// prefetching the block being computed; V prefetched in step 1 beat V prefetched block by
// block in step 3 by 8%, and by 5% on Qwen2.5's shape.) Needs head_dim % 16 == 0 (the caller
// checks).

// Keys of a values block (step 3). 16 measured faster than 32 on Qwen2.5's shape (2 KV heads
// of 64, 4096 keys; equal on SmolLM2's and Gemma-3's).
constexpr int kAttnValueBlock = 16;

// exp(x) for x <= 0 (softmax arguments): x = n ln2 + r with |r| <= ln2/2, exp(r) by its
// Taylor series to r^7 (truncation below 1e-8 relative), times 2^n built in the exponent
// bits. Below -87 (where 2^n would leave the normal range) the result is ~0 as it should;
// a NaN passes through (max_ps returns its second operand when one is NaN).
static inline TGT __m256 exp_neg8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);   // ln2, high part
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);     // ln2, low part
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// tanh(y) = sign(y) (1 - e) / (1 + e), e = exp(-2|y|) <= 1 (nothing overflows); for |y| < 1/8,
// where 1 - e would cancel, its series to y^9 (truncation below 1e-11 relative). A few ulps
// either way; a NaN passes through.
static inline TGT __m256 tanh8(__m256 y) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 ay = _mm256_andnot_ps(sign, y);
    const __m256 e = exp_neg8(_mm256_mul_ps(ay, _mm256_set1_ps(-2.0f)));
    const __m256 big = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    const __m256 y2 = _mm256_mul_ps(ay, ay);
    __m256 p = _mm256_set1_ps(62.0f / 2835);
    p = _mm256_fmadd_ps(p, y2, _mm256_set1_ps(-17.0f / 315));
    p = _mm256_fmadd_ps(p, y2, _mm256_set1_ps(2.0f / 15));
    p = _mm256_fmadd_ps(p, y2, _mm256_set1_ps(-1.0f / 3));
    const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, y2), ay, ay);
    const __m256 t = _mm256_blendv_ps(big, small, _mm256_cmp_ps(ay, _mm256_set1_ps(0.125f), _CMP_LT_OQ));
    return _mm256_or_ps(t, _mm256_and_ps(y, sign));
}

static inline TGT __m256 f16x8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

// Every 64-byte line of the `bytes` bytes at p into the caches.
static inline TGT void prefetch_bytes(const void* p, int bytes) {
    const uintptr_t b = (uintptr_t)p & ~(uintptr_t)63, e = (uintptr_t)p + bytes;
    for (uintptr_t a = b; a < e; a += 64) _mm_prefetch((const char*)a, _MM_HINT_T0);
}

// NQ query rows (q, hd apart) dotted with K rows a and b, then folded pairwise:
// h[i] = hadd(acc_a, acc_b), lanes (a01 a23 b01 b23 | a45 a67 b45 b67), aXY = lanes X + Y of
// row i's accumulator for a.
template <int NQ>
static inline TGT void attn_dot2(const float* q, int hd, const uint16_t* ka, const uint16_t* kb, __m256* h) {
    __m256 sa[NQ], sb[NQ];
    for (int i = 0; i < NQ; ++i) sa[i] = sb[i] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += 8) {
        const __m256 a = f16x8(ka + d), b = f16x8(kb + d);
        for (int i = 0; i < NQ; ++i) {
            const __m256 qv = _mm256_loadu_ps(q + i * hd + d);
            sa[i] = _mm256_fmadd_ps(qv, a, sa[i]);
            sb[i] = _mm256_fmadd_ps(qv, b, sb[i]);
        }
    }
    for (int i = 0; i < NQ; ++i) h[i] = _mm256_hadd_ps(sa[i], sb[i]);
}

// Scores of NQ query rows against the 8 K rows kr[0..8): row i's 8 at s + i * kAttnChunk.
// The 8 keys' accumulators fold into one vector by horizontal adds, so each key's 8 lanes
// are summed in one order, (x0 + x1) + (x2 + x3) + ((x4 + x5) + (x6 + x7)), whichever place
// it has in the block.
template <int NQ>
static inline TGT void attn_score8(const float* q, int hd, const uint16_t* const* kr, float* s) {
    __m256 h0[NQ], h1[NQ], g0[NQ];
    attn_dot2<NQ>(q, hd, kr[0], kr[1], h0);
    attn_dot2<NQ>(q, hd, kr[2], kr[3], h1);
    for (int i = 0; i < NQ; ++i) g0[i] = _mm256_hadd_ps(h0[i], h1[i]);   // keys 0-3, both halves
    attn_dot2<NQ>(q, hd, kr[4], kr[5], h0);
    attn_dot2<NQ>(q, hd, kr[6], kr[7], h1);
    for (int i = 0; i < NQ; ++i) {
        const __m256 g1 = _mm256_hadd_ps(h0[i], h1[i]);                  // keys 4-7
        _mm256_storeu_ps(s + i * kAttnChunk, _mm256_add_ps(_mm256_permute2f128_ps(g0[i], g1, 0x20),
                                                           _mm256_permute2f128_ps(g0[i], g1, 0x31)));
    }
}

// One row's n scores at s, in place: x = scale * s (softcap * tanh(x / softcap) when
// softcap > 0), m = max x, e = exp(x - m), l = sum e (8 partial sums, then hsum). Entries
// n .. n rounded up to 8 are set to 0.
static TGT void attn_softmax(const kargs_attention& a, float* s, int n, float* m, float* l) {
    const int ns = (n + 7) & ~7;
    const __m256 scale = _mm256_set1_ps(a.scale), cap = _mm256_set1_ps(a.softcap);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 mx = ninf;
    for (int j = 0; j < ns; j += 8) {
        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(s + j), scale);
        if (a.softcap > 0) x = _mm256_mul_ps(cap, tanh8(_mm256_div_ps(x, cap)));
        if (j + 8 > n)   // the padding lanes: -inf, never the max
            x = _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), lane)));
        _mm256_storeu_ps(s + j, x);
        mx = _mm256_max_ps(mx, x);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float mf = _mm_cvtss_f32(m4);
    const __m256 vmax = _mm256_set1_ps(mf);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < ns; j += 8) {
        __m256 e = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmax));
        if (j + 8 > n)   // zero the padding lanes
            e = _mm256_and_ps(e, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), lane)));
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    *m = mf;
    *l = hsum(sum);
}

// out rows (out_stride apart) += sum_j p[i][j] V_j over the n V rows at v (kv_dim apart), for
// NQ rows (row i of p at p + i * kAttnChunk); out starts from 0 when `first`. 8 * W output
// columns at a time stay in registers for the whole sweep. Each output element adds its
// terms in key order, so the result does not depend on how the keys are cut into blocks.
template <int NQ, int W>
static TGT void attn_values(const float* p, int hd, const uint16_t* v, int kv_dim, int n, float* out,
                            int out_stride, bool first) {
    for (int d = 0; d < hd; d += 8 * W) {
        __m256 acc[NQ][W];
        for (int i = 0; i < NQ; ++i)
            for (int w = 0; w < W; ++w)
                acc[i][w] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(out + i * out_stride + d + 8 * w);
        const uint16_t* vj = v + d;
        for (int j = 0; j < n; ++j, vj += kv_dim) {
            __m256 vv[W];
            for (int w = 0; w < W; ++w) vv[w] = f16x8(vj + 8 * w);
            for (int i = 0; i < NQ; ++i) {
                const __m256 pj = _mm256_broadcast_ss(p + i * kAttnChunk + j);
                for (int w = 0; w < W; ++w) acc[i][w] = _mm256_fmadd_ps(pj, vv[w], acc[i][w]);
            }
        }
        for (int i = 0; i < NQ; ++i)
            for (int w = 0; w < W; ++w) _mm256_storeu_ps(out + i * out_stride + d + 8 * w, acc[i][w]);
    }
}

// Query rows scored together: the accumulators of 4 rows (and the folded sums) need 19
// vector registers, of 3 rows 15.
constexpr int kAttnScoreRows = X86_VREGS >= 32 ? 4 : 3;
// Output columns a values sweep holds: 4 rows x 32 columns need 16 accumulators + 5.
constexpr int kAttnValueVecs = X86_VREGS >= 32 ? 4 : 2;

// AttnChunk entry (quants.h).
static TGT void attn_chunk(const kargs_attention& a, const float* q, int nq, int g0, int ng, const uint16_t* kc,
                           const uint16_t* vc, int j0, int n, float* sc, float* part) {
    const int hd = a.head_dim, kv_dim = a.n_kv_heads * hd, rows = nq * ng;
    const int ps = (int)attn_part_stride(hd), row_bytes = 2 * hd * ng;   // the bytes of a cache row read
    const uint16_t* k = kc + (int64_t)j0 * kv_dim + g0 * hd;
    const uint16_t* v = vc ? vc + (int64_t)j0 * kv_dim + g0 * hd : nullptr;
    // 1. scores, key block by key block, every head of a block before the next block
    for (int j = 0; j < n; j += 8) {
        for (int u = j; u < std::min(n, j + 8); ++u) prefetch_bytes(k + (int64_t)u * kv_dim, row_bytes);
        if (v)   // after the K rows, which are needed first
            for (int u = j; u < std::min(n, j + 8); ++u) prefetch_bytes(v + (int64_t)u * kv_dim, row_bytes);
        for (int gi = 0; gi < ng; ++gi) {
            const uint16_t* kr[8];
            for (int u = 0; u < 8; ++u) kr[u] = k + (int64_t)std::min(j + u, n - 1) * kv_dim + gi * hd;   // past n: key n - 1 again
            for (int i = 0; i < nq; i += kAttnScoreRows) {
                const float* qi = q + (int64_t)(gi * nq + i) * hd;
                float* si = sc + (int64_t)(gi * nq + i) * kAttnChunk + j;
                switch (std::min(kAttnScoreRows, nq - i)) {
                    case 1: attn_score8<1>(qi, hd, kr, si); break;
                    case 2: attn_score8<2>(qi, hd, kr, si); break;
                    case 3: attn_score8<3>(qi, hd, kr, si); break;
                    default: attn_score8<kAttnScoreRows>(qi, hd, kr, si); break;
                }
            }
        }
    }
    // 2. softmax of each row
    for (int r = 0; r < rows; ++r) attn_softmax(a, sc + (int64_t)r * kAttnChunk, n, part + r * ps + hd, part + r * ps + hd + 1);
    if (!v) return;
    // 3. values, in blocks of keys, every head of a block before the next block
    const bool wide = hd % (8 * kAttnValueVecs) == 0;
    const int vb = kAttnValueBlock;
    for (int j = 0; j < n; j += vb) {
        const int nb = std::min(vb, n - j);
        for (int gi = 0; gi < ng; ++gi) {
            const uint16_t* vg = v + (int64_t)j * kv_dim + gi * hd;
            for (int i = 0; i < nq; i += 4) {
                const int r = gi * nq + i;
                const float* pr = sc + (int64_t)r * kAttnChunk + j;
                float* o = part + r * ps;
#define ATTN_VALUES(NQ) wide ? attn_values<NQ, kAttnValueVecs>(pr, hd, vg, kv_dim, nb, o, ps, j == 0) \
                             : attn_values<NQ, 2>(pr, hd, vg, kv_dim, nb, o, ps, j == 0)
                switch (std::min(4, nq - i)) {
                    case 1: ATTN_VALUES(1); break;
                    case 2: ATTN_VALUES(2); break;
                    case 3: ATTN_VALUES(3); break;
                    default: ATTN_VALUES(4); break;
                }
#undef ATTN_VALUES
            }
        }
    }
}

// ---- GLU activations: out = act(gate) * up -----------------------------------------------
// Both activations through one sigmoid, which exp_neg8 gives without overflow:
//   silu(v) = v * sigmoid(v);  gelu_tanh(v) = 0.5 v (1 + tanh(z)) = v * sigmoid(2 z),
//   z = sqrt(2/pi) (v + 0.044715 v^3);
//   sigmoid(t) = 1 / (1 + e) for t >= 0 and e / (1 + e) for t < 0, e = exp(-|t|) <= 1.
// (The sigmoid form also avoids 1 + tanh(z) cancelling for large negative v.) A NaN gate
// gives NaN.
static inline TGT __m256 sigmoid8(__m256 t) {
    const __m256 e = exp_neg8(_mm256_or_ps(t, _mm256_set1_ps(-0.0f)));   // -|t|
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 num = _mm256_blendv_ps(e, one, _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GE_OQ));
    return _mm256_div_ps(num, _mm256_add_ps(one, e));
}

template <bool Gelu>
static inline TGT __m256 glu8(__m256 v, __m256 u) {
    __m256 t = v;
    if (Gelu) {   // 2 z = v * (2 sqrt(2/pi) + 2 sqrt(2/pi) 0.044715 v^2)
        const __m256 c1 = _mm256_set1_ps(2 * 0.7978845608028654f);
        const __m256 c3 = _mm256_set1_ps(2 * 0.7978845608028654f * 0.044715f);
        t = _mm256_mul_ps(v, _mm256_fmadd_ps(c3, _mm256_mul_ps(v, v), c1));
    }
    return _mm256_mul_ps(_mm256_mul_ps(v, sigmoid8(t)), u);
}

// Every element through the same vector code (the last few padded), so a value's result
// does not depend on where a thread's range starts (a token's bits are the same in any batch).
template <bool Gelu>
static TGT void glu_row(const float* g, const float* u, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, glu8<Gelu>(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (i < n) {
        alignas(32) float gt[8] = {0}, ut[8] = {0}, ot[8];
        std::memcpy(gt, g + i, (n - i) * sizeof(float));
        std::memcpy(ut, u + i, (n - i) * sizeof(float));
        _mm256_store_ps(ot, glu8<Gelu>(_mm256_load_ps(gt), _mm256_load_ps(ut)));
        std::memcpy(out + i, ot, (n - i) * sizeof(float));
    }
}

// ---- argmax (greedy sampling) ------------------------------------------------------------
// Two passes over the row (it stays in L2 between them): the maximum, in four independent
// vectors, with the largest exponent field seen (x & 0x7f800000 as an integer: all ones only
// for a NaN or an infinity); then the first element equal to it. Equal compares -0 with +0
// as numpy's argmax does, so the first of either sign is found.
static inline TGT __m256i argmax_expo(__m256 v) {
    return _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7f800000));
}
static TGT ArgmaxPart argmax_row(const float* x, int64_t n) {
    if (n < 32) return argmax_part(x, n);
    const __m256i em = _mm256_set1_epi32(0x7f800000);
    __m256 m0 = _mm256_loadu_ps(x), m1 = m0, m2 = m0, m3 = m0;
    __m256i e0 = _mm256_setzero_si256(), e1 = e0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        const __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
        m0 = _mm256_max_ps(m0, v0); m1 = _mm256_max_ps(m1, v1);
        m2 = _mm256_max_ps(m2, v2); m3 = _mm256_max_ps(m3, v3);
        e0 = _mm256_max_epi32(e0, _mm256_max_epi32(argmax_expo(v0), argmax_expo(v1)));
        e1 = _mm256_max_epi32(e1, _mm256_max_epi32(argmax_expo(v2), argmax_expo(v3)));
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        m0 = _mm256_max_ps(m0, v);
        e0 = _mm256_max_epi32(e0, argmax_expo(v));
    }
    const __m256i e = _mm256_max_epi32(e0, e1);
    bool bad = !_mm256_testz_si256(_mm256_cmpeq_epi32(e, em), _mm256_cmpeq_epi32(e, em));
    m0 = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float mx = _mm_cvtss_f32(h);
    for (; i < n; ++i) {   // the last n % 8 values
        uint32_t u;
        std::memcpy(&u, x + i, 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
        mx = x[i] > mx ? x[i] : mx;
    }
    if (bad) return ArgmaxPart{mx, 0, true};
    const __m256 vm = _mm256_set1_ps(mx);
    for (i = 0; i + 8 <= n; i += 8) {
        const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vm, _CMP_EQ_OQ));
        if (hit) return ArgmaxPart{mx, i + __builtin_ctz((unsigned)hit), false};
    }
    for (; i < n; ++i)
        if (x[i] == mx) return ArgmaxPart{mx, i, false};
    return ArgmaxPart{mx, 0, false};   // not reached: mx is one of the values
}

// ---- f32 -> f16 (the KV cache) ------------------------------------------------------------
// vcvtps2ph rounding to nearest even, as f32_to_f16 (f16.h) does for the tail.
static TGT void f16_row(const float* x, uint16_t* y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) y[i] = f32_to_f16(x[i]);
}

#undef TGT
