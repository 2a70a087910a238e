// planner.cpp -- the CUDA planner: which kernels run a command list, with which geometry.
// See planner.h. Everything here is plain C++ and reads only the commands and CudaCaps.
#include "planner.h"

#include <algorithm>
#include <climits>

namespace llmetal {
namespace cuda {
using namespace llmetal_cuda;

// ---- the fusion table ---------------------------------------------------------------------
// Fusion is on by default (CudaCaps::fuse; LLMETAL_CUDA_FUSE=0 runs every stage split). Eager
// mode commits one stage at a time, so it always runs the stages split.
const Fusion FUSIONS[N_FUSIONS] = {
    {"add_rmsnorm_q8",
     "add(x, o -> s), rmsnorm(s -> n) [, the quantized decode matmul reading n]: rows of at most "
     "4 * RMS_V * 1024 values, 16-byte aligned",
     "kernel_add_rmsnorm_q",
     "the residual sum, its norm and the 8-bit copy the next mat-vec reads, in one pass over "
     "the row (three kernels and two round trips of the row otherwise)"},
    {"rmsnorm_q8",
     "rmsnorm(x -> n) of one row, or of several rows read next by a quantized decode matmul",
     "kernel_add_rmsnorm_q",
     "the norm writes the 8-bit copy of its output that the mat-vec reads: no kernel_quantize_q8"},
    {"swiglu_q8",
     "swiglu(gate, up -> h), read next by a quantized decode matmul",
     "kernel_swiglu_q",
     "the down projection's 8-bit input written by swiglu: no kernel_quantize_q8"},
    {"attention_q8",
     "attention (decode kernel: head size 64 / 128, at most 8 query heads a K/V head), read "
     "next by a quantized decode matmul with 32-value blocks",
     "kernel_attention_decode",
     "the o projection's 8-bit input written by the attention: no kernel_quantize_q8"},
    {"rope_kv_store",
     "rope(q), rope(k), kv_store(k), kv_store(v): one rope over whole heads, v apart from q and k",
     "kernel_rope_kv_store",
     "one kernel instead of four short ones (each a launch and a round trip of a few KB)"},
    {"rope_kv_attention",
     "the four of rope_kv_store then attention of the same q and caches, for one token "
     "[, read next by a quantized decode matmul]",
     "kernel_attention_decode",
     "the token's rotation and K/V rows are done by the attention's blocks: one kernel for "
     "five stages on the decode step"},
    {"mmvq_group",
     "2-3 consecutive quantized decode matmuls of one weight type, token count and input, each "
     "output apart from the input and from the others (Q/K/V, gate/up), each optionally followed "
     "by the add of a bias row to its output (qwen2's Q/K/V biases)",
     "kernel_mmvq_group",
     "one start-up and one drain for what were 2-3 small launches"},
    {"q8_reuse",
     "a quantized decode matmul whose input is already in 8-bit form (written by a fused stage "
     "or by the previous matmul of the same input, unchanged since)",
     "kernel_mmvq",
     "kernel_quantize_q8 is skipped"},
};

const char* kernel_base_name(Kernel k) {
    static const char* names[] = {
        "kernel_embed", "kernel_rmsnorm", "kernel_add_rmsnorm_q", "kernel_quantize_q8", "kernel_mmvq",
        "kernel_mmvq_group", "kernel_mv_f16", "kernel_matmul", "kernel_f32_to_f16", "kernel_dequant_f16",
        "kernel_gemm_f16", "kernel_gemm_q", "kernel_splitk_sum", "kernel_rope", "kernel_kv_store", "kernel_rope_kv_store", "kernel_attention_prefill",
        "kernel_attention_decode", "kernel_attention", "kernel_attention_combine", "kernel_add",
        "kernel_swiglu", "kernel_swiglu_q", "kernel_geglu", "kernel_attention_probs",
        "kernel_argmax",
    };
    return names[(int)k];
}

std::string kernel_name(const Launch& l) {
    std::string n = kernel_base_name(l.kernel);
    if (l.wtype >= 0) n += std::string("<") + type_info(l.wtype).name + ">";
    return n;
}

// A list run by the persistent kernel shows each launch as its instruction:
// kernel_persistent/kernel_mmvq<Q4_1>.
std::vector<KernelDesc> describe(const LaunchList& L) {
    std::vector<KernelDesc> out;
    out.reserve(L.launches.size());
    const std::string pre = L.persist.blocks ? "kernel_persistent/" : "";
    for (const Launch& l : L.launches)
        out.push_back(KernelDesc{pre + kernel_name(l), l.first, l.count, l.fusion >= 0 ? FUSIONS[l.fusion].name : ""});
    return out;
}

// Resident blocks per SM as cudaOccupancy reported them on an H100 for this build's kernels
// (nvcc 13.0, sm_90): kernel_mmvq 6 (Q4_0 at 2-8 tokens: 3), kernel_mmvq_group 4 (Q4_0: 3).
CudaCaps::CudaCaps() {
    for (int t = 0; t < 32; ++t) {
        mv_resident[t][0] = mv_resident[t][1] = 6;
        mvg_resident[t][0] = mvg_resident[t][1] = 4;
    }
    mv_resident[KT_Q4_0][1] = mvg_resident[KT_Q4_0][1] = 3;
}

// ---- sizes shared with the executor -------------------------------------------------------
static bool mmvq_type(int t) {
    return t == KT_Q4_0 || t == KT_Q4_1 || t == KT_Q5_0 || t == KT_Q5_1 || t == KT_Q8_0 || t == KT_Q2_K ||
           t == KT_Q3_K || t == KT_Q4_K || t == KT_Q5_K || t == KT_Q6_K || t == KT_IQ4_XS;
}
int q8_block(int t) { return type_info(t).block == 256 ? 256 : 32; }   // the K-quants and IQ4_XS: 256
static uint64_t a256(uint64_t n) { return (n + 255) & ~255ull; }
uint64_t q8_values_bytes(const kargs_matmul& a) { return a256((uint64_t)a.n_tokens * a.n_in); }
uint64_t q8_scales_bytes(const kargs_matmul& a) {
    return a256((uint64_t)a.n_tokens * (a.n_in / q8_block(a.wtype)) * sizeof(float));
}
uint64_t q8_bytes(const kargs_matmul& a) {
    return q8_values_bytes(a) + q8_scales_bytes(a) + (uint64_t)a.n_tokens * (a.n_in / 32) * sizeof(int);
}
// Prefill on the tensor cores: more than MV_MAX_TOKENS tokens and K a multiple of the GEMM's
// step (every block format's K is). The weights go to fp16 in chunks of rows of at most 64 MB
// (a multiple of the GEMM's tile); F16 weights with aligned rows are used as they are.
static bool gemm_shape(const kargs_matmul& a) {
    return a.n_tokens > MV_MAX_TOKENS && a.n_in % GM_BK == 0 && a.wtype != KT_BF16;
}
static int gemm_chunk_rows(const kargs_matmul& a) {
    const int64_t fit = std::max<int64_t>(GM_BN, ((32ll << 20) / a.n_in) / GM_BN * GM_BN);
    return (int)std::min<int64_t>(fit, ((int64_t)a.n_out + GM_BN - 1) / GM_BN * GM_BN);
}
uint64_t gemm_x_bytes(const kargs_matmul& a) { return ((uint64_t)a.n_tokens * a.n_in * 2 + 255) & ~255ull; }
static uint64_t gemm_w_bytes(const kargs_matmul& a) {
    return a.wtype == KT_F16 ? 0 : (uint64_t)gemm_chunk_rows(a) * a.n_in * 2;   // F16 rows are read in place
}
// A few tokens of a quantized weight (K in whole windows): kernel_gemm_q.
static bool gemm_q_shape(const kargs_matmul& a) {
    return gemm_shape(a) && a.n_tokens <= GQ_MAX_TOKENS && mmvq_type(a.wtype) && a.n_in % gq_window(a.wtype) == 0;
}
// Bytes of one row's window of kernel_gemm_q.
static int gq_window_bytes(int t) { return gq_window(t) / type_info(t).block * type_info(t).block_bytes; }
// kernel_gemm_q's split of K over grid.y (S): more splits while the row tiles alone give
// fewer than three blocks an SM, at least one window a split. Returns the windows a split
// (nwp) and S.
static int gemm_q_split(const kargs_matmul& a, int n_sm, int* S) {
    const int tiles = (a.n_out + GQ_ROWS - 1) / GQ_ROWS, nw = a.n_in / gq_window(a.wtype);
    const int want = std::max(1, std::min((3 * n_sm + tiles - 1) / tiles, nw));
    const int nwp = (nw + want - 1) / want;
    *S = (nw + nwp - 1) / nwp;
    return nwp;
}
static uint64_t gemm_q_part_bytes(const kargs_matmul& a, int S) {
    return S > 1 ? (uint64_t)S * a.n_tokens * a.n_out * sizeof(float) : 0;
}
// Shared memory of kernel_gemm_q: each warp's ring of GQ_SLOTS windows of its 32 rows.
static uint32_t gemm_q_smem(int t) { return (uint32_t)(GQ_SLOTS * GQ_ROWS * gq_window_bytes(t)); }

// Blocks of a format per mat-vec window (MVQ<T>::NB) and elements per block.
static int mvq_nb(int t) {
    switch (t) {
        case KT_Q4_0: return MVQ<KT_Q4_0>::NB;
        case KT_Q4_1: return MVQ<KT_Q4_1>::NB;
        case KT_Q5_0: return MVQ<KT_Q5_0>::NB;
        case KT_Q5_1: return MVQ<KT_Q5_1>::NB;
        case KT_Q8_0: return MVQ<KT_Q8_0>::NB;
        case KT_Q4_K: return MVQ<KT_Q4_K>::NB;
        case KT_Q5_K: return MVQ<KT_Q5_K>::NB;
        case KT_Q6_K: return MVQ<KT_Q6_K>::NB;
        case KT_Q2_K: return MVQ<KT_Q2_K>::NB;
        case KT_Q3_K: return MVQ<KT_Q3_K>::NB;
        case KT_IQ4_XS: return MVQ<KT_IQ4_XS>::NB;
        default: return MVQ<KT_F16>::NB;
    }
}

namespace {

inline uint32_t blocks(int64_t n, int per) { return (uint32_t)((n + per - 1) / per); }

// Addresses as offsets: every buffer starts 256-byte aligned and buffers are disjoint.
bool same(const Binding& a, const Binding& b) { return a.buf == b.buf && a.offset == b.offset; }
bool aligned(const Binding& b, unsigned v) { return b.offset % v == 0; }
bool a16(const Binding& b) { return aligned(b, 16); }
bool overlaps(const Binding& a, uint64_t na, const Binding& b, uint64_t nb) {
    return a.buf == b.buf && a.offset < b.offset + nb && b.offset < a.offset + na;
}
bool is_matmul(const Command& c) { return c.stage == Stage::matmul || c.stage == Stage::logits; }

// The widest load (16, 8, 4 or 2 bytes) that divides both the weight rows' start and length.
int load_width(const kargs_matmul& a, const Binding& W) {
    for (unsigned v = 16; v > 2; v >>= 1)
        if (a.row_bytes % v == 0 && aligned(W, v)) return (int)v;
    return 2;
}

// Warps per row for kernel_mv_f16: 1 when the matrix has rows enough to give every SM ~32
// warps (132 SMs on an H100), else 2 or 4 -- never more than the row has windows.
int row_split(int n_out, int n_windows) {
    int s = n_out >= 4096 ? 1 : n_out >= 2048 ? 2 : 4;
    while (s > 1 && n_windows < s) s >>= 1;
    return s;
}

// ---- attention: which kernel and how many splits --------------------------------------------
// kernel_attention_decode takes head sizes 64 and 128, up to 8 query heads per K/V head and
// G * head_dim <= 1024; prompts of 16+ tokens with those head sizes go to the tensor cores
// instead. Other shapes (e.g. Gemma-3's head size 256), and a batch of several sequences
// (by_row: each row its own sequence and position), run kernel_attention.
bool prefill_attention(const kargs_attention& a) {
    return !a.by_row && a.n_tokens >= 16 && (a.head_dim == 64 || a.head_dim == 128);
}
bool decode_attention(const kargs_attention& a) {
    const int G = a.n_heads / a.n_kv_heads;
    return !a.by_row && !prefill_attention(a) && (a.head_dim == 64 || a.head_dim == 128) && G <= AD_GMAX &&
           G * a.head_dim <= AD_QMAX && a.n_tokens * a.n_kv_heads <= AD_COUNTERS;
}
// How many blocks split one query's keys: decode splits the whole context in chunks of 32 or
// 128 keys (blocks past the current position exit at once, so the grid is the same for every
// token and a graph can hold it); a batch of queries uses at most 4 splits.
// Splits of 32 keys: one pass of kernel_attention_decode's warps (one K and one V round trip),
// one group of ATT_KG keys a warp in kernel_attention (64-key splits took two round trips of
// each). For head size 64 the decode kernel's pass is short enough that splits of 128 keys (4
// passes) cost less than merging 4x as many splits (H100, SmolLM2 shape, attention us at
// positions 64 / 520 / 900: 6.51 / 8.96 / 9.10 with 128-key splits, 6.60 / 11.09 / 12.92 with
// 32); for head size 128 it is the other way round (8B shape: 16.90 / 26.13 / 26.07 against
// 15.29 / 17.97 / 21.54). At most 256 splits.
// One token on kernel_attention_decode (max_blocks > 0, only for that kernel): at most max_blocks
// (n_sm * AD_BLOCKS_SM) live blocks (splits x K/V heads). The chunk stays the one of the uncapped
// splits, so a position whose keys fit the capped splits' chunks is split as without the cap;
// past that the kernel gives each split more keys (ad_chunk: ceil(visible keys / splits))
// instead of running more blocks. Uncapped, the 8B shape at a 16k context runs 2,048 blocks of
// 65 keys in ~8 waves, then a 256-way merge: 166 t/s at depth 16384 against 244 capped (H100,
// docs/benchmarks-cuda.md, "Decode at depth").
void attention_split(const kargs_attention& a, int* S, int* chunk, int max_blocks) {
    const int span = a.window > 0 ? std::min(a.window, a.n_ctx) : a.n_ctx;
    const bool decode = decode_attention(a);
    const int keys = decode && a.head_dim == 64 ? 128 : 32;
    int s = std::min((span + keys - 1) / keys, 256);
    if (a.n_tokens > 1) s = std::min(s, 4);
    *S = std::max(s, 1);
    *chunk = (span + *S - 1) / *S;
    if (decode && a.n_tokens == 1 && max_blocks > 0) *S = std::min(*S, std::max(1, max_blocks / a.n_kv_heads));
}
bool attention_aligned(const Command& c) { return a16(c.b[0]) && a16(c.b[1]) && a16(c.b[2]); }

struct Planner {
    const std::vector<Command>& cmds;
    const CudaCaps& caps;
    LaunchList L;
    // What qscratch holds now: the 8-bit copy of n floats at (buf, offset) in blocks of qb.
    struct QCache { const Buffer* buf = nullptr; uint64_t offset = 0; int64_t n = 0; int qb = 0; } qc;
    // The activations whose fp16 copy is at the start of hscratch, written by the kernel_gemm_q
    // matmul before: the next one reading them (K and V after Q, up after gate) converts nothing.
    // Only back-to-back few-token matmuls keep it (any other launch may write hscratch or x).
    struct HCache { const Buffer* buf = nullptr; uint64_t offset = 0; int64_t n = 0; } hc;

    Launch& emit(Kernel k, int first, int count, uint32_t gx, uint32_t block, int8_t fusion = F_NONE) {
        L.launches.emplace_back();
        Launch& l = L.launches.back();
        l.kernel = k; l.first = first; l.count = count; l.fusion = fusion;
        l.grid[0] = gx; l.block = block;
        return l;
    }
    void cache(const Binding& b, int64_t n, int qb) { qc = QCache{b.buf, b.offset, n, qb}; }

    // QB of the 8-bit activations a command's decode matmul reads (0: not such a matmul).
    static int decode_qb(const Command& c) {
        if (!is_matmul(c)) return 0;
        const kargs_matmul& m = c.a.matmul;
        return mmvq_type(m.wtype) && m.n_tokens <= MV_MAX_TOKENS ? q8_block(m.wtype) : 0;
    }
    // The command at j, when it is a quantized decode matmul reading `out` [rows, dim]: its QB
    // (the producer of `out` can write its 8-bit input), else 0.
    int consumer_qb(size_t j, const Binding& out, int rows, int dim) const {
        if (j >= cmds.size()) return 0;
        const Command& m = cmds[j];
        const int qb = decode_qb(m);
        return qb && same(m.b[1], out) && m.a.matmul.n_tokens == rows && m.a.matmul.n_in == dim && dim % qb == 0 ? qb : 0;
    }

    // ---- the walk ----------------------------------------------------------------------------
    void run() {
        // PDL only for decode lists (every matmul of at most MV_MAX_TOKENS tokens): there the
        // kernels are short and their start-up is what it hides. In a prompt's list the next
        // kernel's waiting blocks take SM slots from multi-wave GEMMs: measured on an H100, 8B
        // Q4_0 pp512 GPU span 49.2 ms with it against 44.7 ms without.
        L.pdl = caps.pdl && caps.cc_major >= 9;
        for (const Command& c : cmds) {
            if (is_matmul(c) && c.a.matmul.n_tokens > MV_MAX_TOKENS) L.pdl = false;
            if (c.stage == Stage::attention) {
                const kargs_attention& a = c.a.attention;
                int S, chunk;
                attention_split(a, &S, &chunk, 0);   // (the most splits, uncapped)
                if (S > 1)
                    L.scratch_bytes = std::max<uint64_t>(L.scratch_bytes, (uint64_t)a.n_tokens * a.n_heads * S *
                                                                              (a.head_dim + 2) * sizeof(float));
            }
            if (decode_qb(c)) L.qscratch_bytes = std::max(L.qscratch_bytes, q8_bytes(c.a.matmul));
            if (is_matmul(c) && gemm_q_shape(c.a.matmul)) {
                int S;
                gemm_q_split(c.a.matmul, caps.n_sm, &S);
                L.hscratch_bytes = std::max(L.hscratch_bytes, gemm_x_bytes(c.a.matmul) + gemm_q_part_bytes(c.a.matmul, S));
            } else if (is_matmul(c) && gemm_shape(c.a.matmul))
                L.hscratch_bytes = std::max(L.hscratch_bytes, gemm_x_bytes(c.a.matmul) + gemm_w_bytes(c.a.matmul));
        }
        for (size_t i = 0; i < cmds.size();) {
            if (!is_matmul(cmds[i]) || !gemm_q_shape(cmds[i].a.matmul)) hc = {};
            const size_t n = caps.fuse ? fused(i) : 0;
            if (n) { i += n; continue; }
            const Command& c = cmds[i];
            if (!decode_qb(c)) qc = {};   // any other stage may write what qscratch copies
            split(i);
            if (is_matmul(c)) {
                const kargs_matmul& m = c.a.matmul;
                if (overlaps(c.b[2], (uint64_t)m.n_tokens * m.n_out * 4, c.b[1], (uint64_t)m.n_tokens * m.n_in * 4))
                    qc = {};
            }
            ++i;
        }
    }

    // ---- fused patterns at cmds[i] (FUSIONS); returns how many commands they cover ----------
    size_t fused(size_t i) {
        const Command& c = cmds[i];
        const Command* nx = i + 1 < cmds.size() ? &cmds[i + 1] : nullptr;
        if (c.stage == Stage::add && nx && nx->stage == Stage::rmsnorm) {
            const kargs_eltwise& e = c.a.eltwise;
            const kargs_rmsnorm& r = nx->a.rmsnorm;
            if (same(nx->b[0], c.b[2]) && e.b_n == e.n && e.n == (int64_t)r.n_rows * r.dim &&
                rmsnorm_fused(i, true))
                return 2;
        }
        if (c.stage == Stage::rmsnorm && rmsnorm_fused(i, false)) return 1;
        if (size_t n = matmul_group(i)) return n;
        if (c.stage == Stage::swiglu) {
            const kargs_glu& g = c.a.glu;
            const int qb = consumer_qb(i + 1, c.b[2], g.n_tokens, g.n_ff);
            if (!qb) return 0;
            const int64_t n = (int64_t)g.n_tokens * g.n_ff;
            Launch& l = emit(Kernel::swiglu_q, (int)i, 1, blocks(n, 256), 256, F_SWIGLU_Q);
            l.qb = qb;
            l.qcmd = (int)i + 1;
            cache(c.b[2], n, qb);
            return 1;
        }
        if (c.stage == Stage::attention) {   // attention + the o projection's quantization
            const kargs_attention& at = c.a.attention;
            const int dim = at.n_heads * at.head_dim;
            if (decode_attention(at) && attention_aligned(c) && consumer_qb(i + 1, c.b[3], at.n_tokens, dim) == 32) {
                attention(i, 1, F_ATTENTION_Q, (int)i + 1);
                cache(c.b[3], (int64_t)at.n_tokens * dim, 32);
                return 1;
            }
        }
        if (c.stage == Stage::rope && i + 3 < cmds.size()) return rope_chain(i);
        return 0;
    }

    // rope q, rope k, kv_store k, kv_store v [, attention]
    size_t rope_chain(size_t i) {
        const Command &c = cmds[i], &rk = cmds[i + 1], &sk = cmds[i + 2], &sv = cmds[i + 3];
        const kargs_rope &q = c.a.rope, &k = rk.a.rope;
        // a batch of several sequences (by_row) runs the split stages
        if (q.by_row || k.by_row || sk.a.kv_store.by_row || sv.a.kv_store.by_row) return 0;
        if (!(rk.stage == Stage::rope && sk.stage == Stage::kv_store && sv.stage == Stage::kv_store &&
              q.n_rot == q.head_dim && k.n_rot == q.n_rot && k.head_dim == q.head_dim && k.mode == q.mode &&
              k.freq_base == q.freq_base && k.freq_scale == q.freq_scale && k.has_factors == q.has_factors &&
              (!q.has_factors || same(rk.b[1], c.b[1])) && k.n_tokens == q.n_tokens && same(sk.b[0], rk.b[0]) &&
              sk.a.kv_store.kv_dim == k.n_heads * k.head_dim && sv.a.kv_store.kv_dim == sk.a.kv_store.kv_dim &&
              sk.a.kv_store.n_tokens == k.n_tokens && sv.a.kv_store.n_tokens == k.n_tokens &&
              sv.a.kv_store.n_ctx == sk.a.kv_store.n_ctx))
            return 0;
        // v must not be q or k: the split stages would store the rotated values
        const uint64_t nv = (uint64_t)k.n_tokens * sv.a.kv_store.kv_dim * 4;
        if (overlaps(sv.b[0], nv, c.b[0], (uint64_t)q.n_tokens * q.n_heads * q.head_dim * 4) ||
            overlaps(sv.b[0], nv, rk.b[0], (uint64_t)k.n_tokens * k.n_heads * k.head_dim * 4))
            return 0;
        // ... and the attention that follows, for one token: one kernel_attention_decode
        if (i + 4 < cmds.size() && cmds[i + 4].stage == Stage::attention) {
            const Command& at = cmds[i + 4];
            const kargs_attention& aa = at.a.attention;
            if (aa.n_tokens == 1 && q.n_tokens == 1 && decode_attention(aa) && attention_aligned(at) &&
                same(at.b[0], c.b[0]) && same(at.b[1], sk.b[1]) && same(at.b[2], sv.b[1]) && aa.head_dim == q.head_dim &&
                aa.n_heads == q.n_heads && aa.n_kv_heads == k.n_heads && aa.n_ctx == sk.a.kv_store.n_ctx) {
                const int dim = aa.n_heads * aa.head_dim;
                const bool qz = consumer_qb(i + 5, at.b[3], 1, dim) == 32;
                attention(i + 4, 5, F_ROPE_KV_ATTENTION, qz ? (int)i + 5 : -1);
                L.launches.back().first = (int)i;
                if (qz) cache(at.b[3], dim, 32);
                else qc = {};
                return 5;
            }
        }
        const int64_t n = (int64_t)q.n_tokens * (q.n_heads + k.n_heads) * (q.n_rot / 2) +
                          (int64_t)k.n_tokens * sk.a.kv_store.kv_dim;
        emit(Kernel::rope_kv_store, (int)i, 4, blocks(n, 256), 256, F_ROPE_KV_STORE);
        qc = {};
        return 4;
    }

    // [add +] rmsnorm [+ quantize for the next command] as one kernel_add_rmsnorm_q, when the
    // shapes allow it (see the kernel); false: not this pattern.
    bool rmsnorm_fused(size_t i, bool add) {
        const Command& c = cmds[i];
        const Command& nc = add ? cmds[i + 1] : c;   // the rmsnorm
        const kargs_rmsnorm& r = nc.a.rmsnorm;
        const Binding &x = c.b[0], &w = nc.b[1], &out = nc.b[2];
        const int nv = r.dim / 4;
        if (r.dim % 4 || !a16(x) || !a16(w) || !a16(out) || (add && (!a16(c.b[1]) || !a16(c.b[2])))) return false;
        const size_t next = i + (add ? 2 : 1);
        const int qb = consumer_qb(next, out, r.n_rows, r.dim);
        const int unit = qb == 256 ? 64 : 32;   // threads of one quantization block (see the kernel)
        int nt = (nv + unit - 1) / unit * unit;   // one float4 a thread (rows up to 4096 values) ...
        if (nt > 1024) nt = ((nv + RMS_V - 1) / RMS_V + unit - 1) / unit * unit;   // ... else up to RMS_V
        if (nt > 1024) return false;
        if (!add && !qb && r.n_rows > 1) return false;   // a plain multi-row norm: the split kernel is as good
        Launch& l = emit(Kernel::add_rmsnorm_q, (int)i, add ? 2 : 1, (uint32_t)r.n_rows, (uint32_t)nt,
                         add ? F_ADD_RMSNORM_Q : qb ? F_RMSNORM_Q : F_NONE);
        l.variant = add;
        l.qb = qb;
        l.qcmd = qb ? (int)next : -1;
        if (qb) cache(out, (int64_t)r.n_rows * r.dim, qb);
        else qc = {};
        return true;
    }

    // ---- quantized decode matmuls --------------------------------------------------------------
    // The 8-bit copy of command j's input in qscratch: a kernel_quantize_q8 unless qc says it is
    // there already. Returns whether it was there.
    bool quantize_for(size_t j) {
        const Command& c = cmds[j];
        const kargs_matmul& a = c.a.matmul;
        const int qb = q8_block(a.wtype);
        const int64_t n = (int64_t)a.n_tokens * a.n_in;
        if (qc.buf == c.b[1].buf && qc.offset == c.b[1].offset && qc.n == n && qc.qb == qb) return true;
        Launch& l = emit(Kernel::quantize_q8, (int)j, 1, blocks(n, 256), 256);
        l.qb = qb;
        l.qcmd = (int)j;
        cache(c.b[1], n, qb);
        return false;
    }
    // Windows on the busiest SM when `warps` warps (blocks of MV_ROWS, spread evenly over the
    // SMs) take `per_warp` windows each. The mat-vecs pick rows per warp by it: 28672 rows at 10
    // a warp are 717 blocks, 6 on some SMs and 5 on others, so the 6-block SMs finish last; at 11
    // a warp, 652 blocks are at most 5 an SM and the busiest SM has 8% less to do.
    int64_t mv_sm_load(int64_t warps, int64_t per_warp) const {
        const int64_t nb = (warps + MV_ROWS - 1) / MV_ROWS;
        return (nb + caps.n_sm - 1) / caps.n_sm * MV_ROWS * per_warp;
    }
    // Warps a mat-vec of `bytes` of weights plans for, at `per_sm` resident blocks per SM. A
    // small one (under 4 MB: latency, not bandwidth, decides its time) is sized for one block
    // fewer per SM, so that the next kernel's blocks (a norm, swiglu, attention, launched early
    // by PDL) find room on every SM and wait there, resident, instead of being placed once
    // mat-vec blocks leave: SmolLM2 tg128 1428 -> 1496 on an H100. Large ones keep every warp
    // (the same slack cost 8B Q4_0 2.4%: fewer warps stream less).
    int64_t mv_plan_warps(int per_sm, uint64_t bytes) const {
        const int b = bytes < (4ull << 20) ? per_sm - 1 : per_sm;
        return (int64_t)caps.n_sm * std::max(1, b) * MV_ROWS;
    }
    static int windows(const kargs_matmul& a) {
        const int nb = mvq_nb(a.wtype);
        return (a.n_in / type_info(a.wtype).block + nb - 1) / nb;
    }
    // The plan of kernel_mmvq for one matrix: persistent warps in groups of S per row, as few
    // rows per group as the resident warps allow, then as few groups as give every group that
    // many rows (a balanced single wave). S: the one of 1, 2, 4 (at most the row's windows) that
    // leaves the fewest windows to one warp; the largest such, since a warp that takes the same
    // window of every row loads that window's activations once: 8B Q4_0's down projection (4
    // windows a row) 16.8 -> 15.5 us with S = 4 instead of 1 (H100). A row's sum depends on S,
    // so kernel_mmvq_group takes each weight's S from here too.
    struct MvPlan { int S; int64_t rpw; };
    MvPlan mv_plan(const kargs_matmul& a) const {
        const int nt8 = a.n_tokens > 1;
        const int64_t resident = mv_plan_warps(caps.mv_resident[a.wtype][nt8], (uint64_t)a.n_out * a.row_bytes);
        const int nwin = windows(a);
        MvPlan p{1, 1};
        int64_t best = INT64_MAX;
        for (int s = 1; s <= 4 && s <= nwin; s *= 2) {
            const int64_t r0 = (a.n_out * s + resident - 1) / resident;
            for (int64_t r = r0; r < r0 + 3; ++r) {
                const int64_t cost = mv_sm_load((a.n_out + r - 1) / r * s, r * ((nwin + s - 1) / s));
                if (cost < best || (cost == best && s > p.S)) { best = cost; p = {s, r}; }
            }
        }
        return p;
    }
    void mmvq(size_t j) {
        const Command& c = cmds[j];
        const kargs_matmul& a = c.a.matmul;
        const bool had = quantize_for(j);
        const MvPlan p = mv_plan(a);
        const int nwarps = (int)((a.n_out + p.rpw - 1) / p.rpw) * p.S;
        Launch& l = emit(Kernel::mmvq, (int)j, 1, blocks(nwarps, MV_ROWS), MV_ROWS * 32, had ? F_QUANTIZE_SHARED : F_NONE);
        l.wtype = a.wtype;
        l.variant = a.n_tokens <= 1 ? 1 : 8;
        l.S = p.S;
        l.vw = load_width(a, c.b[0]);
        l.nwarps = nwarps;
        l.qcmd = (int)j;
    }

    // 2 or 3 consecutive quantized decode matmuls (Stage::matmul, not logits) of one weight type,
    // token count and K reading the same input -- Q/K/V, gate/up -- as one kernel_mmvq_group.
    // A matmul may be followed by the add of a bias row to its own output in place (qwen2's
    // Q/K/V biases): the kernel adds bias[r] to row r's sum as it stores it, the same float
    // addition kernel_add does, so the bits are those of the split stages.
    // Each output must lie apart from the input and from the other outputs (the split matmuls
    // would otherwise see each other's writes). One quantization (or none, when qc has it).
    // Each weight keeps the S of its own plan (mv_plan); the warps are shared out as for one
    // matrix of all the rows: as few rows per group of S warps as the resident warps allow, each
    // weight getting enough groups for its rows at that rate. Weights go largest S first, so
    // each starts at a multiple of its S.
    size_t matmul_group(size_t i) {
        const Command& c = cmds[i];
        if (c.stage != Stage::matmul || !decode_qb(c)) return 0;
        const kargs_matmul& a = c.a.matmul;
        const uint64_t nx = (uint64_t)a.n_tokens * a.n_in * 4;
        int ms[MVG_MAX], bias[MVG_MAX];
        int n = 0;
        size_t j = i;
        for (; j < cmds.size() && n < MVG_MAX; ++j) {
            const Command& m = cmds[j];
            const kargs_matmul& b = m.a.matmul;
            if (m.stage != Stage::matmul || !decode_qb(m) || b.wtype != a.wtype || b.n_in != a.n_in ||
                b.n_tokens != a.n_tokens || !same(m.b[1], c.b[1]))
                break;
            const uint64_t ny = (uint64_t)b.n_tokens * b.n_out * 4;
            bool apart = !overlaps(m.b[2], ny, c.b[1], nx);
            for (int k = 0; k < n && apart; ++k) {
                const kargs_matmul& o = cmds[ms[k]].a.matmul;
                apart = !overlaps(m.b[2], ny, cmds[ms[k]].b[2], (uint64_t)o.n_tokens * o.n_out * 4);
            }
            if (!apart) break;
            ms[n] = (int)j;
            bias[n] = -1;
            if (j + 1 < cmds.size() && bias_add(cmds[j + 1], m)) bias[n] = (int)++j;
            ++n;
        }
        if (n < 2) return 0;
        quantize_for(i);
        const int nt8 = a.n_tokens > 1;
        const int nwin = windows(a);   // the same K for all
        int S[MVG_MAX], order[MVG_MAX];
        int64_t rows = 0;   // in warps at one row a group
        uint64_t bytes = 0;
        int per_warp = 1;   // windows of a row one warp takes, at most
        for (int j = 0; j < n; ++j) {
            const kargs_matmul& m = cmds[ms[j]].a.matmul;
            S[j] = mv_plan(m).S;
            order[j] = j;
            rows += (int64_t)m.n_out * S[j];
            bytes += (uint64_t)m.n_out * m.row_bytes;
            per_warp = std::max(per_warp, (nwin + S[j] - 1) / S[j]);
        }
        std::stable_sort(order, order + n, [&](int x, int y) { return S[x] > S[y]; });
        const int64_t resident = mv_plan_warps(caps.mvg_resident[a.wtype][nt8], bytes);
        const int64_t r0 = (rows + resident - 1) / resident;
        int64_t rpw = r0, best = INT64_MAX;
        for (int64_t r = r0; r < r0 + 3; ++r) {
            int64_t w = 0;
            for (int j = 0; j < n; ++j) w += (cmds[ms[j]].a.matmul.n_out + r - 1) / r * S[j];
            const int64_t cost = mv_sm_load(w, r * per_warp);
            if (cost < best) { best = cost; rpw = r; }
        }
        Launch l;
        l.kernel = Kernel::mmvq_group;
        l.first = (int)i;
        l.count = n;
        l.fusion = F_MATMUL_GROUP;
        l.wtype = a.wtype;
        l.variant = nt8 ? 8 : 1;
        l.qcmd = (int)i;
        l.g_n = n;
        int64_t nw = 0;
        for (int k = 0; k < n; ++k) {
            const Command& m = cmds[ms[order[k]]];
            l.g_cmd[k] = ms[order[k]];
            l.g_bias[k] = bias[order[k]];
            l.g_S[k] = S[order[k]];
            l.g_vw[k] = load_width(m.a.matmul, m.b[0]);
            l.g_nwarps[k] = (int)((m.a.matmul.n_out + rpw - 1) / rpw) * l.g_S[k];
            nw += l.g_nwarps[k];
        }
        l.S = l.g_S[0];   // the largest
        l.grid[0] = blocks(nw, MV_ROWS);
        l.block = MV_ROWS * 32;
        l.count = (int)(j - i);
        L.launches.push_back(l);
        return j - i;
    }
    // c adds one row of n_out values (a bias) to matmul m's output in place.
    static bool bias_add(const Command& c, const Command& m) {
        if (c.stage != Stage::add) return false;
        const kargs_eltwise& e = c.a.eltwise;
        const kargs_matmul& a = m.a.matmul;
        return same(c.b[0], m.b[2]) && same(c.b[2], m.b[2]) && e.b_n == a.n_out &&
               e.n == (int64_t)a.n_tokens * a.n_out;
    }

    // ---- one stage, split ---------------------------------------------------------------------
    void split(size_t i) {
        const Command& c = cmds[i];
        const int ii = (int)i;
        switch (c.stage) {
            case Stage::embed: {
                const kargs_embed& a = c.a.embed;
                Launch& l = emit(Kernel::embed, ii, 1, blocks(a.dim, 256), 256);
                l.grid[1] = a.n_tokens;
                l.wtype = a.wtype;
                break;
            }
            case Stage::rmsnorm: emit(Kernel::rmsnorm, ii, 1, c.a.rmsnorm.n_rows, 256); break;
            case Stage::matmul:
            case Stage::logits: matmul(i); break;
            case Stage::rope: {
                const kargs_rope& a = c.a.rope;
                emit(Kernel::rope, ii, 1, blocks((int64_t)a.n_tokens * a.n_heads * (a.n_rot / 2), 256), 256);
                break;
            }
            case Stage::kv_store:
                emit(Kernel::kv_store, ii, 1, blocks((int64_t)c.a.kv_store.n_tokens * c.a.kv_store.kv_dim, 256), 256);
                break;
            case Stage::attention: attention(i, 1, F_NONE, -1); break;
            case Stage::add: emit(Kernel::add, ii, 1, blocks(c.a.eltwise.n, 256), 256); break;
            case Stage::swiglu:
                emit(Kernel::swiglu, ii, 1, blocks((int64_t)c.a.glu.n_tokens * c.a.glu.n_ff, 256), 256);
                break;
            case Stage::geglu:
                emit(Kernel::geglu, ii, 1, blocks((int64_t)c.a.glu.n_tokens * c.a.glu.n_ff, 256), 256);
                break;
            case Stage::attention_probs: {   // eager inspection: one block per (head, token)
                const kargs_attention& a = c.a.attention_probs.a;
                if (a.head_dim > ATT_MAXD * 32)
                    throw Error("attention_probs: head_dim above 256 is not supported on cuda");
                Launch& l = emit(Kernel::attention_probs, ii, 1, a.n_heads, ATT_WARPS * 32);
                l.grid[1] = a.n_tokens;
                break;
            }
            case Stage::argmax: {   // one block of 1024 threads per row; float4 loads where rows allow
                const kargs_argmax& a = c.a.argmax;
                Launch& l = emit(Kernel::argmax, ii, 1, (uint32_t)a.n_rows, 1024);
                l.variant = a.n_cols % 4 == 0 && a16(c.b[0]) ? 4 : 1;
                break;
            }
        }
    }

    void matmul(size_t i) {
        const Command& c = cmds[i];
        const kargs_matmul& a = c.a.matmul;
        const int T = a.wtype;
        const int ii = (int)i;
        const bool x16 = a16(c.b[1]);
        if (gemm_q_shape(a) && x16) {
            // a few tokens: activations to fp16, the GEMM streaming the quantized rows, its K
            // splits summed
            const int M = a.n_tokens, nt8 = M <= 16 ? 2 : M <= 32 ? 4 : 8;
            const int64_t nx = (int64_t)M * a.n_in;
            if (!(hc.buf == c.b[1].buf && hc.offset == c.b[1].offset && hc.n == nx))
                emit(Kernel::f32_to_f16, ii, 1, blocks(nx / 4, 256), 256);
            hc = overlaps(c.b[2], (uint64_t)M * a.n_out * 4, c.b[1], (uint64_t)nx * 4) ? HCache{}
                                                                                       : HCache{c.b[1].buf, c.b[1].offset, nx};
            int S;
            const int nwp = gemm_q_split(a, caps.n_sm, &S);
            Launch& g = emit(Kernel::gemm_q, ii, 1, blocks(a.n_out, GQ_ROWS), GQ_WARPS * 32);
            g.grid[1] = S;
            g.smem = gemm_q_smem(T);
            g.variant = nt8;
            g.wtype = T;
            g.S = S;
            g.nks = nwp;
            g.vw = load_width(a, c.b[0]);
            while (gq_window_bytes(T) % g.vw) g.vw >>= 1;
            if (S > 1) {
                Launch& r = emit(Kernel::splitk_sum, ii, 1, blocks((int64_t)M * a.n_out, 256), 256);
                r.S = S;
            }
            return;
        }
        hc = {};
        if (T != KT_F32 && T != KT_BF16 && gemm_shape(a) && x16 &&
            (T != KT_F16 || (a16(c.b[0]) && a.row_bytes == 2ull * a.n_in))) {
            // prefill: activations and weights (chunk by chunk) to fp16, then the tensor-core GEMM
            const int M = a.n_tokens, N = a.n_out, K = a.n_in;
            emit(Kernel::f32_to_f16, ii, 1, blocks((int64_t)M * K / 4, 256), 256);
            const int nc = gemm_chunk_rows(a);
            for (int r0 = 0; r0 < N; r0 += nc) {
                const int rows = std::min(nc, N - r0);
                if (T != KT_F16) {
                    Launch& d = emit(Kernel::dequant_f16, ii, 1, blocks((int64_t)rows * K / 8, 256), 256);
                    d.wtype = T;
                    d.r0 = r0;
                    d.rows = rows;
                }
                // 128-token tiles unless that gives fewer blocks than two per SM (Q/K/V, o at 512
                // tokens: 4 x 32 tiles for 132 SMs); then 64-token tiles, twice the blocks
                const int bm = (int64_t)blocks(M, 128) * blocks(rows, GM_BN) >= 2 * caps.n_sm ? 128 : 64;
                Launch& g = emit(Kernel::gemm_f16, ii, 1, blocks(M, bm), 256);
                g.grid[1] = blocks(rows, GM_BN);
                g.smem = gm_smem(bm);
                g.variant = bm;
                g.r0 = r0;
                g.rows = rows;
            }
            return;
        }
        if (T == KT_F16 && a.n_tokens <= MV_MAX_TOKENS && a.n_in % 8 == 0 && x16) {
            const int split = row_split(a.n_out, (a.n_in + 1023) / 1024);
            Launch& l = emit(Kernel::mv_f16, ii, 1, blocks(a.n_out, MV_ROWS / split), MV_ROWS * 32);
            l.variant = a.n_tokens == 1 ? 1 : 8;
            l.vw = load_width(a, c.b[0]);
            l.S = split;
            return;
        }
        if (mmvq_type(T) && a.n_tokens <= MV_MAX_TOKENS) return mmvq(i);
        // F32 / BF16 weights, and odd shapes: one warp per row, float activations
        if (!type_known(T) || T == KT_I32) throw Error("matmul: unsupported weight type " + std::to_string(T));
        const bool vec = (a.n_in % 8 == 0) && x16 &&
                         (type_info(T).block > 1 || (a16(c.b[0]) && a.row_bytes % 16 == 0));
        Launch& l = emit(Kernel::matmul, ii, 1, blocks(a.n_out, MV_WARPS), MV_WARPS * 32);
        l.grid[1] = blocks(a.n_tokens, MV_MT);
        l.wtype = T;
        l.variant = vec;
    }

    // Attention of command `at` (covering `count` commands, see rope_chain): the tensor cores for
    // a prompt, kernel_attention_decode for a few queries, else kernel_attention (+ combine).
    // qcmd >= 0: the decode kernel also writes that matmul's 8-bit input.
    void attention(size_t at, int count, int8_t fusion, int qcmd) {
        const Command& c = cmds[at];
        const kargs_attention& a = c.a.attention;
        if (a.head_dim > ATT_MAXD * 32) throw Error("attention: head_dim above 256 is not supported on cuda");
        const bool al = attention_aligned(c);
        if (prefill_attention(a) && al) {
            Launch& l = emit(Kernel::attention_prefill, (int)at, count, blocks(a.n_tokens, FA_BQ), FA_THREADS, fusion);
            l.grid[1] = a.n_heads;
            l.smem = fa_smem(a.head_dim);
            l.variant = a.head_dim;
            return;
        }
        int S, chunk;
        attention_split(a, &S, &chunk, al ? caps.n_sm * caps.ad_blocks_sm : 0);   // (the cap is kernel_attention_decode's)
        if (decode_attention(a) && al) {   // the splits merged in the kernel
            const int G = a.n_heads / a.n_kv_heads;   // query heads per K/V head: AD_WPH warps each
            Launch& l = emit(Kernel::attention_decode, (int)at, count, S, G * AD_WPH * 32, fusion);
            l.grid[1] = a.n_kv_heads;
            l.grid[2] = a.n_tokens;
            l.variant = a.head_dim / 32;   // lanes' values a row (DPL): 2 or 4
            l.smem = ad_smem(a.head_dim);
            l.S = S;
            l.chunk = chunk;
            l.qcmd = qcmd;
            l.qb = qcmd >= 0 ? 32 : 0;
            return;
        }
        Launch& l = emit(Kernel::attention, (int)at, count, S, ATT_WARPS * 32, fusion);
        l.grid[1] = a.n_heads;
        l.grid[2] = a.n_tokens;
        l.S = S;
        l.chunk = chunk;
        if (S > 1) {
            Launch& m = emit(Kernel::attention_combine, (int)at, 1, a.n_heads, 128);
            m.grid[1] = a.n_tokens;
            m.S = S;
            m.chunk = chunk;
        }
    }
};

}  // namespace

// ---- the persistent kernel's program ------------------------------------------------------------
// The types kernel_persistent has bodies for (persist.cu instantiates each).
static bool pk_type(int t) {
    return t == KT_Q4_0 || t == KT_Q4_1 || t == KT_Q5_0 || t == KT_Q8_0 || t == KT_Q4_K || t == KT_Q5_K || t == KT_Q6_K;
}
static bool pk_embed_type(int t) { return pk_type(t) || t == KT_F32 || t == KT_F16; }

// A one-token decode list as kernel_persistent's program, or why not (P.why). Every launch
// becomes one instruction with the launch's geometry, except:
//   - a mat-vec's warps are re-planned for units of PK_WARPS warps on all but one resident block
//     (the one left over takes the norm or attention that comes next while the others stream
//     the next weights), each weight keeping its launch's S, so every row is summed as in the
//     launch (a row's sum depends only on the row and S; a kernel_mmvq is a group of one);
//   - kernel_add_rmsnorm_q runs on at most PK_THREADS threads (the 8B shape's 1024-thread block
//     on 512: two float4s a thread, the sum of squares added up in another order).
static Persist persist_program(const std::vector<Command>& cmds, const LaunchList& L, const CudaCaps& caps) {
    Persist P;
    auto no = [&](const std::string& why) {
        P = Persist{};
        P.why = why;
        return P;
    };
    if (!L.pdl) return no("not a one-token decode list on sm_90+");
    if (caps.pk_blocks < 2) return no("fewer than two resident blocks of kernel_persistent");
    if (L.launches.size() > (size_t)PK_MAX_INS) return no("more than " + std::to_string(PK_MAX_INS) + " launches");
    const int64_t W = (int64_t)(caps.pk_blocks - 1) * PK_WARPS;   // warps of a mat-vec
    P.blocks = caps.pk_blocks;
    for (size_t i = 0; i < L.launches.size(); ++i) {
        const Launch& l = L.launches[i];
        PersistIns in;
        in.dep = (int)i - 1;
        const int64_t grid = (int64_t)l.grid[0] * l.grid[1] * l.grid[2];
        const std::string name = kernel_name(l);
        switch (l.kernel) {
            case Kernel::embed:
                if (!pk_embed_type(l.wtype)) return no(name + ": no persistent body for this type");
                in.units = (int)grid;
                in.nt = (int)l.block;
                break;
            case Kernel::add_rmsnorm_q: {
                const int dim = cmds[l.first + (l.variant ? 1 : 0)].a.rmsnorm.dim;
                in.nt = std::min<int>((int)l.block, PK_THREADS);
                if (dim / 4 > RMS_V * in.nt) return no(name + ": row too long for " + std::to_string(in.nt) + " threads");
                in.units = (int)grid;
                break;
            }
            case Kernel::mmvq:
            case Kernel::mmvq_group: {
                if (l.variant != 1) return no(name + ": more than one token");
                if (!pk_type(l.wtype)) return no(name + ": no persistent body for this type");
                int n = 1, rows[MVG_MAX] = {}, S[MVG_MAX] = {};
                if (l.kernel == Kernel::mmvq) {
                    rows[0] = cmds[l.first].a.matmul.n_out;
                    S[0] = l.S;
                } else {
                    n = l.g_n;
                    for (int j = 0; j < n; ++j) {
                        rows[j] = cmds[l.g_cmd[j]].a.matmul.n_out;
                        S[j] = l.g_S[j];
                    }
                }
                int64_t need = 0;
                for (int j = 0; j < n; ++j) need += (int64_t)rows[j] * S[j];
                int64_t rpw = std::max<int64_t>(1, (need + W - 1) / W), total;
                for (;; ++rpw) {
                    total = 0;
                    for (int j = 0; j < n; ++j) total += (rows[j] + rpw - 1) / rpw * S[j];
                    if (total <= W) break;
                }
                for (int j = 0; j < n; ++j) in.g_nwarps[j] = (int)((rows[j] + rpw - 1) / rpw * S[j]);
                in.units = (int)((total + PK_WARPS - 1) / PK_WARPS);
                in.nt = PK_THREADS;
                break;
            }
            case Kernel::attention_decode:
                if (l.block > (uint32_t)PK_THREADS) return no(name + ": more than " + std::to_string(PK_THREADS) + " threads");
                if (l.grid[2] != 1) return no(name + ": more than one token");
                in.units = (int)grid;
                in.nt = (int)l.block;
                break;
            case Kernel::swiglu_q:
            case Kernel::quantize_q8:
                in.units = (int)grid;
                in.nt = (int)l.block;
                break;
            default: return no(name + ": no persistent body");
        }
        P.ins.push_back(in);
    }
    return P;
}

LaunchList plan(const std::vector<Command>& cmds, const CudaCaps& caps) {
    Planner p{cmds, caps, {}, {}};
    p.L.launches.reserve(cmds.size() + 8);
    p.run();
    if (caps.persist) p.L.persist = persist_program(cmds, p.L, caps);
    return std::move(p.L);
}

}  // namespace cuda
}  // namespace llmetal
