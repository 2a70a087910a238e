// device_cuda.cuh -- the CUDA device, declared once for the files that implement it by job:
//   device_cuda.cu  memory, the stream, submit / wait, errors
//   graph.cu        a recorded plan captured once into a CUDA graph, launched per token
//   launch.cu       the executor: walks a launch list (planner.h) and launches each kernel
// What runs is decided by the planner (planner.cpp, plain C++); nothing here re-derives it.
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../engine.h"
#include "planner.h"

namespace llmetal {

inline void ck(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw Error(std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
}

// A plan's executable form (Plan::exec): its launch list, planned once, and the graph captured
// from it.
struct GraphExec {
    cuda::LaunchList list;
    cudaGraphExec_t exec = nullptr;
    cudaGraph_t graph = nullptr;      // kept while head is used (its node handle)
    cudaGraphNode_t head = nullptr;   // kernel_set_token, when captured by replay_token
    void* prog = nullptr;             // the persistent kernel's instructions (list.persist)
    int* ctl = nullptr;               // ... and its ticket / done counters
    int n_ins = 0;
    long long* prof = nullptr;        // ... and its profile's records (LLMETAL_CUDA_PERSISTENT_PROFILE=1)
    int n_tickets = 0;
    ~GraphExec() {
        if (exec) cudaGraphExecDestroy(exec);
        if (graph) cudaGraphDestroy(graph);
        if (prog) cudaFree(prog);
        if (ctl) cudaFree(ctl);
        if (prof) cudaFree(prof);
    }
};

// persist.cu: kernel_persistent's resident blocks on this GPU (0: it cannot run), its launch,
// and the size of one instruction (checked against launch.cu's).
int persistent_blocks(int n_sm);
cudaError_t persistent_launch(cudaStream_t s, const void* prog, int n, int* ctl, const void* step, int blocks,
                              int reverse, long long* prof);
size_t persistent_instr_bytes();

struct CudaDevice final : Device {
    explicit CudaDevice(int ordinal);
    ~CudaDevice() override;
    const char* name() const override { return "cuda"; }

    // ---- memory (device_cuda.cu) ---------------------------------------------------------
    BufferRef alloc(uint64_t bytes, const std::string& label) override;
    BufferRef map_file(const std::string& path) override;
    void free_buffer(Buffer& b) override;
    void upload(const Binding& dst, const void* src, uint64_t n) override;
    void download(void* dst, const Binding& src, uint64_t n) override;
    void* host_alloc(uint64_t bytes) override;
    void host_free(void* p) override;
    void set_step(const kstep& s) override;
    bool is_pinned(const void* p, uint64_t n);

    // ---- execution (device_cuda.cu, graph.cu) ----------------------------------------------
    void submit(const std::vector<Command>& cmds) override;
    void submit_plan(Plan& p) override;
    void replay_token(Plan& p, const Binding& ids, int32_t token, int32_t pos) override;
    void wait() override;
    std::vector<KernelDesc> describe(const std::vector<Command>& cmds) override;

    // Stages run only through the planner (submit); these exist for the interface.
    void embed(const kargs_embed&, Binding, Binding, Binding, Binding) override { not_direct(); }
    void rmsnorm(const kargs_rmsnorm&, Binding, Binding, Binding) override { not_direct(); }
    void matmul(const kargs_matmul&, Binding, Binding, Binding) override { not_direct(); }
    void rope(const kargs_rope&, Binding, Binding, Binding) override { not_direct(); }
    void kv_store(const kargs_kv_store&, Binding, Binding, Binding) override { not_direct(); }
    void attention(const kargs_attention&, Binding, Binding, Binding, Binding, Binding) override { not_direct(); }
    void add(const kargs_eltwise&, Binding, Binding, Binding) override { not_direct(); }
    void swiglu(const kargs_glu&, Binding, Binding, Binding) override { not_direct(); }
    void geglu(const kargs_glu&, Binding, Binding, Binding) override { not_direct(); }
    void logits(const kargs_matmul&, Binding, Binding, Binding) override { not_direct(); }
    void attention_probs(const kargs_attention_probs&, Binding, Binding, Binding, Binding) override { not_direct(); }
    void argmax(const kargs_argmax&, Binding, Binding) override { not_direct(); }
    [[noreturn]] static void not_direct() { throw Error("cuda: stages run through submit(), not one by one"); }

    // Before a list runs: grow the scratch its launch list needs (outside any capture) and run
    // the host-side checks the CPU device makes, so errors surface at the call.
    void prepare(const std::vector<Command>& cmds, const cuda::LaunchList& l, bool check_ids);
    void grow(void** p, uint64_t* have, uint64_t need);
    void capture(Plan& p, const Binding* ids, int32_t token, int32_t pos);   // graph.cu
    void set_head(GraphExec* ge, int32_t* ids, int32_t token, int32_t pos, int on);

    // ---- launch.cu -----------------------------------------------------------------------
    void init_kernels();   // shared-memory limits, and the occupancy the planner reads (caps)
    void run_list(const std::vector<Command>& cmds, const cuda::LaunchList& l);
    void persistent_setup(const std::vector<Command>& cmds, const cuda::LaunchList& l, GraphExec& ge);
    void launch_set_token(int32_t* ids, int32_t token, int32_t pos);
    static void* set_token_kernel();
    const double* rope_powers(const kargs_rope& r);   // freq_base^(-2i / n_rot), made on first use

    int ordinal;
    cuda::CudaCaps caps;
    cudaStream_t stream = nullptr;
    kstep hstep{0, 1, 0, 0};         // host copy of the step buffer (for host-side checks)
    BufferRef err_buf;
    int* herr = nullptr;              // pinned host copy of the error flag (wait)
    void* hstage = nullptr;           // pinned staging for downloads
    uint64_t hstage_bytes = 0;
    std::vector<std::pair<char*, uint64_t>> host_pinned;   // host_alloc's blocks
    std::mutex host_mu;
    BufferRef att_count;              // [AD_COUNTERS] int, zero between launches (kernel_attention_decode)
    void* scratch = nullptr;          // attention partials
    uint64_t scratch_bytes = 0;
    void* qscratch = nullptr;         // quantized activations of decode matmuls
    uint64_t qscratch_bytes = 0;
    void* hscratch = nullptr;         // fp16 activations + weight chunk of prefill matmuls
    uint64_t hscratch_bytes = 0;
    bool pdl_now = false;             // the list being launched uses PDL (LaunchList::pdl)
    int pk_reverse = 0;               // kernel_persistent takes units in reverse (stress test)
    bool pk_profile = false;          // ... and records each unit's times (a profile)
    std::vector<void*> scratch_old;
    std::map<std::pair<float, int>, double*> rope_pw_tables;
};

}  // namespace llmetal
