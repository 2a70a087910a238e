// device_cpu.cpp -- the CPU device: host memory, a thread pool, and every stage.
//
// submit() runs the command list in order on the calling thread plus the pool; each stage
// splits its rows (or heads) over the threads. Nothing here allocates per command: the
// per-thread scratch grows only when a larger shape is first seen.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>

#include "../engine.h"
#include "f16.h"
#include "features.h"
#include "kernels.h"
#include "quants.h"
#include "threadpool.h"

namespace llmetal {
using namespace llmetal::cpu;

namespace {

// split [0, n) into nth near-equal parts; part ith is [*b, *e)
inline void split(int64_t n, int ith, int nth, int64_t* b, int64_t* e) {
    int64_t per = (n + nth - 1) / nth;
    *b = std::min<int64_t>(n, per * ith);
    *e = std::min<int64_t>(n, *b + per);
}

struct CpuDevice final : Device {
    CpuDevice(int n_threads, cpu::Fallback fallback)
        : pool(n_threads, fallback), scratch(n_threads), counters(pool.size()) {
        step_buf = alloc(sizeof(kstep), "step");
        std::memset(step_buf->host, 0, sizeof(kstep));
    }
    ~CpuDevice() override { step_buf.reset(); }

    const char* name() const override { return "cpu"; }

    BufferRef alloc(uint64_t bytes, const std::string& label) override {
        void* p = nullptr;
        if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
            throw Error("cpu: out of memory allocating " + std::to_string(bytes) + " bytes for " + label);
        auto b = new_buffer();
        b->host = b->dev = p; b->bytes = bytes; b->label = label;
        ++n_allocs; bytes_allocated += bytes;
        return b;
    }

    BufferRef map_file(const std::string& path) override { return map_file_readonly(*this, path); }
    void free_buffer(Buffer& b) override {
        if (!b.host) return;
        // repacked copies of weights in this buffer go with it
        for (auto it = repacked.begin(); it != repacked.end();)
            it = it->second.buf == &b ? repacked.erase(it) : std::next(it);
        free_host_buffer(b);
    }

    void upload(const Binding& dst, const void* src, uint64_t n) override {
        if (dst.buf->read_only) throw Error("cannot write into read-only buffer " + dst.buf->label);
        std::memcpy(dst.ptr<char>(), src, n);
    }
    void download(void* dst, const Binding& src, uint64_t n) override { std::memcpy(dst, src.ptr<char>(), n); }

    void set_step(const kstep& s) override { std::memcpy(step_buf->host, &s, kstep_bytes(s)); }

    void submit(const std::vector<Command>& cmds) override {
        for (const Command& c : cmds) run(c);
    }
    void wait() override {}  // submit is synchronous on the CPU

    // per-thread scratch, grown when a larger shape is first seen
    float* tmp(int ith, size_t n) {
        auto& v = scratch[ith];
        if (v.size() < n) v.resize(n);
        return v.data();
    }

    // ---- stages ---------------------------------------------------------------------
    void embed(const kargs_embed& a, Binding W, Binding ids, Binding out, Binding) override {
        const int32_t* id = ids.ptr<int32_t>();
        for (int t = 0; t < a.n_tokens; ++t)
            if (id[t] < 0 || id[t] >= a.n_vocab)
                throw Error("embed: token id " + std::to_string(id[t]) + " outside the vocabulary");
        auto f = [&](int ith, int nth) {
            int64_t b, e;
            split(a.n_tokens, ith, nth, &b, &e);
            for (int64_t t = b; t < e; ++t) {
                float* o = out.ptr<float>() + t * a.dim;
                dequant_row(a.wtype, W.ptr<uint8_t>() + (uint64_t)id[t] * a.row_bytes, o, a.dim);
                if (a.scale != 1.0f) for (int i = 0; i < a.dim; ++i) o[i] *= a.scale;
            }
        };
        pool.run(f);
    }

    void rmsnorm(const kargs_rmsnorm& a, Binding x, Binding w, Binding out) override {
        auto f = [&](int ith, int nth) {
            int64_t b, e;
            split(a.n_rows, ith, nth, &b, &e);
            for (int64_t r = b; r < e; ++r)
                rmsnorm_row(x.ptr<float>() + r * a.dim, w.ptr<float>(), out.ptr<float>() + r * a.dim, a.dim, a.eps);
        };
        pool.run(f);
    }

    // ---- weights repacked for the CPU kernels ----------------------------------------
    // Read-only (mapped GGUF) Q8_0 weights are copied once, at their first matmul, into the
    // 16-row layout of quants.h when the active kernels can use it; the copy is owned here,
    // keyed by the weights' address, and dropped with their buffer. The mapped pages are
    // then released from this process (madvise DONTNEED: they stay in the page cache, and
    // anything else reading them, e.g. embed from a tied output matrix, faults them back
    // in), so resident memory holds the weights once. LLMETAL_CPU_REPACK=0 turns it off.
    //
    // The copy lives in its own anonymous mapping, 2 MiB aligned and marked MADV_HUGEPAGE
    // before it is first written, so that where transparent huge pages are available (the
    // "madvise" or "always" setting of /sys/kernel/mm/transparent_hugepage/enabled) it is
    // backed by 2 MiB pages: decode streams every weight once per token, and with 4 KiB
    // pages that is a TLB miss and a page walk every 4 KiB (280 000 per token for a 1B Q8_0
    // model); with 2 MiB pages, one every 2 MiB.
    struct HostMapping {
        void* p = nullptr;
        size_t bytes = 0;
        HostMapping() = default;
        HostMapping(const HostMapping&) = delete;
        HostMapping& operator=(const HostMapping&) = delete;
        HostMapping(HostMapping&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; o.bytes = 0; }
        HostMapping& operator=(HostMapping&& o) noexcept {
            std::swap(p, o.p);
            std::swap(bytes, o.bytes);
            return *this;
        }
        ~HostMapping() { if (p) munmap(p, bytes); }
    };
    static HostMapping map_huge(size_t bytes, const char* what) {
        constexpr size_t kHuge = size_t(2) << 20;
        // Over-allocate by one huge page, then trim the unaligned head and the tail. The
        // length stays a multiple of 4 KiB, not 2 MiB: the kernel gives huge pages only to
        // the aligned 2 MiB ranges inside the mapping, so the last partial one is made of
        // 4 KiB pages and no memory is wasted (rounding every matrix up to 2 MiB cost the
        // 1B model 130 MiB of resident memory).
        const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
        const size_t len = (bytes + pg - 1) & ~(pg - 1);
        void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED)
            throw Error(std::string("cpu: out of memory allocating ") + std::to_string(bytes) + " bytes for " + what);
        const uintptr_t b = (uintptr_t)raw, a = (b + kHuge - 1) & ~(uintptr_t)(kHuge - 1);
        if (a > b) munmap(raw, a - b);
        if (b + len + kHuge > a + len) munmap((void*)(a + len), b + len + kHuge - (a + len));
#ifdef MADV_HUGEPAGE
        madvise((void*)a, len, MADV_HUGEPAGE);   // a hint: without THP the pages are 4 KiB
#endif
        HostMapping m;
        m.p = (void*)a;
        m.bytes = len;
        return m;
    }
    struct Repacked {
        Buffer* buf = nullptr;
        HostMapping mem;
        const uint8_t* data() const { return (const uint8_t*)mem.p; }
    };
    std::unordered_map<const uint8_t*, Repacked> repacked;

    const uint8_t* repacked_weights(const kargs_matmul& a, Binding W) {
        if (!W.buf->read_only || !matmul_kernel16(a)) return nullptr;
        const uint8_t* src = W.ptr<uint8_t>();
        auto it = repacked.find(src);
        if (it != repacked.end()) return it->second.data();
        const size_t bytes = (size_t)a.n_out * a.row_bytes;   // 16 x 34 per 16 x 32 values: same size
        Repacked r;
        r.buf = W.buf;
        r.mem = map_huge(bytes, "repacked weights");
        void* p = r.mem.p;
        const int groups = a.n_out / kQ8x16Rows;
        auto f = [&](int ith, int nth) {
            int64_t b, e;
            split(groups, ith, nth, &b, &e);
            repack_q8_0_x16(src, a.row_bytes, a.n_in, (int)b, (int)e, (uint8_t*)p);
        };
        pool.run(f);
        // release the source pages from this process (whole pages inside the matrix only)
        const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        const uintptr_t lo = ((uintptr_t)src + pg - 1) & ~(pg - 1), hi = ((uintptr_t)src + bytes) & ~(pg - 1);
        if (hi > lo) madvise((void*)lo, hi - lo, MADV_DONTNEED);
        return repacked.emplace(src, std::move(r)).first->second.data();
    }

    void matmul(const kargs_matmul& a, Binding W, Binding x, Binding y) override {
        const uint8_t* Wr = repacked_weights(a, W);
        MatmulJob job = matmul_prepare(a, W.ptr<uint8_t>(), x.ptr<float>(), y.ptr<float>(), &pool, &act_scratch, Wr);
        // chunks of ~1/8 of a share: fine enough to even out, coarse enough that the counters
        // are touched rarely (multiples of 16 rows, the repacked groups)
        const int nth = pool.size();
        job.counters = counters.data();
        job.chunk = std::max(16, (int)((a.n_out / (8 * nth) + 15) & ~15));
        for (int i = 0; i < nth; ++i) {
            int b, e;
            matmul_share(a.n_out, i, nth, &b, &e);
            counters[i].next.store(b, std::memory_order_relaxed);
        }
        auto f = [&](int ith, int nth) {
            matmul_run(job, ith, nth, tmp(ith, (matmul_tmp_bytes(job) + 3) / 4));
        };
        pool.run(f);
    }
    void logits(const kargs_matmul& a, Binding W, Binding x, Binding y) override { matmul(a, W, x, y); }

    // ---- rope tables, kept per configuration -------------------------------------------
    // The table of a position (rope_table: a pow, a cos and a sin per angle, in double) is the
    // same for every layer and for Q and K: computed once per position and configuration and
    // kept (n_rot floats a position).
    // A position's table is always computed the same way, whatever batch it first came in.
    // The first allocation holds kRopeCacheFirst positions (1-4 MiB), then it doubles when a
    // larger position comes: a decode step allocates nothing until then (tests/test_generate.py
    // counts). Positions from kRopeCacheMax on (far past today's contexts) are computed per token.
    static constexpr int kRopeCacheFirst = 4096;
    static constexpr int kRopeCacheMax = 1 << 20;
    struct RopeCache {
        float base, scale;
        int n_rot;
        const float* factors;
        std::vector<float> tab;   // [capacity, n_rot]
        int filled;               // positions [0, filled) computed
    };
    std::vector<RopeCache> rope_caches;

    const float* rope_tables(const kargs_rope& a, const float* ff, int max_pos) {
        RopeCache* c = nullptr;
        for (auto& r : rope_caches)
            if (r.base == a.freq_base && r.scale == a.freq_scale && r.n_rot == a.n_rot && r.factors == ff) c = &r;
        if (!c) {
            rope_caches.push_back(RopeCache{a.freq_base, a.freq_scale, a.n_rot, ff, {}, 0});
            c = &rope_caches.back();
        }
        const int cap = (int)(c->tab.size() / a.n_rot), have = c->filled;
        if (max_pos >= cap) c->tab.resize((size_t)std::max({max_pos + 1, 2 * cap, kRopeCacheFirst}) * a.n_rot);
        if (max_pos >= have) {
            float* tab = c->tab.data();
            auto f = [&](int ith, int nth) {
                int64_t b, e;
                split(max_pos + 1 - have, ith, nth, &b, &e);
                for (int64_t p = have + b; p < have + e; ++p) rope_table(a, (int)p, ff, tab + p * a.n_rot);
            };
            if (max_pos + 1 - have >= 16) pool.run(f);
            else f(0, 1);
            c->filled = max_pos + 1;
        }
        return c->tab.data();
    }

    void rope(const kargs_rope& a, Binding x, Binding factors, Binding step) override {
        const kstep* s = step.ptr<kstep>();
        const float* ff = factors ? factors.ptr<float>() : nullptr;
        int max_pos = 0;
        for (int t = 0; t < a.n_tokens; ++t) {
            const int p = KSTEP_POS(s, a.by_row, t);
            if (p < 0) throw Error("rope: position " + std::to_string(p) + " < 0");
            max_pos = std::max(max_pos, p);
        }
        const float* tab = max_pos < kRopeCacheMax ? rope_tables(a, ff, max_pos) : nullptr;
        auto f = [&](int ith, int nth) {
            int64_t b, e;
            split(a.n_tokens, ith, nth, &b, &e);
            float* own = tab ? nullptr : tmp(ith, (size_t)a.n_rot + 16);
            for (int64_t t = b; t < e; ++t) {
                const int pos = KSTEP_POS(s, a.by_row, (int)t);
                const float* cs = own ? own : tab + (int64_t)pos * a.n_rot;   // shared by the token's heads
                if (own) rope_table(a, pos, ff, own);
                for (int h = 0; h < a.n_heads; ++h)
                    rope_apply(x.ptr<float>() + (t * a.n_heads + h) * a.head_dim, a, cs);
            }
        };
        pool.run(f);
    }

    void kv_store(const kargs_kv_store& a, Binding src, Binding cache, Binding step) override {
        const kstep* s = step.ptr<kstep>();
        if (a.by_row) check_rows("kv_store", a.n_tokens, a.n_ctx, *s);
        else if (s->pos0 < 0 || s->pos0 + a.n_tokens > a.n_ctx)
            throw Error("kv_store: positions " + std::to_string(s->pos0) + ".." +
                        std::to_string(s->pos0 + a.n_tokens) + " exceed the context of " + std::to_string(a.n_ctx));
        auto f = [&](int ith, int nth) {
            int64_t b, e;
            split(a.n_tokens, ith, nth, &b, &e);
            for (int64_t t = b; t < e; ++t) {
                const float* in = src.ptr<float>() + t * a.kv_dim;
                uint16_t* o = cache.ptr<uint16_t>() +
                              ((int64_t)KSTEP_CACHE0(s, a.by_row, t) + KSTEP_POS(s, a.by_row, t)) * a.kv_dim;
                f32_to_f16_row(in, o, a.kv_dim);
            }
        };
        pool.run(f);
    }

    void attention(const kargs_attention& a, Binding q, Binding kc, Binding vc, Binding out,
                   Binding step) override {
        const kstep* s = step.ptr<kstep>();
        int span = s->pos0 + a.n_tokens;   // keys a query sees at most
        if (a.by_row) {
            check_rows("attention", a.n_tokens, a.n_ctx, *s);
            span = 0;
            for (int t = 0; t < a.n_tokens; ++t) span = std::max(span, s->rows[t].pos + 1);
        } else if (s->pos0 < 0 || s->pos0 + a.n_tokens > a.n_ctx) {
            throw Error("attention: positions exceed the context");
        }
        // Work items are (token, KV head): the query heads that share a KV head run together,
        // so each K / V row is read once per group. Items are taken from a shared counter,
        // longest first (the last token sees the most rows), so threads finish together even
        // when the work per item grows with the position or a core is busy elsewhere.
        const int grp = a.n_heads / a.n_kv_heads, hd = a.head_dim;
        const int64_t n_items = (int64_t)a.n_tokens * a.n_kv_heads;
        const AttnGroup simd = attention_kernel(a);
        std::atomic<int64_t> next{0};
        auto f = [&](int ith, int) {
            float* sc = tmp(ith, (size_t)grp * (span + 8) + 2 * hd + 64);
            for (int64_t it; (it = next.fetch_add(1, std::memory_order_relaxed)) < n_items;) {
                const int t = a.n_tokens - 1 - (int)(it / a.n_kv_heads), g = (int)(it % a.n_kv_heads);
                const int64_t r0 = (int64_t)t * a.n_heads + (int64_t)g * grp;   // first query row
                const float* qr = q.ptr<float>() + r0 * hd;
                float* o = out.ptr<float>() + r0 * hd;
                // the row's own sequence: its cache rows start at cache0
                const int64_t c0 = (int64_t)KSTEP_CACHE0(s, a.by_row, t) * a.n_kv_heads * hd;
                const uint16_t *kr = kc.ptr<uint16_t>() + c0, *vr = vc.ptr<uint16_t>() + c0;
                const int pos = KSTEP_POS(s, a.by_row, t);
                if (simd) {
                    simd(a, qr, o, grp, kr, vr, g, pos, sc);
                } else {
                    for (int i = 0; i < grp; ++i)
                        attention_row(a, qr + i * hd, kr, vr, o + i * hd, g * grp + i, pos, sc);
                }
            }
        };
        pool.run(f);
    }

    // The attention's probabilities, by the attention's own first half (attention_weights_kernel
    // or attention_weights_row: the same scores and softmax), each row times its 1/sum; keys
    // the query does not read are 0. Work items as in attention: (token, KV head).
    void attention_probs(const kargs_attention_probs& p, Binding q, Binding kc, Binding out,
                         Binding step) override {
        const kstep* s = step.ptr<kstep>();
        Command c{Stage::attention_probs, {}, {}, {}};
        c.a.attention_probs = p;
        check_positions(c, *s);
        const kargs_attention& a = p.a;
        const int grp = a.n_heads / a.n_kv_heads, hd = a.head_dim, nk = p.n_keys;
        const int64_t n_items = (int64_t)a.n_tokens * a.n_kv_heads;
        const AttnWeights simd = attention_weights_kernel(a);
        std::atomic<int64_t> next{0};
        auto f = [&](int ith, int) {
            const size_t per = (size_t)grp * (s->pos0 + a.n_tokens + 8);
            float* sc = tmp(ith, per + grp + 64);
            float* inv = sc + per;   // 1/sum of each query head of the group
            for (int64_t it; (it = next.fetch_add(1, std::memory_order_relaxed)) < n_items;) {
                const int t = (int)(it / a.n_kv_heads), g = (int)(it % a.n_kv_heads), pos = s->pos0 + t;
                const float* qr = q.ptr<float>() + ((int64_t)t * a.n_heads + (int64_t)g * grp) * hd;
                int lo = 0, ns = 0;
                if (simd) {
                    lo = simd(a, qr, grp, kc.ptr<uint16_t>(), g, pos, sc, inv);
                    ns = (pos - lo + 1 + 7) & ~7;
                } else {
                    ns = pos + 1;
                    for (int i = 0; i < grp; ++i)
                        lo = attention_weights_row(a, qr + i * hd, kc.ptr<uint16_t>(), g * grp + i, pos, sc + i * ns,
                                                   inv + i);
                }
                for (int i = 0; i < grp; ++i) {
                    const int h = g * grp + i;
                    float* o = out.ptr<float>() + ((int64_t)h * a.n_tokens + t) * nk;
                    const float* w = sc + (int64_t)i * ns;
                    for (int j = 0; j < lo; ++j) o[j] = 0.0f;
                    for (int j = lo; j <= pos; ++j) o[j] = w[j - lo] * inv[i];
                    for (int j = pos + 1; j < nk; ++j) o[j] = 0.0f;
                }
            }
        };
        pool.run(f);
    }

    void add(const kargs_eltwise& a, Binding x, Binding y, Binding out) override {
        const float* px = x.ptr<float>(); const float* py = y.ptr<float>(); float* po = out.ptr<float>();
        const int64_t bn = a.b_n;
        auto f = [&](int ith, int nth) {
            int64_t b, e;
            split(a.n, ith, nth, &b, &e);
            if (bn == a.n) for (int64_t i = b; i < e; ++i) po[i] = px[i] + py[i];
            else for (int64_t i = b; i < e; ++i) po[i] = px[i] + py[i % bn];
        };
        pool.run(f);
    }
    // the SIMD row kernel of the level (glu_kernel), else the scalar act per element
    template <class Act>
    void glu(const kargs_glu& a, Binding g, Binding u, Binding out, GluRow simd, Act act) {
        const float* pg = g.ptr<float>(); const float* pu = u.ptr<float>(); float* po = out.ptr<float>();
        auto f = [&](int ith, int nth) {
            int64_t b, e;
            split((int64_t)a.n_tokens * a.n_ff, ith, nth, &b, &e);
            if (simd) simd(pg + b, pu + b, po + b, e - b);
            else for (int64_t i = b; i < e; ++i) po[i] = act(pg[i]) * pu[i];
        };
        pool.run(f);
    }
    void swiglu(const kargs_glu& a, Binding g, Binding u, Binding out) override {
        glu(a, g, u, out, glu_kernel(false), [](float v) { return v / (1.0f + std::exp(-v)); });
    }
    void geglu(const kargs_glu& a, Binding g, Binding u, Binding out) override {
        glu(a, g, u, out, glu_kernel(true), [](float v) {
            const float c = 0.7978845608028654f;  // sqrt(2/pi)
            return 0.5f * v * (1.0f + std::tanh(c * (v + 0.044715f * v * v * v)));
        });
    }

    // Greedy sampling: rows are shared out whole when there are as many as threads; fewer rows
    // are cut into parts of at least kArgmaxMin values (a single row of logits uses every
    // thread), each part's first maximum is found by the row kernel, and the parts of a row
    // are merged in order on this thread (a later part wins only with a strictly larger value,
    // so the first maximum stays first).
    static constexpr int64_t kArgmaxMin = 8192;
    void argmax(const kargs_argmax& a, Binding x, Binding ids) override {
        const ArgmaxRow row = argmax_kernel();
        const int nth = pool.size();
        const int64_t P = a.n_rows >= nth ? 1
                          : std::max<int64_t>(1, std::min<int64_t>((nth + a.n_rows - 1) / a.n_rows, a.n_cols / kArgmaxMin));
        const int64_t items = (int64_t)a.n_rows * P;
        if ((int64_t)argmax_parts.size() < items) argmax_parts.resize(items);   // grows once per larger shape
        ArgmaxPart* parts = argmax_parts.data();
        const float* px = x.ptr<float>();
        auto f = [&](int ith, int nth) {
            int64_t b, e;
            split(items, ith, nth, &b, &e);
            for (int64_t it = b; it < e; ++it) {
                int64_t c0, c1;
                split(a.n_cols, (int)(it % P), (int)P, &c0, &c1);
                if (c1 <= c0) { parts[it] = ArgmaxPart{0.0f, -1, false}; continue; }   // an empty part
                parts[it] = row(px + (it / P) * a.n_cols + c0, c1 - c0);
                parts[it].index += c0;
            }
        };
        pool.run(f);
        int32_t* out = ids.ptr<int32_t>();
        for (int64_t r = 0; r < a.n_rows; ++r) {
            ArgmaxPart best = parts[r * P];
            for (int64_t p = 1; p < P; ++p) {
                const ArgmaxPart& q = parts[r * P + p];
                best.bad |= q.bad;
                if (q.index >= 0 && q.max > best.max) { best.max = q.max; best.index = q.index; }
            }
            out[r] = best.bad ? -1 : (int32_t)best.index;
        }
    }

    ThreadPool pool;
    std::vector<ArgmaxPart> argmax_parts;   // argmax: one per (row, part)
    std::vector<std::vector<float>> scratch;
    std::vector<uint8_t> act_scratch;   // activations prepared for the matmul kernels
    std::vector<MatmulJob::Counter> counters;   // matmul work stealing, one per thread
};

}  // namespace

// Threads beyond the cores only queue behind each other, and thousands stall the pool's
// start: more than MAX_THREADS is refused (the Python surface clamps to the CPU count).
constexpr int MAX_THREADS = 1024;

std::shared_ptr<Device> make_cpu_device(int n_threads, const std::string& pool_fallback) {
    if (n_threads < 0 || n_threads > MAX_THREADS)
        throw Error("cpu: " + std::to_string(n_threads) + " threads (0 = the default, at most " +
                    std::to_string(MAX_THREADS) + ")");
    Fallback fb;
    if (pool_fallback == "auto") fb = Fallback::automatic;
    else if (pool_fallback == "never") fb = Fallback::never;
    else if (pool_fallback == "always") fb = Fallback::always;
    else throw Error("cpu_device: pool_fallback must be 'auto', 'never' or 'always', not '" + pool_fallback + "'");
    return std::make_shared<CpuDevice>(n_threads > 0 ? n_threads : cpu::default_threads(), fb);
}

}  // namespace llmetal
