// kargs.h -- the arguments of every stage, one plain-C struct per stage.
//
// This header is shared by the C++ host code, the CUDA kernels (nvcc) and the Metal
// kernels (the Metal compiler), so it uses only fixed-width integers and floats: no
// std::, no constructors, no pointers. Buffers are bound separately by each device.
//
// Values that change from one token to the next (the position of the first token of the
// batch, how many tokens the batch holds) never appear here: kernels read them from the
// `kstep` struct held in a small device buffer, so a recorded plan (or a CUDA graph, or a
// Metal command buffer) can be replayed for every token without being re-recorded.
#ifndef LLMETAL_KARGS_H
#define LLMETAL_KARGS_H

#if defined(__METAL_VERSION__)
// Metal has the fixed-width integer types built in.
#else
#include <stdint.h>
#endif

// ggml type ids, as stored in GGUF tensor infos (subset this engine implements).
#define KT_F32 0
#define KT_F16 1
#define KT_Q4_0 2
#define KT_Q4_1 3
#define KT_Q5_0 6
#define KT_Q5_1 7
#define KT_Q8_0 8
#define KT_Q2_K 10
#define KT_Q3_K 11
#define KT_Q4_K 12
#define KT_Q5_K 13
#define KT_Q6_K 14
#define KT_IQ4_XS 23
#define KT_I32 26
#define KT_BF16 30

// Per-token values, read by kernels from the step buffer.
// One sequence (the stages' by_row = 0): token t of the batch sits at position pos0 + t and
// its K/V row is written to cache row pos0 + t; after the batch, the cache holds pos0 +
// n_tokens rows.
// Several sequences in one batch (by_row = 1, Model.step): row t of the batch belongs to the
// sequence whose cache rows start at rows[t].cache0 (sequence s: s * n_ctx_seq), at position
// rows[t].pos: rope rotates by rows[t].pos, kv_store writes cache row cache0 + pos, and
// attention reads cache rows cache0 + j for j <= pos (that sequence's own keys only).
#define KSTEP_MAX_ROWS 256
typedef struct kstep_row {
    int32_t pos;       // the row's position in its sequence
    int32_t cache0;    // the cache row of its sequence's position 0
} kstep_row;

typedef struct kstep {
    int32_t pos0;      // position of the first token of the batch (by_row = 0)
    int32_t n_tokens;  // tokens in this batch (<= the rows the plan was recorded for)
    int32_t n_rows;    // entries of rows[] set (0 outside by-row steps)
    int32_t pad1;
    kstep_row rows[KSTEP_MAX_ROWS];
} kstep;

// Row t's position and the cache row of its sequence's position 0, for a stage whose kargs
// say by_row (a macro: Metal pointers carry an address space a C function would have to name).
#define KSTEP_POS(step, by_row, t) ((by_row) ? (step)->rows[t].pos : (step)->pos0 + (t))
#define KSTEP_CACHE0(step, by_row, t) ((by_row) ? (step)->rows[t].cache0 : 0)

// out[t, :] = row ids[t] of weight W [n_vocab, dim] (any weight type), times scale.
typedef struct kargs_embed {
    int32_t n_tokens;
    int32_t dim;
    int32_t wtype;     // KT_* of W
    int32_t n_vocab;
    uint64_t row_bytes;
    float scale;       // 1, or sqrt(dim) for gemma3
    int32_t pad0;
} kargs_embed;

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w[:]; also per-head Q/K norm
// (rows = tokens * heads, dim = head_dim).
typedef struct kargs_rmsnorm {
    int32_t n_rows;
    int32_t dim;
    float eps;
    int32_t pad0;
} kargs_rmsnorm;

// y[t, n] = sum_k W[n, k] * x[t, k]. W stays in its GGUF block format.
typedef struct kargs_matmul {
    int32_t n_tokens;  // M
    int32_t n_in;      // K (row length of W)
    int32_t n_out;     // N (rows of W)
    int32_t wtype;     // KT_* of W
    uint64_t row_bytes;
} kargs_matmul;

// Rotary embedding in place on x [n_tokens, n_heads, head_dim]; token t at position
// KSTEP_POS(step, by_row, t). mode 0: llama "norm" pairs (2i, 2i+1); mode 2: neox pairs (i, i + n_rot/2).
// theta_i = pos * freq_scale * freq_base^(-2i/n_rot) / factor_i (factor from rope_freqs).
typedef struct kargs_rope {
    int32_t n_tokens;
    int32_t n_heads;
    int32_t head_dim;
    int32_t n_rot;        // rotated dims per head (<= head_dim)
    int32_t mode;         // 0 = norm, 2 = neox
    int32_t has_factors;  // a freq-factor vector [n_rot/2] is bound
    float freq_base;
    float freq_scale;     // 1 / linear scaling factor
    int32_t by_row;       // positions from the step's rows (several sequences), see kstep
    int32_t pad0;
} kargs_rope;

#define KROPE_NORM 0
#define KROPE_NEOX 2

// cache[cache0 + pos, :] = (half) src[t, :] for K or V of one layer (pos, cache0 of row t:
// KSTEP_POS / KSTEP_CACHE0); cache is [n_ctx, kv_dim] (all sequences' rows).
typedef struct kargs_kv_store {
    int32_t n_tokens;
    int32_t kv_dim;
    int32_t n_ctx;
    int32_t by_row;       // positions and sequences from the step's rows, see kstep
} kargs_kv_store;

// out[t, h, :] = softmax(scale * q[t,h,:] . K[j, h/(n_heads/n_kv_heads), :]) V[j, ...]
// over cache rows j <= pos (causal), and j > pos - window when window > 0, where pos =
// KSTEP_POS(step, by_row, t); K and V rows of row t's sequence start at KSTEP_CACHE0.
typedef struct kargs_attention {
    int32_t n_tokens;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t n_ctx;
    int32_t window;     // 0 = full causal attention
    float scale;        // usually 1/sqrt(head_dim)
    float softcap;      // 0 = off
    int32_t by_row;     // positions and sequences from the step's rows, see kstep
    int32_t pad0;
} kargs_attention;

// The probabilities of the attention above, for inspection (eager runs only; the fast path
// never computes them): out [n_heads, n_tokens, n_keys] f32,
//   out[h, t, j] = softmax_j(s_j), s_j = scale * q[t,h,:] . K[j, h/(n_heads/n_kv_heads), :]
//                  (then softcap * tanh(s_j / softcap) when softcap > 0),
// the softmax taken over the keys attention reads for query t (j <= pos0 + t, and
// j > pos0 + t - window when window > 0), in float32 with the maximum subtracted; every
// other key j < n_keys gets exactly 0. n_keys must equal pos0 + n_tokens when it runs.
typedef struct kargs_attention_probs {
    kargs_attention a;  // the attention stage's own arguments
    int32_t n_keys;     // columns of out
    int32_t pad0;
} kargs_attention_probs;

// Elementwise add: out = a + b, b broadcast over rows when it holds one row (b_n < n).
typedef struct kargs_eltwise {
    int64_t n;          // elements of out
    int64_t b_n;        // elements of b (n, or one row for broadcasting)
} kargs_eltwise;

// Gated activations on [n_tokens, n_ff]: swiglu out = silu(gate) * up;
// geglu out = gelu_tanh(gate) * up.
typedef struct kargs_glu {
    int32_t n_tokens;
    int32_t n_ff;
} kargs_glu;

// Greedy pick on the device: ids[r] = the index of the first maximum of row r of x
// [n_rows, n_cols] f32 (ties go to the lowest index, as numpy's argmax), or -1 when the row
// holds a NaN or an infinity (the caller reports non-finite logits without downloading them).
// A NaN or infinity is told by its exponent bits (all ones), not by float comparisons, which
// fast-math compilers (Metal's) may assume never see one.
typedef struct kargs_argmax {
    int32_t n_rows;
    int32_t n_cols;
} kargs_argmax;

#endif
