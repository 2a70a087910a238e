// kernels.cpp -- CPU row kernels (portable scalar code) and the matmul driver; the SIMD
// matmul row kernels live in quants_*.cpp and are chosen in matmul_prepare by weight type
// and the active SIMD level.
#include "kernels.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>

#include "../engine.h"

#include "f16.h"
#include "quants.h"
#include "threadpool.h"

namespace llmetal::cpu {

void rmsnorm_row(const float* x, const float* w, float* out, int n, float eps) {
    double ss = 0;  // double: one row is short, and this keeps the norm exact to float
    for (int i = 0; i < n; ++i) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / std::sqrt(ss / n + eps));
    for (int i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

void rope_table(const kargs_rope& a, int pos, const float* ff, float* cs) {
    const int half = a.n_rot / 2;
    for (int i = 0; i < half; ++i) {
        // theta_i = pos * freq_scale * base^(-2i/n_rot) / factor_i
        double theta = (double)pos * a.freq_scale * std::pow((double)a.freq_base, -2.0 * i / a.n_rot);
        if (ff) theta /= ff[i];
        cs[i] = (float)std::cos(theta);
        cs[half + i] = (float)std::sin(theta);
    }
}

void rope_apply(float* x, const kargs_rope& a, const float* cs) {
    const int half = a.n_rot / 2;
    for (int i = 0; i < half; ++i) {
        const float c = cs[i], s = cs[half + i];
        int i0 = a.mode == KROPE_NEOX ? i : 2 * i;
        int i1 = a.mode == KROPE_NEOX ? i + half : 2 * i + 1;
        float x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * c - x1 * s;
        x[i1] = x0 * s + x1 * c;
    }
}

void f32_to_f16_row(const float* x, uint16_t* y, int n) {
    // F16C at the x86 levels (both imply it), else the portable conversion
    static const F16Row simd = f16_row_f16c();
    if (simd && (active_simd() == Simd::avx2 || active_simd() == Simd::avx512)) return simd(x, y, n);
    for (int i = 0; i < n; ++i) y[i] = f32_to_f16(x[i]);
}

void attention_chunk_scalar(const kargs_attention& a, const float* q, int nq, int g0, int ng,
                            const uint16_t* kc, const uint16_t* vc, int j0, int n, float* sc, float* part) {
    const int hd = a.head_dim, kv_dim = a.n_kv_heads * hd;
    const size_t ps = attn_part_stride(hd);
    for (int r = 0; r < nq * ng; ++r) {
        const int g = g0 + r / nq;
        const float* qr = q + (int64_t)r * hd;
        float* s = sc + (int64_t)r * kAttnChunk;
        float* o = part + r * ps;
        float mx = -INFINITY;
        for (int j = 0; j < n; ++j) {
            const uint16_t* k = kc + (int64_t)(j0 + j) * kv_dim + g * hd;
            float x = 0;
            for (int d = 0; d < hd; ++d) x += qr[d] * f16_to_f32(k[d]);
            x *= a.scale;
            if (a.softcap > 0) x = a.softcap * std::tanh(x / a.softcap);
            s[j] = x;
            mx = std::max(mx, x);
        }
        float sum = 0;
        for (int j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
        o[hd] = mx;
        o[hd + 1] = sum;
        if (!vc) continue;
        for (int d = 0; d < hd; ++d) o[d] = 0;
        for (int j = 0; j < n; ++j) {
            const uint16_t* v = vc + (int64_t)(j0 + j) * kv_dim + g * hd;
            const float p = s[j];
            for (int d = 0; d < hd; ++d) o[d] += p * f16_to_f32(v[d]);
        }
    }
}

float attention_merge(const float* part, int n_chunks, size_t stride, int hd, float* w, float* out) {
    float mx = -INFINITY;
    for (int c = 0; c < n_chunks; ++c) mx = std::max(mx, part[c * stride + hd]);
    float l = 0;
    for (int c = 0; c < n_chunks; ++c) {
        w[c] = std::exp(part[c * stride + hd] - mx);
        l += w[c] * part[c * stride + hd + 1];
    }
    const float inv = 1.0f / l;
    if (!out) return inv;
    for (int d = 0; d < hd; ++d) out[d] = 0;
    for (int c = 0; c < n_chunks; ++c)
        for (int d = 0; d < hd; ++d) out[d] += w[c] * part[c * stride + d];
    for (int d = 0; d < hd; ++d) out[d] *= inv;
    return inv;
}

AttnChunk attention_chunk_kernel(const kargs_attention& a) {
    AttnChunk simd = nullptr;
    if (a.head_dim % 16 == 0) {
        switch (active_simd()) {
            case Simd::avx2: simd = attn_chunk_avx2(); break;
            case Simd::avx512: simd = attn_chunk_avx512(); break;
            default: break;   // scalar; NEON has no attention kernel yet
        }
    }
    return simd ? simd : attention_chunk_scalar;
}

// Two passes of plain loops that the compiler vectorizes (this is also the NEON level's
// kernel): the largest value as a signed integer key -- the float's bits, with the magnitude
// bits of negative values flipped, which orders them as the floats (-0 just below +0) -- and
// the largest exponent field (all ones only for a NaN or an infinity); then the first value
// equal to that maximum, compared as floats (-0 == +0, as numpy's argmax).
static inline int32_t argmax_key(uint32_t u) {   // its own inverse
    return (int32_t)(u ^ ((uint32_t)((int32_t)u >> 31) >> 1));
}
ArgmaxPart argmax_part(const float* x, int64_t n) {
    int32_t kmax = INT32_MIN;
    uint32_t emax = 0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, x + i, 4);
        const int32_t k = argmax_key(u);
        const uint32_t e = u & 0x7f800000u;
        kmax = k > kmax ? k : kmax;
        emax = e > emax ? e : emax;
    }
    if (emax == 0x7f800000u) return ArgmaxPart{0.0f, 0, true};   // a NaN or an infinity
    const uint32_t mu = (uint32_t)argmax_key((uint32_t)kmax);
    float mx;
    std::memcpy(&mx, &mu, 4);
    for (int64_t i = 0; i < n; ++i)
        if (x[i] == mx) return ArgmaxPart{mx, i, false};
    return ArgmaxPart{mx, 0, false};   // not reached: mx is one of the values
}

ArgmaxRow argmax_kernel() {
    switch (active_simd()) {
        case Simd::avx2: return argmax_avx2();
        case Simd::avx512: return argmax_avx512();
        default: return argmax_part;   // scalar and NEON: plain loops the compiler vectorizes
    }
}

GluRow glu_kernel(bool gelu) {
    switch (active_simd()) {
        case Simd::avx2: return glu_avx2(gelu);
        case Simd::avx512: return glu_avx512(gelu);
        default: return nullptr;   // scalar; NEON has no GLU kernel yet
    }
}

RowDot matmul_kernel(int t, Simd level) {
    RowDot k = nullptr;
    switch (level) {
        case Simd::scalar: k = rowdot_scalar(t); break;
        case Simd::avx2: k = rowdot_avx2(t); break;
        // The AVX-512 kernels use VNNI (vpdpbusd / vpdpwssd); without it the AVX2 ones serve.
        case Simd::avx512: k = features().avx512vnni ? rowdot_avx512(t) : rowdot_avx2(t); break;
        case Simd::neon: k = rowdot_neon(t); break;
    }
    if (!k) throw Error(std::string("matmul: no ") + simd_name(level) + " kernel for weight type id " +
                        std::to_string(t));
    return k;
}

RowDot16 matmul_kernel16(const kargs_matmul& a) {
    if (a.wtype != KT_Q8_0 || a.n_out % kQ8x16Rows != 0) return nullptr;
    if (active_simd() != Simd::avx512 || !features().avx512vnni) return nullptr;
    return rowdot16_q8_0_avx512();
}

const Rows16Level* rows16_level() {
    return active_simd() == Simd::avx512 && features().avx512vnni ? rows16_avx512() : nullptr;
}

MatmulJob matmul_prepare(const kargs_matmul& a, const uint8_t* W, const float* x, float* y,
                         ThreadPool* pool, std::vector<uint8_t>* scratch, const uint8_t* Wr) {
    const int fmt = act_format(a.wtype);  // throws for unsupported types
    MatmulJob j{a, W, y, (const uint8_t*)x, (size_t)a.n_in * sizeof(float), matmul_kernel(a.wtype, active_simd()),
                nullptr};
    // Batches take two weight rows per call where the level has a tile kernel for the type
    // (the AVX-512 kernels need VNNI, as in matmul_kernel).
    if (a.n_tokens >= 2) {
        const Simd lv = active_simd();
        if (lv == Simd::avx2 || (lv == Simd::avx512 && !features().avx512vnni)) j.dot2 = rowdot2_avx2(a.wtype);
        else if (lv == Simd::avx512) j.dot2 = rowdot2_avx512(a.wtype);
    }
    if (fmt != 0) {
        // Quantize every activation row once; all output rows (all threads) share them.
        j.xq_stride = act_row_bytes(fmt, a.n_in);
        if (Wr) {
            j.Wr = Wr;
            j.dot16 = matmul_kernel16(a);
            if (!j.dot16) throw Error("matmul: repacked weights given where no 16-row kernel applies");
            j.xc_stride = (size_t)a.n_in / 32;
        } else if ((j.r16 = rows16_level()) != nullptr) {
            j.rows16 = j.r16->for_type(a.wtype);   // null: the row kernels
            if (!j.rows16) j.r16 = nullptr;
        }
        const size_t xq_bytes = (j.xq_stride * a.n_tokens + 63) & ~size_t(63);
        size_t need = xq_bytes + j.xc_stride * a.n_tokens * sizeof(int32_t) + 64;
        if (scratch->size() < need) scratch->resize(need);
        uint8_t* base = scratch->data();
        int32_t* xc = (int32_t*)(base + xq_bytes);
        const bool v512 = active_simd() == Simd::avx512 && features().avx512vnni && quantize_q8_avx512();
        const QuantizeQ8 q8 = v512 ? quantize_q8_avx512() : quantize_row_q8;
        const QuantizeQ8K q8k = v512 ? quantize_q8k_avx512() : quantize_row_q8k;
        auto quantize = [&](int ith, int nth) {
            for (int t = ith; t < a.n_tokens; t += nth) {
                const float* xr = x + (int64_t)t * a.n_in;
                if (fmt == 1) q8(xr, (BlockQ8*)(base + t * j.xq_stride), a.n_in);
                else q8k(xr, (BlockQ8K*)(base + t * j.xq_stride), a.n_in);
                if (Wr) {   // the repacked weights are q + 128: the blocks' -128 * sum(qs)
                    const BlockQ8* xb = (const BlockQ8*)(base + t * j.xq_stride);
                    for (size_t b = 0; b < j.xc_stride; ++b) xc[t * j.xc_stride + b] = -128 * xb[b].sum;
                }
            }
        };
        // a batch is quantized by all threads (a separate fork-join: every row must be
        // ready before any thread starts its dots); one token is not worth waking them
        if (pool && a.n_tokens >= 4) pool->run(quantize);
        else quantize(0, 1);
        j.xq = base;
        j.xc = xc;
    }
    return j;
}

size_t matmul_tmp_bytes(const MatmulJob& j) {
    return std::max((size_t)j.a.n_in * sizeof(float) + 256, j.r16 ? j.r16->scratch_bytes(j.a.n_tokens) + 64 : 0);
}

void matmul_run(const MatmulJob& j, int ith, int nth, float* tmp) {
    const int M = j.a.n_tokens, K = j.a.n_in, N = j.a.n_out;
    // For each weight row, sweep the tokens 4 at a time: the row (a few KB) stays in L1
    // while every token reads it, and the kernel unpacks each weight block once per 4 tokens.
    auto rows = [&](int n0, int n1) {
        float out[8];
        int n = n0;
        if (j.dot16) {   // repacked: 16 rows per call, written straight into y (n0, n1 multiples of 16)
            for (; n + 16 <= n1; n += 16) {
                const uint8_t* wg = j.Wr + (uint64_t)(n / 16) * (K / 32) * kQ8x16BlockBytes;
                for (int t = 0; t < M; t += kRowDot16Tokens)
                    j.dot16(K, wg, j.xq + t * j.xq_stride, j.xq_stride, j.xc + t * j.xc_stride, j.xc_stride,
                            std::min(kRowDot16Tokens, M - t), j.y + (int64_t)t * N + n, N);
            }
            return;
        }
        if (j.rows16) {   // groups of 16 rows, every token
            const int n_end = n0 + (n1 - n0) / 16 * 16;
            const Rows16Args g{j.W, j.a.row_bytes, K, N, M, j.xq, j.xq_stride, j.y};
            if (n_end > n0) j.rows16(g, n0, n_end, (uint8_t*)tmp);
            n = n_end;
        }
        if (j.dot2) {   // pairs of rows: each activation block loaded once for both
            for (; n + 2 <= n1; n += 2) {
                const uint8_t* w = j.W + (uint64_t)n * j.a.row_bytes;
                for (int t = 0; t < M; t += 4) {
                    int nx = std::min(4, M - t);
                    j.dot2(K, w, j.a.row_bytes, j.xq + t * j.xq_stride, j.xq_stride, nx, out);
                    for (int u = 0; u < nx; ++u) {
                        j.y[(int64_t)(t + u) * N + n] = out[u];
                        j.y[(int64_t)(t + u) * N + n + 1] = out[4 + u];
                    }
                }
            }
        }
        for (; n < n1; ++n) {
            const uint8_t* w = j.W + (uint64_t)n * j.a.row_bytes;
            for (int t = 0; t < M; t += 4) {
                int nx = std::min(4, M - t);
                j.dot(K, w, j.xq + t * j.xq_stride, j.xq_stride, nx, out);
                for (int u = 0; u < nx; ++u) j.y[(int64_t)(t + u) * N + n] = out[u];
            }
        }
    };
    if (j.counters) {
        // Own share first, front to back: one contiguous stream of weight rows, which keeps
        // the hardware prefetchers running (handing chunks out from one shared counter
        // interleaved the threads' rows and made decode 40% slower). Then the chunks the
        // other threads have not taken yet: a thread slowed down by another process on its
        // core gets help instead of holding everyone up.
        for (int k = 0; k < nth; ++k) {
            const int s = (ith + k) % nth;
            int b, e;
            matmul_share(N, s, nth, &b, &e);
            for (int n0; (n0 = j.counters[s].next.fetch_add(j.chunk, std::memory_order_relaxed)) < e;)
                rows(n0, std::min(e, n0 + j.chunk));
        }
        return;
    }
    int b, e;
    matmul_share(N, ith, nth, &b, &e);
    rows(b, e);
}

void matmul_share(int n_out, int ith, int nth, int* b, int* e) {
    int64_t per = ((n_out + nth - 1) / nth + 15) & ~int64_t(15);
    *b = (int)std::min<int64_t>(n_out, per * ith);
    *e = (int)std::min<int64_t>(n_out, per * ith + per);
}

}  // namespace llmetal::cpu
