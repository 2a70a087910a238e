// engine.h -- the engine's core concepts, shared by every device.
//
//   Buffer     a block of device memory (host memory on the CPU device), or a read-only
//              view of a memory-mapped GGUF file (weights stay in place, never copied).
//   Tensor     a view: (buffer, byte offset, ggml type, shape). Host code never
//              dereferences device memory; to_numpy() is an explicit download.
//   BufferPool every activation, scratch and KV-cache tensor is declared at load and
//              backed by one arena allocated once; a token's forward pass allocates nothing.
//   Command    one stage call: which stage, its kargs struct, the buffers it binds.
//   Encoder    stage methods append Commands; commit() submits them to the device,
//              wait() blocks. Eager mode commits after every stage.
//   Plan       a recorded command list, replayed per token with the step buffer updated.
//   Device     one explicit virtual method per stage (no registry, no string dispatch).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kargs.h"

namespace llmetal {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---- types --------------------------------------------------------------------------
struct TypeInfo {
    int block;        // elements per block
    int block_bytes;  // bytes per block
    const char* name;
};
const std::vector<int>& known_types();   // every KT_* the engine handles
bool type_known(int ktype);
const TypeInfo& type_info(int ktype);
uint64_t row_bytes(int ktype, int64_t n);  // bytes of one row of n elements

// ---- buffers and tensors ------------------------------------------------------------
struct Device;

struct Buffer : std::enable_shared_from_this<Buffer> {
    Device* device = nullptr;
    void* host = nullptr;      // host-visible pointer (CPU device: the memory itself)
    void* dev = nullptr;       // device pointer (CUDA), == host on CPU
    uint64_t bytes = 0;
    bool read_only = false;    // mapped weights
    std::string label;
    // how the memory was obtained, so the device can free it
    int kind = 0;              // 0 = owned allocation, 1 = file mapping
    int fd = -1;
    // Keeps the device alive while any of its buffers (and so any tensor) lives, so a tensor
    // kept after its model is dropped still frees cleanly. Null only for buffers the device
    // itself owns (its step buffer), which would otherwise make a cycle.
    std::shared_ptr<Device> keep;
    ~Buffer();
};
using BufferRef = std::shared_ptr<Buffer>;

struct Tensor {
    BufferRef buf;
    uint64_t offset = 0;
    int type = KT_F32;
    std::vector<int64_t> shape;   // numpy order: outermost first, last dim contiguous

    int64_t numel() const;
    int64_t rows() const;          // product of all dims but the last
    int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
    uint64_t nbytes() const;
    Tensor view(uint64_t byte_off, std::vector<int64_t> new_shape, int new_type = -1) const;
    Tensor row_slice(int64_t r0, int64_t r1) const;  // rows [r0, r1) of a 2-D tensor
    std::string repr() const;
};

// A buffer binding inside a command: the memory the kernel reads or writes.
struct Binding {
    Buffer* buf = nullptr;
    uint64_t offset = 0;
    template <class T> T* ptr() const { return (T*)((char*)buf->dev + offset); }
    explicit operator bool() const { return buf != nullptr; }
};

// ---- commands -----------------------------------------------------------------------
enum class Stage : uint8_t {
    embed, rmsnorm, matmul, rope, kv_store, attention, add, swiglu, geglu, logits,
    attention_probs,   // inspection only: Model.forward calls it in eager runs, never in a plan
    argmax,            // greedy sampling: the first maximum of each logits row (kargs_argmax)
};
const char* stage_name(Stage s);

union KArgs {
    kargs_embed embed;
    kargs_rmsnorm rmsnorm;
    kargs_matmul matmul;
    kargs_rope rope;
    kargs_kv_store kv_store;
    kargs_attention attention;
    kargs_attention_probs attention_probs;
    kargs_eltwise eltwise;
    kargs_glu glu;
    kargs_argmax argmax;
};

struct Command {
    Stage stage;
    KArgs a;
    Binding b[5];        // stage-specific order, see Device's methods
    Binding step;        // the step buffer (kstep) of the device
};

// What a device runs for a command list, as `model.plan()` prints it: each kernel with the
// commands [first, first + count) it covers; `fusion` names the fused pattern, empty where
// the kernel runs one stage (or one part of a stage that takes two kernels).
struct KernelDesc {
    std::string kernel;
    int first = 0, count = 1;
    std::string fusion;
};

// ---- device -------------------------------------------------------------------------
struct Device : std::enable_shared_from_this<Device> {
    virtual ~Device() = default;
    // A new Buffer bound to this device (devices call this from alloc / map_file).
    BufferRef new_buffer() {
        auto b = std::make_shared<Buffer>();
        b->device = this;
        b->keep = weak_from_this().lock();   // empty while the device is being constructed
        return b;
    }
    virtual const char* name() const = 0;

    // Memory. Every allocation is counted, so tests can assert that none happens per token.
    virtual BufferRef alloc(uint64_t bytes, const std::string& label) = 0;
    virtual BufferRef map_file(const std::string& path) = 0;  // whole file, read-only
    virtual void free_buffer(Buffer& b) = 0;
    virtual void upload(const Binding& dst, const void* src, uint64_t bytes) = 0;
    virtual void download(void* dst, const Binding& src, uint64_t bytes) = 0;
    // Host memory that download() fills fastest (cuda: page-locked, copied into without
    // staging); plain aligned memory elsewhere. For buffers reused every token (the logits).
    virtual void* host_alloc(uint64_t bytes);
    virtual void host_free(void* p);
    uint64_t n_allocs = 0, bytes_allocated = 0;

    // The step buffer: per-token values read by kernels. set_step copies kstep_bytes(s): the
    // rows only when a step of several sequences sets them.
    BufferRef step_buf;
    virtual void set_step(const kstep& s) = 0;

    // Execution of a command list: submit may run asynchronously; wait blocks until done.
    virtual void submit(const std::vector<Command>& cmds) = 0;
    // A recorded plan: by default the same as submit(); a GPU device may build an executable
    // form once (a CUDA graph, a Metal command buffer) and keep it in plan.exec.
    virtual void submit_plan(struct Plan& p);
    // One token of a plan recorded for one token: its id into ids[0], the step {pos, 1}, then
    // the plan. By default an upload, set_step and submit_plan; a GPU device may pass both
    // values inside its executable plan instead (cuda: the graph's first kernel's arguments).
    virtual void replay_token(struct Plan& p, const Binding& ids, int32_t token, int32_t pos);
    virtual void wait() = 0;
    // The kernels this device launches for `cmds`, in order. By default one kernel a command,
    // named kernel_<stage>_<dtype> after its weight (matmul, logits, embed), the KV cache's
    // type (kv_store, attention, attention_probs) or f32.
    virtual std::vector<KernelDesc> describe(const std::vector<Command>& cmds);

    // One method per stage. Bindings in the order named.
    virtual void embed(const kargs_embed& a, Binding W, Binding ids, Binding out, Binding step) = 0;
    virtual void rmsnorm(const kargs_rmsnorm& a, Binding x, Binding w, Binding out) = 0;
    virtual void matmul(const kargs_matmul& a, Binding W, Binding x, Binding y) = 0;
    virtual void rope(const kargs_rope& a, Binding x, Binding factors, Binding step) = 0;
    virtual void kv_store(const kargs_kv_store& a, Binding src, Binding cache, Binding step) = 0;
    virtual void attention(const kargs_attention& a, Binding q, Binding kc, Binding vc,
                           Binding out, Binding step) = 0;
    virtual void add(const kargs_eltwise& a, Binding x, Binding y, Binding out) = 0;
    virtual void swiglu(const kargs_glu& a, Binding gate, Binding up, Binding out) = 0;
    virtual void geglu(const kargs_glu& a, Binding gate, Binding up, Binding out) = 0;
    virtual void logits(const kargs_matmul& a, Binding W, Binding x, Binding y) = 0;
    virtual void attention_probs(const kargs_attention_probs& a, Binding q, Binding kc, Binding out,
                                 Binding step) = 0;
    virtual void argmax(const kargs_argmax& a, Binding x, Binding ids) = 0;

    // Runs one command by calling its stage method (the one switch over stages).
    void run(const Command& c);
};

// Host-memory helpers shared by the devices whose memory is the host's (cpu, metal-emu):
// a whole file mapped read-only (weights stay in place), and freeing either kind of buffer.
BufferRef map_file_readonly(Device& d, const std::string& path);
void free_host_buffer(Buffer& b);
// The host-side check every device makes before running kv_store / attention /
// attention_probs: the batch's positions must fit the context, and attention_probs' key
// count must be pos0 + n_tokens (a GPU kernel cannot throw, so GPUs check before submitting).
void check_positions(const Command& c, const kstep& s);
// The same for a step of several sequences: rows [0, n_tokens) set, each inside the cache.
void check_rows(const char* stage, int n_tokens, int n_ctx, const kstep& s);
inline uint64_t kstep_bytes(const kstep& s) {
    return offsetof(kstep, rows) + (uint64_t)(s.n_rows > 0 ? s.n_rows : 0) * sizeof(kstep_row);
}

// pool_fallback: when the thread pool runs jobs on the calling thread alone: "auto" (while its
// workers keep missing jobs, cpu/threadpool.cpp), or, for tests that pin one path, "never" or
// "always".
std::shared_ptr<Device> make_cpu_device(int n_threads, const std::string& pool_fallback = "auto");
uint64_t alloc_count();   // allocations made by engine code so far (alloc_hooks.cpp)
std::shared_ptr<Device> make_cuda_device(int ordinal);   // throws where CUDA is absent
std::shared_ptr<Device> make_metal_device();              // throws where Metal is absent (non-Apple)
// The Metal device's dispatch plan run by a CPU emulator of Metal (cpp/metal_emu; builds
// with LLMETAL_METAL_EMU=ON). schedule: "forward" or "reverse" thread/dispatch order.
std::shared_ptr<Device> make_metal_emu_device(const std::string& schedule);

// ---- buffer pool --------------------------------------------------------------------
// Tensors are declared first (name, type, shape); reserve() then allocates one arena per
// pool and points every declared tensor into it. Nothing is allocated after reserve().
struct BufferPool {
    explicit BufferPool(std::shared_ptr<Device> d) : device(std::move(d)) {}
    Tensor declare(const std::string& name, int type, std::vector<int64_t> shape);
    void reserve();
    Tensor get(const std::string& name) const;
    std::vector<std::string> names() const;
    uint64_t bytes() const { return total; }
    int n_arenas() const { return (int)arenas.size(); }

    std::shared_ptr<Device> device;
    struct Entry { std::string name; Tensor t; };
    std::vector<Entry> entries;
    std::vector<BufferRef> arenas;
    uint64_t total = 0;
    bool reserved = false;
};

// ---- encoder and plans --------------------------------------------------------------
struct Plan {
    std::vector<Command> cmds;
    int n_tokens = 0;             // batch rows the plan was recorded for
    const Device* device = nullptr;   // the device it was recorded on (and replays on)
    std::vector<BufferRef> keep;  // every buffer its commands bind: a kept plan keeps its
                                  // memory (and through it the device) alive, model gone or not
    std::shared_ptr<void> exec;   // the device's executable form, built on first replay
};

struct Encoder {
    explicit Encoder(std::shared_ptr<Device> d, bool eager) : device(std::move(d)), eager(eager) {}
    std::shared_ptr<Device> device;
    bool eager;
    std::vector<Command> cmds;     // appended since the last commit
    bool recording = false;
    Plan recorded;
    uint64_t n_commits = 0;

    void commit();                 // submit what was appended
    void wait();

    // Recording: stage calls append to a plan instead of being submitted.
    void begin_record(int n_tokens);
    Plan end_record();
    void replay(Plan& p, const kstep& s);
    // A step of several sequences: the n token ids into `ids`, row t at rows[t] (its position
    // and its sequence's first cache row), then the plan (recorded for n rows, by_row stages).
    void replay_rows(Plan& p, const Tensor& ids, const int32_t* tokens, const kstep_row* rows, int n);
    // Decode step: write one token id into `ids`, set the step buffer, submit the plan.
    // This is the whole per-token work of generation (nothing is allocated).
    void replay_token(Plan& p, const Tensor& ids, int32_t token, int32_t pos);

    // Stage methods: check shapes, build kargs, append (and commit when eager).
    void embed(const Tensor& W, const Tensor& ids, const Tensor& out, float scale);
    void rmsnorm(const Tensor& x, const Tensor& w, const Tensor& out, float eps);
    void matmul(const Tensor& W, const Tensor& x, const Tensor& y);
    // by_row: each row's position and sequence come from the step's rows (kstep), for a batch
    // of several sequences; else row t sits at pos0 + t of the one sequence.
    void rope(const Tensor& x, int n_heads, int n_rot, int mode, float freq_base,
              float freq_scale, const Tensor* factors, bool by_row = false);
    void kv_store(const Tensor& src, const Tensor& cache, bool by_row = false);
    void attention(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& out,
                   int n_heads, int n_kv_heads, int window, float scale, float softcap, bool by_row = false);
    // out [n_heads, T, n_keys]: the probabilities attention() uses (kargs_attention_probs); one
    // sequence (eager inspection only)
    void attention_probs(const Tensor& q, const Tensor& kc, const Tensor& out, int n_heads,
                         int n_kv_heads, int window, float scale, float softcap);
    void add(const Tensor& a, const Tensor& b, const Tensor& out);
    void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out);
    void geglu(const Tensor& gate, const Tensor& up, const Tensor& out);
    void logits(const Tensor& W, const Tensor& x, const Tensor& y);
    // ids [R] I32: the first maximum of each row of x [R, n] F32, -1 for a row that is not
    // finite (kargs_argmax)
    void argmax(const Tensor& x, const Tensor& ids);

  private:
    void push(Command& c);
};

}  // namespace llmetal
