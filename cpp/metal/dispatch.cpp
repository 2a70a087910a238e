// dispatch.cpp -- stage -> dispatch descriptions (see dispatch.h). Plain C++: the same code
// plans the real Metal device's command buffers and the metal-emu device's emulated runs.
#include "dispatch.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>

namespace llmetal::metal {

namespace {

inline uint32_t groups(int64_t n, int64_t per) {
    int64_t g = (n + per - 1) / per;
    if (g > 0xFFFFFFFFll) throw Error("metal: grid too large");
    return (uint32_t)std::max<int64_t>(g, 1);
}

template <class A> void set_args(DispatchDesc& d, const A& a) {
    static_assert(sizeof(A) <= MAX_ARG_BYTES, "kargs too large for setBytes slot");
    std::memcpy(d.args, &a, sizeof a);
    d.args_bytes = sizeof a;
}

void bind(DispatchDesc& d, int index, const Binding& b) {
    d.bufs[index] = BufferBinding{b.buf, b.offset};
    d.n_bufs = std::max(d.n_bufs, index + 1);
}

// Kernel names: one static string per (family, type), so a description never allocates.
#define TYPE_TABLE(prefix)                                                                    \
    switch (t) {                                                                              \
        case KT_F32: return prefix "f32";                                                     \
        case KT_F16: return prefix "f16";                                                     \
        case KT_BF16: return prefix "bf16";                                                   \
        case KT_Q4_0: return prefix "q4_0";                                                   \
        case KT_Q4_1: return prefix "q4_1";                                                   \
        case KT_Q5_0: return prefix "q5_0";                                                   \
        case KT_Q5_1: return prefix "q5_1";                                                   \
        case KT_Q8_0: return prefix "q8_0";                                                   \
        case KT_Q4_K: return prefix "q4_k";                                                   \
        case KT_Q5_K: return prefix "q5_k";                                                   \
        case KT_Q6_K: return prefix "q6_k";                                                   \
        case KT_Q2_K: return prefix "q2_k";                                                   \
        case KT_Q3_K: return prefix "q3_k";                                                   \
        case KT_IQ4_XS: return prefix "iq4_xs";                                               \
    }                                                                                         \
    throw Error(std::string("metal: no " prefix "<type> kernel for weight type id ") + std::to_string(t));

const char* embed_kernel(int t) { TYPE_TABLE("kernel_embed_") }
const char* matvec_kernel(int t) { TYPE_TABLE("kernel_matmul_") }
const char* mm_kernel(int t) { TYPE_TABLE("kernel_matmul_mm_") }
#undef TYPE_TABLE

}  // namespace

const char* type_suffix(int t) { return matvec_kernel(t) + std::strlen("kernel_matmul_"); }

// ---- the kernel table ------------------------------------------------------------------------
namespace {
struct KernelTable {
    std::vector<const char*> names;
    std::unordered_map<std::string_view, int> index;
    KernelTable() {
        for (const char* n : {"kernel_rmsnorm_f32", "kernel_rope_f32", "kernel_kv_store_f16", "kernel_attention_f16",
                              "kernel_attention_combine_f32", "kernel_attention_probs_f16", "kernel_add_f32",
                              "kernel_swiglu_f32", "kernel_geglu_f32", "kernel_argmax_f32"})
            add(n);
        for (int t : {KT_F32, KT_F16, KT_BF16, KT_Q4_0, KT_Q4_1, KT_Q5_0, KT_Q5_1, KT_Q8_0, KT_Q4_K, KT_Q5_K,
                      KT_Q6_K, KT_Q2_K, KT_Q3_K, KT_IQ4_XS}) {   // embed, mat-vec and tiled matmul of each
            add(embed_kernel(t));
            add(matvec_kernel(t));
            add(mm_kernel(t));
        }
    }
    void add(const char* n) {
        if (index.emplace(n, (int)names.size()).second) names.push_back(n);
    }
};
const KernelTable& kernels() {
    static const KernelTable t;
    return t;
}
}  // namespace

int kernel_count() { return (int)kernels().names.size(); }
const char* kernel_name(int id) {
    if (id < 0 || id >= kernel_count()) throw Error("metal: no kernel with index " + std::to_string(id));
    return kernels().names[id];
}
int kernel_index(const char* name) {
    auto it = kernels().index.find(name);
    if (it == kernels().index.end())
        throw Error(std::string("metal: the planner names ") + name + ", which is not in the kernel table (dispatch.cpp)");
    return it->second;
}

// ---- hazards ---------------------------------------------------------------------------------
void Planner::begin() {
    n_written = n_read = 0;
    overflow = false;
}

void Planner::reads(const Binding& b, uint64_t bytes) {
    if (!b.buf || b.buf->read_only) return;   // weights are never written
    acc_r[n_acc_r++] = Range{b.buf, b.offset, b.offset + bytes};
}
void Planner::writes(const Binding& b, uint64_t bytes) {
    acc_w[n_acc_w++] = Range{b.buf, b.offset, b.offset + bytes};
}

void Planner::finish(DispatchDesc& d) {
    auto hit = [](const Range* rs, int n, const Range& x) {
        for (int i = 0; i < n; ++i)
            if (rs[i].b == x.b && rs[i].lo < x.hi && x.lo < rs[i].hi) return true;
        return false;
    };
    bool need = overflow;
    for (int i = 0; i < n_acc_r && !need; ++i) need = hit(written, n_written, acc_r[i]);           // RAW
    for (int i = 0; i < n_acc_w && !need; ++i)
        need = hit(written, n_written, acc_w[i]) || hit(read, n_read, acc_w[i]);                   // WAW, WAR
    if (need) begin();
    d.barrier = need;
    d.kernel_id = kernel_index(d.kernel);
    for (int i = 0; i < n_acc_r; ++i) {
        if (n_read == MAX_RANGES) overflow = true;
        else read[n_read++] = acc_r[i];
    }
    for (int i = 0; i < n_acc_w; ++i) {
        if (n_written == MAX_RANGES) overflow = true;
        else written[n_written++] = acc_w[i];
    }
    n_acc_r = n_acc_w = 0;
}

// ---- planning --------------------------------------------------------------------------------
int Planner::key_chunks(const kargs_attention& a, const kstep* s) {
    // A query at position p reads keys (p - window, p] (all of 0..p without a window): p + 1
    // of them, at most the window. The longest query of the step decides.
    const int span = a.window > 0 ? std::min(a.window, a.n_ctx) : a.n_ctx;
    int keys = span;
    if (s) {
        int last = s->pos0 + a.n_tokens - 1;
        if (a.by_row) {
            last = 0;
            for (int t = 0; t < std::min(a.n_tokens, s->n_rows); ++t) last = std::max(last, s->rows[t].pos);
        }
        keys = std::min(std::max(last + 1, 1), span);
    }
    return (keys + ATT_CHUNK - 1) / ATT_CHUNK;
}

void Planner::attention_split(const kargs_attention& a, int key_chunks, int* S, int* chunk) {
    // Decode: one split per chunk of ATT_CHUNK keys the query reads. A batch of queries: at
    // most 4 splits of whole chunks (its threadgroups are many already: heads x tokens).
    // Splits past a query's last key find none (a batch's earlier rows read fewer keys).
    const int kc = std::max(key_chunks, 1);
    const int s = a.n_tokens > 1 ? std::min(kc, 4) : kc;
    *S = s;
    *chunk = (kc + s - 1) / s * ATT_CHUNK;
}

uint64_t Planner::scratch_bytes(const Command& c) {
    if (c.stage != Stage::attention) return 0;
    const kargs_attention& a = c.a.attention;
    int S, chunk;
    attention_split(a, key_chunks(a, nullptr), &S, &chunk);   // the most splits it can have
    return S > 1 ? (uint64_t)a.n_tokens * a.n_heads * S * (a.head_dim + 2) * sizeof(float) : 0;
}

void Planner::plan(const Command& c, Buffer* scratch, const kstep* step, std::vector<DispatchDesc>& out) {
    const Binding* b = c.b;
    out.emplace_back();
    DispatchDesc& d = out.back();
    d.stage = stage_name(c.stage);
    const uint32_t EW = EW_THREADS;
    switch (c.stage) {
        case Stage::embed: {
            const kargs_embed& a = c.a.embed;
            d.kernel = embed_kernel(a.wtype);
            set_args(d, a);
            bind(d, 1, b[0]); bind(d, 2, b[1]); bind(d, 3, b[2]);
            reads(b[1], (uint64_t)a.n_tokens * 4);
            writes(b[2], (uint64_t)a.n_tokens * a.dim * 4);
            d.grid[0] = groups(a.dim, EW); d.grid[1] = (uint32_t)a.n_tokens;
            d.tg[0] = EW;
            break;
        }
        case Stage::rmsnorm: {
            const kargs_rmsnorm& a = c.a.rmsnorm;
            d.kernel = "kernel_rmsnorm_f32";
            set_args(d, a);
            bind(d, 1, b[0]); bind(d, 2, b[1]); bind(d, 3, b[2]);
            reads(b[0], (uint64_t)a.n_rows * a.dim * 4);
            reads(b[1], (uint64_t)a.dim * 4);
            writes(b[2], (uint64_t)a.n_rows * a.dim * 4);
            d.grid[0] = (uint32_t)a.n_rows;
            d.tg[0] = NORM_THREADS;
            break;
        }
        case Stage::matmul:
        case Stage::logits: {
            const kargs_matmul& a = c.a.matmul;
            set_args(d, a);
            bind(d, 1, b[0]); bind(d, 2, b[1]); bind(d, 3, b[2]);
            reads(b[0], (uint64_t)a.n_out * a.row_bytes);
            reads(b[1], (uint64_t)a.n_tokens * a.n_in * 4);
            writes(b[2], (uint64_t)a.n_tokens * a.n_out * 4);
            if (a.n_tokens > MV_MT && a.n_in % MM_TK == 0) {   // a batch: tiled, matrix units
                d.kernel = mm_kernel(a.wtype);
                d.grid[0] = groups(a.n_out, MM_TN); d.grid[1] = groups(a.n_tokens, MM_TM);
                d.tg[0] = MM_THREADS;
                d.tg_mem = MM_TG_BYTES;
            } else {                                             // decode: MV_ROWS rows a threadgroup
                d.kernel = matvec_kernel(a.wtype);
                d.grid[0] = groups(a.n_out, MV_ROWS); d.grid[1] = groups(a.n_tokens, MV_MT);
                d.tg[0] = MV_SG * 32;
            }
            break;
        }
        case Stage::rope: {
            const kargs_rope& a = c.a.rope;
            d.kernel = "kernel_rope_f32";
            set_args(d, a);
            bind(d, 1, b[0]);
            bind(d, 2, a.has_factors ? b[1] : b[0]);   // a buffer must be bound; unread without factors
            bind(d, 3, c.step);
            uint64_t xb = (uint64_t)a.n_tokens * a.n_heads * a.head_dim * 4;
            reads(b[0], xb);
            if (a.has_factors) reads(b[1], (uint64_t)a.n_rot / 2 * 4);
            writes(b[0], xb);
            d.grid[0] = groups((int64_t)a.n_tokens * a.n_heads * (a.n_rot / 2), EW);
            d.tg[0] = EW;
            break;
        }
        case Stage::kv_store: {
            const kargs_kv_store& a = c.a.kv_store;
            d.kernel = "kernel_kv_store_f16";
            set_args(d, a);
            bind(d, 1, b[0]); bind(d, 2, b[1]); bind(d, 3, c.step);
            reads(b[0], (uint64_t)a.n_tokens * a.kv_dim * 4);
            writes(b[1], (uint64_t)a.n_ctx * a.kv_dim * 2);   // the row depends on the step: all of it
            d.grid[0] = groups((int64_t)a.n_tokens * a.kv_dim, EW);
            d.tg[0] = EW;
            break;
        }
        case Stage::attention: {
            const kargs_attention& a = c.a.attention;
            if (a.head_dim > ATT_MAXD * 32)
                throw Error("attention: head_dim above " + std::to_string(ATT_MAXD * 32) + " is not supported on metal");
            kargs_attention_split p{a, 0, 0, 0, 0};
            attention_split(a, key_chunks(a, step), &p.n_splits, &p.chunk);
            d.kernel = "kernel_attention_f16";
            set_args(d, p);
            Binding part = p.n_splits > 1 ? Binding{scratch, 0} : b[3];   // unused with one split
            bind(d, 1, b[0]); bind(d, 2, b[1]); bind(d, 3, b[2]); bind(d, 4, b[3]); bind(d, 5, part);
            bind(d, 6, c.step);
            const uint64_t qb = (uint64_t)a.n_tokens * a.n_heads * a.head_dim * 4;
            const uint64_t cb = (uint64_t)a.n_ctx * a.n_kv_heads * a.head_dim * 2;
            const uint64_t pb = (uint64_t)a.n_tokens * a.n_heads * p.n_splits * (a.head_dim + 2) * sizeof(float);
            reads(b[0], qb); reads(b[1], cb); reads(b[2], cb);
            if (p.n_splits > 1) writes(part, pb);
            else writes(b[3], qb);
            d.grid[0] = (uint32_t)p.n_splits; d.grid[1] = (uint32_t)a.n_heads; d.grid[2] = (uint32_t)a.n_tokens;
            d.tg[0] = ATT_SG * 32;
            if (p.n_splits > 1) {
                finish(d);
                const char* stage = d.stage;
                out.emplace_back();           // may reallocate: `d` is not used after this
                DispatchDesc& e = out.back();
                e.stage = stage;
                e.kernel = "kernel_attention_combine_f32";
                set_args(e, p);
                bind(e, 1, part); bind(e, 2, b[3]);
                reads(part, pb);
                writes(b[3], qb);
                e.grid[0] = (uint32_t)a.n_heads; e.grid[1] = (uint32_t)a.n_tokens;
                e.tg[0] = ATT_SG * 32;
                finish(e);
                return;
            }
            break;
        }
        case Stage::attention_probs: {   // eager inspection only: one threadgroup per (head, token)
            const kargs_attention_probs& p = c.a.attention_probs;
            const kargs_attention& a = p.a;
            if (a.head_dim > ATT_MAXD * 32)
                throw Error("attention_probs: head_dim above " + std::to_string(ATT_MAXD * 32) +
                            " is not supported on metal");
            d.kernel = "kernel_attention_probs_f16";
            set_args(d, p);
            bind(d, 1, b[0]); bind(d, 2, b[1]); bind(d, 3, b[2]); bind(d, 4, c.step);
            reads(b[0], (uint64_t)a.n_tokens * a.n_heads * a.head_dim * 4);
            reads(b[1], (uint64_t)a.n_ctx * a.n_kv_heads * a.head_dim * 2);
            writes(b[2], (uint64_t)a.n_heads * a.n_tokens * p.n_keys * 4);
            d.grid[0] = (uint32_t)a.n_heads; d.grid[1] = (uint32_t)a.n_tokens;
            d.tg[0] = ATT_SG * 32;
            break;
        }
        case Stage::add: {
            const kargs_eltwise& a = c.a.eltwise;
            d.kernel = "kernel_add_f32";
            set_args(d, a);
            bind(d, 1, b[0]); bind(d, 2, b[1]); bind(d, 3, b[2]);
            reads(b[0], (uint64_t)a.n * 4); reads(b[1], (uint64_t)a.b_n * 4);
            writes(b[2], (uint64_t)a.n * 4);
            d.grid[0] = groups(a.n, EW);
            d.tg[0] = EW;
            break;
        }
        case Stage::swiglu:
        case Stage::geglu: {
            const kargs_glu& a = c.a.glu;
            d.kernel = c.stage == Stage::swiglu ? "kernel_swiglu_f32" : "kernel_geglu_f32";
            set_args(d, a);
            bind(d, 1, b[0]); bind(d, 2, b[1]); bind(d, 3, b[2]);
            const uint64_t n = (uint64_t)a.n_tokens * a.n_ff * 4;
            reads(b[0], n); reads(b[1], n);
            writes(b[2], n);
            d.grid[0] = groups((int64_t)a.n_tokens * a.n_ff, EW);
            d.tg[0] = EW;
            break;
        }
        case Stage::argmax: {   // one threadgroup per row
            const kargs_argmax& a = c.a.argmax;
            d.kernel = "kernel_argmax_f32";
            set_args(d, a);
            bind(d, 1, b[0]); bind(d, 2, b[1]);
            reads(b[0], (uint64_t)a.n_rows * a.n_cols * 4);
            writes(b[1], (uint64_t)a.n_rows * 4);
            d.grid[0] = (uint32_t)a.n_rows;
            d.tg[0] = ARGMAX_THREADS;
            break;
        }
    }
    finish(d);
}

// ---- PlannedDevice -----------------------------------------------------------------------------
void PlannedDevice::grow_scratch(uint64_t bytes) {
    // Old scratch goes only when nothing can still use it: submits wait before returning
    // from this (the devices call it between command buffers).
    scratch = alloc(bytes, "attention scratch");
}

void PlannedDevice::set_step(const kstep& s) {
    hstep = s;
    upload(Binding{step_buf.get(), 0}, &s, kstep_bytes(s));
}

// The CPU device's checks, made on the host before a command buffer is committed: a kernel
// cannot throw. The ids are read through the buffer's host pointer (shared storage).
void PlannedDevice::check(const std::vector<Command>& cmds, bool check_ids) {
    uint64_t need = 0;
    for (const Command& c : cmds) {
        need = std::max(need, Planner::scratch_bytes(c));
        check_positions(c, hstep);
        if (check_ids && c.stage == Stage::embed) {
            const int32_t* ids = (const int32_t*)((const char*)c.b[1].buf->host + c.b[1].offset);
            for (int t = 0; t < c.a.embed.n_tokens; ++t)
                if (ids[t] < 0 || ids[t] >= c.a.embed.n_vocab)
                    throw Error("embed: token id " + std::to_string(ids[t]) + " outside the vocabulary");
        }
    }
    if (need > (scratch ? scratch->bytes : 0)) grow_scratch(need);
}

void PlannedDevice::submit(const std::vector<Command>& cmds) {
    check(cmds, true);
    descs.clear();
    planner.begin();
    for (const Command& c : cmds) planner.plan(c, scratch.get(), &hstep, descs);
    ++n_command_buffers;
    n_dispatches += descs.size();
    for (auto& d : descs) n_barriers += d.barrier;
    execute(descs.data(), descs.size());
}

// A recorded plan: planned on its first replay and kept in plan.exec; planned again only when
// a step needs other attention splits than the ones it holds, or the scratch moved. Nothing
// is allocated then (the vectors keep their size and capacity).
PlanExec& PlannedDevice::plan_for(Plan& p, const kstep& s) {
    auto* pe = static_cast<PlanExec*>(p.exec.get());
    if (!pe) {
        auto n = std::make_shared<PlanExec>();
        for (const Command& c : p.cmds)
            if (c.stage == Stage::attention) n->key_chunks.push_back(-1);
        p.exec = n;
        pe = n.get();
    }
    bool same = pe->scratch == scratch.get() && !pe->d.empty();
    size_t k = 0;
    for (const Command& c : p.cmds) {
        if (c.stage != Stage::attention) continue;
        const int kc = Planner::key_chunks(c.a.attention, &s);
        same = same && pe->key_chunks[k] == kc;
        pe->key_chunks[k++] = kc;
    }
    if (same) return *pe;
    if (pe->ahead) ++n_ahead_dropped;
    pe->drop_ahead();   // encoded from the descriptions replaced here
    pe->d.clear();
    Planner pl;
    pl.begin();
    try {
        for (const Command& c : p.cmds) pl.plan(c, scratch.get(), &s, pe->d);
    } catch (...) {
        pe->d.clear();   // never a partial plan: the next call plans again
        throw;
    }
    pe->scratch = scratch.get();
    pe->n_barriers = 0;
    for (auto& d : pe->d) pe->n_barriers += d.barrier;
    ++n_replans;
    return *pe;
}

void PlannedDevice::submit_plan(Plan& p) {
    check(p.cmds, true);
    PlanExec& pe = plan_for(p, hstep);
    ++n_command_buffers;
    n_dispatches += pe.d.size();
    n_barriers += pe.n_barriers;
    n_ahead_used += pe.ahead != nullptr;
    execute_plan(pe);
}

void PlannedDevice::replay_token(Plan& p, const Binding& ids, int32_t token, int32_t pos) {
    // The id into the plan's ids buffer and the position into the step buffer (both shared
    // memory, written once the previous command buffer is done), then the plan: its command
    // buffer encoded ahead by the previous call, when this step needs the same splits.
    Device::replay_token(p, ids, token, pos);
    if (!encodes_ahead) return;
    // The next token's command buffer, encoded while this one runs. Speculative: it is for
    // position pos + 1, and a failure here only means the next call encodes it itself (and
    // reports the failure then, if it recurs).
    PlanExec& pe = plan_for(p, kstep{pos + 1, 1, 0, 0});
    if (pe.ahead) return;
    try {
        encode_ahead(pe);
    } catch (const Error&) {
        pe.drop_ahead();
    }
}

// The dispatches a submit of `cmds` encodes at the end of the context (a split attention is
// two kernels of one command).
std::vector<KernelDesc> PlannedDevice::describe(const std::vector<Command>& cmds) {
    std::vector<KernelDesc> out;
    std::vector<DispatchDesc> d;
    Planner pl;
    pl.begin();
    for (size_t i = 0; i < cmds.size(); ++i) {
        d.clear();
        pl.plan(cmds[i], scratch.get(), nullptr, d);
        for (auto& x : d) out.push_back({x.kernel, (int)i, 1, ""});
    }
    return out;
}

void PlannedDevice::one(Stage s, const KArgs& a, std::initializer_list<Binding> b, Binding step) {
    Command& c = single[0];
    c.stage = s;
    c.a = a;
    int i = 0;
    for (const Binding& x : b) c.b[i++] = x;
    for (; i < 5; ++i) c.b[i] = Binding{};
    c.step = step.buf ? step : Binding{step_buf.get(), 0};
    submit(single);
}

void PlannedDevice::embed(const kargs_embed& a, Binding W, Binding ids, Binding out, Binding step) {
    KArgs k; k.embed = a; one(Stage::embed, k, {W, ids, out}, step);
}
void PlannedDevice::rmsnorm(const kargs_rmsnorm& a, Binding x, Binding w, Binding out) {
    KArgs k; k.rmsnorm = a; one(Stage::rmsnorm, k, {x, w, out}, {});
}
void PlannedDevice::matmul(const kargs_matmul& a, Binding W, Binding x, Binding y) {
    KArgs k; k.matmul = a; one(Stage::matmul, k, {W, x, y}, {});
}
void PlannedDevice::logits(const kargs_matmul& a, Binding W, Binding x, Binding y) {
    KArgs k; k.matmul = a; one(Stage::logits, k, {W, x, y}, {});
}
void PlannedDevice::rope(const kargs_rope& a, Binding x, Binding factors, Binding step) {
    KArgs k; k.rope = a; one(Stage::rope, k, {x, factors}, step);
}
void PlannedDevice::kv_store(const kargs_kv_store& a, Binding src, Binding cache, Binding step) {
    KArgs k; k.kv_store = a; one(Stage::kv_store, k, {src, cache}, step);
}
void PlannedDevice::attention(const kargs_attention& a, Binding q, Binding kc, Binding vc, Binding out,
                              Binding step) {
    KArgs k; k.attention = a; one(Stage::attention, k, {q, kc, vc, out}, step);
}
void PlannedDevice::attention_probs(const kargs_attention_probs& a, Binding q, Binding kc, Binding out,
                                    Binding step) {
    KArgs k; k.attention_probs = a; one(Stage::attention_probs, k, {q, kc, out}, step);
}
void PlannedDevice::argmax(const kargs_argmax& a, Binding x, Binding ids) {
    KArgs k; k.argmax = a; one(Stage::argmax, k, {x, ids}, {});
}
void PlannedDevice::add(const kargs_eltwise& a, Binding x, Binding y, Binding out) {
    KArgs k; k.eltwise = a; one(Stage::add, k, {x, y, out}, {});
}
void PlannedDevice::swiglu(const kargs_glu& a, Binding g, Binding u, Binding out) {
    KArgs k; k.glu = a; one(Stage::swiglu, k, {g, u, out}, {});
}
void PlannedDevice::geglu(const kargs_glu& a, Binding g, Binding u, Binding out) {
    KArgs k; k.glu = a; one(Stage::geglu, k, {g, u, out}, {});
}

void plan_counters(Device& d, uint64_t out[3]) {
    auto* p = dynamic_cast<PlannedDevice*>(&d);
    if (!p) throw Error(std::string("not a metal device: ") + d.name());
    out[0] = p->n_replans;
    out[1] = p->n_ahead_used;
    out[2] = p->n_ahead_dropped;
}

}  // namespace llmetal::metal
