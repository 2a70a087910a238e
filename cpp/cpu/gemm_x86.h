// gemm_x86.h -- the matmul with 16 weight rows per vector (AVX-512 VNNI), for every batch
// size: compiled by quants_avx512.cpp inside its namespace, after quants_x86.h (whose block
// decoders and helpers it uses).
//
// Lane r of every vector is weight row r of a group of 16. Per group, the weights are
// unpacked a few blocks at a time into a "slab" in the thread's scratch (L1-sized): each
// value as an unsigned byte, laid out so that one 64-byte load is "4 values of 16 rows"
// (for k = 0..7, bytes 4k..4k+3 of the 16 rows' 32-value block: the Q8_0 repacked layout of
// quants.h), plus the block / sub-block scales as 16-lane vectors. Then, for every token of
// the batch, one vpdpbusd per 4 values multiplies the 16 rows by the token's 4 activation
// bytes broadcast: no horizontal sums, and the float work (scales) once per block for 16
// rows. The slab is unpacked once per call whatever the number of tokens, so prefill pays
// for the unpacking once per 16 rows. Decode batches take other routes to the same integers:
// on 32-value blocks up to 32 tokens, and on Q4_K / Q6_K from 2 to 32, each block of the 16
// rows is transposed in registers instead of unpacked to memory ("a few tokens on ..."); on
// the other super-blocks up to 8 tokens, and one token on Q4_K / Q6_K, the row-dot kernels'
// code runs 8 rows at a time ("small batches").
//
// What each (row, token) gets is one fixed sequence of operations, the same for any batch
// size and any split over threads (a row's result does not depend on which other rows or
// tokens share the call: Model.step's batches of several sequences rely on that):
//   32-value blocks (Q4_0, Q5_0: value d * (u - o), o = 8 / 16; Q4_1, Q5_1: d * u + m),
//   activations in BlockQ8, for b = 0, 1, ...:
//     dot = -o * sum(qs_b) + sum_i u_i qs_i     (exact integers; sum(qs): BlockQ8's sum)
//     acc = fma(float(dot), d_b * da_b, acc)                       (Q4_0, Q5_0)
//     acc = acc + fma(m_b, s_b, float(dot) * (d_b * da_b))         (Q4_1, Q5_1; s = da * sum(qs))
//   256-value super-blocks (K-quants, IQ4_XS), activations in BlockQ8K, per super-block:
//     I = sum_s sc_s * dot_s(u, qs),  Mn = sum_g mn_g * bsum_g     (exact integers)
//     acc = fma(float(I), d * da, acc); acc = fma(-float(Mn), dmin * da, acc)   (a min: Q4_K, Q5_K, Q2_K)
//     acc = fma(float(I - Mn), d * da, acc)                                     (an offset o)
//   over sub-blocks s of SB = 16 or 32 values with integer scales sc_s, and groups g of 16
//   values with integer mins mn_g (bsum_g: BlockQ8K's sums per 16); a format with a constant
//   offset o instead of a min (Q6_K: o = 32, Q3_K: 4, IQ4_XS: u = value + 128, o = 128) has
//   mn_g = o * sc_s and dmin = d.
// Every step is written as an explicit vector operation (no a * b + c left for the compiler to
// fuse or not). The row-dot kernels compute the same integers but add them up in float in
// another order, so the rows of a matrix go through this path for every batch size or for
// none: groups of 16 rows always here, the last N % 16 rows always through the row-dot kernels.

#define TGT __attribute__((target(X86_TARGET)))

// ---- 16 x 8 transposition of 32-bit words ---------------------------------------------
// Rows r = 0..15 of 8 words at u + r * stride into out: word k of row r at out + 64 k + 4 r.
// Rows r and r + 8 share a vector (one per 256-bit half), then an 8 x 8 transposition per
// half by unpacks, then the quarters put in row order.
static inline TGT void transpose16x8(const uint8_t* u, size_t stride, uint8_t* out) {
    __m512i p[8], t[8], q[8];
    for (int i = 0; i < 8; ++i)
        p[i] = _mm512_inserti64x4(_mm512_castsi256_si512(load32(u + i * stride)), load32(u + (i + 8) * stride), 1);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_epi32(p[i], p[i + 1]);       // per 128-bit lane: a0 b0 a1 b1
        t[i + 1] = _mm512_unpackhi_epi32(p[i], p[i + 1]);   // a2 b2 a3 b3
    }
    for (int h = 0; h < 2; ++h) {   // rows 0-3 (h = 0) and 4-7 (h = 1) of each half
        const __m512i* s = t + 4 * h;
        q[4 * h + 0] = _mm512_unpacklo_epi64(s[0], s[2]);   // word 0 of each lane, 4 rows
        q[4 * h + 1] = _mm512_unpackhi_epi64(s[0], s[2]);   // word 1
        q[4 * h + 2] = _mm512_unpacklo_epi64(s[1], s[3]);   // word 2
        q[4 * h + 3] = _mm512_unpackhi_epi64(s[1], s[3]);   // word 3
    }
    // lane l of q[m] / q[4 + m]: rows 0-3 / 4-7 (+ 8 for l >= 2), word 4 (l % 2) + m
    const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0), hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for (int m = 0; m < 4; ++m) {
        _mm512_storeu_si512(out + 64 * m, _mm512_permutex2var_epi64(q[m], lo, q[4 + m]));
        _mm512_storeu_si512(out + 64 * (4 + m), _mm512_permutex2var_epi64(q[m], hi, q[4 + m]));
    }
}

static inline TGT __m512i bcast4(const void* p) {   // 4 bytes to every lane
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// ---- the float part, shared by the two ways of getting the integers ---------------------
// 16 rows' exact integer sums of one block (dot) or super-block (isum, msum) for one token:
// the scaling every path uses, so that each (row, token) gets the same float operations.
template <bool Min>
static inline TGT __m512 finish_q32(__m512 acc, __m512i dot, __m512 d, __m512 m, float da, float s) {
    const __m512 c = _mm512_mul_ps(d, _mm512_set1_ps(da));
    if (Min) return _mm512_add_ps(acc, _mm512_fmadd_ps(m, _mm512_set1_ps(s), _mm512_mul_ps(_mm512_cvtepi32_ps(dot), c)));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), c, acc);
}
template <bool Offset>
static inline TGT __m512 finish_k(__m512 acc, __m512i isum, __m512i msum, __m512 d, __m512 dmin, float da_) {
    const __m512 da = _mm512_set1_ps(da_);
    if (Offset) return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(isum, msum)), _mm512_mul_ps(d, da), acc);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, da), acc);
    return _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmin, da), acc);
}

// 8 vectors of 8 int32 lanes -> one vector of their 8 totals (exact).
static inline TGT __m256i sum8x8(const __m256i* p) {
    const __m256i a0 = _mm256_hadd_epi32(p[0], p[1]), a1 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i a2 = _mm256_hadd_epi32(p[4], p[5]), a3 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i b0 = _mm256_hadd_epi32(a0, a1), b1 = _mm256_hadd_epi32(a2, a3);   // lane halves: 4 rows each
    return _mm256_add_epi32(_mm256_permute2x128_si256(b0, b1, 0x20), _mm256_permute2x128_si256(b0, b1, 0x31));
}

// ---- 32-value blocks ---------------------------------------------------------------------
// Slab per block: u [8][16][4] bytes, then d [16], m [16] floats.
constexpr size_t kSlab32 = 8 * 64 + 2 * 64;
constexpr int kChunk32 = 8;   // blocks per slab

// NX tokens (activation rows x + j * xs) against the slab's nb blocks (activation blocks
// b0 ..); acc [NX][16] in and out.
template <int NX, class B>
static TGT void rows16_q32(const uint8_t* slab, int b0, int nb, const uint8_t* x, size_t xs, float* acc) {
    constexpr bool Min = B::Min;
    __m512 a[NX];
    const BlockQ8* xb[NX];
    for (int j = 0; j < NX; ++j) {
        a[j] = _mm512_loadu_ps(acc + 16 * j);
        xb[j] = (const BlockQ8*)(x + j * xs) + b0;
    }
    for (int b = 0; b < nb; ++b, slab += kSlab32) {
        __m512i dot[NX];
        for (int j = 0; j < NX; ++j) dot[j] = _mm512_set1_epi32(-B::Off * xb[j][b].sum);
        for (int c = 0; c < 8; ++c) {
            const __m512i wv = _mm512_loadu_si512(slab + 64 * c);
            for (int j = 0; j < NX; ++j) dot[j] = _mm512_dpbusd_epi32(dot[j], wv, bcast4(xb[j][b].qs + 4 * c));
        }
        const __m512 d = _mm512_loadu_ps((const float*)(slab + 512));
        const __m512 m = Min ? _mm512_loadu_ps((const float*)(slab + 576)) : _mm512_setzero_ps();
        for (int j = 0; j < NX; ++j) a[j] = finish_q32<Min>(a[j], dot[j], d, m, xb[j][b].d, xb[j][b].s);
    }
    for (int j = 0; j < NX; ++j) _mm512_storeu_ps(acc + 16 * j, a[j]);
}

// ---- 256-value super-blocks -----------------------------------------------------------
// Slab per super-block: u [64][16][4] bytes, sc [256 / SB][16] int32, mn [8][16][2] int16
// (groups 2p and 2p + 1 of each row side by side, for vpdpwssd), then d [16], dmin [16].
template <int SB>
constexpr size_t slab256() { return 64 * 64 + (256 / SB) * 64 + 8 * 64 + 2 * 64; }

// Per format: unpack(w, u, sc, mn, d, dmin) for one super-block of one row: u [256] bytes,
// sc[s * 16] for each sub-block s, mn[g] for each group of 16 (at mn + (g / 2) * 32 + g % 2).
struct Q4K {
    static constexpr int SB = 32, Bytes = 144;
    static constexpr bool Offset = false;
    static TGT void unpack(const uint8_t* w, uint8_t* u, int32_t* sc, int16_t* mn, float* d, float* dmin) {
        uint8_t s8[8], m8[8];
        unpack_scales_k4(w + 4, s8, m8);
        for (int s = 0; s < 8; ++s) { sc[16 * s] = s8[s]; mn[32 * s] = mn[32 * s + 1] = m8[s]; }
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        for (int c = 0; c < 4; ++c) {
            const __m256i raw = load32(w + 16 + 32 * c);
            _mm256_storeu_si256((__m256i*)(u + 64 * c), _mm256_and_si256(raw, m4));
            _mm256_storeu_si256((__m256i*)(u + 64 * c + 32), _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4));
        }
        *d = h2f(w);
        *dmin = h2f(w + 2);
    }
};
struct Q5K {
    static constexpr int SB = 32, Bytes = 176;
    static constexpr bool Offset = false;
    static TGT void unpack(const uint8_t* w, uint8_t* u, int32_t* sc, int16_t* mn, float* d, float* dmin) {
        uint8_t s8[8], m8[8];
        unpack_scales_k4(w + 4, s8, m8);
        for (int s = 0; s < 8; ++s) { sc[16 * s] = s8[s]; mn[32 * s] = mn[32 * s + 1] = m8[s]; }
        const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
        __m256i qh = load32(w + 16);   // shifted right by 2 per chunk: bits 0 and 1 are ours
        for (int c = 0; c < 4; ++c) {
            const __m256i raw = load32(w + 48 + 32 * c);
            __m256i q0 = _mm256_and_si256(raw, m4), q1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            q0 = _mm256_or_si256(q0, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
            q1 = _mm256_or_si256(q1, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
            qh = _mm256_srli_epi16(qh, 2);
            _mm256_storeu_si256((__m256i*)(u + 64 * c), q0);
            _mm256_storeu_si256((__m256i*)(u + 64 * c + 32), q1);
        }
        *d = h2f(w);
        *dmin = h2f(w + 2);
    }
};
struct Q6K {   // value d * sc * (u - 32)
    static constexpr int SB = 16, Bytes = 210;
    static constexpr bool Offset = true;
    static TGT void unpack(const uint8_t* w, uint8_t* u, int32_t* sc, int16_t* mn, float* d, float* dmin) {
        const int8_t* s8 = (const int8_t*)(w + 192);
        for (int s = 0; s < 16; ++s) { sc[16 * s] = s8[s]; mn[32 * (s / 2) + s % 2] = (int16_t)(32 * s8[s]); }
        const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
        for (int h = 0; h < 2; ++h) {
            const __m256i l0 = load32(w + 64 * h), l1 = load32(w + 64 * h + 32), qh = load32(w + 128 + 32 * h);
            uint8_t* o = u + 128 * h;
            _mm256_storeu_si256((__m256i*)o, _mm256_or_si256(_mm256_and_si256(l0, m4),
                                                             _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)));
            _mm256_storeu_si256((__m256i*)(o + 32), _mm256_or_si256(_mm256_and_si256(l1, m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)));
            _mm256_storeu_si256((__m256i*)(o + 64), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4)));
            _mm256_storeu_si256((__m256i*)(o + 96), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4)));
        }
        *d = *dmin = h2f(w + 208);
    }
};
template <bool Q3>
struct Q23K {   // Q2_K: d * (sc & 15) * u - dmin * (sc >> 4); Q3_K: d * sc6 * (u - 4)
    static constexpr int SB = 16, Bytes = Q3 ? 110 : 84;
    static constexpr bool Offset = Q3;
    static TGT void unpack(const uint8_t* w, uint8_t* u, int32_t* sc, int16_t* mn, float* d, float* dmin) {
        if (Q3) {
            int8_t s8[16];
            unpack_scales_q3k(w + 96, s8);
            for (int s = 0; s < 16; ++s) { sc[16 * s] = s8[s]; mn[32 * (s / 2) + s % 2] = (int16_t)(4 * s8[s]); }
            *d = *dmin = h2f(w + 108);
        } else {
            for (int s = 0; s < 16; ++s) { sc[16 * s] = w[s] & 0xF; mn[32 * (s / 2) + s % 2] = w[s] >> 4; }
            *d = h2f(w + 80);
            *dmin = h2f(w + 82);
        }
        const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
        __m256i hm = Q3 ? load32(w) : _mm256_setzero_si256();
        const uint8_t* qs = w + (Q3 ? 32 : 16);
        for (int h = 0; h < 2; ++h) {
            __m256i raw = load32(qs + 32 * h);
            for (int c = 0; c < 4; ++c) {
                __m256i q = _mm256_and_si256(raw, m2);
                raw = _mm256_srli_epi16(raw, 2);
                if (Q3) {   // hm is shifted right by 1 per chunk, so its bit 0 is ours
                    q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(hm, one), 2));
                    hm = _mm256_srli_epi16(hm, 1);
                }
                _mm256_storeu_si256((__m256i*)(u + 128 * h + 32 * c), q);
            }
        }
    }
};
struct IQ4XS {   // value d * ls * kvalues[q] = d * ls * (u - 128), u = kvalues[q] + 128
    static constexpr int SB = 32, Bytes = 136;
    static constexpr bool Offset = true;
    static TGT void unpack(const uint8_t* w, uint8_t* u, int32_t* sc, int16_t* mn, float* d, float* dmin) {
        int8_t ls[8];
        unpack_scales_iq4xs(w, ls);
        for (int s = 0; s < 8; ++s) { sc[16 * s] = ls[s]; mn[32 * s] = mn[32 * s + 1] = (int16_t)(128 * ls[s]); }
        const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)kvalues_iq4nl));
        for (int s = 0; s < 8; ++s)
            _mm256_storeu_si256((__m256i*)(u + 32 * s), _mm256_xor_si256(_mm256_shuffle_epi8(table, nibbles_32(w + 8 + 16 * s)),
                                                                         _mm256_set1_epi8((char)0x80)));
        *d = *dmin = h2f(w);
    }
};

// Super-block sb of the 16 rows at w into slab; u: scratch of 16 x 256 bytes.
template <class F>
static TGT void unpack16_k(const uint8_t* w, size_t row_bytes, int sb, int, uint8_t* u, uint8_t* slab) {
    constexpr int NS = 256 / F::SB;
    int32_t* sc = (int32_t*)(slab + 4096);
    int16_t* mn = (int16_t*)(sc + 16 * NS);
    float* f = (float*)(mn + 16 * 16);
    for (int r = 0; r < 16; ++r)
        F::unpack(w + r * row_bytes + (size_t)sb * F::Bytes, u + 256 * r, sc + r, mn + 2 * r, f + r, f + 16 + r);
    for (int g = 0; g < 8; ++g) transpose16x8(u + 32 * g, 256, slab + 512 * g);
}

// NX tokens (BlockQ8K rows x + j * xs) against the slab's super-block (activation block
// sb); acc [NX][16] in and out.
template <int NX, class F>
static TGT void rows16_k(const uint8_t* slab, int sb, int, const uint8_t* x, size_t xs, float* acc) {
    constexpr int SB = F::SB, NS = 256 / SB;
    const int32_t* sc = (const int32_t*)(slab + 4096);
    const int16_t* mn = (const int16_t*)(sc + 16 * NS);
    const float* f = (const float*)(mn + 16 * 16);
    const BlockQ8K* xb[NX];
    __m512i isum[NX];
    for (int j = 0; j < NX; ++j) {
        xb[j] = (const BlockQ8K*)(x + j * xs) + sb;
        isum[j] = _mm512_setzero_si512();
    }
    for (int s = 0; s < NS; ++s) {
        __m512i dot[NX];
        for (int j = 0; j < NX; ++j) dot[j] = _mm512_setzero_si512();
        for (int c = SB / 4 * s; c < SB / 4 * (s + 1); ++c) {
            const __m512i wv = _mm512_loadu_si512(slab + 64 * c);
            for (int j = 0; j < NX; ++j) dot[j] = _mm512_dpbusd_epi32(dot[j], wv, bcast4(xb[j]->qs + 4 * c));
        }
        const __m512i scv = _mm512_loadu_si512(sc + 16 * s);
        for (int j = 0; j < NX; ++j) isum[j] = _mm512_add_epi32(isum[j], _mm512_mullo_epi32(dot[j], scv));
    }
    __m512i msum[NX];
    for (int j = 0; j < NX; ++j) msum[j] = _mm512_setzero_si512();
    for (int p = 0; p < 8; ++p) {
        const __m512i mv = _mm512_loadu_si512(mn + 32 * p);
        for (int j = 0; j < NX; ++j) msum[j] = _mm512_dpwssd_epi32(msum[j], mv, bcast4(xb[j]->bsums + 2 * p));
    }
    const __m512 d = _mm512_loadu_ps(f), dmin = _mm512_loadu_ps(f + 16);
    for (int j = 0; j < NX; ++j)
        _mm512_storeu_ps(acc + 16 * j,
                         finish_k<F::Offset>(_mm512_loadu_ps(acc + 16 * j), isum[j], msum[j], d, dmin, xb[j]->d));
}

// ---- small batches: the integers row by row ------------------------------------------------
// For a token or a few, unpacking and transposing the weights costs more than it saves: each
// row's integer sums are computed as the row-dot kernels compute them (8 int32 lanes of
// partial sums, quants_x86.h), R rows at a time, the lanes of the R rows added up into one
// vector (vphaddd) and scaled with the same per-lane operations as above on R lanes (an FMA
// rounds the same in a lane of any width). NX <= 3 tokens; y[j * 16 + r].
// R rows side by side are R streams of weights: 8 where 8 rows are at most 12 KiB (and the
// next 8 are prefetched into L1 meanwhile, in address order), else 4; with more streams the
// hardware prefetchers fell behind and decode read the weights at half the speed.
constexpr int kSmall = 3;

static inline void prefetch_next(const uint8_t* next, size_t bytes, int i, int n) {   // share i of n
    const size_t per = ((bytes + n - 1) / n + 63) & ~size_t(63), end = std::min(bytes, per * (i + 1));
    for (size_t o = per * i; o < end; o += 64) {   // asm volatile: gcc drops a loop of _mm_prefetch
        if (bytes <= 12288) __asm__ volatile("prefetcht0 %0" : : "m"(*(const char*)(next + o)));
        else __asm__ volatile("prefetcht1 %0" : : "m"(*(const char*)(next + o)));
    }
}

// R = 8 / 4 rows: int32 vectors, float vectors and the reduction of R row vectors of 8 lanes.
template <int R> struct Lanes;
template <> struct Lanes<8> {
    using I = __m256i;
    using F = __m256;
    static TGT I sum(const __m256i* p) { return sum8x8(p); }
    static TGT F cvt(I v) { return _mm256_cvtepi32_ps(v); }
    static TGT I add(I a, I b) { return _mm256_add_epi32(a, b); }
    static TGT I sub(I a, I b) { return _mm256_sub_epi32(a, b); }
    static TGT I set1i(int v) { return _mm256_set1_epi32(v); }
    static TGT F set1(float v) { return _mm256_set1_ps(v); }
    static TGT F zero() { return _mm256_setzero_ps(); }
    static TGT F load(const float* p) { return _mm256_loadu_ps(p); }
    static TGT void store(float* p, F v) { _mm256_storeu_ps(p, v); }
    static TGT F mul(F a, F b) { return _mm256_mul_ps(a, b); }
    static TGT F addf(F a, F b) { return _mm256_add_ps(a, b); }
    static TGT F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
    static TGT F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
};
template <> struct Lanes<4> {
    using I = __m128i;
    using F = __m128;
    static TGT I sum(const __m256i* p) {
        const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    }
    static TGT F cvt(I v) { return _mm_cvtepi32_ps(v); }
    static TGT I add(I a, I b) { return _mm_add_epi32(a, b); }
    static TGT I sub(I a, I b) { return _mm_sub_epi32(a, b); }
    static TGT I set1i(int v) { return _mm_set1_epi32(v); }
    static TGT F set1(float v) { return _mm_set1_ps(v); }
    static TGT F zero() { return _mm_setzero_ps(); }
    static TGT F load(const float* p) { return _mm_loadu_ps(p); }
    static TGT void store(float* p, F v) { _mm_storeu_ps(p, v); }
    static TGT F mul(F a, F b) { return _mm_mul_ps(a, b); }
    static TGT F addf(F a, F b) { return _mm_add_ps(a, b); }
    static TGT F fmadd(F a, F b, F c) { return _mm_fmadd_ps(a, b, c); }
    static TGT F fnmadd(F a, F b, F c) { return _mm_fnmadd_ps(a, b, c); }
};

template <int R, int NX, class F, class D>
static TGT void small_k(const Rows16Args& g, const uint8_t* w, float* y) {
    using L = Lanes<R>;
    const BlockQ8K* xb[NX];
    typename L::F acc[NX];
    for (int j = 0; j < NX; ++j) {
        xb[j] = (const BlockQ8K*)(g.xq + j * g.xq_stride);
        acc[j] = L::zero();
    }
    const int nb = g.K / 256;
    for (int b = 0; b < nb; ++b) {
        prefetch_next(w + 8 * g.row_bytes, 8 * g.row_bytes, b, nb);
        const BlockQ8K* xa[NX];
        for (int j = 0; j < NX; ++j) xa[j] = xb[j] + b;
        __m256i is[NX][R], ms[NX][R];
        alignas(32) float d[R], dmin[R];
        for (int r = 0; r < R; ++r) {
            const uint8_t* blk = w + r * g.row_bytes + (size_t)b * F::Bytes;
            __m256i i1[NX], m1[NX];
            D::template ints<NX>(blk, xa, i1, m1);
            for (int j = 0; j < NX; ++j) { is[j][r] = i1[j]; ms[j][r] = m1[j]; }
            d[r] = D::d(blk);
            dmin[r] = D::dmin(blk);
        }
        const typename L::F dv = L::load(d), dm = L::load(dmin);
        for (int j = 0; j < NX; ++j) {   // finish_k on R lanes (an offset is already in the row kernels' isum)
            const typename L::F da = L::set1(xa[j]->d);
            acc[j] = L::fmadd(L::cvt(L::sum(is[j])), L::mul(dv, da), acc[j]);
            if (!F::Offset) acc[j] = L::fnmadd(L::cvt(L::sum(ms[j])), L::mul(dm, da), acc[j]);
        }
    }
    for (int j = 0; j < NX; ++j) L::store(y + j * 16, acc[j]);
}

// ---- a few tokens on 32-value blocks: 16 rows transposed in registers --------------------
// Up to 8 tokens, per group of 16 rows and block: the 16 bytes of packed nibbles of each row
// are loaded side by side and transposed as 32-bit words (a 4 x 4 transposition in each
// 128-bit lane), so that word i of the 16 rows is one vector, lane r = row r: its low
// nibbles are values 4i..4i+3, its high nibbles values 16 + 4i.., the 4-value groups i and
// i + 4 of the slab layout, one or two instructions away. The scales (and Q5's fifth bits)
// come by one gather each; bits 4k..4k+3 of a lane's qh go to bit 4 of its 4 bytes by one
// vpermd from a 16-entry table. Then per token 8 vpdpbusd against its activation bytes
// broadcast and finish_q32: the integers rows16_q32 computes from the slab, scaled the same
// way, so the same bits. Unlike the slab, nothing goes through memory, and unlike the
// row-by-row integers no lanes are added up across a vector.
template <class B> struct Layout32;   // byte offsets in a block: the nibbles, qh (-1: none)
template <> struct Layout32<Q4_0> { static constexpr int Qs = 2, Qh = -1; };
template <> struct Layout32<Q4_1> { static constexpr int Qs = 4, Qh = -1; };
template <> struct Layout32<Q5_0> { static constexpr int Qs = 6, Qh = 2; };
template <> struct Layout32<Q5_1> { static constexpr int Qs = 8, Qh = 4; };

// The 16 bytes at p + r * rb of rows r = 0..15 as 4 vectors: lane r of word[i] = bytes
// 4i..4i+3 of row r. c[l] holds rows l, l + 4, l + 8, l + 12 in its 128-bit lanes; a 4 x 4
// transposition of 32-bit words inside each lane then puts row 4g + l at lane 4g + l.
static inline TGT void words16x4(const uint8_t* p, size_t rb, __m512i* word) {
    auto row = [&](int r) { return _mm_loadu_si128((const __m128i*)(p + r * rb)); };
    __m512i c[4];
    for (int l = 0; l < 4; ++l) {
        __m512i t = _mm512_castsi128_si512(row(l));
        t = _mm512_inserti32x4(t, row(l + 4), 1);
        t = _mm512_inserti32x4(t, row(l + 8), 2);
        c[l] = _mm512_inserti32x4(t, row(l + 12), 3);
    }
    const __m512i t0 = _mm512_unpacklo_epi32(c[0], c[1]), t1 = _mm512_unpackhi_epi32(c[0], c[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(c[2], c[3]), t3 = _mm512_unpackhi_epi32(c[2], c[3]);
    word[0] = _mm512_unpacklo_epi64(t0, t2);
    word[1] = _mm512_unpackhi_epi64(t0, t2);
    word[2] = _mm512_unpacklo_epi64(t1, t3);
    word[3] = _mm512_unpackhi_epi64(t1, t3);
}

// One block (at w in row 0, rows rb apart; vidx: lane r = r * rb) of 16 rows: v[k] lane r =
// values 4k..4k+3 of row r as bytes; d and m (Q4_1, Q5_1) per lane.
template <class B>
static inline TGT void regs16_q32(const uint8_t* w, size_t rb, __m512i vidx, __m512i* v, __m512* d, __m512* m) {
    __m512i word[4];
    words16x4(w + Layout32<B>::Qs, rb, word);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm512_and_si512(word[i], m4);
        v[i + 4] = _mm512_and_si512(_mm512_srli_epi16(word[i], 4), m4);
    }
    const __m512i dm = _mm512_i32gather_epi32(vidx, (const void*)w, 1);   // d (and m above it)
    *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
    *m = B::Min ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))) : _mm512_setzero_ps();
    if (Layout32<B>::Qh >= 0) {
        // table[n]: byte j = 0x10 where bit j of n is set (vpermd reads the index's low 4 bits)
        const __m512i table = _mm512_setr_epi32(0, 0x10, 0x1000, 0x1010, 0x100000, 0x100010, 0x101000, 0x101010,
                                                0x10000000, 0x10000010, 0x10001000, 0x10001010, 0x10100000,
                                                0x10100010, 0x10101000, 0x10101010);
        const __m512i qh = _mm512_i32gather_epi32(vidx, (const void*)(w + Layout32<B>::Qh), 1);
        for (int k = 0; k < 8; ++k)
            v[k] = _mm512_or_si512(v[k], _mm512_permutexvar_epi32(_mm512_srli_epi32(qh, 4 * k), table));
    }
}

// The NX tokens' 8-bit blocks (BlockQ8 / BlockQ8K, g.xq_stride apart) and their zeroed
// accumulators (one lane per row).
template <int NX, class Blk>
static inline TGT void tokens16(const Rows16Args& g, const uint8_t* xq, const Blk** xb, __m512* acc) {
    for (int j = 0; j < NX; ++j) {
        xb[j] = (const Blk*)(xq + j * g.xq_stride);
        acc[j] = _mm512_setzero_ps();
    }
}
// Byte offsets of the 16 rows (row r at r * rb): the gather index of per-row block fields.
static inline TGT __m512i row_offsets16(size_t rb) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32((int)rb));
}

// Blocks [b0, b0 + nb) of the 16 rows at w into slab (u, rows16_drive's scratch for one
// block's rows, is not needed here): each block transposed in registers (regs16_q32), whose
// v[c] is exactly the slab's 4-value group c of the 16 rows, then stored with d and m.
template <class B>
static TGT void unpack16_q32(const uint8_t* w, size_t row_bytes, int b0, int nb, uint8_t*, uint8_t* slab) {
    const __m512i vidx = row_offsets16(row_bytes);
    for (int b = 0; b < nb; ++b, slab += kSlab32) {
        __m512i v[8];
        __m512 d, m;
        regs16_q32<B>(w + (size_t)(b0 + b) * B::Bytes, row_bytes, vidx, v, &d, &m);
        for (int c = 0; c < 8; ++c) _mm512_storeu_si512(slab + 64 * c, v[c]);
        _mm512_storeu_ps((float*)(slab + 512), d);
        _mm512_storeu_ps((float*)(slab + 576), m);
    }
}

// NX <= 8 tokens (g.xq ..) against the 16 rows at w: y + t * N, 16 outputs per token.
template <int NX, class B>
static TGT void regs16_q32_run(const Rows16Args& g, const uint8_t* w, const uint8_t* xq, float* y) {
    const BlockQ8* xb[NX];
    __m512 acc[NX];
    tokens16<NX>(g, xq, xb, acc);
    const size_t rb = g.row_bytes;
    const __m512i vidx = row_offsets16(rb);
    const int nb = g.K / 32;
    for (int b = 0; b < nb; ++b) {
        prefetch_next(w + 16 * rb, 16 * rb, b, nb);
        __m512i v[8];
        __m512 d, m;
        regs16_q32<B>(w + (size_t)b * B::Bytes, rb, vidx, v, &d, &m);
        for (int j = 0; j < NX; ++j) {
            const BlockQ8& a = xb[j][b];
            __m512i dot = _mm512_set1_epi32(-B::Off * a.sum);
            for (int c = 0; c < 8; ++c) dot = _mm512_dpbusd_epi32(dot, v[c], bcast4(a.qs + 4 * c));
            acc[j] = finish_q32<B::Min>(acc[j], dot, d, m, a.d, a.s);
        }
    }
    for (int j = 0; j < NX; ++j) _mm512_storeu_ps(y + (size_t)j * g.N, acc[j]);
}

// Rows [n0, n1) (multiples of 16), every token, 8 tokens at a time.
template <class B>
static TGT void regs16_q32_drive(const Rows16Args& g, int n0, int n1) {
    for (int n = n0; n + 16 <= n1; n += 16) {
        const uint8_t* w = g.W + (size_t)n * g.row_bytes;
        for (int t = 0; t < g.M; t += 8) {
            const uint8_t* x = g.xq + (size_t)t * g.xq_stride;
            float* y = g.y + (size_t)t * g.N + n;
            switch (std::min(8, g.M - t)) {
                case 1: regs16_q32_run<1, B>(g, w, x, y); break;
                case 2: regs16_q32_run<2, B>(g, w, x, y); break;
                case 3: regs16_q32_run<3, B>(g, w, x, y); break;
                case 4: regs16_q32_run<4, B>(g, w, x, y); break;
                case 5: regs16_q32_run<5, B>(g, w, x, y); break;
                case 6: regs16_q32_run<6, B>(g, w, x, y); break;
                case 7: regs16_q32_run<7, B>(g, w, x, y); break;
                default: regs16_q32_run<8, B>(g, w, x, y); break;
            }
        }
    }
}

// ---- a few tokens on Q4_K and Q6_K: 16 rows transposed in registers ----------------------
// The same idea for the super-blocks of the K-quant mixes (Q4_K_M files): per super-block of
// the 16 rows, the scales and mins are gathered as 32-bit words (one lane per row) and decoded
// in the lanes; the values are transposed 32 bytes of packed values at a time (two words16x4)
// and unpacked in registers; per token and sub-block s, vpdpbusd gives dot_s and
//   isum += sc_s * dot_s,  msum = sum over pairs of groups of 16 of (mn, mn) . (bsum, bsum)
// (vpdpwssd), then finish_k: the integers and float steps of rows16_k and small_k.

// 16 lanes of int32: byte k (0..3) of each lane, unsigned / sign-extended.
static inline TGT __m512i byte_u(__m512i v, int k) { return _mm512_and_si512(_mm512_srli_epi32(v, 8 * k), _mm512_set1_epi32(0xFF)); }
static inline TGT __m512i byte_s(__m512i v, int k) { return _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * k), 24); }
// (a, b) per lane as two int16 (a in the low half): the operand of vpdpwssd against (bsum_2p, bsum_2p+1).
static inline TGT __m512i pair16(__m512i a, __m512i b) {
    return _mm512_or_si512(_mm512_and_si512(a, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(b, 16));
}

template <int NX>
static TGT void regs16_q4k_run(const Rows16Args& g, const uint8_t* w, const uint8_t* xq, float* y) {
    const BlockQ8K* xb[NX];
    __m512 acc[NX];
    tokens16<NX>(g, xq, xb, acc);
    const size_t rb = g.row_bytes;
    const __m512i vidx = row_offsets16(rb);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const int nb = g.K / 256;
    for (int b = 0; b < nb; ++b) {
        prefetch_next(w + 16 * rb, 16 * rb, b, nb);
        const uint8_t* wb = w + (size_t)b * 144;   // {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}
        // the 6-bit scales and mins of unpack_scales_k4, in the lanes: bytes s of sc4[0] are
        // sc[s], of sc4[1] sc[4 + s]; likewise mn4 for the mins
        const __m512i a0 = _mm512_i32gather_epi32(vidx, (const void*)(wb + 4), 1);
        const __m512i a1 = _mm512_i32gather_epi32(vidx, (const void*)(wb + 8), 1);
        const __m512i a2 = _mm512_i32gather_epi32(vidx, (const void*)(wb + 12), 1);
        const __m512i m6 = _mm512_set1_epi8(0x3F), l4 = _mm512_set1_epi8(0x0F), h2 = _mm512_set1_epi8(0x03);
        const __m512i sc4[2] = {_mm512_and_si512(a0, m6),
                                _mm512_or_si512(_mm512_and_si512(a2, l4),
                                                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(a0, 6), h2), 4))};
        const __m512i mn4[2] = {_mm512_and_si512(a1, m6),
                                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(a2, 4), l4),
                                                _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(a1, 6), h2), 4))};
        __m512i isum[NX], msum[NX];
        for (int j = 0; j < NX; ++j) isum[j] = msum[j] = _mm512_setzero_si512();
        for (int c = 0; c < 4; ++c) {   // 32 bytes of qs: sub-block 2c in the low nibbles, 2c + 1 high
            __m512i word[8], v[16];
            words16x4(wb + 16 + 32 * c, rb, word);
            words16x4(wb + 16 + 32 * c + 16, rb, word + 4);
            for (int k = 0; k < 8; ++k) {
                v[k] = _mm512_and_si512(word[k], m4);
                v[8 + k] = _mm512_and_si512(_mm512_srli_epi16(word[k], 4), m4);
            }
            const __m512i s0 = byte_u(sc4[c / 2], 2 * c % 4), s1 = byte_u(sc4[c / 2], 2 * c % 4 + 1);
            for (int j = 0; j < NX; ++j) {
                const int8_t* a = xb[j][b].qs + 64 * c;
                __m512i d0 = _mm512_setzero_si512(), d1 = _mm512_setzero_si512();
                for (int k = 0; k < 8; ++k) {
                    d0 = _mm512_dpbusd_epi32(d0, v[k], bcast4(a + 4 * k));
                    d1 = _mm512_dpbusd_epi32(d1, v[8 + k], bcast4(a + 32 + 4 * k));
                }
                isum[j] = _mm512_add_epi32(isum[j], _mm512_add_epi32(_mm512_mullo_epi32(d0, s0), _mm512_mullo_epi32(d1, s1)));
            }
        }
        for (int s = 0; s < 8; ++s) {   // the min of sub-block s covers groups 2s and 2s + 1
            const __m512i m = byte_u(mn4[s / 4], s % 4), mm = pair16(m, m);
            for (int j = 0; j < NX; ++j) msum[j] = _mm512_dpwssd_epi32(msum[j], mm, bcast4(xb[j][b].bsums + 2 * s));
        }
        const __m512i dd = _mm512_i32gather_epi32(vidx, (const void*)wb, 1);
        const __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        const __m512 dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dd, 16)));
        for (int j = 0; j < NX; ++j) acc[j] = finish_k<false>(acc[j], isum[j], msum[j], d, dmin, xb[j][b].d);
    }
    for (int j = 0; j < NX; ++j) _mm512_storeu_ps(y + (size_t)j * g.N, acc[j]);
}

// Bits sh, sh + 1 of each byte as bits 4, 5 (Q6_K's two high bits).
static inline TGT __m512i q6_hi(__m512i qh, int sh) {
    return _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, sh), _mm512_set1_epi8(0x03)), 4);
}

template <int NX>
static TGT void regs16_q6k_run(const Rows16Args& g, const uint8_t* w, const uint8_t* xq, float* y) {
    const BlockQ8K* xb[NX];
    __m512 acc[NX];
    tokens16<NX>(g, xq, xb, acc);
    const size_t rb = g.row_bytes;
    const __m512i vidx = row_offsets16(rb);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const int nb = g.K / 256;
    for (int b = 0; b < nb; ++b) {
        prefetch_next(w + 16 * rb, 16 * rb, b, nb);
        const uint8_t* wb = w + (size_t)b * 210;   // {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}
        __m512i sc4[4];   // byte k of sc4[q]: the scale of sub-block 4q + k
        for (int q = 0; q < 4; ++q) sc4[q] = _mm512_i32gather_epi32(vidx, (const void*)(wb + 192 + 4 * q), 1);
        __m512i isum[NX], msum[NX];
        for (int j = 0; j < NX; ++j) isum[j] = msum[j] = _mm512_setzero_si512();
        // half h, words 4t..4t+3 of its 32-byte runs: values 128h + 32e + 16t + 4q + i (e = 0..3)
        // are sub-block 8h + 2e + t; as Q6K::unpack: e = 0, 1 the low nibbles of ql[64h..],
        // ql[64h + 32..] with qh bits 0-1, 2-3; e = 2, 3 their high nibbles with bits 4-5, 6-7
        for (int h = 0; h < 2; ++h)
            for (int t = 0; t < 2; ++t) {
                __m512i l0[4], l1[4], qh[4], v[4][4];
                words16x4(wb + 64 * h + 16 * t, rb, l0);
                words16x4(wb + 64 * h + 32 + 16 * t, rb, l1);
                words16x4(wb + 128 + 32 * h + 16 * t, rb, qh);
                for (int q = 0; q < 4; ++q) {
                    v[0][q] = _mm512_or_si512(_mm512_and_si512(l0[q], m4), q6_hi(qh[q], 0));
                    v[1][q] = _mm512_or_si512(_mm512_and_si512(l1[q], m4), q6_hi(qh[q], 2));
                    v[2][q] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0[q], 4), m4), q6_hi(qh[q], 4));
                    v[3][q] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1[q], 4), m4), q6_hi(qh[q], 6));
                }
                for (int e = 0; e < 4; ++e) {
                    const int sb = 8 * h + 2 * e + t;
                    const __m512i sc = byte_s(sc4[sb / 4], sb % 4);
                    for (int j = 0; j < NX; ++j) {
                        const int8_t* a = xb[j][b].qs + 16 * sb;
                        __m512i dot = _mm512_setzero_si512();
                        for (int q = 0; q < 4; ++q) dot = _mm512_dpbusd_epi32(dot, v[e][q], bcast4(a + 4 * q));
                        isum[j] = _mm512_add_epi32(isum[j], _mm512_mullo_epi32(dot, sc));
                    }
                }
            }
        for (int p = 0; p < 8; ++p) {   // offset 32: (32 sc_2p, 32 sc_2p+1) . (bsum_2p, bsum_2p+1)
            const __m512i mm = pair16(_mm512_slli_epi32(byte_s(sc4[p / 2], 2 * p % 4), 5),
                                      _mm512_slli_epi32(byte_s(sc4[p / 2], 2 * p % 4 + 1), 5));
            for (int j = 0; j < NX; ++j) msum[j] = _mm512_dpwssd_epi32(msum[j], mm, bcast4(xb[j][b].bsums + 2 * p));
        }
        // d: the f16 at byte 208, the high half of the word at 206 (inside the block)
        const __m512 d = _mm512_cvtph_ps(
            _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_i32gather_epi32(vidx, (const void*)(wb + 206), 1), 16)));
        for (int j = 0; j < NX; ++j) acc[j] = finish_k<true>(acc[j], isum[j], msum[j], d, d, xb[j][b].d);
    }
    for (int j = 0; j < NX; ++j) _mm512_storeu_ps(y + (size_t)j * g.N, acc[j]);
}

template <template <int> class Run>
static TGT void regs16_k_drive(const Rows16Args& g, int n0, int n1) {
    for (int n = n0; n + 16 <= n1; n += 16) {
        const uint8_t* w = g.W + (size_t)n * g.row_bytes;
        for (int t = 0; t < g.M; t += 8) {
            const uint8_t* x = g.xq + (size_t)t * g.xq_stride;
            float* y = g.y + (size_t)t * g.N + n;
            switch (std::min(8, g.M - t)) {
                case 1: Run<1>::run(g, w, x, y); break;
                case 2: Run<2>::run(g, w, x, y); break;
                case 3: Run<3>::run(g, w, x, y); break;
                case 4: Run<4>::run(g, w, x, y); break;
                case 5: Run<5>::run(g, w, x, y); break;
                case 6: Run<6>::run(g, w, x, y); break;
                case 7: Run<7>::run(g, w, x, y); break;
                default: Run<8>::run(g, w, x, y); break;
            }
        }
    }
}
template <int NX> struct Q4KRegs { static TGT void run(const Rows16Args& g, const uint8_t* w, const uint8_t* x, float* y) { regs16_q4k_run<NX>(g, w, x, y); } };
template <int NX> struct Q6KRegs { static TGT void run(const Rows16Args& g, const uint8_t* w, const uint8_t* x, float* y) { regs16_q6k_run<NX>(g, w, x, y); } };

// ---- the driver's entry ---------------------------------------------------------------------
// Rows [n0, n1) (multiples of 16) of y for every token: per group of 16 rows, a slab of
// `chunk` blocks at a time, then every token, 8 at a time, against it.
template <int Block, int Chunk, size_t SlabBytes, class Unpack, template <int> class Kern>
static TGT void rows16_drive(const Rows16Args& g, int n0, int n1, uint8_t* scratch, Unpack unpack) {
    const int nb = g.K / Block;
    uint8_t* slab = scratch;                              // Chunk slabs
    uint8_t* u = slab + Chunk * SlabBytes;                // 16 rows of one block, unpacked
    float* acc = (float*)(u + 16 * Block);                // [M][16]
    for (int n = n0; n + 16 <= n1; n += 16) {
        const uint8_t* w = g.W + (size_t)n * g.row_bytes;
        std::memset(acc, 0, sizeof(float) * 16 * g.M);
        for (int b0 = 0; b0 < nb; b0 += Chunk) {
            const int cb = std::min(Chunk, nb - b0);
            unpack(w, g.row_bytes, b0, cb, u, slab);
            int t = 0;
            for (; t + 8 <= g.M; t += 8)
                Kern<8>::run(slab, b0, cb, g.xq + t * g.xq_stride, g.xq_stride, acc + 16 * t);
            const uint8_t* xt = g.xq + t * g.xq_stride;
            float* at = acc + 16 * t;
            switch (g.M - t) {
                case 1: Kern<1>::run(slab, b0, cb, xt, g.xq_stride, at); break;
                case 2: Kern<2>::run(slab, b0, cb, xt, g.xq_stride, at); break;
                case 3: Kern<3>::run(slab, b0, cb, xt, g.xq_stride, at); break;
                case 4: Kern<4>::run(slab, b0, cb, xt, g.xq_stride, at); break;
                case 5: Kern<5>::run(slab, b0, cb, xt, g.xq_stride, at); break;
                case 6: Kern<6>::run(slab, b0, cb, xt, g.xq_stride, at); break;
                case 7: Kern<7>::run(slab, b0, cb, xt, g.xq_stride, at); break;
                default: break;
            }
        }
        for (int t = 0; t < g.M; ++t) std::memcpy(g.y + (size_t)t * g.N + n, acc + 16 * t, 16 * sizeof(float));
    }
}

template <class B>
struct Q32Kern {
    template <int NX>
    struct K {
        static TGT void run(const uint8_t* s, int b0, int nb, const uint8_t* x, size_t xs, float* acc) {
            rows16_q32<NX, B>(s, b0, nb, x, xs, acc);
        }
    };
};
template <class F>
struct KKern {
    template <int NX>
    struct K {
        static TGT void run(const uint8_t* s, int b0, int nb, const uint8_t* x, size_t xs, float* acc) {
            rows16_k<NX, F>(s, b0, nb, x, xs, acc);
        }
    };
};

// Q4_K and Q6_K, 2 to kRegs tokens: in registers, 8 tokens at a time (Qwen2.5-Coder-0.5B
// Q4_K_M, 1 thread, CPU time of a Model.step of 4 / 8 / 16 sequences: 33 / 59 / 106 ms row by row
// or in slabs, 30 / 53 / 96 this way; of 1: 21.1 row by row, 21.5 this way).
// Other super-blocks and one token, up to kGrouped tokens: the integers row by row, R rows at a
// time, kSmall tokens at a time (the later groups of tokens find the 16 rows in L1); more:
// through slabs. From 4 to 8 tokens
// a slab's unpacking is not paid back yet: SmolLM2's decode step of 4 sequences took 2.2-3x
// the time of 1 through slabs, about 1.5x this way (1 thread, CPU time). Either way each
// (row, token) runs the same operations as in a batch of 1 to 3 tokens: the same bits.
constexpr int kGrouped = 8;

template <class Small8, class Small4>
static TGT void small_drive(const Rows16Args& g, int n0, int n1, uint8_t* scratch, Small8 s8, Small4 s4) {
    float* out = (float*)scratch;   // [M][16]
    const bool eight = true;
    for (int n = n0; n + 16 <= n1; n += 16) {
        const uint8_t* w = g.W + (size_t)n * g.row_bytes;
        for (int t0 = 0; t0 < g.M; t0 += kSmall) {
            Rows16Args h = g;               // tokens t0 .. t0 + h.M - 1
            h.M = std::min(kSmall, g.M - t0);
            h.xq = g.xq + (size_t)t0 * g.xq_stride;
            float* o = out + 16 * t0;
            if (eight) {
                s8(h, w, o);
                s8(h, w + 8 * g.row_bytes, o + 8);
            } else {
                for (int q = 0; q < 4; ++q) s4(h, w + 4 * q * g.row_bytes, o + 4 * q);
            }
        }
        for (int t = 0; t < g.M; ++t) std::memcpy(g.y + (size_t)t * g.N + n, out + 16 * t, 16 * sizeof(float));
    }
}

// Up to kRegs tokens: 16 rows transposed in registers per block, 8 tokens at a time (the
// later groups of 8 find the rows in L1 or L2); more: through slabs. SmolLM2 (Q4_1), 1 thread,
// CPU time of one Model.step: 16 sequences 29 ms this way against 39 through slabs, 32 rows 55
// against 59, 64 rows 108 against 105.
constexpr int kRegs = 32;

template <class B>
static TGT void rows16_q32_entry(const Rows16Args& g, int n0, int n1, uint8_t* scratch) {
    if (g.M <= kRegs) {
        regs16_q32_drive<B>(g, n0, n1);
        return;
    }
    rows16_drive<32, kChunk32, kSlab32, decltype(&unpack16_q32<B>), Q32Kern<B>::template K>(g, n0, n1, scratch,
                                                                                         unpack16_q32<B>);
}
template <class F, class D>
static TGT void rows16_k_entry(const Rows16Args& g, int n0, int n1, uint8_t* scratch) {
    if (g.M >= 2 && g.M <= kRegs) {   // Q4_K, Q6_K: in registers (one token: row by row, below)
        if (std::is_same<F, Q4K>::value) return regs16_k_drive<Q4KRegs>(g, n0, n1);
        if (std::is_same<F, Q6K>::value) return regs16_k_drive<Q6KRegs>(g, n0, n1);
    }
    if (g.M <= kGrouped) {
        small_drive(g, n0, n1, scratch, [](const Rows16Args& g, const uint8_t* w, float* out) {
            if (g.M == 1) small_k<8, 1, F, D>(g, w, out);
            else if (g.M == 2) small_k<8, 2, F, D>(g, w, out);
            else small_k<8, 3, F, D>(g, w, out);
        }, [](const Rows16Args& g, const uint8_t* w, float* out) {
            if (g.M == 1) small_k<4, 1, F, D>(g, w, out);
            else if (g.M == 2) small_k<4, 2, F, D>(g, w, out);
            else small_k<4, 3, F, D>(g, w, out);
        });
        return;
    }
    rows16_drive<256, 1, slab256<F::SB>(), decltype(&unpack16_k<F>), KKern<F>::template K>(g, n0, n1, scratch,
                                                                                        unpack16_k<F>);
}

static Rows16 x86_rows16_table(int t) {
    switch (t) {
        case KT_Q4_0: return rows16_q32_entry<Q4_0>;
        case KT_Q4_1: return rows16_q32_entry<Q4_1>;
        case KT_Q5_0: return rows16_q32_entry<Q5_0>;
        case KT_Q5_1: return rows16_q32_entry<Q5_1>;
        case KT_Q4_K: return rows16_k_entry<Q4K, DotQ45K<false>>;
        case KT_Q5_K: return rows16_k_entry<Q5K, DotQ45K<true>>;
        case KT_Q6_K: return rows16_k_entry<Q6K, DotQ6K>;
        case KT_Q2_K: return rows16_k_entry<Q23K<false>, DotQ23K<false>>;
        case KT_Q3_K: return rows16_k_entry<Q23K<true>, DotQ23K<true>>;
        case KT_IQ4_XS: return rows16_k_entry<IQ4XS, DotIQ4XS>;
    }
    return nullptr;
}

static size_t x86_rows16_scratch(int M) {
    return std::max(kChunk32 * kSlab32 + 16 * 32, slab256<16>() + 16 * 256) + (size_t)16 * sizeof(float) * M;
}

static const Rows16Level x86_rows16_level = {x86_rows16_table, x86_rows16_scratch};

#undef TGT
