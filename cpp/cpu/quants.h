// quants.h -- GGUF weight block formats on the CPU: dequantization of rows (embed), the
// 8-bit activation formats the quantized matmul uses, and the row-dot kernels of every
// SIMD level (scalar here in quants.cpp; quants_avx2.cpp, quants_avx512.cpp,
// quants_neon.cpp compile their own with per-function target attributes).
//
// How a quantized matmul runs (as llama.cpp does on the CPU):
//   1. matmul_prepare quantizes each activation row once per call to 8-bit blocks:
//      BlockQ8 (32 values, one scale) for the 32-element weight formats, BlockQ8K (256
//      values, one scale, sums per 16) for the K-quants.
//   2. each weight block is unpacked to small integers and dotted with the activation
//      block in integer arithmetic; the weight's min / offset term is applied through the
//      activation block sums (dot(q - 8, a) = dot(q, a) - 8 * sum(a)), so the integer
//      part works on unsigned weights for every format.
//   3. one weight row is dotted with up to 4 activation rows at a time (RowDot's nx), so
//      prefill unpacks each weight block once for 4 tokens.
// Float weights (F32, F16, BF16) are dotted with the f32 activations directly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../kargs.h"

namespace llmetal::cpu {

// Dequantize n elements (a multiple of the type's block size) starting at src.
void dequant_row(int ktype, const void* src, float* dst, int64_t n);

// ---- activation formats -------------------------------------------------------------
// 32 activations: x[i] ~= d * qs[i]; s = d * sum(qs) (for the weight's min / offset term),
// sum = sum(qs) (the AVX-512 VNNI kernels apply an offset o as the exact integer -o * sum).
struct BlockQ8 {
    float d;
    float s;
    int32_t sum;
    int8_t qs[32];
};
// 256 activations: x[i] ~= d * qs[i]; bsums[j] = sum of qs[16j .. 16j+15].
struct BlockQ8K {
    float d;
    int16_t bsums[16];
    int8_t qs[256];
};

// The activation format a weight type's kernels read: 0 = f32 as is, 1 = BlockQ8,
// 2 = BlockQ8K. Throws for an unsupported type.
int act_format(int ktype);
// Bytes of one prepared activation row of K values in that format.
size_t act_row_bytes(int format, int K);
// Quantize one row of K floats (K a multiple of 32 / 256) into BlockQ8 / BlockQ8K.
void quantize_row_q8(const float* x, BlockQ8* y, int K);
void quantize_row_q8k(const float* x, BlockQ8K* y, int K);
// The same two on AVX-512 (the same bytes, ~4x faster); null where not built (the caller checks
// the CPU has AVX512_VNNI, the level the file is compiled for).
using QuantizeQ8 = void (*)(const float* x, BlockQ8* y, int K);
using QuantizeQ8K = void (*)(const float* x, BlockQ8K* y, int K);
QuantizeQ8 quantize_q8_avx512();
QuantizeQ8K quantize_q8k_avx512();

// ---- row-dot kernels ----------------------------------------------------------------
// y[j] = dot(weight row w (K values, GGUF blocks), activation row j) for j in [0, nx),
// 1 <= nx <= 4; activation row j starts at x + j * x_stride bytes, in the weight type's
// activation format.
using RowDot = void (*)(int K, const uint8_t* w, const uint8_t* x, size_t x_stride, int nx, float* y);

// Two weight rows at once (w and w + w_stride): y[r * 4 + j] for row r in {0, 1}, j < nx.
using RowDot2 = void (*)(int K, const uint8_t* w, size_t w_stride, const uint8_t* x, size_t x_stride,
                         int nx, float* y);

// Kernels per level; null where a level has no kernel for the type (or is not built
// for this architecture). The caller checks the CPU supports the level.
RowDot rowdot_scalar(int ktype);
RowDot rowdot_avx2(int ktype);     // AVX2 + FMA + F16C
RowDot rowdot_avx512(int ktype);   // AVX-512 F/BW/VL + VNNI (on CPUs with AVX512_VNNI)
// Two-row tiles (prefill), null where a level / type has none (matmul then uses RowDot).
RowDot2 rowdot2_avx2(int ktype);
RowDot2 rowdot2_avx512(int ktype);
RowDot rowdot_neon(int ktype);     // arm64 NEON (sdot where the build targets dotprod)

// ---- Q8_0 repacked in groups of 16 rows (AVX-512 VNNI decode and prefill) -------------
// The CPU device copies read-only (mapped) Q8_0 weights into this layout at first use when
// the AVX-512 VNNI kernels are active; the GGUF mapping itself is never changed. Per group
// of 16 rows and block b (32 columns), 544 bytes = 16 x 34, so bits per weight are unchanged:
//   16 f16 scales (row r's d at byte 2r), then for k = 0..7 and r = 0..15 the 4 bytes
//   k*4 .. k*4+3 of row r's block, each XOR 0x80 (q + 128, unsigned).
// A zmm load of 64 bytes is then "4 values of 16 rows", and one vpdpbusd against 4
// activation bytes broadcast to all lanes gives 16 rows' partial dots at once: no
// horizontal sums, one float conversion and scale per block for 16 rows. The +128 is
// taken out by starting each block's integer sum at -128 * sum(activation block).
constexpr int kQ8x16Rows = 16;
constexpr int kQ8x16BlockBytes = 16 * 34;
// Rows [g0 * 16, g1 * 16) of a Q8_0 matrix (rows row_bytes apart, K columns) into dst,
// which holds the whole repacked matrix.
void repack_q8_0_x16(const uint8_t* src, size_t row_bytes, int K, int g0, int g1, uint8_t* dst);
// y[j * y_stride + r] (r < 16, j < nx <= kRowDot16Tokens) = dot(row r of the group at wg,
// activation row j at x + j * x_stride); xc + j * xc_stride holds -128 * sum(qs) of each
// activation block. 8 tokens a call: each block's 8 weight vectors are loaded once for them
// (8 accumulators, 8 weight vectors and a token's two integer chains fit the 32 registers).
constexpr int kRowDot16Tokens = 8;
using RowDot16 = void (*)(int K, const uint8_t* wg, const uint8_t* x, size_t x_stride, const int32_t* xc,
                          size_t xc_stride, int nx, float* y, size_t y_stride);
RowDot16 rowdot16_q8_0_avx512();   // null where not built (the caller checks AVX512_VNNI)

// ---- the matmul with 16 weight rows per vector (AVX-512 VNNI; gemm_x86.h) -----------------
// Every batch size, decode included, for the types it has; one fixed sequence of operations
// per (row, token), whatever the batch (gemm_x86.h says which).
struct Rows16Args {
    const uint8_t* W;       // weight rows, GGUF blocks, row_bytes apart
    size_t row_bytes;
    int K, N, M;            // inputs, outputs (weight rows), tokens
    const uint8_t* xq;      // the prepared activation rows (BlockQ8 / BlockQ8K), xq_stride apart
    size_t xq_stride;
    float* y;               // [M, N]
};
// Rows [n0, n1) of y (multiples of 16) for every token; scratch holds scratch_bytes(M) bytes.
using Rows16 = void (*)(const Rows16Args& g, int n0, int n1, uint8_t* scratch);
struct Rows16Level {
    Rows16 (*for_type)(int wtype);      // null where the type has none
    size_t (*scratch_bytes)(int M);
};
const Rows16Level* rows16_avx512();   // null where not built

// Attention in chunks of keys. A query row's visible keys lo..pos are cut into chunks of
// kAttnChunk counted from lo (the last one shorter); a chunk of n keys j0 .. j0 + n - 1 gives
// each query row a partial, at part + r * attn_part_stride(head_dim) for its row r:
//   x_j = scale * q . K_j (softcap * tanh(x_j / softcap) when softcap > 0),
//   m = max_j x_j,  e_j = exp(x_j - m),  l = sum_j e_j,  o = sum_j e_j V_j,
// stored as o[0 .. head_dim), then m, then l. attention_merge (kernels.h) combines a row's
// chunks. One call covers the KV heads g0 .. g0 + ng - 1 of one token and, for each, the nq
// query heads that share it (the token's heads g0*nq .. (g0+ng)*nq - 1, rows of head_dim
// floats at q, row r of the call at q + r * head_dim). kc / vc point at the cache row of the
// sequence's position 0. `sc` is scratch of nq * ng * kAttnChunk floats; on return, row r
// has its e_j at sc + r * kAttnChunk. With vc null only the weights are computed (sc, m and
// l; o is not written): the attention_probs stage shows those.
constexpr int kAttnChunk = 256;
inline size_t attn_part_stride(int head_dim) { return (size_t)head_dim + 8; }
using AttnChunk = void (*)(const kargs_attention& a, const float* q, int nq, int g0, int ng, const uint16_t* kc,
                           const uint16_t* vc, int j0, int n, float* sc, float* part);
AttnChunk attn_chunk_avx2();       // AVX2 + FMA + F16C
AttnChunk attn_chunk_avx512();     // the same code compiled for AVX-512 F/BW/VL (32 vector registers)

// out[i] = act(g[i]) * u[i] for i < n: act = gelu_tanh (gelu true) or silu. Null where a
// level has none (the device then runs its scalar loop).
using GluRow = void (*)(const float* g, const float* u, float* out, int64_t n);
GluRow glu_avx2(bool gelu);     // AVX2 + FMA
GluRow glu_avx512(bool gelu);   // the same code compiled for the AVX-512 level

// Greedy sampling over a part of a row: the first maximum of x[0 .. n) (n >= 1; ties: the
// lowest index) and whether any x[i] is a NaN or an infinity (exponent bits all ones; `max`
// and `index` mean nothing then). argmax_part is the scalar code (kernels.cpp); the SIMD ones
// take the maximum in one pass and look for its first occurrence in a second. Null where not built.
struct ArgmaxPart {
    float max;
    int64_t index;
    bool bad;
};
using ArgmaxRow = ArgmaxPart (*)(const float* x, int64_t n);
ArgmaxPart argmax_part(const float* x, int64_t n);
ArgmaxRow argmax_avx2();     // AVX2
ArgmaxRow argmax_avx512();   // the same code compiled for the AVX-512 level

// y[i] = x[i] rounded to f16 (nearest even) for i < n, with F16C; null where not built.
using F16Row = void (*)(const float* x, uint16_t* y, int n);
F16Row f16_row_f16c();

// ---- shared block helpers (plain C, usable from every level) -------------------------
// Q4_K / Q5_K: 8 sub-blocks of 32 with a 6-bit scale and a 6-bit min, packed in 12 bytes:
// bytes 0-3 low 6 bits = sc[0..3], bytes 4-7 low 6 bits = m[0..3], bytes 8-11 nibbles =
// low 4 bits of sc[4..7] / m[4..7], whose top 2 bits are the top bits of bytes 0-3 / 4-7.
inline void unpack_scales_k4(const uint8_t* q, uint8_t sc[8], uint8_t m[8]) {
    uint32_t a0, a1, a2;
    std::memcpy(&a0, q, 4);
    std::memcpy(&a1, q + 4, 4);
    std::memcpy(&a2, q + 8, 4);
    uint32_t s_lo = a0 & 0x3f3f3f3f, m_lo = a1 & 0x3f3f3f3f;
    uint32_t s_hi = (a2 & 0x0f0f0f0f) | (((a0 >> 6) & 0x03030303) << 4);
    uint32_t m_hi = ((a2 >> 4) & 0x0f0f0f0f) | (((a1 >> 6) & 0x03030303) << 4);
    std::memcpy(sc, &s_lo, 4);
    std::memcpy(sc + 4, &s_hi, 4);
    std::memcpy(m, &m_lo, 4);
    std::memcpy(m + 4, &m_hi, 4);
}


// Q3_K: 16 six-bit scales packed in 12 bytes: scale s has its low 4 bits in byte s (low
// nibble, s < 8) or byte s - 8 (high nibble), its top 2 bits at bit 2 * (s / 4) of byte
// 8 + s % 4. Returned as the signed scale (stored value - 32).
inline void unpack_scales_q3k(const uint8_t* q, int8_t sc[16]) {
    for (int s = 0; s < 16; ++s) {
        int lo = s < 8 ? (q[s] & 0xF) : (q[s - 8] >> 4);
        int hi = (q[8 + s % 4] >> (2 * (s / 4))) & 3;
        sc[s] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

// IQ4_XS {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: 8 sub-blocks of 32, value
// d * (ls - 32) * kvalues_iq4nl[q], q a nibble (qs layout of Q4_0 per sub-block: byte j of
// sub-block ib holds value j (low nibble) and j + 16 (high)); ls 6 bits: low 4 from nibble
// ib % 2 of scales_l[ib / 2], top 2 from bits 2 ib of scales_h. Returned signed (ls - 32).
constexpr int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
inline void unpack_scales_iq4xs(const uint8_t* b, int8_t ls[8]) {
    const int sh = b[2] | (b[3] << 8);
    for (int ib = 0; ib < 8; ++ib)
        ls[ib] = (int8_t)((((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)) - 32);
}

}  // namespace llmetal::cpu
