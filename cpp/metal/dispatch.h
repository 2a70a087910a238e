// dispatch.h -- the Metal device's dispatch planning, in plain C++ (compiled everywhere).
//
// Every stage call (a Command) becomes one or two DispatchDescs: which kernel, which buffers
// and offsets at which [[buffer(i)]] indices, the argument bytes (set with setBytes at index 0),
// the grid of threadgroups, the threadgroup size and memory, and whether a memory barrier must
// come before it. Two devices turn the same descriptions into work:
//   cpp/metal/device.mm            the real Metal device (Apple only): one command buffer and one
//                                  concurrent compute encoder per submit, memoryBarrier where
//                                  `barrier` is set, a debug group per stage;
//   cpp/metal_emu/device_emu.cpp   the metal-emu device: the same descriptions executed by the
//                                  CPU emulator of Metal, kernel by kernel.
// So everything but the Objective-C++ calls themselves runs, and is tested, on Linux.
//
// Kernels: every kernel the planner can name is in one table (kernel_count / kernel_name); a
// description carries its index, and both devices make every kernel's pipeline (device.mm) or
// find every kernel (metal-emu) when the device is created, so nothing is compiled or looked up
// while a command buffer is encoded.
//
// PlannedDevice holds what the two share: host-side checks (token ids, positions), the
// attention scratch, planning a command list into descriptions (no allocation per dispatch:
// the description vector keeps its capacity), and a recorded plan's descriptions kept in
// Plan::exec (a PlanExec). A submit is one command buffer (one per token when a plan replays;
// one per stage in inspection/eager mode, where every stage is committed on its own).
//
// Attention splits follow the step: a query at position p reads p + 1 keys (at most the
// window), and the planner gives an attention as many ATT_CHUNK-key splits as the step's
// longest query needs (see Planner::attention_split), so a short context does not pay for
// n_ctx. A plan's descriptions therefore depend on the step, but only through the key chunks
// of each attention: PlanExec keeps them for one such count and is planned again when a step
// needs another (every ATT_CHUNK positions while decoding).
//
// Encoding ahead (replay_token): after committing a token's command buffer, a device that can
// (device.mm) encodes the command buffer of the token after it, at the next position, while
// the GPU runs the current one; the next replay_token writes the token id (the plan's ids
// buffer) and the position (the step buffer) into shared memory and commits it, unless its
// step needs other attention splits (then it is dropped and encoded again).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "../engine.h"
#include "kargs_metal.h"

namespace llmetal::metal {

constexpr int MAX_BUFFERS = 8;    // [[buffer(0..7)]]; 0 carries the argument bytes
constexpr int MAX_ARG_BYTES = 64;

struct BufferBinding {
    Buffer* buf = nullptr;
    uint64_t offset = 0;
};

struct DispatchDesc {
    const char* kernel = "";                  // kernel_<stage>_<dtype>, a static string
    int kernel_id = -1;                       // its index in the kernel table (kernel_name)
    const char* stage = "";                   // the engine stage (the debug group's name)
    BufferBinding bufs[MAX_BUFFERS];          // [[buffer(i)]] for i >= 1 (bufs[0] unused)
    int n_bufs = 0;                           // indices 1 .. n_bufs - 1 are bound
    alignas(8) unsigned char args[MAX_ARG_BYTES];   // setBytes(args, args_bytes, index 0)
    uint32_t args_bytes = 0;
    uint32_t grid[3] = {1, 1, 1};             // threadgroups per grid (dispatchThreadgroups)
    uint32_t tg[3] = {1, 1, 1};               // threads per threadgroup
    uint32_t tg_mem = 0;                      // bytes of [[threadgroup(0)]] memory
    bool barrier = false;                     // memoryBarrier(buffers) before this dispatch
};

// The kernel table: every kernel the planner can name, each once (a device makes all their
// pipelines when it is created). kernel_index throws for a name not in the table.
int kernel_count();
const char* kernel_name(int id);
int kernel_index(const char* name);

// The kernel name for a stage and weight type (throws for types without a kernel).
const char* type_suffix(int wtype);

// Plans command lists into dispatch descriptions and tracks hazards between dispatches of
// one encoder: a dispatch gets `barrier` when it reads or writes a byte range that an
// earlier dispatch since the last barrier wrote, or writes a range one of them read.
struct Planner {
    // Dispatches appended for command c (1, or 2 for split attention) run at step `s`, or
    // when s is null at the most keys the command can read (the whole context or window).
    // `scratch` is the device's attention scratch buffer (large enough: see scratch_bytes).
    void plan(const Command& c, Buffer* scratch, const kstep* s, std::vector<DispatchDesc>& out);
    void begin();   // a new encoder: nothing written yet
    // The attention scratch a command needs at any step (the most splits it can have).
    static uint64_t scratch_bytes(const Command& c);
    // How many chunks of ATT_CHUNK keys the longest query of an attention reads at step s
    // (null: at the most keys), and the splits and keys per split that follow from it.
    static int key_chunks(const kargs_attention& a, const kstep* s);
    static void attention_split(const kargs_attention& a, int key_chunks, int* n_splits, int* chunk);

  private:
    struct Range { Buffer* b; uint64_t lo, hi; };
    static constexpr int MAX_RANGES = 64;
    Range written[MAX_RANGES], read[MAX_RANGES];
    int n_written = 0, n_read = 0;
    bool overflow = false;
    // access of the dispatch being planned
    Range acc_r[MAX_BUFFERS], acc_w[MAX_BUFFERS];
    int n_acc_r = 0, n_acc_w = 0;
    void reads(const Binding& b, uint64_t bytes);
    void writes(const Binding& b, uint64_t bytes);
    void finish(DispatchDesc& d);
};

// A recorded plan's executable form (Plan::exec): its descriptions, planned for the key chunks
// of each attention command of the steps it serves, and the scratch buffer they bind.
struct PlanExec {
    std::vector<DispatchDesc> d;
    std::vector<int> key_chunks;          // per attention command, in order
    Buffer* scratch = nullptr;
    uint64_t n_barriers = 0;
    // The device's command buffer of `d`, encoded ahead and not committed (device.mm), or
    // null; release_ahead gives it back (drop_ahead: whenever `d` is planned again, and with
    // the plan). A plain pointer and function: encoding ahead allocates nothing.
    void* ahead = nullptr;
    void (*release_ahead)(void*) = nullptr;
    void drop_ahead() {
        if (ahead) release_ahead(ahead);
        ahead = nullptr;
    }
    PlanExec() = default;
    PlanExec(const PlanExec&) = delete;
    PlanExec& operator=(const PlanExec&) = delete;
    ~PlanExec() { drop_ahead(); }
};

// The part of a Metal device that is not Metal: everything but memory and execution.
struct PlannedDevice : Device {
    // Runs descriptions [0, n) as one command buffer (one compute encoder), committed.
    virtual void execute(const DispatchDesc* d, size_t n) = 0;
    // Runs a plan's descriptions: its command buffer encoded ahead if there is one, else as
    // execute() does.
    virtual void execute_plan(PlanExec& pe) { execute(pe.d.data(), pe.d.size()); }
    // Encodes pe's command buffer into pe.ahead without committing it. Called only on a device
    // that sets `encodes_ahead` (device.mm; metal-emu runs each command buffer to completion
    // when it is submitted, so there is nothing to overlap).
    virtual void encode_ahead(PlanExec& pe) { (void)pe; }
    // (Re)allocates the attention scratch to at least `bytes` (outside any command buffer).
    virtual void grow_scratch(uint64_t bytes);

    void set_step(const kstep& s) override;
    void submit(const std::vector<Command>& cmds) override;
    void submit_plan(Plan& p) override;
    // The token's id and position written, its command buffer committed, then the next
    // position's command buffer encoded ahead (see the top of this file).
    void replay_token(Plan& p, const Binding& ids, int32_t token, int32_t pos) override;
    // The dispatches of `cmds` at the most keys each attention can read (the end of the
    // context): what model.plan() lists. Fewer splits run while fewer keys are cached.
    std::vector<KernelDesc> describe(const std::vector<Command>& cmds) override;

    // The stage methods plan and run one command (Device::run's path; Encoder uses submit).
    void embed(const kargs_embed& a, Binding W, Binding ids, Binding out, Binding step) override;
    void rmsnorm(const kargs_rmsnorm& a, Binding x, Binding w, Binding out) override;
    void matmul(const kargs_matmul& a, Binding W, Binding x, Binding y) override;
    void rope(const kargs_rope& a, Binding x, Binding factors, Binding step) override;
    void kv_store(const kargs_kv_store& a, Binding src, Binding cache, Binding step) override;
    void attention(const kargs_attention& a, Binding q, Binding kc, Binding vc, Binding out,
                   Binding step) override;
    void add(const kargs_eltwise& a, Binding x, Binding y, Binding out) override;
    void swiglu(const kargs_glu& a, Binding gate, Binding up, Binding out) override;
    void geglu(const kargs_glu& a, Binding gate, Binding up, Binding out) override;
    void logits(const kargs_matmul& a, Binding W, Binding x, Binding y) override;
    void attention_probs(const kargs_attention_probs& a, Binding q, Binding kc, Binding out,
                         Binding step) override;
    void argmax(const kargs_argmax& a, Binding x, Binding ids) override;

    // Counters (tests: one command buffer per token, no allocation per token; the dispatches
    // and barriers each token runs; plans planned again for another attention split count,
    // and command buffers encoded ahead that were committed / dropped unused).
    uint64_t n_command_buffers = 0, n_dispatches = 0, n_barriers = 0;
    uint64_t n_replans = 0, n_ahead_used = 0, n_ahead_dropped = 0;
    BufferRef scratch;

  protected:
    void check(const std::vector<Command>& cmds, bool check_ids);
    void one(Stage s, const KArgs& a, std::initializer_list<Binding> b, Binding step);
    // p's executable form for step s: planned now unless it already is for s's key chunks.
    PlanExec& plan_for(Plan& p, const kstep& s);
    bool encodes_ahead = false;           // the device implements encode_ahead (device.mm)
    kstep hstep{0, 1, 0, 0};              // host copy of the step buffer, for the checks
    Planner planner;
    std::vector<DispatchDesc> descs;      // reused: keeps its capacity between submits
    std::vector<Command> single{1};       // the stage methods' one-command list
};

// The planning counters of a Metal device (metal or metal-emu): plans planned again, command
// buffers encoded ahead that were committed, and dropped unused (the bindings' metal_plan_counters).
void plan_counters(Device& d, uint64_t out[3]);

}  // namespace llmetal::metal
