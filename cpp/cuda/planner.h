// planner.h -- the CUDA device's planner: a recorded command list in, the list of kernel
// launches that runs it out. Plain C++ (built on every build, CUDA or not), so the choice of
// kernels, fusions and launch geometry is unit-tested without a GPU (tests/test_cuda_planner.py)
// and shown by model.plan(); the executor (launch.cu) only walks the list and launches.
//
// Inputs: the commands and the device's capabilities (CudaCaps). Memory addresses are not
// inputs: every CUDA buffer comes from cudaMalloc (256-byte aligned) and buffers never
// overlap, so alignment is read from a binding's offset and aliasing from (buffer, offset).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../engine.h"
#include "geometry.h"

namespace llmetal {
namespace cuda {

// What the planner's decisions read about the GPU. The defaults are an H100 SXM (132 SMs,
// sm_90) with the resident mat-vec blocks per SM that cudaOccupancy reported there (see
// planner.cpp), so a plan made in a test without a GPU is the H100's.
struct CudaCaps {
    int n_sm = 132;
    int cc_major = 9;
    bool pdl = true;    // programmatic dependent launch (sm_90+; LLMETAL_CUDA_PDL=0 turns it off)
    bool fuse = true;   // the fusion table (LLMETAL_CUDA_FUSE=0 runs every stage split)
    // a captured decode list runs as the persistent kernel's program (LLMETAL_CUDA_PERSISTENT=1)
    bool persist = false;
    int pk_blocks = 132;   // resident blocks of kernel_persistent (one an SM on an H100)
    // one-token decode attention: live blocks at most n_sm * this (0: no cap; geometry.h)
    int ad_blocks_sm = llmetal_cuda::AD_BLOCKS_SM;
    // resident blocks per SM of kernel_mmvq<T, 1 | 8, 1> and kernel_mmvq_group<T, 1 | 8, true>
    // by ggml type (cudaOccupancyMaxActiveBlocksPerMultiprocessor at device creation)
    int mv_resident[32][2];
    int mvg_resident[32][2];
    CudaCaps();
};

// Every kernel the CUDA device launches for a stage (kernel_set_token and kernel_rope_powers
// run outside command lists).
enum class Kernel : uint8_t {
    embed, rmsnorm, add_rmsnorm_q, quantize_q8, mmvq, mmvq_group, mv_f16, matmul,
    f32_to_f16, dequant_f16, gemm_f16, gemm_q, splitk_sum, rope, kv_store, rope_kv_store, attention_prefill,
    attention_decode, attention, attention_combine, add, swiglu, swiglu_q, geglu, attention_probs,
    argmax,
};
const char* kernel_base_name(Kernel k);

// One fusion: a fixed pattern of consecutive commands (the shapes Model.forward records) run
// as ONE named kernel doing exactly the split stages' arithmetic. FUSIONS[] lists them all.
struct Fusion {
    const char* name;
    const char* matches;
    const char* kernel;
    const char* why;
};
enum FusionId : int8_t {
    F_NONE = -1, F_ADD_RMSNORM_Q, F_RMSNORM_Q, F_SWIGLU_Q, F_ATTENTION_Q, F_ROPE_KV_STORE,
    F_ROPE_KV_ATTENTION, F_MATMUL_GROUP, F_QUANTIZE_SHARED, N_FUSIONS
};
extern const Fusion FUSIONS[N_FUSIONS];

// One kernel launch. first / count: the commands it covers (a fused kernel covers several;
// a kernel_quantize_q8 or a GEMM chunk covers the matmul it serves). Fields past `smem` mean
// what the kernel's comment in launch.cu says; unused ones stay as initialized.
struct Launch {
    Kernel kernel{};
    int first = 0, count = 1;
    int8_t fusion = F_NONE;
    int wtype = -1;            // weight type (template parameter of typed kernels)
    int variant = 0;           // other template parameters (see launch.cu)
    uint32_t grid[3] = {1, 1, 1};
    uint32_t block = 1;
    uint32_t smem = 0;
    int qcmd = -1;             // the matmul command whose 8-bit input this kernel writes or reads
    int qb = 0;                // block of those 8-bit values (32 / 256), 0: none
    int S = 1;                 // warps a row (mat-vecs), splits of the keys (attention)
    int chunk = 0;             // keys a split (attention)
    int vw = 0;                // load width in bytes (mat-vecs)
    int nwarps = 0;            // warps of a persistent mat-vec
    int r0 = 0, rows = 0;      // weight rows of one GEMM chunk
    int nks = 0;               // kernel_gemm_q: K windows a warp (S: the K splits over blocks)
    // kernel_mmvq_group: the weights' commands largest S first, their S, load width, warps
    int g_n = 0;
    // and the add of a bias row to each output (its command, -1: none)
    int g_cmd[llmetal_cuda::MVG_MAX] = {}, g_S[llmetal_cuda::MVG_MAX] = {};
    int g_bias[llmetal_cuda::MVG_MAX] = {-1, -1, -1};
    static_assert(llmetal_cuda::MVG_MAX == 3, "g_bias's initializer");
    int g_vw[llmetal_cuda::MVG_MAX] = {}, g_nwarps[llmetal_cuda::MVG_MAX] = {};
};

// The persistent decode kernel's program (persist.cuh): the launch list itself, each launch one
// instruction whose units are the blocks of its grid (a mat-vec's: groups of PK_WARPS warps),
// dealt in list order round robin to kernel_persistent's resident blocks. A unit
// waits until every unit of the instruction `dep` is done (a counter a unit) -- the order of
// the launches, without their start-up and drain.
struct PersistIns {
    int units = 0;   // tickets of the instruction (an attention's dead splits are skipped)
    int nt = 0;      // threads of a unit
    int dep = -1;    // the instruction whose units all finish first
    // mat-vecs: the warps over the rows, for a grid of PK_WARPS-warp units (each weight keeps
    // its launch's S, so each row is summed as in the launch)
    int g_nwarps[llmetal_cuda::MVG_MAX] = {};
};
struct Persist {
    int blocks = 0;                 // kernel_persistent's grid; 0: the list runs as launches
    std::string why;                // why not, when asked for (caps.persist) and not taken
    std::vector<PersistIns> ins;    // one per launch
};

// The launch list of one command list, and what it needs before it runs.
struct LaunchList {
    std::vector<Launch> launches;
    bool pdl = false;              // launched with programmatic dependent launch
    uint64_t scratch_bytes = 0;    // attention partials
    uint64_t qscratch_bytes = 0;   // 8-bit activations of the decode matmuls
    uint64_t hscratch_bytes = 0;   // fp16 activations + a weight chunk of the prefill GEMMs
                                   // (kernel_gemm_q: + its split-K partial sums)
    Persist persist;               // set when caps.persist and every launch has a persistent body
};

LaunchList plan(const std::vector<Command>& cmds, const CudaCaps& caps);
// The capabilities a CUDA device plans with; null for any other device (or no CUDA build).
const CudaCaps* device_caps(const Device& d);
// The last run of a plan captured as kernel_persistent with LLMETAL_CUDA_PERSISTENT_PROFILE=1:
// per ticket (start ns, wait-returned ns, end ns, SM << 32 | instruction); empty otherwise.
std::vector<int64_t> persistent_profile(const Plan& p);

// The printable name of a launch: kernel_mmvq<Q4_1>, kernel_add_rmsnorm_q, ...
std::string kernel_name(const Launch& l);
// What model.plan() shows: each launch with its commands and fusion.
std::vector<KernelDesc> describe(const LaunchList& l);

// Shared with the executor: where in qscratch the 8-bit copy of a decode matmul's input lies
// (q [T][K] int8, d [T][K / QB] float, s [T][K / 32] int, each part 256-byte aligned).
int q8_block(int wtype);
uint64_t q8_values_bytes(const kargs_matmul& a);
uint64_t q8_scales_bytes(const kargs_matmul& a);
uint64_t q8_bytes(const kargs_matmul& a);
uint64_t gemm_x_bytes(const kargs_matmul& a);

}  // namespace cuda
}  // namespace llmetal
