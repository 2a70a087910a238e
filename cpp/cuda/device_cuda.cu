// device_cuda.cu -- the CUDA device: device memory, one stream, every stage as a kernel,
// and a recorded plan captured once into a CUDA graph that is launched per token.
//
// Memory: alloc() is cudaMalloc (counted in n_allocs). map_file() reads the GGUF once and
// uploads the whole file to one device buffer, so weight tensors keep their file offsets.
// Scratch (attention partials) grows before a command list runs -- never inside a graph
// capture -- and old scratch is kept until the device goes, so a captured graph never
// points at freed memory.
//
// Ordering: every copy and kernel goes on one stream. upload() and set_step() copy from
// pageable host memory with cudaMemcpyAsync, which stages the bytes before returning, so
// the host may reuse its buffer at once and the copy still lands in stream order (before
// the next graph launch reads the step buffer or the token id). A one-token replay
// (replay_token) passes the id and position as arguments of the graph's first kernel instead.
//
// Errors a kernel detects (a token id outside the vocabulary, a K/V row past the context)
// set a flag in device memory; wait() and download() read it and throw. In eager mode the
// same checks also run on the host before launching, so the message comes at the call.
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "../engine.h"
#include "kernels.cuh"
#include "matmul.cuh"
#include "attention.cuh"

namespace llmetal {
using namespace llmetal_cuda;

namespace {

void ck(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw Error(std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
}

inline unsigned blocks(int64_t n, int per) { return (unsigned)((n + per - 1) / per); }

struct GraphExec {
    cudaGraphExec_t exec = nullptr;
    cudaGraph_t graph = nullptr;      // kept while head is used (its node handle)
    cudaGraphNode_t head = nullptr;   // kernel_set_token, when captured by replay_token
    ~GraphExec() {
        if (exec) cudaGraphExecDestroy(exec);
        if (graph) cudaGraphDestroy(graph);
    }
};

struct CudaDevice final : Device {
    explicit CudaDevice(int ordinal) : ordinal(ordinal) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess || n == 0)
            throw Error(std::string("cuda: no usable NVIDIA GPU (") +
                        (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + ")");
        if (ordinal < 0 || ordinal >= n)
            throw Error("cuda: device ordinal " + std::to_string(ordinal) + " out of range (" +
                        std::to_string(n) + " GPUs)");
        ck(cudaSetDevice(ordinal), "cudaSetDevice");
        ck(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
        ck(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, ordinal), "SM count");
        int cc = 0;
        ck(cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, ordinal), "compute capability");
        const char* env = std::getenv("LLMETAL_CUDA_PDL");
        pdl = cc >= 9 && !(env && std::strcmp(env, "0") == 0);
        ck(cudaFuncSetAttribute(kernel_gemm_f16<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, gm_smem(128)), "gemm smem");
        ck(cudaFuncSetAttribute(kernel_gemm_f16<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, gm_smem(64)), "gemm smem");
        ck(cudaFuncSetAttribute(kernel_attention_prefill<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, fa_smem(64)),
           "attention smem");
        ck(cudaFuncSetAttribute(kernel_attention_prefill<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, fa_smem(128)),
           "attention smem");
        mv_occupancy<KT_Q4_0>(); mv_occupancy<KT_Q4_1>(); mv_occupancy<KT_Q5_0>(); mv_occupancy<KT_Q5_1>();
        mv_occupancy<KT_Q8_0>(); mv_occupancy<KT_Q4_K>(); mv_occupancy<KT_Q5_K>(); mv_occupancy<KT_Q6_K>();
        step_buf = alloc(sizeof(kstep), "step");
        ck(cudaMemsetAsync(step_buf->dev, 0, sizeof(kstep), stream), "memset step");
        err_buf = alloc(sizeof(int), "error flag");
        ck(cudaMemsetAsync(err_buf->dev, 0, sizeof(int), stream), "memset error flag");
        att_count = alloc(AD_COUNTERS * sizeof(int), "attention split counters");   // kernel_attention_decode
        ck(cudaMemsetAsync(att_count->dev, 0, AD_COUNTERS * sizeof(int), stream), "memset split counters");
        ck(cudaMallocHost((void**)&herr, sizeof(int)), "pinned error flag");
        ck(cudaStreamSynchronize(stream), "init");
    }
    ~CudaDevice() override {
        cudaStreamSynchronize(stream);
        if (herr) cudaFreeHost(herr);
        if (hstage) cudaFreeHost(hstage);
        step_buf.reset();
        err_buf.reset();
        att_count.reset();
        for (void* p : scratch_old) cudaFree(p);
        if (scratch) cudaFree(scratch);
        if (qscratch) cudaFree(qscratch);
        if (hscratch) cudaFree(hscratch);
        for (auto& kv : rope_pw_tables) cudaFree(kv.second);
        cudaStreamDestroy(stream);
    }

    const char* name() const override { return "cuda"; }

    // ---- memory ----------------------------------------------------------------------------
    BufferRef alloc(uint64_t bytes, const std::string& label) override {
        cudaSetDevice(ordinal);
        void* p = nullptr;
        ck(cudaMalloc(&p, bytes ? bytes : 256), ("cudaMalloc " + std::to_string(bytes) + " bytes for " + label).c_str());
        auto b = new_buffer();
        b->dev = p; b->bytes = bytes; b->label = label;
        ++n_allocs; bytes_allocated += bytes;
        return b;
    }

    BufferRef map_file(const std::string& path) override {
        FILE* f = std::fopen(path.c_str(), "rb");
        if (!f) throw Error("cannot open " + path + ": " + std::strerror(errno));
        std::fseek(f, 0, SEEK_END);
        long size = std::ftell(f);
        std::fseek(f, 0, SEEK_SET);
        if (size <= 0) { std::fclose(f); throw Error("cannot map empty file " + path); }
        auto b = alloc((uint64_t)size, path);
        // upload in 64 MiB pieces so the host copy stays small
        std::vector<char> host(std::min<long>(size, 64l << 20));
        for (long off = 0; off < size;) {
            long n = std::min<long>((long)host.size(), size - off);
            if (std::fread(host.data(), 1, n, f) != (size_t)n) {
                std::fclose(f);
                throw Error("short read of " + path);
            }
            ck(cudaMemcpy((char*)b->dev + off, host.data(), n, cudaMemcpyHostToDevice), "upload file");
            off += n;
        }
        std::fclose(f);
        b->read_only = true;
        b->kind = 1;
        return b;
    }

    void free_buffer(Buffer& b) override {
        if (!b.dev) return;
        cudaFree(b.dev);   // waits for the device's work that may still read it
        b.dev = nullptr;
    }

    void upload(const Binding& dst, const void* src, uint64_t n) override {
        if (dst.buf->read_only) throw Error("cannot write into read-only buffer " + dst.buf->label);
        ck(cudaMemcpyAsync(dst.ptr<char>(), src, n, cudaMemcpyHostToDevice, stream), "upload");
    }
    // Downloads go through a pinned staging buffer (up to HSTAGE_MAX bytes a round): the copy
    // is one DMA, queued with the error flag's copy behind it, then one synchronization and a
    // host memcpy. (A copy into pageable memory is staged by the driver in pieces, and reading
    // the flag took a second synchronous copy: two waits per token where one does.)
    static constexpr uint64_t HSTAGE_MAX = 4u << 20;
    void* host_alloc(uint64_t bytes) override {
        void* p = nullptr;
        ck(cudaMallocHost(&p, std::max<uint64_t>(bytes, 1)), "pinned host memory");
        std::lock_guard<std::mutex> g(host_mu);
        host_pinned.push_back({(char*)p, bytes});
        return p;
    }
    void host_free(void* p) override {
        {
            std::lock_guard<std::mutex> g(host_mu);
            for (size_t i = 0; i < host_pinned.size(); ++i)
                if (host_pinned[i].first == p) { host_pinned.erase(host_pinned.begin() + i); break; }
        }
        cudaFreeHost(p);
    }
    bool is_pinned(const void* p, uint64_t n) {
        std::lock_guard<std::mutex> g(host_mu);
        for (const auto& r : host_pinned)
            if ((const char*)p >= r.first && (const char*)p + n <= r.first + r.second) return true;
        return false;
    }
    void download(void* dst, const Binding& src, uint64_t n) override {
        if (pinned && n && is_pinned(dst, n)) {   // host_alloc memory: one DMA, no staging
            ck(cudaMemcpyAsync(dst, src.ptr<char>(), n, cudaMemcpyDeviceToHost, stream), "download");
            return wait();
        }
        if (!pinned) {
            ck(cudaMemcpyAsync(dst, src.ptr<char>(), n, cudaMemcpyDeviceToHost, stream), "download");
            wait();
            return;
        }
        const uint64_t want = std::min<uint64_t>(std::max<uint64_t>(n, 4096), HSTAGE_MAX);
        if (want > hstage_bytes) {
            if (hstage) ck(cudaFreeHost(hstage), "free staging");
            hstage = nullptr;
            hstage_bytes = 0;
            ck(cudaMallocHost(&hstage, want), "pinned staging");
            hstage_bytes = want;
        }
        if (n == 0) return wait();
        for (uint64_t off = 0; off < n; off += hstage_bytes) {
            const uint64_t m = std::min(hstage_bytes, n - off);
            ck(cudaMemcpyAsync(hstage, src.ptr<char>() + off, m, cudaMemcpyDeviceToHost, stream), "download");
            wait();
            std::memcpy((char*)dst + off, hstage, m);
        }
    }

    void set_step(const kstep& s) override {
        hstep = s;
        ck(cudaMemcpyAsync(step_buf->dev, &hstep, sizeof hstep, cudaMemcpyHostToDevice, stream), "set_step");
    }

    // ---- execution ---------------------------------------------------------------------------
    // Before a command list runs: grow the scratch it needs (outside any capture) and run
    // the host-side checks that the CPU device makes, so errors surface at the call.
    void prepare(const std::vector<Command>& cmds, bool check_ids) {
        // PDL only for decode lists (every matmul of at most MV_MAX_TOKENS tokens): there the
        // kernels are short and their start-up is what it hides. In a prompt's list the
        // next kernel's waiting blocks take SM slots from multi-wave GEMMs: measured on an H100,
        // 8B Q4_0 pp512 GPU span 49.2 ms with it against 44.7 ms without.
        pdl_list = true;
        for (const Command& c : cmds)
            if ((c.stage == Stage::matmul || c.stage == Stage::logits) && c.a.matmul.n_tokens > MV_MAX_TOKENS)
                pdl_list = false;
        uint64_t need = 0;
        for (const Command& c : cmds) {
            if (c.stage == Stage::attention) {
                int S, chunk;
                attention_split(c.a.attention, &S, &chunk);
                if (S > 1) need = std::max<uint64_t>(need, (uint64_t)c.a.attention.n_tokens * c.a.attention.n_heads *
                                                             S * (c.a.attention.head_dim + 2) * sizeof(float));
            }
            check_positions(c, hstep);
            if (check_ids && c.stage == Stage::embed) {
                std::vector<int32_t> ids(c.a.embed.n_tokens);
                ck(cudaMemcpyAsync(ids.data(), c.b[1].ptr<char>(), ids.size() * 4, cudaMemcpyDeviceToHost, stream), "ids");
                ck(cudaStreamSynchronize(stream), "ids");
                for (int32_t id : ids)
                    if (id < 0 || id >= c.a.embed.n_vocab)
                        throw Error("embed: token id " + std::to_string(id) + " outside the vocabulary");
            }
        }
        grow(&scratch, &scratch_bytes, need);
        // decode matmuls: the activations quantized to 8 bits (int8 values, then the scales)
        uint64_t qneed = 0;
        for (const Command& c : cmds) {
            if ((c.stage == Stage::matmul || c.stage == Stage::logits) && mmvq_type(c.a.matmul.wtype) &&
                c.a.matmul.n_tokens <= MV_MAX_TOKENS)
                qneed = std::max<uint64_t>(qneed, q8_bytes(c.a.matmul));
        }
        grow(&qscratch, &qscratch_bytes, qneed);
        // prefill matmuls: fp16 copies of the activations and of a chunk of weight rows
        uint64_t hneed = 0;
        for (const Command& c : cmds)
            if ((c.stage == Stage::matmul || c.stage == Stage::logits) && gemm_shape(c.a.matmul))
                hneed = std::max(hneed, gemm_x_bytes(c.a.matmul) + gemm_w_bytes(c.a.matmul));
        grow(&hscratch, &hscratch_bytes, hneed);
        // the rope's position-independent factors (read by the fused decode attention)
        for (const Command& c : cmds)
            if (c.stage == Stage::rope) rope_powers(c.a.rope);
    }

    // The table of freq_base^(-2i / n_rot) for this rope's base and size, made on first use
    // (outside any capture: prepare() asks for every rope of a list first).
    std::map<std::pair<float, int>, double*> rope_pw_tables;
    const double* rope_powers(const kargs_rope& r) {
        double*& t = rope_pw_tables[{r.freq_base, r.n_rot}];
        if (!t) {
            ck(cudaMalloc(&t, (r.n_rot / 2) * sizeof(double)), "cudaMalloc rope table");
            ++n_allocs; bytes_allocated += (r.n_rot / 2) * sizeof(double);
            kernel_rope_powers<<<(r.n_rot / 2 + 127) / 128, 128, 0, stream>>>(r, t);
            ck(cudaGetLastError(), "kernel_rope_powers");
        }
        return t;
    }

    // Grow a scratch buffer (outside any capture); the old one stays until the device goes,
    // because a captured graph may still point at it.
    void grow(void** p, uint64_t* have, uint64_t need) {
        if (need <= *have) return;
        if (*p) scratch_old.push_back(*p);
        ck(cudaMalloc(p, need), "cudaMalloc scratch");
        ++n_allocs; bytes_allocated += need;
        *have = need;
    }
    static constexpr int MV_MAX_TOKENS = 8;   // above this, prefill on tensor cores
    // Prefill on the tensor cores: more than MV_MAX_TOKENS tokens and K a multiple of the
    // GEMM's step (every block format's K is). The weights go to fp16 in chunks of rows of at
    // most 64 MB (a multiple of the GEMM's tile), F16 weights with aligned rows are used as
    // they are.
    static bool gemm_shape(const kargs_matmul& a) {
        return a.n_tokens > MV_MAX_TOKENS && a.n_in % GM_BK == 0 && a.wtype != KT_BF16;
    }
    static int gemm_chunk_rows(const kargs_matmul& a) {
        const int64_t fit = std::max<int64_t>(GM_BN, ((32ll << 20) / a.n_in) / GM_BN * GM_BN);
        return (int)std::min<int64_t>(fit, ((int64_t)a.n_out + GM_BN - 1) / GM_BN * GM_BN);
    }
    static uint64_t gemm_x_bytes(const kargs_matmul& a) { return ((uint64_t)a.n_tokens * a.n_in * 2 + 255) & ~255ull; }
    static uint64_t gemm_w_bytes(const kargs_matmul& a) {
        return a.wtype == KT_F16 ? 0 : (uint64_t)gemm_chunk_rows(a) * a.n_in * 2;   // F16 rows: see matmul_gemm
    }
    static bool mmvq_type(int t) {
        return t == KT_Q4_0 || t == KT_Q4_1 || t == KT_Q5_0 || t == KT_Q5_1 || t == KT_Q8_0 || t == KT_Q4_K ||
               t == KT_Q5_K || t == KT_Q6_K;
    }
    static int q8_block(int t) { return (t == KT_Q4_K || t == KT_Q5_K || t == KT_Q6_K) ? 256 : 32; }
    // qscratch for a decode matmul's input: q [T][K] int8, d [T][K / QB] float, s [T][K / 32]
    // int (see Q8Act), each part 256-byte aligned.
    static uint64_t a256(uint64_t n) { return (n + 255) & ~255ull; }
    static uint64_t q8_values_bytes(const kargs_matmul& a) { return a256((uint64_t)a.n_tokens * a.n_in); }
    static uint64_t q8_scales_bytes(const kargs_matmul& a) {
        return a256((uint64_t)a.n_tokens * (a.n_in / q8_block(a.wtype)) * sizeof(float));
    }
    static uint64_t q8_bytes(const kargs_matmul& a) {
        return q8_values_bytes(a) + q8_scales_bytes(a) + (uint64_t)a.n_tokens * (a.n_in / 32) * sizeof(int);
    }
    Q8Act q8_at(const kargs_matmul& a) const {
        char* p = (char*)qscratch;
        return Q8Act{(int8_t*)p, (float*)(p + q8_values_bytes(a)), (int*)(p + q8_values_bytes(a) + q8_scales_bytes(a))};
    }

    void submit(const std::vector<Command>& cmds) override {
        cudaSetDevice(ordinal);
        prepare(cmds, true);
        run_list(cmds);
    }

    // A plan: captured into a graph on its first replay, then one graph launch per call.
    // ids: capture kernel_set_token in front of the plan (see replay_token), with these values.
    void capture(Plan& p, const Binding* ids, int32_t token, int32_t pos) {
        prepare(p.cmds, true);
        cudaGraph_t graph = nullptr;
        ck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
        try {
            if (ids) {
                launch("kernel_set_token", kernel_set_token, 1, 32, 0, ids->ptr<int32_t>(), (kstep*)step_buf->dev,
                       token, pos, 1);
                launched("kernel_set_token");
            }
            run_list(p.cmds);
        } catch (...) {
            cudaStreamEndCapture(stream, &graph);
            if (graph) cudaGraphDestroy(graph);
            throw;
        }
        ck(cudaStreamEndCapture(stream, &graph), "end capture");
        auto ge = std::make_shared<GraphExec>();
        if (ids) {   // the head is the graph's one root: every later kernel follows it in the stream
            size_t n = 0;
            cudaGraphNode_t root = nullptr;
            cudaError_t e = cudaGraphGetRootNodes(graph, nullptr, &n);
            if (e == cudaSuccess && n == 1) e = cudaGraphGetRootNodes(graph, &root, &n);
            if (e != cudaSuccess || n != 1) {
                cudaGraphDestroy(graph);
                ck(e == cudaSuccess ? cudaErrorUnknown : e, "graph head");
            }
            ge->head = root;
        }
        cudaError_t e = cudaGraphInstantiate(&ge->exec, graph, 0);
        if (ge->head) ge->graph = graph;
        else cudaGraphDestroy(graph);
        ck(e, "graph instantiate");
        p.exec = ge;
    }
    void set_head(GraphExec* ge, int32_t* ids, int32_t token, int32_t pos, int on) {
        kstep* step = (kstep*)step_buf->dev;
        void* args[] = {&ids, &step, &token, &pos, &on};
        cudaKernelNodeParams kp = {};
        kp.func = (void*)kernel_set_token;
        kp.gridDim = dim3(1);
        kp.blockDim = dim3(32);
        kp.kernelParams = args;
        ck(cudaGraphExecKernelNodeSetParams(ge->exec, ge->head, &kp), "set token");
    }
    void submit_plan(Plan& p) override {
        cudaSetDevice(ordinal);
        if (!p.exec) {
            capture(p, nullptr, 0, 0);
        } else {
            prepare(p.cmds, false);   // position checks only (no sync per token)
        }
        GraphExec* ge = static_cast<GraphExec*>(p.exec.get());
        if (ge->head) set_head(ge, nullptr, 0, 0, 0);   // replayed with set_step: the head idles
        ck(cudaGraphLaunch(ge->exec, stream), "graph launch");
    }
    // One token: the id and position go in as kernel_set_token's arguments (a parameter update
    // of the instantiated graph, no host-to-device copies ahead of the launch). The first call
    // also uploads them, so that the capture's host-side checks see them.
    // LLMETAL_CUDA_TOKEN_NODE=0: upload, set_step and launch, as other devices do (for measuring).
    const bool token_node = [] { const char* e = std::getenv("LLMETAL_CUDA_TOKEN_NODE"); return !(e && e[0] == '0'); }();
    void replay_token(Plan& p, const Binding& ids, int32_t token, int32_t pos) override {
        cudaSetDevice(ordinal);
        GraphExec* ge = static_cast<GraphExec*>(p.exec.get());
        if (!token_node || (ge && !ge->head)) return Device::replay_token(p, ids, token, pos);
        if (!ge) {
            upload(ids, &token, sizeof token);
            set_step(kstep{pos, 1, 0, 0});
            capture(p, &ids, token, pos);
            ge = static_cast<GraphExec*>(p.exec.get());
        } else {
            hstep = kstep{pos, 1, 0, 0};
            for (const Command& c : p.cmds) check_positions(c, hstep);
        }
        set_head(ge, ids.ptr<int32_t>(), token, pos, 1);
        ck(cudaGraphLaunch(ge->exec, stream), "graph launch");
    }

    void wait() override {
        int err = 0;
        if (pinned) {   // the flag's copy queued behind the work, one synchronization for both
            ck(cudaMemcpyAsync(herr, err_buf->dev, sizeof(int), cudaMemcpyDeviceToHost, stream), "read error flag");
            ck(cudaStreamSynchronize(stream), "synchronize");
            err = *herr;
        } else {
            ck(cudaStreamSynchronize(stream), "synchronize");
            ck(cudaMemcpy(&err, err_buf->dev, sizeof err, cudaMemcpyDeviceToHost), "read error flag");
        }
        if (err != ERR_NONE) {
            cudaMemset(err_buf->dev, 0, sizeof(int));
            if (err == ERR_EMBED_ID) throw Error("embed: a token id outside the vocabulary reached the GPU");
            if (err == ERR_KV_POS) throw Error("kv_store: positions exceed the context (on the GPU)");
            throw Error("cuda: kernel error " + std::to_string(err));
        }
    }

    // Every kernel is launched here: on the one stream, with the programmatic-serialization
    // attribute where the GPU has it (sm_90+; LLMETAL_CUDA_PDL=0 turns it off), so a kernel's
    // blocks are scheduled while the previous kernel drains and wait in pdl_wait()
    // (kernels.cuh) for its results. Inside a graph capture this becomes a programmatic edge.
    template <class... P, class... A>
    void launch(const char* name, void (*k)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = at;
        cfg.numAttrs = pdl && pdl_list ? 1 : 0;
        cudaError_t e = cudaLaunchKernelEx(&cfg, k, args...);
        if (e != cudaSuccess) throw Error(std::string("cuda: launching ") + name + ": " + cudaGetErrorString(e));
    }

    void launched(const char* k) {
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) throw Error(std::string("cuda: launching ") + k + ": " + cudaGetErrorString(e));
    }

    // ---- fused decode stages ------------------------------------------------------------------
    // run_list() runs a command list in order. Where fusion is on (the default; set
    // LLMETAL_CUDA_FUSE=0 to run every stage split), it first looks for a few fixed
    // patterns of consecutive commands -- the shapes Model.forward records -- and runs each
    // as ONE named kernel that does exactly the split stages' arithmetic:
    //   add + rmsnorm [+ quantize]   kernel_add_rmsnorm_q  (residual add, norm, and the 8-bit
    //   rmsnorm [+ quantize]         kernel_add_rmsnorm_q   copy the next quantized matmul reads)
    //   swiglu [+ quantize]          kernel_swiglu_q
    //   attention [+ quantize]       kernel_attention_decode (head sizes 64 / 128, a few tokens)
    //   rope q, rope k, kv_store k, kv_store v      kernel_rope_kv_store
    //   the same four + attention [+ quantize] (one token)    kernel_attention_decode
    //   2-3 decode matmuls of one input and type    kernel_mmvq_group  (Q/K/V, gate/up)
    // and a quantized decode matmul whose input was already quantized (by a fused stage, or by
    // the previous matmul of the same input: Q/K/V, gate/up) skips kernel_quantize_q8.
    // Eager mode commits one stage at a time, so it always runs the stages split; a profiler
    // trace shows the fused kernels under these names.
    struct QCache { const float* src = nullptr; int64_t n = 0; int qb = 0; };
    QCache qcache;   // what qscratch holds now: the 8-bit copy of n floats at src, blocks of qb
    // LLMETAL_CUDA_MV_SPLIT=0: one warp per row in kernel_mmvq (for measuring the split)
    const bool mv_split = [] { const char* e = std::getenv("LLMETAL_CUDA_MV_SPLIT"); return !(e && e[0] == '0'); }();
    // LLMETAL_CUDA_AD_PF=0|1|2 (for measuring): the decode attention's early K/V requests off,
    // into L1, into L2
    const int ad_pf = [] { const char* e = std::getenv("LLMETAL_CUDA_AD_PF"); return e ? std::atoi(e) : 1; }();
    const bool fuse = [] { const char* e = std::getenv("LLMETAL_CUDA_FUSE"); return !(e && e[0] == '0'); }();

    // QB of the 8-bit activations a command's decode matmul reads (0: not such a matmul).
    static int decode_qb(const Command& c) {
        if (c.stage != Stage::matmul && c.stage != Stage::logits) return 0;
        const kargs_matmul& m = c.a.matmul;
        return mmvq_type(m.wtype) && m.n_tokens <= MV_MAX_TOKENS ? q8_block(m.wtype) : 0;
    }
    static bool same(const Binding& a, const Binding& b) { return a.buf == b.buf && a.offset == b.offset; }
    static bool a16(const Binding& b) { return (uintptr_t)b.ptr<char>() % 16 == 0; }
    static bool overlaps(const Binding& a, uint64_t na, const Binding& b, uint64_t nb) {
        const char *p = a.ptr<char>(), *q = b.ptr<char>();
        return p < q + nb && q < p + na;
    }

    void run_list(const std::vector<Command>& cmds) {
        qcache = {};
        for (size_t i = 0; i < cmds.size();) {
            const size_t n = fuse ? run_fused(cmds, i) : 0;
            if (n) { i += n; continue; }
            const Command& c = cmds[i++];
            if (!decode_qb(c)) qcache = {};   // any other stage may write what qscratch copies
            run(c);
            if (c.stage == Stage::matmul || c.stage == Stage::logits) {
                const kargs_matmul& m = c.a.matmul;
                if (overlaps(c.b[2], (uint64_t)m.n_tokens * m.n_out * 4, c.b[1], (uint64_t)m.n_tokens * m.n_in * 4))
                    qcache = {};
            }
        }
    }

    // Try the fused patterns at cmds[i]; returns how many commands ran (0: none matched).
    size_t run_fused(const std::vector<Command>& cmds, size_t i) {
        const Command& c = cmds[i];
        const Command* nx = i + 1 < cmds.size() ? &cmds[i + 1] : nullptr;
        // the next quantized decode matmul reading `out` [rows, dim]: fuse its quantization
        auto consumer_qb = [&](const Command* m, const Binding& out, int rows, int dim) {
            const int qb = m ? decode_qb(*m) : 0;
            return qb && same(m->b[1], out) && m->a.matmul.n_tokens == rows && m->a.matmul.n_in == dim &&
                   dim % qb == 0 ? qb : 0;
        };
        if (c.stage == Stage::add && nx && nx->stage == Stage::rmsnorm) {
            const kargs_eltwise& e = c.a.eltwise;
            const kargs_rmsnorm& r = nx->a.rmsnorm;
            if (same(nx->b[0], c.b[2]) && e.b_n == e.n && e.n == (int64_t)r.n_rows * r.dim &&
                rmsnorm_fused(r, c.b[0], c.b[1], c.b[2], nx->b[1], nx->b[2], true,
                              i + 2 < cmds.size() ? &cmds[i + 2] : nullptr, consumer_qb))
                return 2;
        }
        if (c.stage == Stage::rmsnorm &&
            rmsnorm_fused(c.a.rmsnorm, c.b[0], Binding{}, Binding{}, c.b[1], c.b[2], false, nx, consumer_qb))
            return 1;
        if (size_t n = matmul_group_at(cmds, i)) return n;
        if (c.stage == Stage::swiglu) {
            const kargs_glu& g = c.a.glu;
            const int qb = consumer_qb(nx, c.b[2], g.n_tokens, g.n_ff);
            if (!qb) return 0;
            const kargs_matmul& m = nx->a.matmul;
            const Q8Act xq = q8_at(m);
            const int64_t n = (int64_t)g.n_tokens * g.n_ff;
            if (qb == 32)
                launch("kernel_swiglu_q", kernel_swiglu_q<32>, blocks(n, 256), 256, 0, g, c.b[0].ptr<float>(), c.b[1].ptr<float>(),
                                                                         c.b[2].ptr<float>(), xq);
            else
                launch("kernel_swiglu_q", kernel_swiglu_q<256>, blocks(n, 256), 256, 0, g, c.b[0].ptr<float>(), c.b[1].ptr<float>(),
                                                                          c.b[2].ptr<float>(), xq);
            launched("kernel_swiglu_q");
            qcache = {c.b[2].ptr<float>(), n, qb};
            return 1;
        }
        if (c.stage == Stage::attention) {   // attention + the o projection's quantization
            const kargs_attention& at = c.a.attention;
            const int dim = at.n_heads * at.head_dim;
            if (decode_attention(at) && attention_aligned(c.b[0], c.b[1], c.b[2]) &&
                consumer_qb(nx, c.b[3], at.n_tokens, dim) == 32) {
                attention_q(at, c.b[0], c.b[1], c.b[2], c.b[3], c.step, q8_at(nx->a.matmul), AdRope{});
                qcache = {c.b[3].ptr<float>(), (int64_t)at.n_tokens * dim, 32};
                return 1;
            }
        }
        if (c.stage == Stage::rope && i + 3 < cmds.size()) {
            const Command &rk = cmds[i + 1], &sk = cmds[i + 2], &sv = cmds[i + 3];
            const kargs_rope &q = c.a.rope, &k = rk.a.rope;
            if (rk.stage == Stage::rope && sk.stage == Stage::kv_store && sv.stage == Stage::kv_store &&
                q.n_rot == q.head_dim && k.n_rot == q.n_rot && k.head_dim == q.head_dim && k.mode == q.mode &&
                k.freq_base == q.freq_base && k.freq_scale == q.freq_scale && k.has_factors == q.has_factors &&
                (!q.has_factors || same(rk.b[1], c.b[1])) && k.n_tokens == q.n_tokens &&
                same(sk.b[0], rk.b[0]) && sk.a.kv_store.kv_dim == k.n_heads * k.head_dim &&
                sv.a.kv_store.kv_dim == sk.a.kv_store.kv_dim && sk.a.kv_store.n_tokens == k.n_tokens &&
                sv.a.kv_store.n_tokens == k.n_tokens && sv.a.kv_store.n_ctx == sk.a.kv_store.n_ctx &&
                // v must not be q or k: the split stages would store the rotated values
                !overlaps(sv.b[0], (uint64_t)k.n_tokens * sv.a.kv_store.kv_dim * 4, c.b[0],
                          (uint64_t)q.n_tokens * q.n_heads * q.head_dim * 4) &&
                !overlaps(sv.b[0], (uint64_t)k.n_tokens * sv.a.kv_store.kv_dim * 4, rk.b[0],
                          (uint64_t)k.n_tokens * k.n_heads * k.head_dim * 4)) {
                // ... and the attention that follows, for one token: one kernel_attention_decode
                if (i + 4 < cmds.size() && cmds[i + 4].stage == Stage::attention) {
                    const Command& at = cmds[i + 4];
                    const kargs_attention& aa = at.a.attention;
                    if (aa.n_tokens == 1 && q.n_tokens == 1 && decode_attention(aa) &&
                        attention_aligned(at.b[0], at.b[1], at.b[2]) && same(at.b[0], c.b[0]) &&
                        same(at.b[1], sk.b[1]) && same(at.b[2], sv.b[1]) && aa.head_dim == q.head_dim &&
                        aa.n_heads == q.n_heads && aa.n_kv_heads == k.n_heads && aa.n_ctx == sk.a.kv_store.n_ctx) {
                        const Command* o = i + 5 < cmds.size() ? &cmds[i + 5] : nullptr;
                        const int dim = aa.n_heads * aa.head_dim;
                        const bool qz = consumer_qb(o, at.b[3], 1, dim) == 32;
                        const AdRope rope{q, q.has_factors ? c.b[1].ptr<float>() : nullptr, rk.b[0].ptr<float>(),
                                          sv.b[0].ptr<float>(), (int*)err_buf->dev, 1, ad_pf, rope_powers(q)};
                        attention_q(aa, at.b[0], at.b[1], at.b[2], at.b[3], at.step, qz ? q8_at(o->a.matmul) : Q8Act{}, rope);
                        qcache = qz ? QCache{at.b[3].ptr<float>(), (int64_t)dim, 32} : QCache{};
                        return 5;
                    }
                }
                const int64_t n = (int64_t)q.n_tokens * (q.n_heads + k.n_heads) * (q.n_rot / 2) +
                                  (int64_t)k.n_tokens * sk.a.kv_store.kv_dim;
                launch("kernel_rope_kv_store", kernel_rope_kv_store, blocks(n, 256), 256, 0, 
                    q, k, sk.a.kv_store.n_ctx, c.b[0].ptr<float>(), rk.b[0].ptr<float>(), sv.b[0].ptr<float>(),
                    q.has_factors ? c.b[1].ptr<float>() : nullptr, sk.b[1].ptr<__half>(), sv.b[1].ptr<__half>(),
                    c.step.ptr<kstep>(), (int*)err_buf->dev);
                launched("kernel_rope_kv_store");
                qcache = {};
                return 4;
            }
        }
        return 0;
    }

    // 2 or 3 consecutive quantized decode matmuls (Stage::matmul, not logits) of one weight
    // type, token count and K reading the same input -- Q/K/V, gate/up -- as one
    // kernel_mmvq_group. Each output must lie apart from the input and from the other outputs
    // (the split matmuls would otherwise see each other's writes); weights of different types
    // run split. Returns how many commands ran (0: no group here).
    size_t matmul_group_at(const std::vector<Command>& cmds, size_t i) {
        const Command& c = cmds[i];
        if (c.stage != Stage::matmul || !decode_qb(c)) return 0;
        const kargs_matmul& a = c.a.matmul;
        const uint64_t nx = (uint64_t)a.n_tokens * a.n_in * 4;
        const Command* ms[MVG_MAX];
        int n = 0;
        for (size_t j = i; j < cmds.size() && n < MVG_MAX; ++j) {
            const Command& m = cmds[j];
            const kargs_matmul& b = m.a.matmul;
            if (m.stage != Stage::matmul || !decode_qb(m) || b.wtype != a.wtype || b.n_in != a.n_in ||
                b.n_tokens != a.n_tokens || !same(m.b[1], c.b[1]))
                break;
            const uint64_t ny = (uint64_t)b.n_tokens * b.n_out * 4;
            bool apart = !overlaps(m.b[2], ny, c.b[1], nx);
            for (int k = 0; k < n && apart; ++k)
                apart = !overlaps(m.b[2], ny, ms[k]->b[2], (uint64_t)ms[k]->a.matmul.n_tokens * ms[k]->a.matmul.n_out * 4);
            if (!apart) break;
            ms[n++] = &m;
        }
        if (n < 2) return 0;
        matmul_group_any(ms, n);
        return (size_t)n;
    }

    // [add +] rmsnorm [+ quantize for `next`] as one kernel_add_rmsnorm_q, when the shapes
    // allow it (see the kernel); false: nothing ran.
    template <class QbFn>
    bool rmsnorm_fused(const kargs_rmsnorm& r, Binding x, Binding y, Binding sum, Binding w, Binding out, bool add,
                       const Command* next, QbFn consumer_qb) {
        const int nv = r.dim / 4;
        if (r.dim % 4 || !a16(x) || !a16(w) || !a16(out) || (add && (!a16(y) || !a16(sum)))) return false;
        const int qb = consumer_qb(next, out, r.n_rows, r.dim);
        const int unit = qb == 256 ? 64 : 32;   // threads of one quantization block (see the kernel)
        int nt = (nv + unit - 1) / unit * unit;   // one float4 a thread (rows up to 4096 values) ...
        if (nt > 1024) nt = ((nv + RMS_V - 1) / RMS_V + unit - 1) / unit * unit;   // ... else up to RMS_V
        if (nt > 1024) return false;
        if (!add && !qb && r.n_rows > 1) return false;   // a plain multi-row norm: the split kernel is as good
        const Q8Act xq = qb ? q8_at(next->a.matmul) : Q8Act{};
        const float *xp = x.ptr<float>(), *yp = add ? y.ptr<float>() : nullptr, *wp = w.ptr<float>();
        float *sp = add ? sum.ptr<float>() : nullptr, *op = out.ptr<float>();
#define LLM_RMS(ADD, QB) launch("kernel_add_rmsnorm_q", kernel_add_rmsnorm_q<ADD, QB>, r.n_rows, nt, 0, r, xp, yp, sp, wp, op, xq)
        if (add) { if (qb == 32) LLM_RMS(true, 32); else if (qb == 256) LLM_RMS(true, 256); else LLM_RMS(true, 0); }
        else { if (qb == 32) LLM_RMS(false, 32); else if (qb == 256) LLM_RMS(false, 256); else LLM_RMS(false, 0); }
#undef LLM_RMS
        launched("kernel_add_rmsnorm_q");
        qcache = qb ? QCache{out.ptr<float>(), (int64_t)r.n_rows * r.dim, qb} : QCache{};
        return true;
    }

    // ---- stages ---------------------------------------------------------------------------
    template <int T> void embed_t(const kargs_embed& a, Binding W, Binding ids, Binding out) {
        dim3 grid(blocks(a.dim, 256), a.n_tokens);
        launch("kernel_embed", kernel_embed<T>, grid, 256, 0, a, W.ptr<uint8_t>(), ids.ptr<int32_t>(), out.ptr<float>(),
                                                  (int*)err_buf->dev);
    }
    void embed(const kargs_embed& a, Binding W, Binding ids, Binding out, Binding) override {
        switch (a.wtype) {
            case KT_F32: embed_t<KT_F32>(a, W, ids, out); break;
            case KT_F16: embed_t<KT_F16>(a, W, ids, out); break;
            case KT_BF16: embed_t<KT_BF16>(a, W, ids, out); break;
            case KT_Q4_0: embed_t<KT_Q4_0>(a, W, ids, out); break;
            case KT_Q4_1: embed_t<KT_Q4_1>(a, W, ids, out); break;
            case KT_Q5_0: embed_t<KT_Q5_0>(a, W, ids, out); break;
            case KT_Q5_1: embed_t<KT_Q5_1>(a, W, ids, out); break;
            case KT_Q8_0: embed_t<KT_Q8_0>(a, W, ids, out); break;
            case KT_Q4_K: embed_t<KT_Q4_K>(a, W, ids, out); break;
            case KT_Q5_K: embed_t<KT_Q5_K>(a, W, ids, out); break;
            case KT_Q6_K: embed_t<KT_Q6_K>(a, W, ids, out); break;
            default: throw Error("embed: unsupported weight type " + std::to_string(a.wtype));
        }
        launched("kernel_embed");
    }

    void rmsnorm(const kargs_rmsnorm& a, Binding x, Binding w, Binding out) override {
        launch("kernel_rmsnorm", kernel_rmsnorm, a.n_rows, 256, 0, a, x.ptr<float>(), w.ptr<float>(), out.ptr<float>());
        launched("kernel_rmsnorm");
    }

    // The widest load (16, 8, 4 or 2 bytes) that divides both the weight rows' start and length.
    static int load_width(const kargs_matmul& a, const void* W) {
        for (int v = 16; v > 2; v >>= 1)
            if (a.row_bytes % v == 0 && (uintptr_t)W % v == 0) return v;
        return 2;
    }

    // Warps per row for the mat-vec kernels: 1 when the matrix has rows enough to give every
    // SM ~32 warps (132 SMs on an H100), else 2 or 4 -- never more than the row has windows.
    static int row_split(int n_out, int n_windows) {
        int s = n_out >= 4096 ? 1 : n_out >= 2048 ? 2 : 4;
        while (s > 1 && n_windows < s) s >>= 1;
        return s;
    }

    // Resident blocks per SM of kernel_mmvq<T, 1 | 8, 1> (shared memory and registers decide).
    // Warps a mat-vec of `bytes` of weights plans for, at `per_sm` resident blocks per SM. A
    // small one (under 4 MB: latency, not bandwidth, decides its time) is sized for mv_slack
    // blocks fewer per SM, so that the next kernel's blocks (a norm, swiglu, attention,
    // launched early by PDL) find room on every SM and wait there, resident, instead of being
    // placed once mat-vec blocks leave: SmolLM2 tg128 1428 -> 1496 on an H100. Large ones keep
    // every warp (the same slack cost 8B Q4_0 2.4%: fewer warps stream less).
    const int mv_slack = [] {   // LLMETAL_CUDA_MV_SLACK=N (0..4; for measuring), default 1
        const char* e = std::getenv("LLMETAL_CUDA_MV_SLACK");
        return e ? std::min(4, std::max(0, std::atoi(e))) : 1;
    }();
    // Windows on the busiest SM when `warps` warps (blocks of MV_ROWS, spread evenly over the
    // SMs) take `per_warp` windows each. The mat-vecs pick rows per warp by it: 28672 rows at
    // 10 a warp are 717 blocks, 6 on some SMs and 5 on others, so the 6-block SMs finish last;
    // at 11 a warp, 652 blocks are at most 5 an SM and the busiest SM has 8% less to do.
    int64_t mv_sm_load(int64_t warps, int64_t per_warp) const {
        const int64_t nb = (warps + MV_ROWS - 1) / MV_ROWS;
        return (nb + n_sm - 1) / n_sm * MV_ROWS * per_warp;
    }
    int64_t mv_plan_warps(int per_sm, uint64_t bytes) const {
        const int b = bytes < (4ull << 20) ? per_sm - mv_slack : per_sm;
        return (int64_t)n_sm * std::max(1, b) * MV_ROWS;
    }
    int n_sm = 1;
    int mv_resident[32][2] = {};
    int mvg_resident[32][2] = {};   // the same for kernel_mmvq_group<T, 1 | 8>
    template <int T> void mv_occupancy() {
        ck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&mv_resident[T][0], kernel_mmvq<T, 1, 1>, MV_ROWS * 32, 0), "occupancy");
        ck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&mv_resident[T][1], kernel_mmvq<T, 8, 1>, MV_ROWS * 32, 0), "occupancy");
        ck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&mvg_resident[T][0], kernel_mmvq_group<T, 1, true>, MV_ROWS * 32, 0), "occupancy");
        ck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&mvg_resident[T][1], kernel_mmvq_group<T, 8, true>, MV_ROWS * 32, 0), "occupancy");
    }

    // Decode, quantized weights: stage 1 quantizes the activations, stage 2 streams the rows.
    // The 8-bit copy of x in qscratch (quantized now unless qcache says it is there already).
    template <int T> void quantize_for(const kargs_matmul& a, Binding x) {
        constexpr int QB = MVQ<T>::QB;
        const Q8Act xq = q8_at(a);
        const int64_t n = (int64_t)a.n_tokens * a.n_in;
        if (!(qcache.src == x.ptr<float>() && qcache.n == n && qcache.qb == QB)) {
            launch("kernel_quantize_q8", kernel_quantize_q8<QB>, blocks(n, 256), 256, 0, x.ptr<float>(), xq, n);
            launched("kernel_quantize_q8");
            qcache = {x.ptr<float>(), n, QB};
        }
    }
    // The plan of kernel_mmvq for one matrix: persistent warps in groups of S per row (see
    // mmvq_rows), as few rows per group as the resident warps allow, then as few groups as give
    // every group that many rows (a balanced single wave). S: the one of 1, 2, 4 (at most the
    // row's windows) that leaves the fewest windows to one warp; the largest such, since a warp
    // that takes the same window of every row loads that window's activations once (see
    // mmvq_rows): 8B Q4_0's down projection (4 windows a row) 16.8 -> 15.5 us with S = 4
    // instead of 1 (H100). A row's sum depends on S, so kernel_mmvq_group takes each weight's S
    // from here too.
    struct MvPlan { int S; int64_t rpw; };
    template <int T> MvPlan mv_plan(const kargs_matmul& a) const {
        const int nt8 = a.n_tokens > 1;
        const int64_t resident = mv_plan_warps(mv_resident[T][nt8], (uint64_t)a.n_out * a.row_bytes);
        const int nwin = (a.n_in / QT<T>::QK + MVQ<T>::NB - 1) / MVQ<T>::NB;   // windows of a row
        MvPlan p{1, 1};
        int64_t best = INT64_MAX;
        for (int s = 1; s <= (mv_split ? 4 : 1) && s <= nwin; s *= 2) {
            const int64_t r0 = (a.n_out * s + resident - 1) / resident;
            for (int64_t r = r0; r < r0 + 3; ++r) {
                const int64_t cost = mv_sm_load((a.n_out + r - 1) / r * s, r * ((nwin + s - 1) / s));
                if (cost < best || (cost == best && s > p.S)) { best = cost; p = {s, r}; }
            }
        }
        return p;
    }
    template <int T> void matmul_mmvq(const kargs_matmul& a, Binding W, Binding x, Binding y) {
        quantize_for<T>(a, x);
        const Q8Act xq = q8_at(a);
        const int vw = load_width(a, W.ptr<uint8_t>());
        const MvPlan p = mv_plan<T>(a);
        const int nwarps = (int)((a.n_out + p.rpw - 1) / p.rpw) * p.S;
        const unsigned grid = blocks(nwarps, MV_ROWS);
        const uint8_t* w = W.ptr<uint8_t>();
        float* out = y.ptr<float>();
        const bool one = a.n_tokens <= 1;
        if (one && p.S == 1) launch("kernel_mmvq", kernel_mmvq<T, 1, 1>, grid, MV_ROWS * 32, 0, a, w, xq, out, vw, nwarps);
        else if (one && p.S == 2) launch("kernel_mmvq", kernel_mmvq<T, 1, 2>, grid, MV_ROWS * 32, 0, a, w, xq, out, vw, nwarps);
        else if (one) launch("kernel_mmvq", kernel_mmvq<T, 1, 4>, grid, MV_ROWS * 32, 0, a, w, xq, out, vw, nwarps);
        else if (p.S == 1) launch("kernel_mmvq", kernel_mmvq<T, 8, 1>, grid, MV_ROWS * 32, 0, a, w, xq, out, vw, nwarps);
        else if (p.S == 2) launch("kernel_mmvq", kernel_mmvq<T, 8, 2>, grid, MV_ROWS * 32, 0, a, w, xq, out, vw, nwarps);
        else launch("kernel_mmvq", kernel_mmvq<T, 8, 4>, grid, MV_ROWS * 32, 0, a, w, xq, out, vw, nwarps);
        launched("kernel_mmvq");
    }

    // Decode, 2 or 3 quantized weights of one type reading the same input (Q/K/V, gate/up):
    // one quantization (or none, when qcache has it), then one kernel_mmvq_group. Each weight
    // keeps the S of its own plan (mv_plan); the warps are shared out as for one matrix of all
    // the rows: as few rows per group of S warps as the resident warps allow, each weight
    // getting enough groups for its rows at that rate. Weights go largest S first, so each
    // starts at a multiple of its S.
    template <int T> void matmul_group(const Command* const* ms, int n) {
        const kargs_matmul& a = ms[0]->a.matmul;
        quantize_for<T>(a, ms[0]->b[1]);
        const Q8Act xq = q8_at(a);
        const int nt8 = a.n_tokens > 1;
        const int nwin = (a.n_in / QT<T>::QK + MVQ<T>::NB - 1) / MVQ<T>::NB;   // the same K for all
        int S[MVG_MAX], order[MVG_MAX];
        int64_t rows = 0;   // in warps at one row a group
        uint64_t bytes = 0;
        int per_warp = 1;   // windows of a row one warp takes, at most
        for (int j = 0; j < n; ++j) {
            const kargs_matmul& m = ms[j]->a.matmul;
            S[j] = mv_plan<T>(m).S;
            order[j] = j;
            rows += (int64_t)m.n_out * S[j];
            bytes += (uint64_t)m.n_out * m.row_bytes;
            per_warp = std::max(per_warp, (nwin + S[j] - 1) / S[j]);
        }
        std::stable_sort(order, order + n, [&](int x, int y) { return S[x] > S[y]; });
        const int64_t resident = mv_plan_warps(mvg_resident[T][nt8], bytes);
        const int64_t r0 = (rows + resident - 1) / resident;
        int64_t rpw = r0, best = INT64_MAX;
        for (int64_t r = r0; r < r0 + 3; ++r) {
            int64_t w = 0;
            for (int j = 0; j < n; ++j) w += (ms[j]->a.matmul.n_out + r - 1) / r * S[j];
            const int64_t cost = mv_sm_load(w, r * per_warp);
            if (cost < best) { best = cost; rpw = r; }
        }
        MvGroup g{};
        g.n = n;
        int64_t nw = 0;
        for (int i = 0; i < n; ++i) {
            const Command& c = *ms[order[i]];
            g.W[i] = c.b[0].ptr<uint8_t>();
            g.y[i] = c.b[2].ptr<float>();
            g.row_bytes[i] = c.a.matmul.row_bytes;
            g.n_out[i] = c.a.matmul.n_out;
            g.vw[i] = load_width(c.a.matmul, g.W[i]);
            g.S[i] = S[order[i]];
            g.nwarps[i] = (int)((c.a.matmul.n_out + rpw - 1) / rpw) * g.S[i];
            nw += g.nwarps[i];
        }
        const unsigned grid = blocks(nw, MV_ROWS);
        const bool gs = g.S[0] > 1;   // (the largest S comes first)
        if (!nt8 && !gs) launch("kernel_mmvq_group", kernel_mmvq_group<T, 1, false>, grid, MV_ROWS * 32, 0, a, g, xq);
        else if (!nt8) launch("kernel_mmvq_group", kernel_mmvq_group<T, 1, true>, grid, MV_ROWS * 32, 0, a, g, xq);
        else if (!gs) launch("kernel_mmvq_group", kernel_mmvq_group<T, 8, false>, grid, MV_ROWS * 32, 0, a, g, xq);
        else launch("kernel_mmvq_group", kernel_mmvq_group<T, 8, true>, grid, MV_ROWS * 32, 0, a, g, xq);
        launched("kernel_mmvq_group");
    }
    void matmul_group_any(const Command* const* ms, int n) {
        switch (ms[0]->a.matmul.wtype) {
            case KT_Q4_0: matmul_group<KT_Q4_0>(ms, n); break;
            case KT_Q4_1: matmul_group<KT_Q4_1>(ms, n); break;
            case KT_Q5_0: matmul_group<KT_Q5_0>(ms, n); break;
            case KT_Q5_1: matmul_group<KT_Q5_1>(ms, n); break;
            case KT_Q8_0: matmul_group<KT_Q8_0>(ms, n); break;
            case KT_Q4_K: matmul_group<KT_Q4_K>(ms, n); break;
            case KT_Q5_K: matmul_group<KT_Q5_K>(ms, n); break;
            case KT_Q6_K: matmul_group<KT_Q6_K>(ms, n); break;
            default: throw Error("matmul group: unsupported weight type " + std::to_string(ms[0]->a.matmul.wtype));
        }
    }

    // Prefill: activations and weights (chunk by chunk) to fp16, then the tensor-core GEMM.
    template <int T> void matmul_gemm(const kargs_matmul& a, Binding W, Binding x, Binding y) {
        const int M = a.n_tokens, N = a.n_out, K = a.n_in;
        __half* xh = (__half*)hscratch;                             // [M][K]
        __half* wh = (__half*)((char*)hscratch + gemm_x_bytes(a));  // [chunk rows][K]
        const int64_t n4 = (int64_t)M * K / 4;
        launch("kernel_f32_to_f16", kernel_f32_to_f16, blocks(n4, 256), 256, 0, x.ptr<float>(), xh, n4);
        const int nc = gemm_chunk_rows(a);
        for (int r0 = 0; r0 < N; r0 += nc) {
            const int rows = std::min(nc, N - r0);
            const uint8_t* wr = W.ptr<uint8_t>() + (uint64_t)r0 * a.row_bytes;
            const __half* wp = (const __half*)wr;   // F16: the weights themselves
            if constexpr (T != KT_F16) {
                launch("kernel_dequant_f16", kernel_dequant_f16<T>, blocks((int64_t)rows * K / 8, 256), 256, 0, wr,
                       a.row_bytes, K, rows, wh);
                wp = wh;
            }
            // 128-token tiles unless that gives fewer blocks than two per SM (Q/K/V, o at 512
            // tokens: 4 x 32 tiles for 132 SMs); then 64-token tiles, twice the blocks
            if ((int64_t)blocks(M, 128) * blocks(rows, GM_BN) >= 2 * n_sm)
                launch("kernel_gemm_f16", kernel_gemm_f16<128>, dim3(blocks(M, 128), blocks(rows, GM_BN)), 256,
                       gm_smem(128), xh, wp, y.ptr<float>() + r0, M, rows, K, N);
            else
                launch("kernel_gemm_f16", kernel_gemm_f16<64>, dim3(blocks(M, 64), blocks(rows, GM_BN)), 256,
                       gm_smem(64), xh, wp, y.ptr<float>() + r0, M, rows, K, N);
        }
    }

    template <int T> void matmul_t(const kargs_matmul& a, Binding W, Binding x, Binding y) {
        const bool x16 = (uintptr_t)x.ptr<float>() % 16 == 0;
        if constexpr (T != KT_F32 && T != KT_BF16) {
            if (gemm_shape(a) && x16 && hscratch_bytes >= gemm_x_bytes(a) + gemm_w_bytes(a) &&
                (T != KT_F16 || ((uintptr_t)W.ptr<uint8_t>() % 16 == 0 && a.row_bytes == 2ull * a.n_in))) {
                matmul_gemm<T>(a, W, x, y);
                return;
            }
        }
        if constexpr (T == KT_F16) {
            if (a.n_tokens <= MV_MAX_TOKENS && a.n_in % 8 == 0 && x16) {
                const int vw = load_width(a, W.ptr<uint8_t>());
                const int split = row_split(a.n_out, (a.n_in + 1023) / 1024);
                const unsigned grid = blocks(a.n_out, MV_ROWS / split);
                if (a.n_tokens == 1)
                    launch("kernel_mv_f16", kernel_mv_f16<1>, grid, MV_ROWS * 32, 0, a, W.ptr<uint8_t>(), x.ptr<float>(), y.ptr<float>(), vw, split);
                else
                    launch("kernel_mv_f16", kernel_mv_f16<8>, grid, MV_ROWS * 32, 0, a, W.ptr<uint8_t>(), x.ptr<float>(), y.ptr<float>(), vw, split);
                launched("kernel_mv_f16");
                return;
            }
        }
        if constexpr (T != KT_F32 && T != KT_F16 && T != KT_BF16) {
            if (a.n_tokens <= MV_MAX_TOKENS) {
                matmul_mmvq<T>(a, W, x, y);
                return;
            }
        }
        // F32 / BF16 weights, and odd shapes: one warp per row, float activations
        int vec = (a.n_in % 8 == 0) && ((uintptr_t)x.ptr<float>() % 16 == 0) &&
                  (QT<T>::QK > 1 || (uintptr_t)W.ptr<uint8_t>() % 16 == 0 && a.row_bytes % 16 == 0);
        dim3 grid(blocks(a.n_out, MV_WARPS), blocks(a.n_tokens, MV_MT));
        launch("kernel_matmul", kernel_matmul<T>, grid, MV_WARPS * 32, 0, a, W.ptr<uint8_t>(), x.ptr<float>(), y.ptr<float>(), vec);
    }
    void matmul(const kargs_matmul& a, Binding W, Binding x, Binding y) override {
        switch (a.wtype) {
            case KT_F32: matmul_t<KT_F32>(a, W, x, y); break;
            case KT_F16: matmul_t<KT_F16>(a, W, x, y); break;
            case KT_BF16: matmul_t<KT_BF16>(a, W, x, y); break;
            case KT_Q4_0: matmul_t<KT_Q4_0>(a, W, x, y); break;
            case KT_Q4_1: matmul_t<KT_Q4_1>(a, W, x, y); break;
            case KT_Q5_0: matmul_t<KT_Q5_0>(a, W, x, y); break;
            case KT_Q5_1: matmul_t<KT_Q5_1>(a, W, x, y); break;
            case KT_Q8_0: matmul_t<KT_Q8_0>(a, W, x, y); break;
            case KT_Q4_K: matmul_t<KT_Q4_K>(a, W, x, y); break;
            case KT_Q5_K: matmul_t<KT_Q5_K>(a, W, x, y); break;
            case KT_Q6_K: matmul_t<KT_Q6_K>(a, W, x, y); break;
            default: throw Error("matmul: unsupported weight type " + std::to_string(a.wtype));
        }
        launched("kernel_matmul");
    }
    void logits(const kargs_matmul& a, Binding W, Binding x, Binding y) override { matmul(a, W, x, y); }

    void rope(const kargs_rope& a, Binding x, Binding factors, Binding step) override {
        int64_t n = (int64_t)a.n_tokens * a.n_heads * (a.n_rot / 2);
        launch("kernel_rope", kernel_rope, blocks(n, 256), 256, 0, a, x.ptr<float>(), factors ? factors.ptr<float>() : nullptr,
                                                        step.ptr<kstep>());
        launched("kernel_rope");
    }

    void kv_store(const kargs_kv_store& a, Binding src, Binding cache, Binding step) override {
        int64_t n = (int64_t)a.n_tokens * a.kv_dim;
        launch("kernel_kv_store", kernel_kv_store, blocks(n, 256), 256, 0, a, src.ptr<float>(), cache.ptr<__half>(),
                                                            step.ptr<kstep>(), (int*)err_buf->dev);
        launched("kernel_kv_store");
    }

    // How many blocks split one query's keys: decode splits the whole context in chunks of
    // 32 or 128 keys (see attention_split; blocks past the current position exit at once, so the
    // grid is the same for every token and a graph can hold it); a batch of queries uses at most
    // 4 splits. kernel_attention_decode merges its splits itself; kernel_attention's are merged
    // by kernel_attention_combine.
    // kernel_attention_decode takes head sizes 64 and 128, up to 8 query heads per K/V head and
    // G * head_dim <= 1024; prompts of 16+ tokens with those head sizes go to the tensor cores
    // instead. Other shapes (e.g. Gemma-3's head size 256) run kernel_attention.
    static bool prefill_attention(const kargs_attention& a) {
        return a.n_tokens >= 16 && (a.head_dim == 64 || a.head_dim == 128);
    }
    static bool decode_attention(const kargs_attention& a) {
        const int G = a.n_heads / a.n_kv_heads;
        return !prefill_attention(a) && (a.head_dim == 64 || a.head_dim == 128) &&
               G <= AD_GMAX && G * a.head_dim <= AD_QMAX && a.n_tokens * a.n_kv_heads <= AD_COUNTERS;
    }
    static void attention_split(const kargs_attention& a, int* S, int* chunk) {
        // Splits of 32 keys: one pass of kernel_attention_decode's warps (one K and one V round
        // trip), one group of ATT_KG keys a warp in kernel_attention (64-key splits took two
        // round trips of each). For head size 64 the decode kernel's pass is short enough that
        // splits of 128 keys (4 passes) cost less than merging 4x as many splits (H100, SmolLM2
        // shape, attention us at positions 64 / 520 / 900: 6.51 / 8.96 / 9.10 with 128-key
        // splits, 6.60 / 11.09 / 12.92 with 32); for head size 128 it is the other way round (8B
        // shape: 16.90 / 26.13 / 26.07 against 15.29 / 17.97 / 21.54). At most 256 splits.
        const int span = a.window > 0 ? std::min(a.window, a.n_ctx) : a.n_ctx;
        const int keys = decode_attention(a) && a.head_dim == 64 ? 128 : 32;
        int s = std::min((span + keys - 1) / keys, 256);
        if (a.n_tokens > 1) s = std::min(s, 4);
        s = std::max(s, 1);
        *S = s;
        *chunk = (span + s - 1) / s;
    }

    void attention(const kargs_attention& a, Binding q, Binding kc, Binding vc, Binding out, Binding step) override {
        attention_q(a, q, kc, vc, out, step, Q8Act{}, AdRope{});
    }
    // attention; for the decode kernel only (decode_attention): with xq.q set its output is also
    // quantized to 8 bits for the next matmul, with rope.on the token's rope and K/V stores
    // happen inside it (see AdRope; one token)
    static bool attention_aligned(Binding q, Binding kc, Binding vc) {
        return (uintptr_t)q.ptr<float>() % 16 == 0 && (uintptr_t)kc.ptr<__half>() % 16 == 0 &&
               (uintptr_t)vc.ptr<__half>() % 16 == 0;
    }
    void attention_q(const kargs_attention& a, Binding q, Binding kc, Binding vc, Binding out, Binding step, Q8Act xq,
                     AdRope rope) {
        if (a.head_dim > ATT_MAXD * 32) throw Error("attention: head_dim above 256 is not supported on cuda");
        // a prompt (16 tokens or more) with head size 64 or 128: tiles of queries on the tensor cores
        const bool aligned = attention_aligned(q, kc, vc);
        if (prefill_attention(a) && aligned) {
            const dim3 grid(blocks(a.n_tokens, FA_BQ), a.n_heads);
            if (a.head_dim == 64)
                launch("kernel_attention_prefill", kernel_attention_prefill<64>, grid, FA_THREADS, fa_smem(64), a,
                       q.ptr<float>(), kc.ptr<__half>(), vc.ptr<__half>(), out.ptr<float>(), step.ptr<kstep>());
            else
                launch("kernel_attention_prefill", kernel_attention_prefill<128>, grid, FA_THREADS, fa_smem(128), a,
                       q.ptr<float>(), kc.ptr<__half>(), vc.ptr<__half>(), out.ptr<float>(), step.ptr<kstep>());
            return;
        }
        int S, chunk;
        attention_split(a, &S, &chunk);
        if (decode_attention(a) && aligned) {
            const dim3 grid(S, a.n_kv_heads, a.n_tokens);
            const int G = a.n_heads / a.n_kv_heads;   // query heads per K/V head: AD_WPH warps each
            float* qp = q.ptr<float>();
            __half *kp = kc.ptr<__half>(), *vp = vc.ptr<__half>();
            float *op = out.ptr<float>(), *pp = (float*)scratch;
            const kstep* sp = step.ptr<kstep>();
            int* cp = (int*)att_count->dev;
            if (a.head_dim == 64)
                launch("kernel_attention_decode", kernel_attention_decode<2>, grid, G * AD_WPH * 32, 0, a, qp, kp, vp, op, pp, S, chunk, sp, cp, xq, rope);
            else
                launch("kernel_attention_decode", kernel_attention_decode<4>, grid, G * AD_WPH * 32, 0, a, qp, kp, vp, op, pp, S, chunk, sp, cp, xq, rope);
            launched("kernel_attention_decode");
            return;   // the splits merged in the kernel
        } else {
            launch("kernel_attention", kernel_attention, dim3(S, a.n_heads, a.n_tokens), ATT_WARPS * 32, 0, a,
                   q.ptr<float>(), kc.ptr<__half>(), vc.ptr<__half>(), out.ptr<float>(), (float*)scratch, S, chunk,
                   step.ptr<kstep>());
        }
        if (S > 1) {
            launch("kernel_attention_combine", kernel_attention_combine, dim3(a.n_heads, a.n_tokens), 128, 0, a,
                   (const float*)scratch, out.ptr<float>(), S, chunk, step.ptr<kstep>());
            launched("kernel_attention_combine");
        }
    }

    void add(const kargs_eltwise& a, Binding x, Binding y, Binding out) override {
        launch("kernel_add", kernel_add, blocks(a.n, 256), 256, 0, a, x.ptr<float>(), y.ptr<float>(), out.ptr<float>());
        launched("kernel_add");
    }
    void swiglu(const kargs_glu& a, Binding g, Binding u, Binding out) override {
        launch("kernel_swiglu", kernel_swiglu, blocks((int64_t)a.n_tokens * a.n_ff, 256), 256, 0, a, g.ptr<float>(), u.ptr<float>(),
                                                                                      out.ptr<float>());
        launched("kernel_swiglu");
    }
    void geglu(const kargs_glu& a, Binding g, Binding u, Binding out) override {
        launch("kernel_geglu", kernel_geglu, blocks((int64_t)a.n_tokens * a.n_ff, 256), 256, 0, a, g.ptr<float>(), u.ptr<float>(),
                                                                                     out.ptr<float>());
        launched("kernel_geglu");
    }

    int ordinal;
    cudaStream_t stream = nullptr;
    kstep hstep{0, 1, 0, 0};         // host copy of the step buffer (for host-side checks)
    BufferRef err_buf;
    int* herr = nullptr;              // pinned host copy of the error flag (wait)
    void* hstage = nullptr;           // pinned staging for downloads
    std::vector<std::pair<char*, uint64_t>> host_pinned;   // host_alloc's blocks
    std::mutex host_mu;
    uint64_t hstage_bytes = 0;
    // LLMETAL_CUDA_PINNED=0: downloads straight into pageable memory (for measuring)
    const bool pinned = [] { const char* e = std::getenv("LLMETAL_CUDA_PINNED"); return !(e && e[0] == '0'); }();
    BufferRef att_count;              // [AD_COUNTERS] int, zero between launches (kernel_attention_decode)
    void* scratch = nullptr;          // attention partials
    uint64_t scratch_bytes = 0;
    void* qscratch = nullptr;         // quantized activations of decode matmuls
    uint64_t qscratch_bytes = 0;
    void* hscratch = nullptr;         // fp16 activations + weight chunk of prefill matmuls
    uint64_t hscratch_bytes = 0;
    bool pdl = false;                 // launch with programmatic dependent launch (sm_90+)
    bool pdl_list = true;             // ... for the command list being run (see prepare)
    std::vector<void*> scratch_old;
};

}  // namespace

// One device object per GPU for the life of the process, like CUDA's primary context: its
// stream and scratch are made once, however many times Python asks for cuda_device(0).
std::shared_ptr<Device> make_cuda_device(int ordinal) {
    static std::mutex mu;
    static std::map<int, CudaDevice*> devices;
    std::lock_guard<std::mutex> lock(mu);
    auto it = devices.find(ordinal);
    if (it == devices.end()) it = devices.emplace(ordinal, new CudaDevice(ordinal)).first;
    return std::shared_ptr<Device>(it->second, [](Device*) {});
}

}  // namespace llmetal
