// launch.cu -- the CUDA executor: walks a launch list (planner.h) and launches each kernel with
// the geometry the planner chose and the pointers of the commands it covers. It decides
// nothing: which kernel, which template, how many blocks and warps are the list's.
//
// Every kernel goes on the device's one stream, with the programmatic-serialization attribute
// where the list allows it (LaunchList::pdl: sm_90+, decode lists, LLMETAL_CUDA_PDL not 0), so
// a kernel's blocks are scheduled while the previous kernel drains and wait in pdl_enter()
// (kernels.cuh) for its results. Inside a graph capture this becomes a programmatic edge.
#include <cstring>
#include <type_traits>

#include "device_cuda.cuh"
#include "kernels.cuh"
#include "matvec.cuh"
#include "gemm.cuh"
#include "attention.cuh"
#include "persist.cuh"   // the instruction (PInstr) the persistent kernel runs

namespace llmetal {
using namespace llmetal_cuda;
using cuda::Kernel;
using cuda::Launch;

namespace {

template <int V> using I = std::integral_constant<int, V>;

// Calls f(I<T>{}) for a weight type the quantized mat-vecs take.
template <class F> void with_qtype(int t, F&& f) {
    switch (t) {
        case KT_Q4_0: return f(I<KT_Q4_0>{});
        case KT_Q4_1: return f(I<KT_Q4_1>{});
        case KT_Q5_0: return f(I<KT_Q5_0>{});
        case KT_Q5_1: return f(I<KT_Q5_1>{});
        case KT_Q8_0: return f(I<KT_Q8_0>{});
        case KT_Q4_K: return f(I<KT_Q4_K>{});
        case KT_Q5_K: return f(I<KT_Q5_K>{});
        case KT_Q6_K: return f(I<KT_Q6_K>{});
        case KT_Q2_K: return f(I<KT_Q2_K>{});
        case KT_Q3_K: return f(I<KT_Q3_K>{});
        case KT_IQ4_XS: return f(I<KT_IQ4_XS>{});
        default: throw Error("cuda: unsupported weight type " + std::to_string(t));
    }
}
// ... and the float formats too (embed, kernel_matmul, dequant).
template <class F> void with_type(int t, F&& f) {
    switch (t) {
        case KT_F32: return f(I<KT_F32>{});
        case KT_F16: return f(I<KT_F16>{});
        case KT_BF16: return f(I<KT_BF16>{});
        default: return with_qtype(t, f);
    }
}

// Where in qscratch the 8-bit copy of matmul a's input lies (see planner.h).
Q8Act q8_at(void* qscratch, const kargs_matmul& a) {
    char* p = (char*)qscratch;
    const uint64_t v = cuda::q8_values_bytes(a), s = cuda::q8_scales_bytes(a);
    return Q8Act{(int8_t*)p, (float*)(p + v), (int*)(p + v + s)};
}

struct Exec {
    CudaDevice& d;
    const std::vector<Command>& cmds;

    template <class... P, class... A>
    void go(const Launch& l, void (*k)(P...), A... args) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(l.grid[0], l.grid[1], l.grid[2]);
        cfg.blockDim = dim3(l.block);
        cfg.dynamicSmemBytes = l.smem;
        cfg.stream = d.stream;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = at;
        cfg.numAttrs = d.pdl_now ? 1 : 0;
        cudaError_t e = cudaLaunchKernelEx(&cfg, k, args...);
        if (e != cudaSuccess) throw Error("cuda: launching " + cuda::kernel_name(l) + ": " + cudaGetErrorString(e));
    }
    int* err() const { return (int*)d.err_buf->dev; }
    Q8Act xq(const Launch& l) const { return l.qcmd >= 0 ? q8_at(d.qscratch, cmds[l.qcmd].a.matmul) : Q8Act{}; }

    void run(const Launch& l) {
        const Command& c = cmds[l.first];
        const Binding* b = c.b;
        const kstep* step = c.step ? c.step.ptr<kstep>() : nullptr;
        switch (l.kernel) {
            case Kernel::embed:
                return with_type(l.wtype, [&](auto T) { go(l, kernel_embed<decltype(T)::value>, embed_args(l)); });
            case Kernel::rmsnorm:
                return go(l, kernel_rmsnorm, c.a.rmsnorm, b[0].ptr<float>(), b[1].ptr<float>(), b[2].ptr<float>());
            case Kernel::add_rmsnorm_q: return add_rmsnorm(l);
            case Kernel::quantize_q8:
                if (l.qb == 32) return go(l, kernel_quantize_q8<32>, quant_args(l));
                return go(l, kernel_quantize_q8<256>, quant_args(l));
            case Kernel::mmvq:
                return with_qtype(l.wtype, [&](auto T) { mmvq<decltype(T)::value>(l, c); });
            case Kernel::mmvq_group:
                return with_qtype(l.wtype, [&](auto T) { mmvq_group<decltype(T)::value>(l, c); });
            case Kernel::mv_f16:
                if (l.variant == 1)
                    return go(l, kernel_mv_f16<1>, c.a.matmul, b[0].ptr<uint8_t>(), b[1].ptr<float>(), b[2].ptr<float>(), l.vw, l.S);
                return go(l, kernel_mv_f16<8>, c.a.matmul, b[0].ptr<uint8_t>(), b[1].ptr<float>(), b[2].ptr<float>(), l.vw, l.S);
            case Kernel::matmul:
                return with_type(l.wtype, [&](auto T) {
                    go(l, kernel_matmul<decltype(T)::value>, c.a.matmul, b[0].ptr<uint8_t>(), b[1].ptr<float>(), b[2].ptr<float>(), l.variant);
                });
            case Kernel::f32_to_f16: {
                const kargs_matmul& a = c.a.matmul;
                return go(l, kernel_f32_to_f16, b[1].ptr<float>(), (__half*)d.hscratch, (int64_t)a.n_tokens * a.n_in / 4);
            }
            case Kernel::dequant_f16:
                return with_qtype(l.wtype, [&](auto T) {
                    const kargs_matmul& a = c.a.matmul;
                    go(l, kernel_dequant_f16<decltype(T)::value>, b[0].ptr<uint8_t>() + (uint64_t)l.r0 * a.row_bytes, a.row_bytes, a.n_in,
                       l.rows, gemm_w(a));
                });
            case Kernel::gemm_f16: {
                // activations [M][K] fp16 at the start of hscratch, then the chunk's fp16 weights
                // (F16 weights: the rows themselves)
                const kargs_matmul& a = c.a.matmul;
                const __half* xh = (const __half*)d.hscratch;
                const __half* wp = a.wtype == KT_F16 ? (const __half*)(b[0].ptr<uint8_t>() + (uint64_t)l.r0 * a.row_bytes)
                                                     : gemm_w(a);
                float* y = b[2].ptr<float>() + l.r0;
                if (l.variant == 128) return go(l, kernel_gemm_f16<128>, xh, wp, y, a.n_tokens, l.rows, a.n_in, a.n_out);
                return go(l, kernel_gemm_f16<64>, xh, wp, y, a.n_tokens, l.rows, a.n_in, a.n_out);
            }
            case Kernel::gemm_q:   // activations fp16 at the start of hscratch, then the partial sums
                return with_qtype(l.wtype, [&](auto T) {
                    constexpr int Q = decltype(T)::value;
                    const kargs_matmul& a = c.a.matmul;
                    const __half* xh = (const __half*)d.hscratch;
                    float* part = (float*)((char*)d.hscratch + cuda::gemm_x_bytes(a));
                    auto k = l.variant == 2 ? kernel_gemm_q<Q, 2> : l.variant == 4 ? kernel_gemm_q<Q, 4> : kernel_gemm_q<Q, 8>;
                    go(l, k, xh, b[0].ptr<uint8_t>(), a.row_bytes, b[2].ptr<float>(), part, a.n_tokens, a.n_out, a.n_in,
                       l.nks, l.vw);
                });
            case Kernel::splitk_sum: {
                const kargs_matmul& a = c.a.matmul;
                return go(l, kernel_splitk_sum, (const float*)((char*)d.hscratch + cuda::gemm_x_bytes(a)), b[2].ptr<float>(),
                          (int64_t)a.n_tokens * a.n_out, l.S);
            }
            case Kernel::rope:
                return go(l, kernel_rope, c.a.rope, b[0].ptr<float>(), b[1] ? b[1].ptr<float>() : nullptr, step);
            case Kernel::kv_store:
                return go(l, kernel_kv_store, c.a.kv_store, b[0].ptr<float>(), b[1].ptr<__half>(), step, err());
            case Kernel::rope_kv_store: {   // rope q, rope k, kv_store k, kv_store v
                const Command &rk = cmds[l.first + 1], &sk = cmds[l.first + 2], &sv = cmds[l.first + 3];
                const kargs_rope& q = c.a.rope;
                return go(l, kernel_rope_kv_store, q, rk.a.rope, sk.a.kv_store.n_ctx, b[0].ptr<float>(), rk.b[0].ptr<float>(),
                          sv.b[0].ptr<float>(), q.has_factors ? b[1].ptr<float>() : nullptr, sk.b[1].ptr<__half>(),
                          sv.b[1].ptr<__half>(), step, err());
            }
            case Kernel::attention_prefill: {
                const Command& at = cmds[l.first + l.count - 1];
                const kargs_attention& a = at.a.attention;
                if (l.variant == 64)
                    return go(l, kernel_attention_prefill<64>, a, at.b[0].ptr<float>(), at.b[1].ptr<__half>(),
                              at.b[2].ptr<__half>(), at.b[3].ptr<float>(), at.step.ptr<kstep>());
                return go(l, kernel_attention_prefill<128>, a, at.b[0].ptr<float>(), at.b[1].ptr<__half>(),
                          at.b[2].ptr<__half>(), at.b[3].ptr<float>(), at.step.ptr<kstep>());
            }
            case Kernel::attention_decode: return attention_decode(l);
            case Kernel::attention:
                return go(l, kernel_attention, c.a.attention, b[0].ptr<float>(), b[1].ptr<__half>(), b[2].ptr<__half>(),
                          b[3].ptr<float>(), (float*)d.scratch, l.S, l.chunk, step);
            case Kernel::attention_combine:
                return go(l, kernel_attention_combine, c.a.attention, (const float*)d.scratch, b[3].ptr<float>(), l.S,
                          l.chunk, step);
            case Kernel::add:
                return go(l, kernel_add, c.a.eltwise, b[0].ptr<float>(), b[1].ptr<float>(), b[2].ptr<float>());
            case Kernel::swiglu:
                return go(l, kernel_swiglu, c.a.glu, b[0].ptr<float>(), b[1].ptr<float>(), b[2].ptr<float>());
            case Kernel::swiglu_q:
                if (l.qb == 32) return go(l, kernel_swiglu_q<32>, glu_args(l));
                return go(l, kernel_swiglu_q<256>, glu_args(l));
            case Kernel::geglu:
                return go(l, kernel_geglu, c.a.glu, b[0].ptr<float>(), b[1].ptr<float>(), b[2].ptr<float>());
            case Kernel::attention_probs:
                return go(l, kernel_attention_probs, c.a.attention_probs, b[0].ptr<float>(), b[1].ptr<__half>(),
                          b[2].ptr<float>(), step);
            case Kernel::argmax:
                if (l.variant == 4) return go(l, kernel_argmax<4>, c.a.argmax, b[0].ptr<float>(), b[1].ptr<int32_t>());
                return go(l, kernel_argmax<1>, c.a.argmax, b[0].ptr<float>(), b[1].ptr<int32_t>());
        }
    }

    __half* gemm_w(const kargs_matmul& a) const { return (__half*)((char*)d.hscratch + cuda::gemm_x_bytes(a)); }

    // The arguments of the kernels that have a persistent body (persist.cuh), for a launch and
    // for an instruction alike.
    EmbedArgs embed_args(const Launch& l) const {
        const Command& c = cmds[l.first];
        return EmbedArgs{c.a.embed, c.b[0].ptr<uint8_t>(), c.b[1].ptr<int32_t>(), c.b[2].ptr<float>(), err()};
    }
    QuantArgs quant_args(const Launch& l) const {
        const Command& m = cmds[l.qcmd];
        return QuantArgs{m.b[1].ptr<float>(), xq(l), (int64_t)m.a.matmul.n_tokens * m.a.matmul.n_in};
    }
    GluArgs glu_args(const Launch& l) const {
        const Command& c = cmds[l.first];
        return GluArgs{c.a.glu, c.b[0].ptr<float>(), c.b[1].ptr<float>(), c.b[2].ptr<float>(), xq(l)};
    }
    // [add(x, y -> sum) +] rmsnorm(.. , w -> out) [+ the 8-bit copy of out]
    RmsArgs rms_args(const Launch& l) const {
        const Command& c = cmds[l.first];
        const Command& r = l.variant ? cmds[l.first + 1] : c;
        return RmsArgs{r.a.rmsnorm, c.b[0].ptr<float>(), l.variant ? c.b[1].ptr<float>() : nullptr,
                       l.variant ? c.b[2].ptr<float>() : nullptr, r.b[1].ptr<float>(), r.b[2].ptr<float>(), xq(l)};
    }
    // kernel_mmvq_group's weights; a kernel_mmvq as a group of one (the persistent kernel runs
    // both so). nwarps: the warps of each weight (the launch's, or the persistent program's).
    MvArgs mv_args(const Launch& l, const int* nwarps) const {
        MvGroup g{};
        if (l.kernel == Kernel::mmvq) {
            const Command& m = cmds[l.first];
            g.n = 1;
            g.W[0] = m.b[0].ptr<uint8_t>();
            g.y[0] = m.b[2].ptr<float>();
            g.row_bytes[0] = m.a.matmul.row_bytes;
            g.n_out[0] = m.a.matmul.n_out;
            g.vw[0] = l.vw;
            g.S[0] = l.S;
            g.nwarps[0] = nwarps[0];
        } else {
            g.n = l.g_n;
            for (int i = 0; i < l.g_n; ++i) {
                const Command& m = cmds[l.g_cmd[i]];
                g.W[i] = m.b[0].ptr<uint8_t>();
                g.y[i] = m.b[2].ptr<float>();
                g.bias[i] = l.g_bias[i] >= 0 ? cmds[l.g_bias[i]].b[1].ptr<float>() : nullptr;
                g.row_bytes[i] = m.a.matmul.row_bytes;
                g.n_out[i] = m.a.matmul.n_out;
                g.vw[i] = l.g_vw[i];
                g.S[i] = l.g_S[i];
                g.nwarps[i] = nwarps[i];
            }
        }
        return MvArgs{cmds[l.first].a.matmul, g, xq(l)};
    }
    // kernel_attention_decode; fused with the rope and K/V stores of its token (rope_kv_attention:
    // commands first .. first + 3) and/or with the o projection's quantization (qcmd)
    AttArgs att_args(const Launch& l) const {
        const bool fused_rope = l.fusion == cuda::F_ROPE_KV_ATTENTION;
        const Command& at = cmds[l.first + l.count - 1];
        AdRope rope{};
        if (fused_rope) {
            const Command &rq = cmds[l.first], &rk = cmds[l.first + 1], &sv = cmds[l.first + 3];
            const kargs_rope& q = rq.a.rope;
            rope = AdRope{q, q.has_factors ? rq.b[1].ptr<float>() : nullptr, rk.b[0].ptr<float>(), sv.b[0].ptr<float>(),
                          err(), 1, d.rope_powers(q)};
        }
        return AttArgs{at.a.attention, at.b[0].ptr<float>(), at.b[1].ptr<__half>(), at.b[2].ptr<__half>(),
                       at.b[3].ptr<float>(), (float*)d.scratch, l.S, l.chunk, at.step.ptr<kstep>(),
                       (int*)d.att_count->dev, xq(l), rope};
    }

    void add_rmsnorm(const Launch& l) {
#define LLM_RMS(ADD, QB) go(l, kernel_add_rmsnorm_q<ADD, QB>, rms_args(l))
        if (l.variant) { if (l.qb == 32) LLM_RMS(true, 32); else if (l.qb == 256) LLM_RMS(true, 256); else LLM_RMS(true, 0); }
        else { if (l.qb == 32) LLM_RMS(false, 32); else if (l.qb == 256) LLM_RMS(false, 256); else LLM_RMS(false, 0); }
#undef LLM_RMS
    }

    template <int T> void mmvq(const Launch& l, const Command& c) {
        const kargs_matmul& a = c.a.matmul;
        const uint8_t* w = c.b[0].ptr<uint8_t>();
        float* out = c.b[2].ptr<float>();
        const Q8Act q = xq(l);
        if (l.variant == 1) {
            if (l.S == 1) return go(l, kernel_mmvq<T, 1, 1>, a, w, q, out, l.vw, l.nwarps);
            if (l.S == 2) return go(l, kernel_mmvq<T, 1, 2>, a, w, q, out, l.vw, l.nwarps);
            return go(l, kernel_mmvq<T, 1, 4>, a, w, q, out, l.vw, l.nwarps);
        }
        if (l.S == 1) return go(l, kernel_mmvq<T, 8, 1>, a, w, q, out, l.vw, l.nwarps);
        if (l.S == 2) return go(l, kernel_mmvq<T, 8, 2>, a, w, q, out, l.vw, l.nwarps);
        go(l, kernel_mmvq<T, 8, 4>, a, w, q, out, l.vw, l.nwarps);
    }

    template <int T> void mmvq_group(const Launch& l, const Command&) {
        const MvArgs p = mv_args(l, l.g_nwarps);
        const bool gs = l.S > 1;   // the largest S
        if (l.variant == 1 && !gs) return go(l, kernel_mmvq_group<T, 1, false>, p);
        if (l.variant == 1) return go(l, kernel_mmvq_group<T, 1, true>, p);
        if (!gs) return go(l, kernel_mmvq_group<T, 8, false>, p);
        go(l, kernel_mmvq_group<T, 8, true>, p);
    }

    void attention_decode(const Launch& l) {
        if (l.variant == 2) return go(l, kernel_attention_decode<2>, att_args(l));
        go(l, kernel_attention_decode<4>, att_args(l));
    }

    // The persistent kernel's program for a list the planner made one (LaunchList::persist).
    std::vector<PInstr> program(const cuda::LaunchList& L) const {
        std::vector<PInstr> prog(L.launches.size());
        int start = 0;
        for (size_t i = 0; i < L.launches.size(); ++i) {
            const Launch& l = L.launches[i];
            const cuda::PersistIns& in = L.persist.ins[i];
            PInstr& P = prog[i];
            std::memset(&P, 0, sizeof P);
            P.wtype = l.wtype;
            P.start = start;
            P.units = in.units;
            P.nt = in.nt;
            P.gx = (int)l.grid[0];
            P.gy = (int)l.grid[1];
            P.dep = in.dep;
            P.live = PLive{in.units, P.gy, 0, 0, 0};
            if (l.kernel == Kernel::attention_decode) {
                const Command& at = cmds[l.first + l.count - 1];
                P.live = PLive{in.units, P.gy, l.S, l.chunk, at.a.attention.window};
            }
            if (in.dep >= 0) P.dep_live = prog[in.dep].live;
            start += in.units;
            switch (l.kernel) {
                case Kernel::embed: P.kind = PK_EMBED; P.embed = embed_args(l); break;
                case Kernel::add_rmsnorm_q: P.kind = PK_RMS; P.variant = l.variant; P.qb = l.qb; P.rms = rms_args(l); break;
                case Kernel::mmvq:
                case Kernel::mmvq_group: P.kind = PK_MV; P.variant = l.S > 1; P.mv = mv_args(l, in.g_nwarps); break;
                case Kernel::attention_decode: P.kind = PK_ATT; P.variant = l.variant; P.att = att_args(l); break;
                case Kernel::swiglu_q: P.kind = PK_GLU; P.qb = l.qb; P.glu = glu_args(l); break;
                case Kernel::quantize_q8: P.kind = PK_QUANT; P.qb = l.qb; P.quant = quant_args(l); break;
                default: throw Error("cuda: " + cuda::kernel_name(l) + " has no persistent body");
            }
        }
        return prog;
    }
};

// Per weight type: the mat-vecs' resident blocks, kernel_gemm_q's shared memory limit.
template <int T> void occupancy(cuda::CudaCaps& caps) {
    ck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&caps.mv_resident[T][0], kernel_mmvq<T, 1, 1>, MV_ROWS * 32, 0), "occupancy");
    ck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&caps.mv_resident[T][1], kernel_mmvq<T, 8, 1>, MV_ROWS * 32, 0), "occupancy");
    ck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&caps.mvg_resident[T][0], kernel_mmvq_group<T, 1, true>, MV_ROWS * 32, 0),
       "occupancy");
    ck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&caps.mvg_resident[T][1], kernel_mmvq_group<T, 8, true>, MV_ROWS * 32, 0),
       "occupancy");
    // kernel_gemm_q's rings (planner.cpp gemm_q_smem): above the default 48 KB for 8-bit rows
    constexpr int smem = GQ_SLOTS * GQ_ROWS * (gq_window(T) / QT<T>::QK * QT<T>::BB);
    ck(cudaFuncSetAttribute(kernel_gemm_q<T, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "gemm_q smem");
    ck(cudaFuncSetAttribute(kernel_gemm_q<T, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "gemm_q smem");
    ck(cudaFuncSetAttribute(kernel_gemm_q<T, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "gemm_q smem");
}

}  // namespace

void CudaDevice::init_kernels() {
    ck(cudaFuncSetAttribute(kernel_gemm_f16<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, gm_smem(128)), "gemm smem");
    ck(cudaFuncSetAttribute(kernel_gemm_f16<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, gm_smem(64)), "gemm smem");
    ck(cudaFuncSetAttribute(kernel_attention_prefill<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, fa_smem(64)),
       "attention smem");
    ck(cudaFuncSetAttribute(kernel_attention_prefill<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, fa_smem(128)),
       "attention smem");
    // kernel_attention_decode's K / V stages: 54 KB for head size 128
    ck(cudaFuncSetAttribute(kernel_attention_decode<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, ad_smem(128)),
       "attention smem");
    ck(cudaFuncSetAttribute(kernel_attention_decode<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, ad_smem(64)),
       "attention smem");
    occupancy<KT_Q4_0>(caps); occupancy<KT_Q4_1>(caps); occupancy<KT_Q5_0>(caps); occupancy<KT_Q5_1>(caps);
    occupancy<KT_Q8_0>(caps); occupancy<KT_Q4_K>(caps); occupancy<KT_Q5_K>(caps); occupancy<KT_Q6_K>(caps);
    occupancy<KT_Q2_K>(caps); occupancy<KT_Q3_K>(caps); occupancy<KT_IQ4_XS>(caps);
}

void CudaDevice::run_list(const std::vector<Command>& cmds, const cuda::LaunchList& list) {
    pdl_now = list.pdl;
    Exec ex{*this, cmds};
    for (const Launch& l : list.launches) ex.run(l);
    ck(cudaGetLastError(), "launching the list");
}

// A list the planner made a persistent program: its instructions and zeroed counters go to
// device memory the graph owns (before the capture, which then holds one kernel_persistent).
void CudaDevice::persistent_setup(const std::vector<Command>& cmds, const cuda::LaunchList& list, GraphExec& ge) {
    Exec ex{*this, cmds};
    const std::vector<PInstr> prog = ex.program(list);
    if (persistent_instr_bytes() != sizeof(PInstr)) throw Error("cuda: persist.cu and launch.cu disagree on PInstr");
    const size_t n = prog.size(), ctl = (PK_CTL_HEAD + n) * sizeof(int);
    ck(cudaMalloc(&ge.prog, n * sizeof(PInstr)), "cudaMalloc program");
    ck(cudaMalloc(&ge.ctl, ctl), "cudaMalloc counters");
    ck(cudaMemcpy(ge.prog, prog.data(), n * sizeof(PInstr), cudaMemcpyHostToDevice), "upload program");
    ck(cudaMemset(ge.ctl, 0, ctl), "zero counters");
    ge.n_ins = (int)n;
    ge.n_tickets = prog.back().start + prog.back().units;
    if (pk_profile) {
        ck(cudaMalloc(&ge.prof, ge.n_tickets * 4 * sizeof(long long)), "cudaMalloc profile");
        ck(cudaMemset(ge.prof, 0, ge.n_tickets * 4 * sizeof(long long)), "zero profile");
    }
}

void CudaDevice::launch_set_token(int32_t* ids, int32_t token, int32_t pos) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(1);
    cfg.blockDim = dim3(32);
    cfg.stream = stream;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl_now ? 1 : 0;
    ck(cudaLaunchKernelEx(&cfg, kernel_set_token, ids, (kstep*)step_buf->dev, token, pos, 1), "launching kernel_set_token");
}
void* CudaDevice::set_token_kernel() { return (void*)kernel_set_token; }

// The table of freq_base^(-2i / n_rot) for this rope's base and size, made on first use
// (outside any capture: prepare() asks for every rope of a list first).
const double* CudaDevice::rope_powers(const kargs_rope& r) {
    double*& t = rope_pw_tables[{r.freq_base, r.n_rot}];
    if (!t) {
        ck(cudaMalloc(&t, (r.n_rot / 2) * sizeof(double)), "cudaMalloc rope table");
        ++n_allocs; bytes_allocated += (r.n_rot / 2) * sizeof(double);
        kernel_rope_powers<<<(r.n_rot / 2 + 127) / 128, 128, 0, stream>>>(r, t);
        ck(cudaGetLastError(), "kernel_rope_powers");
    }
    return t;
}

}  // namespace llmetal
