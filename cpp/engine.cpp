// engine.cpp -- types, tensors, the buffer pool and the encoder (device independent).
#include "engine.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace llmetal {

// ---- types --------------------------------------------------------------------------
static const TypeInfo kF32{1, 4, "F32"}, kF16{1, 2, "F16"}, kBF16{1, 2, "BF16"},
    kI32{1, 4, "I32"}, kQ4_0{32, 18, "Q4_0"}, kQ4_1{32, 20, "Q4_1"}, kQ5_0{32, 22, "Q5_0"},
    kQ5_1{32, 24, "Q5_1"}, kQ8_0{32, 34, "Q8_0"}, kQ4_K{256, 144, "Q4_K"},
    kQ5_K{256, 176, "Q5_K"}, kQ6_K{256, 210, "Q6_K"}, kQ2_K{256, 84, "Q2_K"},
    kQ3_K{256, 110, "Q3_K"}, kIQ4_XS{256, 136, "IQ4_XS"};

const std::vector<int>& known_types() {
    static const std::vector<int> all{KT_F32, KT_F16, KT_BF16, KT_I32, KT_Q4_0, KT_Q4_1,
                                      KT_Q5_0, KT_Q5_1, KT_Q8_0, KT_Q2_K, KT_Q3_K, KT_Q4_K,
                                      KT_Q5_K, KT_Q6_K, KT_IQ4_XS};
    return all;
}

bool type_known(int t) {
    for (int k : known_types())
        if (k == t) return true;
    return false;
}

const TypeInfo& type_info(int t) {
    switch (t) {
        case KT_F32: return kF32;
        case KT_F16: return kF16;
        case KT_BF16: return kBF16;
        case KT_I32: return kI32;
        case KT_Q4_0: return kQ4_0;
        case KT_Q4_1: return kQ4_1;
        case KT_Q5_0: return kQ5_0;
        case KT_Q5_1: return kQ5_1;
        case KT_Q8_0: return kQ8_0;
        case KT_Q4_K: return kQ4_K;
        case KT_Q5_K: return kQ5_K;
        case KT_Q6_K: return kQ6_K;
        case KT_Q2_K: return kQ2_K;
        case KT_Q3_K: return kQ3_K;
        case KT_IQ4_XS: return kIQ4_XS;
    }
    throw Error("unsupported tensor type id " + std::to_string(t));
}

uint64_t row_bytes(int t, int64_t n) {
    const TypeInfo& ti = type_info(t);
    if (n % ti.block) throw Error(std::string("row length ") + std::to_string(n) +
                                  " is not a multiple of the " + ti.name + " block size");
    return (uint64_t)(n / ti.block) * ti.block_bytes;
}

// ---- buffers and tensors ------------------------------------------------------------
Buffer::~Buffer() {
    if (device) device->free_buffer(*this);
}

int64_t Tensor::numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}
int64_t Tensor::rows() const {
    int64_t n = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
    return n;
}
uint64_t Tensor::nbytes() const { return rows() * row_bytes(type, cols()); }

Tensor Tensor::view(uint64_t byte_off, std::vector<int64_t> new_shape, int new_type) const {
    Tensor v;
    v.buf = buf;
    v.offset = offset + byte_off;
    v.type = new_type < 0 ? type : new_type;
    v.shape = std::move(new_shape);
    if (v.offset + v.nbytes() > buf->bytes) throw Error("view outside its buffer: " + v.repr());
    return v;
}

Tensor Tensor::row_slice(int64_t r0, int64_t r1) const {
    if (shape.empty() || r0 < 0 || r1 > shape[0] || r0 > r1)
        throw Error("row slice out of range for " + repr());
    std::vector<int64_t> s = shape;
    s[0] = r1 - r0;
    uint64_t per_row = shape[0] ? nbytes() / shape[0] : 0;
    return view(per_row * r0, s);
}

std::string Tensor::repr() const {
    std::ostringstream o;
    o << "Tensor(" << type_info(type).name << ", [";
    for (size_t i = 0; i < shape.size(); ++i) o << (i ? ", " : "") << shape[i];
    o << "], " << (buf ? buf->label : "null") << "+" << offset << ")";
    return o.str();
}

const char* stage_name(Stage s) {
    switch (s) {
        case Stage::embed: return "embed";
        case Stage::rmsnorm: return "rmsnorm";
        case Stage::matmul: return "matmul";
        case Stage::rope: return "rope";
        case Stage::kv_store: return "kv_store";
        case Stage::attention: return "attention";
        case Stage::add: return "add";
        case Stage::swiglu: return "swiglu";
        case Stage::geglu: return "geglu";
        case Stage::logits: return "logits";
        case Stage::attention_probs: return "attention_probs";
        case Stage::argmax: return "argmax";
    }
    return "?";
}

void Device::submit_plan(Plan& p) { submit(p.cmds); }

std::vector<KernelDesc> Device::describe(const std::vector<Command>& cmds) {
    std::vector<KernelDesc> out;
    for (size_t i = 0; i < cmds.size(); ++i) {
        const Command& c = cmds[i];
        int t = KT_F32;
        if (c.stage == Stage::matmul || c.stage == Stage::logits) t = c.a.matmul.wtype;
        if (c.stage == Stage::embed) t = c.a.embed.wtype;
        if (c.stage == Stage::kv_store || c.stage == Stage::attention || c.stage == Stage::attention_probs)
            t = KT_F16;   // the cache's type
        std::string dtype = type_info(t).name;
        for (char& ch : dtype) ch = (char)std::tolower((unsigned char)ch);
        out.push_back({std::string("kernel_") + stage_name(c.stage) + "_" + dtype, (int)i, 1, ""});
    }
    return out;
}
void* Device::host_alloc(uint64_t bytes) {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (!p) throw Error("out of host memory (" + std::to_string(bytes) + " bytes)");
    return p;
}
void Device::host_free(void* p) { std::free(p); }
void Device::replay_token(Plan& p, const Binding& ids, int32_t token, int32_t pos) {
    upload(ids, &token, sizeof token);
    set_step(kstep{pos, 1, 0, 0});
    submit_plan(p);
}

BufferRef map_file_readonly(Device& d, const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw Error("cannot open " + path + ": " + std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size == 0) { ::close(fd); throw Error("cannot map empty file " + path); }
    void* p = mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { ::close(fd); throw Error("mmap failed for " + path + ": " + std::strerror(errno)); }
    auto b = d.new_buffer();
    b->host = b->dev = p; b->bytes = st.st_size; b->read_only = true;
    b->label = path; b->kind = 1; b->fd = fd;
    return b;
}

void free_host_buffer(Buffer& b) {
    if (!b.host) return;
    if (b.kind == 1) { munmap(b.host, b.bytes); ::close(b.fd); }
    else std::free(b.host);
    b.host = b.dev = nullptr;
}

void check_rows(const char* stage, int n_tokens, int n_ctx, const kstep& s) {
    if (s.n_rows < n_tokens)
        throw Error(std::string(stage) + ": the step sets " + std::to_string(s.n_rows) + " rows of a batch of " +
                    std::to_string(n_tokens));
    for (int t = 0; t < n_tokens; ++t)
        if (s.rows[t].pos < 0 || s.rows[t].cache0 < 0 || (int64_t)s.rows[t].cache0 + s.rows[t].pos >= n_ctx)
            throw Error(std::string(stage) + ": row " + std::to_string(t) + " (position " +
                        std::to_string(s.rows[t].pos) + ", cache row " + std::to_string(s.rows[t].cache0) +
                        ") is outside the cache of " + std::to_string(n_ctx) + " rows");
}

void check_positions(const Command& c, const kstep& s) {
    int nt, nctx;
    bool by_row = false;
    switch (c.stage) {
        case Stage::kv_store: nt = c.a.kv_store.n_tokens; nctx = c.a.kv_store.n_ctx; by_row = c.a.kv_store.by_row; break;
        case Stage::attention: nt = c.a.attention.n_tokens; nctx = c.a.attention.n_ctx; by_row = c.a.attention.by_row; break;
        case Stage::rope: nt = c.a.rope.n_tokens; nctx = INT32_MAX; by_row = c.a.rope.by_row; break;
        case Stage::attention_probs: nt = c.a.attention_probs.a.n_tokens; nctx = c.a.attention_probs.a.n_ctx; break;
        default: return;
    }
    if (by_row) return check_rows(stage_name(c.stage), nt, nctx, s);
    if (c.stage == Stage::rope) return;
    if (s.pos0 < 0 || s.pos0 + nt > nctx)
        throw Error(std::string(stage_name(c.stage)) + ": positions " + std::to_string(s.pos0) + ".." +
                    std::to_string(s.pos0 + nt) + " exceed the context of " + std::to_string(nctx));
    // the probabilities of every key the batch's last query reads: keys 0 .. pos0 + T - 1
    if (c.stage == Stage::attention_probs && c.a.attention_probs.n_keys != s.pos0 + nt)
        throw Error("attention_probs: out has " + std::to_string(c.a.attention_probs.n_keys) +
                    " keys, the batch at positions " + std::to_string(s.pos0) + ".." + std::to_string(s.pos0 + nt) +
                    " reads " + std::to_string(s.pos0 + nt) + " (n_keys must be pos0 + n_tokens)");
}

void Device::run(const Command& c) {
    const Binding* b = c.b;
    switch (c.stage) {
        case Stage::embed: embed(c.a.embed, b[0], b[1], b[2], c.step); break;
        case Stage::rmsnorm: rmsnorm(c.a.rmsnorm, b[0], b[1], b[2]); break;
        case Stage::matmul: matmul(c.a.matmul, b[0], b[1], b[2]); break;
        case Stage::rope: rope(c.a.rope, b[0], b[1], c.step); break;
        case Stage::kv_store: kv_store(c.a.kv_store, b[0], b[1], c.step); break;
        case Stage::attention: attention(c.a.attention, b[0], b[1], b[2], b[3], c.step); break;
        case Stage::add: add(c.a.eltwise, b[0], b[1], b[2]); break;
        case Stage::swiglu: swiglu(c.a.glu, b[0], b[1], b[2]); break;
        case Stage::geglu: geglu(c.a.glu, b[0], b[1], b[2]); break;
        case Stage::logits: logits(c.a.matmul, b[0], b[1], b[2]); break;
        case Stage::attention_probs: attention_probs(c.a.attention_probs, b[0], b[1], b[2], c.step); break;
        case Stage::argmax: argmax(c.a.argmax, b[0], b[1]); break;
    }
}

// ---- buffer pool --------------------------------------------------------------------
Tensor BufferPool::declare(const std::string& name, int type, std::vector<int64_t> shape) {
    if (reserved) throw Error("BufferPool: cannot declare '" + name + "' after reserve()");
    for (auto& e : entries)
        if (e.name == name) throw Error("BufferPool: '" + name + "' declared twice");
    Tensor t;
    t.type = type;
    t.shape = std::move(shape);
    for (auto d : t.shape)
        if (d <= 0) throw Error("BufferPool: '" + name + "' has a non-positive dimension");
    t.offset = total;
    total += (t.nbytes() + 255) & ~uint64_t(255);   // 256-byte aligned, as GPUs like
    entries.push_back({name, t});
    return t;
}

void BufferPool::reserve() {
    if (reserved) return;
    auto arena = device->alloc(total ? total : 256, "pool");
    arenas.push_back(arena);
    for (auto& e : entries) e.t.buf = arena;
    reserved = true;
}

Tensor BufferPool::get(const std::string& name) const {
    for (auto& e : entries)
        if (e.name == name) {
            if (!reserved) throw Error("BufferPool: reserve() before get('" + name + "')");
            return e.t;
        }
    throw Error("BufferPool: no tensor named '" + name + "'");
}

std::vector<std::string> BufferPool::names() const {
    std::vector<std::string> n;
    for (auto& e : entries) n.push_back(e.name);
    return n;
}

// ---- encoder ------------------------------------------------------------------------
void Encoder::commit() {
    if (recording) return;                       // a plan is being recorded: keep appending
    if (cmds.empty()) return;
    try {
        device->submit(cmds);
    } catch (...) {
        cmds.clear();   // a failed list is dropped, never re-run by the next commit
        throw;
    }
    cmds.clear();
    ++n_commits;
}

void Encoder::wait() { device->wait(); }

void Encoder::begin_record(int n_tokens) {
    commit();
    recording = true;
    recorded = Plan{};
    recorded.n_tokens = n_tokens;
}

Plan Encoder::end_record() {
    if (!recording) throw Error("Encoder: end_record() without begin_record()");
    recording = false;
    recorded.cmds = std::move(cmds);
    cmds.clear();
    recorded.device = device.get();
    for (const Command& c : recorded.cmds)
        for (const Binding& b : c.b)
            if (b && (recorded.keep.empty() || recorded.keep.back().get() != b.buf))
                recorded.keep.push_back(b.buf->shared_from_this());
    return std::move(recorded);
}

void Encoder::replay_rows(Plan& p, const Tensor& ids, const int32_t* tokens, const kstep_row* rows, int n) {
    if (p.device != device.get()) throw Error("Encoder: plan recorded on another device");
    if (n != p.n_tokens) throw Error("Encoder: plan recorded for a different batch size");
    if (n > KSTEP_MAX_ROWS || n <= 0) throw Error("Encoder: a batch of several sequences takes 1.." +
                                                  std::to_string(KSTEP_MAX_ROWS) + " rows");
    if (ids.numel() < n) throw Error("Encoder: the ids tensor is shorter than the batch");
    device->upload(Binding{ids.buf.get(), ids.offset}, tokens, sizeof(int32_t) * n);
    kstep s{0, n, n, 0, {}};
    for (int t = 0; t < n; ++t) s.rows[t] = rows[t];
    device->set_step(s);
    device->submit_plan(p);
    ++n_commits;
}

void Encoder::replay(Plan& p, const kstep& s) {
    if (p.device != device.get()) throw Error("Encoder: plan recorded on another device");
    if (s.n_tokens != p.n_tokens) throw Error("Encoder: plan recorded for a different batch size");
    device->set_step(s);
    device->submit_plan(p);
    ++n_commits;
}

void Encoder::replay_token(Plan& p, const Tensor& ids, int32_t token, int32_t pos) {
    if (p.device != device.get()) throw Error("Encoder: plan recorded on another device");
    if (p.n_tokens != 1) throw Error("Encoder: replay_token needs a plan recorded for one token");
    device->replay_token(p, Binding{ids.buf.get(), ids.offset}, token, pos);
    ++n_commits;
}

void Encoder::push(Command& c) {
    c.step = Binding{device->step_buf.get(), 0};
    cmds.push_back(c);
    if (eager && !recording) commit();
}

static Binding bind(const Tensor& t) { return Binding{t.buf.get(), t.offset}; }

[[noreturn]] static void fail(const char* stage, const std::string& what) {
    throw Error(std::string(stage) + ": " + what);
}
// Shape checks run on every stage call (recording a plan included), so the message is built
// only when the check fails.
#define need(ok, stage, what)             \
    do {                                  \
        if (!(ok)) fail((stage), (what)); \
    } while (0)

static void need_f32(const Tensor& t, const char* stage, const char* what) {
    need(t.type == KT_F32, stage, std::string(what) + " must be F32, got " + t.repr());
    need(t.buf != nullptr, stage, std::string(what) + " has no buffer");
}

// A weight must be in a float or block format the kernels decode (not I32): checked here,
// when the stage is encoded, because a kernel meeting a bad type would fail mid-run.
static void need_weight(const Tensor& W, const char* stage) {
    need(W.shape.size() == 2, stage, "weight must be 2-D, got " + W.repr());
    need(W.type != KT_I32, stage, "weight type I32 is not a weight format: " + W.repr());
    need(W.buf != nullptr, stage, "weight has no buffer");
}

// Activations laid out one token per outermost index: [T, n_heads * head_dim] or
// [T, n_heads, head_dim]. Returns T and head_dim. (Using rows()/cols() here would read a
// [T, n_heads, head_dim] tensor as T*n_heads tokens of head_dim / n_heads: wrong silently.)
static void need_heads(const Tensor& x, int n_heads, const char* stage, const char* what,
                       int64_t* n_tokens, int* head_dim) {
    need(x.shape.size() == 2 || x.shape.size() == 3, stage,
         std::string(what) + " must be [T, n_heads*head_dim] or [T, n_heads, head_dim], got " + x.repr());
    need(n_heads > 0, stage, "n_heads must be positive, got " + std::to_string(n_heads));
    if (x.shape.size() == 3)
        need(x.shape[1] == n_heads, stage, std::string(what) + " has " + std::to_string(x.shape[1]) +
                                               " heads in its middle dimension, n_heads is " +
                                               std::to_string(n_heads) + ": " + x.repr());
    int64_t per_token = x.shape[0] ? x.numel() / x.shape[0] : 0;
    need(per_token % n_heads == 0, stage, std::string(what) + " row length " + std::to_string(per_token) +
                                              " is not divisible by n_heads " + std::to_string(n_heads));
    *n_tokens = x.shape[0];
    *head_dim = (int)(per_token / n_heads);
}

void Encoder::embed(const Tensor& W, const Tensor& ids, const Tensor& out, float scale) {
    need_weight(W, "embed");
    need(ids.type == KT_I32 && ids.shape.size() == 1, "embed", "ids must be I32 [T], got " + ids.repr());
    need_f32(out, "embed", "out");
    need(out.rows() == ids.shape[0] && out.cols() == W.cols(), "embed",
         "out must be [T, dim], got " + out.repr());
    Command c{Stage::embed, {}, {}, {}};
    c.a.embed = kargs_embed{(int32_t)ids.shape[0], (int32_t)W.cols(), W.type, (int32_t)W.shape[0],
                            row_bytes(W.type, W.cols()), scale, 0};
    c.b[0] = bind(W); c.b[1] = bind(ids); c.b[2] = bind(out);
    push(c);
}

void Encoder::rmsnorm(const Tensor& x, const Tensor& w, const Tensor& out, float eps) {
    need_f32(x, "rmsnorm", "x"); need_f32(w, "rmsnorm", "w"); need_f32(out, "rmsnorm", "out");
    need(w.numel() == x.cols(), "rmsnorm", "weight length must equal the row length of x: " +
                                               w.repr() + " vs " + x.repr());
    need(out.numel() == x.numel(), "rmsnorm", "out must have the shape of x");
    Command c{Stage::rmsnorm, {}, {}, {}};
    c.a.rmsnorm = kargs_rmsnorm{(int32_t)x.rows(), (int32_t)x.cols(), eps, 0};
    c.b[0] = bind(x); c.b[1] = bind(w); c.b[2] = bind(out);
    push(c);
}

static void check_matmul(const char* st, const Tensor& W, const Tensor& x, const Tensor& y) {
    need_weight(W, st);
    need_f32(x, st, "x"); need_f32(y, st, "y");
    need(x.cols() == W.cols(), st, "x row length " + std::to_string(x.cols()) +
                                       " != weight row length " + std::to_string(W.cols()));
    need(y.cols() == W.shape[0] && y.rows() == x.rows(), st,
         "y must be [" + std::to_string(x.rows()) + ", " + std::to_string(W.shape[0]) + "], got " + y.repr());
}

void Encoder::matmul(const Tensor& W, const Tensor& x, const Tensor& y) {
    check_matmul("matmul", W, x, y);
    Command c{Stage::matmul, {}, {}, {}};
    c.a.matmul = kargs_matmul{(int32_t)x.rows(), (int32_t)W.cols(), (int32_t)W.shape[0], W.type,
                              row_bytes(W.type, W.cols())};
    c.b[0] = bind(W); c.b[1] = bind(x); c.b[2] = bind(y);
    push(c);
}

void Encoder::logits(const Tensor& W, const Tensor& x, const Tensor& y) {
    check_matmul("logits", W, x, y);
    Command c{Stage::logits, {}, {}, {}};
    c.a.matmul = kargs_matmul{(int32_t)x.rows(), (int32_t)W.cols(), (int32_t)W.shape[0], W.type,
                              row_bytes(W.type, W.cols())};
    c.b[0] = bind(W); c.b[1] = bind(x); c.b[2] = bind(y);
    push(c);
}

// A stage that reads each row's position (and sequence) from the step's rows takes at most
// KSTEP_MAX_ROWS rows.
static void need_rows(bool by_row, int64_t n_tokens, const char* stage) {
    if (by_row && n_tokens > KSTEP_MAX_ROWS)
        throw Error(std::string(stage) + ": a batch of several sequences takes at most " +
                    std::to_string(KSTEP_MAX_ROWS) + " rows, got " + std::to_string(n_tokens));
}

void Encoder::rope(const Tensor& x, int n_heads, int n_rot, int mode, float freq_base,
                   float freq_scale, const Tensor* factors, bool by_row) {
    need_f32(x, "rope", "x");
    int64_t n_tokens;
    int hd;
    need_heads(x, n_heads, "rope", "x", &n_tokens, &hd);
    need(n_rot > 0 && n_rot <= hd && n_rot % 2 == 0, "rope",
         "n_rot must be even and in 1..head_dim " + std::to_string(hd) + ", got " + std::to_string(n_rot));
    need(mode == KROPE_NORM || mode == KROPE_NEOX, "rope",
         "mode must be 0 (norm) or 2 (neox), got " + std::to_string(mode));
    Command c{Stage::rope, {}, {}, {}};
    need_rows(by_row, n_tokens, "rope");
    c.a.rope = kargs_rope{(int32_t)n_tokens, n_heads, hd, n_rot, mode, factors ? 1 : 0, freq_base,
                          freq_scale, by_row ? 1 : 0, 0};
    c.b[0] = bind(x);
    if (factors) {
        need_f32(*factors, "rope", "factors");
        need(factors->numel() >= n_rot / 2, "rope", "freq factors shorter than n_rot/2");
        c.b[1] = bind(*factors);
    }
    push(c);
}

void Encoder::kv_store(const Tensor& src, const Tensor& cache, bool by_row) {
    need_f32(src, "kv_store", "src");
    need(cache.type == KT_F16 && cache.shape.size() == 2, "kv_store", "cache must be F16 [n_ctx, kv_dim]");
    need(cache.cols() == src.cols(), "kv_store", "src row length != cache row length");
    Command c{Stage::kv_store, {}, {}, {}};
    need_rows(by_row, src.rows(), "kv_store");
    c.a.kv_store = kargs_kv_store{(int32_t)src.rows(), (int32_t)src.cols(), (int32_t)cache.shape[0], by_row ? 1 : 0};
    c.b[0] = bind(src); c.b[1] = bind(cache);
    push(c);
}

void Encoder::attention(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& out,
                        int n_heads, int n_kv_heads, int window, float scale, float softcap, bool by_row) {
    need_f32(q, "attention", "q"); need_f32(out, "attention", "out");
    need(kc.type == KT_F16 && vc.type == KT_F16, "attention", "K/V caches must be F16");
    need(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention",
         "n_heads " + std::to_string(n_heads) + " must be a multiple of n_kv_heads " + std::to_string(n_kv_heads));
    int64_t n_tokens;
    int hd;
    need_heads(q, n_heads, "attention", "q", &n_tokens, &hd);
    need(kc.shape.size() == 2 && vc.shape == kc.shape, "attention",
         "K/V caches must both be [n_ctx, n_kv_heads*head_dim], got " + kc.repr() + " and " + vc.repr());
    need(kc.cols() == (int64_t)n_kv_heads * hd, "attention",
         "cache rows of " + std::to_string(kc.cols()) + " do not match n_kv_heads * head_dim = " +
             std::to_string(n_kv_heads) + " * " + std::to_string(hd));
    need(out.numel() == q.numel() && !out.shape.empty() && out.shape[0] == n_tokens, "attention",
         "out must have the shape of q " + q.repr() + ", got " + out.repr());
    need(window >= 0, "attention", "window must be >= 0 (0 = none), got " + std::to_string(window));
    need(softcap >= 0, "attention", "softcap must be >= 0 (0 = none)");
    Command c{Stage::attention, {}, {}, {}};
    need_rows(by_row, n_tokens, "attention");
    c.a.attention = kargs_attention{(int32_t)n_tokens, n_heads, n_kv_heads, hd, (int32_t)kc.shape[0],
                                    window, scale, softcap, by_row ? 1 : 0, 0};
    c.b[0] = bind(q); c.b[1] = bind(kc); c.b[2] = bind(vc); c.b[3] = bind(out);
    push(c);
}

void Encoder::attention_probs(const Tensor& q, const Tensor& kc, const Tensor& out, int n_heads,
                              int n_kv_heads, int window, float scale, float softcap) {
    const char* st = "attention_probs";
    need_f32(q, st, "q"); need_f32(out, st, "out");
    need(kc.type == KT_F16, st, "the K cache must be F16, got " + kc.repr());
    need(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, st,
         "n_heads " + std::to_string(n_heads) + " must be a multiple of n_kv_heads " + std::to_string(n_kv_heads));
    int64_t n_tokens;
    int hd;
    need_heads(q, n_heads, st, "q", &n_tokens, &hd);
    need(kc.shape.size() == 2, st, "the K cache must be [n_ctx, n_kv_heads*head_dim], got " + kc.repr());
    need(kc.cols() == (int64_t)n_kv_heads * hd, st,
         "cache rows of " + std::to_string(kc.cols()) + " do not match n_kv_heads * head_dim = " +
             std::to_string(n_kv_heads) + " * " + std::to_string(hd));
    need(out.shape.size() == 3 && out.shape[0] == n_heads && out.shape[1] == n_tokens, st,
         "out must be [n_heads, T, n_keys] = [" + std::to_string(n_heads) + ", " + std::to_string(n_tokens) +
             ", pos0 + T], got " + out.repr());
    need(out.shape[2] >= n_tokens && out.shape[2] <= kc.shape[0], st,
         "out's n_keys " + std::to_string(out.shape[2]) + " must be pos0 + T, between T = " +
             std::to_string(n_tokens) + " and the context of " + std::to_string(kc.shape[0]));
    need(window >= 0, st, "window must be >= 0 (0 = none), got " + std::to_string(window));
    need(softcap >= 0, st, "softcap must be >= 0 (0 = none)");
    Command c{Stage::attention_probs, {}, {}, {}};
    c.a.attention_probs = kargs_attention_probs{
        kargs_attention{(int32_t)n_tokens, n_heads, n_kv_heads, hd, (int32_t)kc.shape[0], window, scale, softcap},
        (int32_t)out.shape[2], 0};
    c.b[0] = bind(q); c.b[1] = bind(kc); c.b[2] = bind(out);
    push(c);
}

void Encoder::add(const Tensor& a, const Tensor& b, const Tensor& out) {
    need_f32(a, "add", "a"); need_f32(b, "add", "b"); need_f32(out, "add", "out");
    need(out.numel() == a.numel(), "add", "out must have the shape of a");
    need(b.numel() == a.numel() || b.numel() == a.cols(), "add",
         "b must have the shape of a or be one row of it");
    Command c{Stage::add, {}, {}, {}};
    c.a.eltwise = kargs_eltwise{a.numel(), b.numel()};
    c.b[0] = bind(a); c.b[1] = bind(b); c.b[2] = bind(out);
    push(c);
}

static Command glu(Stage st, const Tensor& g, const Tensor& u, const Tensor& out) {
    const char* n = stage_name(st);
    need_f32(g, n, "gate"); need_f32(u, n, "up"); need_f32(out, n, "out");
    need(g.numel() == u.numel() && out.numel() == g.numel(), n, "gate, up and out must have one shape");
    Command c{st, {}, {}, {}};
    c.a.glu = kargs_glu{(int32_t)g.rows(), (int32_t)g.cols()};
    c.b[0] = bind(g); c.b[1] = bind(u); c.b[2] = bind(out);
    return c;
}
void Encoder::swiglu(const Tensor& g, const Tensor& u, const Tensor& out) {
    Command c = glu(Stage::swiglu, g, u, out); push(c);
}
void Encoder::geglu(const Tensor& g, const Tensor& u, const Tensor& out) {
    Command c = glu(Stage::geglu, g, u, out); push(c);
}

void Encoder::argmax(const Tensor& x, const Tensor& ids) {
    need_f32(x, "argmax", "x");
    need(x.shape.size() == 2 && x.cols() > 0, "argmax", "x must be [R, n] with n > 0, got " + x.repr());
    need(x.cols() <= INT32_MAX, "argmax", "rows longer than int32 ids can index: " + x.repr());
    need(ids.type == KT_I32 && ids.shape.size() == 1 && ids.shape[0] == x.shape[0] && ids.buf != nullptr, "argmax",
         "ids must be I32 [" + std::to_string(x.shape[0]) + "], got " + ids.repr());
    Command c{Stage::argmax, {}, {}, {}};
    c.a.argmax = kargs_argmax{(int32_t)x.shape[0], (int32_t)x.cols()};
    c.b[0] = bind(x); c.b[1] = bind(ids);
    push(c);
}

}  // namespace llmetal
