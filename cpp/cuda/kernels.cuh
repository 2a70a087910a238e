// kernels.cuh -- the CUDA device's kernels, one (or a template family) per stage.
//
// Names follow kernel_<stage>[_<dtype>] so a profiler trace reads like the engine's plan.
// Every kernel that depends on the token reads the position from the step buffer
// (`const kstep*`), never from its arguments, so a captured CUDA graph replays unchanged.
#pragma once
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "../kargs.h"
#include "geometry.h"
#include "quants.cuh"

namespace llmetal_cuda {

// Error codes a kernel can raise (ERR_*): geometry.h.

// ---- programmatic dependent launch (sm_90) ---------------------------------------------------
// The device launches every kernel with the programmatic-serialization attribute, so a kernel's
// blocks may be scheduled while the kernel before it in the stream is still draining. Two rules
// keep that safe, and every kernel here follows them:
//   pdl_wait()     blocks until the previous kernel has finished and its writes are visible.
//                  Nothing before it may read what an earlier kernel wrote or write anything
//                  an earlier kernel reads; only the weights (never written) may be touched.
//   pdl_release()  lets the next kernel's blocks be scheduled (they start and stop at their
//                  own pdl_wait()). Called right after pdl_wait(), so at most one kernel is
//                  waiting ahead of the running one.
// Most kernels call pdl_enter() (both) as their first statement; the mat-vecs first start
// fetching their weight rows, then wait. On older GPUs (the compute_80 PTX) both are no-ops,
// and so they are for a launch without the attribute.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}
__device__ __forceinline__ void pdl_enter() { pdl_wait(); pdl_release(); }

// ---- where a kernel body runs ------------------------------------------------------------------
// The decode kernels' bodies are __device__ functions of a context C that says which block of
// the launch's grid this is (x, y, z), how many threads run it (n), its barrier (sync) and how it
// waits for what the kernel before it wrote (wait, release; enter = both). Their __global__
// wrappers pass Launched: blockIdx, blockDim, __syncthreads and PDL (each folds to the builtin,
// so a launched body compiles to the kernel it would be on its own). The persistent decode
// kernel (persist.cu)
// passes one unit of an instruction instead, run by the first n threads of its block, whose wait
// is on the done-counters of the instruction before it (persist.cuh).
struct Launched {
    __device__ __forceinline__ int x() const { return blockIdx.x; }
    __device__ __forceinline__ int y() const { return blockIdx.y; }
    __device__ __forceinline__ int z() const { return blockIdx.z; }
    __device__ __forceinline__ int n() const { return blockDim.x; }
    __device__ __forceinline__ void sync() const { __syncthreads(); }
    __device__ __forceinline__ void wait() const { pdl_wait(); }
    __device__ __forceinline__ void release() const { pdl_release(); }
    __device__ __forceinline__ void enter() const { pdl_enter(); }
};

// Loads of activations an earlier kernel wrote, read by many warps: through the read-only data
// cache (ld.global.nc) in a launch. Inside the persistent kernel the producer is the same kernel,
// and the read-only path is only defined for data no thread writes while the kernel runs: there
// (persist.cu defines LLMETAL_PERSISTENT_TU) they are plain loads, ordered after the wait's
// acquire.
template <class V> __device__ __forceinline__ V ldact(const V* p) {
#ifdef LLMETAL_PERSISTENT_TU
    return *p;
#else
    return __ldg(p);
#endif
}

// The first kernel of a plan's graph when it runs one token (CudaDevice::replay_token): the
// token id and the position come in as arguments, updated before each launch, and go to ids[0]
// and the step buffer (with on = 0, e.g. a plan replayed with set_step, it writes nothing).
__global__ void kernel_set_token(int32_t* ids, kstep* step, int32_t token, int32_t pos, int on) {
    pdl_enter();
    if (on && threadIdx.x == 0) {
        ids[0] = token;
        step->pos0 = pos;   // the header only: a token's step sets no rows
        step->n_tokens = 1;
        step->n_rows = 0;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---- asynchronous copies global -> shared (cp.async, sm_80+) ------------------------------
__device__ __forceinline__ void cp_async(void* dst, const void* src, int vw) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    if (vw == 16) asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src));
    else if (vw == 8) asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(d), "l"(src));
    else asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(d), "l"(src));
}
// 16 bytes through the L1 (cp.async.ca): for rows a kernel prefetched into the L1 itself
__device__ __forceinline__ void cp_async_l1(void* dst, const void* src) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// ---- embed: out[t, e] = dequant(W[ids[t]])[e] * scale ----------------------------------------
// One thread per output element: a table lookup, no reuse to exploit.
struct EmbedArgs {
    kargs_embed a;
    const uint8_t* W;
    const int32_t* ids;
    float* out;
    int* err;
};
template <int T, class C>
__device__ __forceinline__ void embed_body(const C& cx, const EmbedArgs& p) {
    cx.enter();
    const kargs_embed& a = p.a;
    int t = cx.y();
    int e = cx.x() * cx.n() + threadIdx.x;
    if (e >= a.dim) return;
    int id = p.ids[t];
    if (id < 0 || id >= a.n_vocab) {   // cannot throw from a kernel: flag it, write a NaN
        if (e == 0) atomicExch(p.err, ERR_EMBED_ID);
        p.out[(int64_t)t * a.dim + e] = __int_as_float(0x7fc00000);
        return;
    }
    float v = dq1<T>(p.W + (uint64_t)id * a.row_bytes, e);
    p.out[(int64_t)t * a.dim + e] = a.scale != 1.0f ? __fmul_rn(v, a.scale) : v;
}
template <int T>
__global__ void kernel_embed(EmbedArgs p) { embed_body<T>(Launched{}, p); }

// ---- 8-bit quantization of activations, shared by the quantize stage and the fused stages --
// Value i of a tensor whose rows are a multiple of QB long goes to q[i]; block i / QB gets
// the scale d[i / QB] = amax / 127 and q = round-half-even(v / d), exactly as the CPU device
// (cpp/cpu/quants.cpp quantize_row_q8 / _q8k). `amax` must already be the block's max |v|.
// Every 32 values also get the integer sum of their q in s[i / 32] (whatever QB is): the
// mat-vecs take a weight format's zero point or min off these sums instead of adding up the
// activations again for every weight row. The producer writes s (see q8_sum32).
struct Q8Act {
    int8_t* q;   // [T][K]
    float* d;    // [T][K / QB]
    int* s;      // [T][K / 32]
};
__device__ __forceinline__ int store_q8(float v, float amax, int64_t i, int QB, const Q8Act& x) {
    const float d = amax / 127.0f;                // IEEE division, as the CPU
    const float inv = d > 0.f ? 1.0f / d : 0.0f;
    const int q = (int)rintf(__fmul_rn(v, inv));  // |v * inv| <= 127
    x.q[i] = (int8_t)q;
    if (i % QB == 0) x.d[i / QB] = d;
    return q;
}
// One value a thread, 32 consecutive values = a whole warp (every lane takes part, q = 0
// past the end): the warp's sum goes to s[i0 / 32], i0 = the warp's first value.
__device__ __forceinline__ void q8_sum32(int q, int64_t i0, bool valid, const Q8Act& x) {
    const int s = __reduce_add_sync(0xffffffffu, q);
    if ((threadIdx.x & 31) == 0 && valid) x.s[i0 / 32] = s;
}

// Max |v| over a block of QB consecutive threads of a 256-thread block (one value a thread):
// a warp shuffle for QB = 32, and shared memory across the 8 warps for QB = 256.
template <int QB, class C = Launched>
__device__ __forceinline__ float block_amax(float v, const C& cx = C{}) {
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (QB == 256) {
        __shared__ float s[8];
        if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = amax;
        cx.sync();
        amax = s[0];
#pragma unroll
        for (int w = 1; w < 8; ++w) amax = fmaxf(amax, s[w]);
    }
    return amax;
}

// ---- rmsnorm ------------------------------------------------------------------------------
// Two kernels, the same arithmetic as the CPU: the sum of squares in double (cheap on an
// H100, and it keeps the scale r, hence the 8-bit copies downstream, bit-identical to the
// CPU's), r = 1/sqrt(mean + eps) rounded to float, out = (x * r) * w rounded per product.
//
// kernel_rmsnorm: any row length; one block of 256 threads per row.
template <class C = Launched>
__device__ __forceinline__ double block_sum(double v, double* part /* [32] shared */, const C& cx = C{}) {
    v = warp_sum_d(v);
    cx.sync();   // `part` may still be read from a previous call
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    cx.sync();
    // every warp adds the warps' partials by a shuffle tree (the same order in every warp, so
    // every thread gets the same sum): 5 steps instead of a chain of up to 32 shared loads
    const int lane = threadIdx.x & 31;
    return warp_sum_d(lane < (cx.n() >> 5) ? part[lane] : 0.0);
}

__global__ void kernel_rmsnorm(kargs_rmsnorm a, const float* x, const float* w, float* out) {
    pdl_enter();
    const float* xr = x + (int64_t)blockIdx.x * a.dim;
    float* o = out + (int64_t)blockIdx.x * a.dim;
    __shared__ double part[32];
    double ss = 0.0;
    for (int i = threadIdx.x; i < a.dim; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum(ss, part);
    const float r = (float)(1.0 / sqrt(ss / a.dim + (double)a.eps));
    for (int i = threadIdx.x; i < a.dim; i += blockDim.x) o[i] = __fmul_rn(__fmul_rn(xr[i], r), w[i]);
}

// kernel_add_rmsnorm_q<ADD, QB>: the fused decode stage (named so in a trace):
//   ADD:     s = x + y is written to `sum` first (the residual add that precedes the norm),
//   always:  out = rmsnorm(s) * w,
//   QB > 0:  out is also quantized to 8 bits (xq: values, scales, sums of 32) for the quantized matmuls that read it,
//            so they skip their own quantize stage.
// One block per row; thread i keeps the row's float4s i, i + nt, ... (up to RMS_V of them)
// in registers, so the row is read once and every load is issued before the first use. The
// host gives a thread one float4 where the row allows (rows up to 4096 values): at decode the
// kernel is a latency chain, and each further float4 a thread lengthens it (the 8-bit copy's
// shuffles and divisions run per float4).
// Needs dim % 4 == 0, 16-byte aligned rows, dim <= 4 * RMS_V * blockDim, and for QB > 0 a
// block size that is a multiple of QB / 4 threads (8 or 64) so a quantization block never
// straddles two register slots.
// RMS_V: geometry.h
struct RmsArgs {
    kargs_rmsnorm a;
    const float* x;
    const float* y;
    float* sum;
    const float* w;
    float* out;
    Q8Act xq;
};
template <bool ADD, int QB, class C>
__device__ __forceinline__ void add_rmsnorm_q_body(const C& cx, const RmsArgs& p) {
    const kargs_rmsnorm& a = p.a;
    const float *x = p.x, *y = p.y, *w = p.w;
    float *sum = p.sum, *out = p.out;
    const Q8Act& xq = p.xq;
    __shared__ double part[32];
    const int nv = a.dim / 4, nt = cx.n(), ns = (nv + nt - 1) / nt;   // float4s a thread (<= RMS_V)
    const int64_t r0 = (int64_t)cx.x() * nv;   // row start, in float4s
    // Every load first, from clamped slots (a slot past the row reads the row's last float4
    // and is then zeroed): no branch around a load. The weight w is never written, so it is
    // loaded before waiting on the previous kernel (see pdl_wait): its DRAM round trip
    // overlaps that kernel's drain, and x and y then arrive in one L2 round trip.
    float4 v[RMS_V], u[RMS_V], gw[RMS_V];
#pragma unroll
    for (int j = 0; j < RMS_V; ++j) {
        if (j >= ns) break;   // (uniform)
        gw[j] = ((const float4*)w)[min((int)threadIdx.x + j * nt, nv - 1)];
    }
    cx.enter();
    double ss = 0.0;
#pragma unroll
    for (int j = 0; j < RMS_V; ++j) {
        if (j >= ns) break;
        const int c = min((int)threadIdx.x + j * nt, nv - 1);
        v[j] = ((const float4*)x)[r0 + c];
        if (ADD) u[j] = ((const float4*)y)[r0 + c];
    }
#pragma unroll
    for (int j = 0; j < RMS_V; ++j) {
        if (j >= ns) break;
        const int c = threadIdx.x + j * nt;
        if (ADD) {
            v[j] = make_float4(v[j].x + u[j].x, v[j].y + u[j].y, v[j].z + u[j].z, v[j].w + u[j].w);
            if (c < nv) ((float4*)sum)[r0 + c] = v[j];
        }
        if (c >= nv) v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int j = 0; j < RMS_V; ++j)
        if (j < ns) ss += (double)v[j].x * v[j].x + (double)v[j].y * v[j].y + (double)v[j].z * v[j].z + (double)v[j].w * v[j].w;
    ss = block_sum(ss, part, cx);
    const float r = (float)(1.0 / sqrt(ss / a.dim + (double)a.eps));
    __shared__ float s_amax[RMS_V][32];
#pragma unroll
    for (int j = 0; j < RMS_V; ++j) {
        if (j >= ns) break;   // (uniform: every thread reaches the shuffles and barriers below, or none does)
        const int c = threadIdx.x + j * nt;
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
        if (c < nv) {
            const float4 g = gw[j];
            o = make_float4(__fmul_rn(__fmul_rn(v[j].x, r), g.x), __fmul_rn(__fmul_rn(v[j].y, r), g.y),
                            __fmul_rn(__fmul_rn(v[j].z, r), g.z), __fmul_rn(__fmul_rn(v[j].w, r), g.w));
            ((float4*)out)[r0 + c] = o;
        }
        if (QB > 0) {   // every thread takes part in the shuffles (zeros past the row)
            float amax = fmaxf(fmaxf(fabsf(o.x), fabsf(o.y)), fmaxf(fabsf(o.z), fabsf(o.w)));
#pragma unroll
            for (int s = 1; s < (QB == 32 ? 8 : 32); s <<= 1)
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, s));
            if (QB == 256) {   // 64 threads: this warp and its neighbour
                if ((threadIdx.x & 31) == 0) s_amax[j][threadIdx.x >> 5] = amax;
                cx.sync();
                amax = fmaxf(s_amax[j][(threadIdx.x >> 5) & ~1], s_amax[j][(threadIdx.x >> 5) | 1]);
            }
            int qs = 0;   // the sum of this float4's four q, then of 8 threads' (32 values)
            const int64_t i = (r0 + c) * 4;   // first value of this float4 in the tensor
            if (c < nv)
                qs = store_q8(o.x, amax, i, QB, xq) + store_q8(o.y, amax, i + 1, QB, xq) +
                     store_q8(o.z, amax, i + 2, QB, xq) + store_q8(o.w, amax, i + 3, QB, xq);
#pragma unroll
            for (int s = 1; s < 8; s <<= 1) qs += __shfl_xor_sync(0xffffffffu, qs, s);
            if (c < nv && (threadIdx.x & 7) == 0) xq.s[i / 32] = qs;
        }
    }
}
template <bool ADD, int QB>
__global__ void __launch_bounds__(1024) kernel_add_rmsnorm_q(RmsArgs p) { add_rmsnorm_q_body<ADD, QB>(Launched{}, p); }

// ---- matmul: y[t, n] = sum_k W[n, k] x[t, k] ---------------------------------------------------
// One warp per output row n, MT tokens per launch row (grid.y walks token chunks). Lanes take
// consecutive groups of 8 elements, so a warp reads 32 consecutive groups of the weight row
// (one contiguous span) per step, and the activations as two 16-byte loads per group.
// The weight row is read once per chunk of MT tokens: at decode (one token) this streams
// the weights once, which is the whole cost of a decode step.
// MV_WARPS rows per block, MV_MT tokens per launch row (geometry.h)

template <int T>
__global__ void __launch_bounds__(MV_WARPS * 32)
kernel_matmul(kargs_matmul a, const uint8_t* W, const float* x, float* y, int vec) {
    pdl_enter();
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (n >= a.n_out) return;
    const int m0 = blockIdx.y * MV_MT;
    const int mc = min(MV_MT, a.n_tokens - m0);
    const uint8_t* row = W + (uint64_t)n * a.row_bytes;
    const float* xb = x + (int64_t)m0 * a.n_in;
    float acc[MV_MT];
#pragma unroll
    for (int m = 0; m < MV_MT; ++m) acc[m] = 0.f;
    if (vec) {   // n_in % 8 == 0 and x 16-byte aligned
        const int ng = a.n_in / 8;
        for (int g = lane; g < ng; g += 32) {
            float w[8];
            dq8<T>(row, g, w);
#pragma unroll
            for (int m = 0; m < MV_MT; ++m) {
                if (m < mc) {
                    const float4* xp = (const float4*)(xb + (int64_t)m * a.n_in) + 2 * g;
                    float4 u = xp[0], v = xp[1];
                    acc[m] += w[0] * u.x + w[1] * u.y + w[2] * u.z + w[3] * u.w +
                              w[4] * v.x + w[5] * v.y + w[6] * v.z + w[7] * v.w;
                }
            }
        }
    } else {     // odd row lengths (float weights only): one element per lane per step
        for (int k = lane; k < a.n_in; k += 32) {
            float wk = dq1<T>(row, k);
#pragma unroll
            for (int m = 0; m < MV_MT; ++m)
                if (m < mc) acc[m] += wk * xb[(int64_t)m * a.n_in + k];
        }
    }
#pragma unroll
    for (int m = 0; m < MV_MT; ++m) {
        if (m < mc) {
            float s = warp_sum(acc[m]);
            if (lane == 0) y[(int64_t)(m0 + m) * a.n_out + n] = s;
        }
    }
}

// ---- rope, in place: one thread per rotated pair -----------------------------------------------
// The angle is computed in double, as the CPU does (a float angle at position ~1000 is off by
// ~1e-4 rad, far above the stage's tolerance), then reduced to [-pi, pi] in double, and only
// the sine and cosine are taken in float: the reduced angle is exact to ~1e-7 rad, and float
// sincos is many times cheaper than double.
// The position-independent factor pw = freq_base^(-2i / n_rot) (double), then
// theta = pos * freq_scale * pw [/ ff[i]] reduced to [-pi, pi], and its cosine and sine.
__device__ __forceinline__ double rope_pw(const kargs_rope& a, int i) {
    return pow((double)a.freq_base, -2.0 * i / a.n_rot);
}
__device__ __forceinline__ void rope_cs_pw(const kargs_rope& a, const float* ff, double pw, int pos, int i, float* c,
                                           float* s) {
    double theta = (double)pos * (double)a.freq_scale * pw;
    if (a.has_factors) theta /= (double)ff[i];
    const double two_pi = 6.283185307179586;
    theta -= two_pi * rint(theta / two_pi);
    sincosf((float)theta, s, c);
}
__device__ __forceinline__ void rope_cs(const kargs_rope& a, const float* ff, int pos, int i, float* c, float* s) {
    rope_cs_pw(a, ff, rope_pw(a, i), pos, i, c, s);
}
// The table of pw for i < n_rot / 2, filled once per (freq_base, n_rot) before any graph is
// captured: kernel_attention_decode reads it instead of computing the pow, a double-precision
// chain of ~2000-2900 cycles it ran before its PDL wait -- and its blocks reach that wait only
// just before it ends (they start when a Q/K/V mat-vec block leaves their SM), so the chain sat
// on the decode path: SmolLM2 tg128 +5.6% on an H100, 8B flat (docs/log/cuda-rounds.md, round
// 12). Same function, so the same bits.
__global__ void kernel_rope_powers(kargs_rope a, double* pw) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n_rot / 2) pw[i] = rope_pw(a, i);
}

// Rotate pair i of row xr (mode: norm pairs (2i, 2i+1), neox pairs (i, i + n_rot/2)); returns
// the two indices and the rotated values.
__device__ __forceinline__ void rope_pair(const kargs_rope& a, float* xr, int i, float c, float s, int* i0, int* i1,
                                          float* y0, float* y1) {
    const int half = a.n_rot / 2;
    *i0 = a.mode == KROPE_NEOX ? i : 2 * i;
    *i1 = a.mode == KROPE_NEOX ? i + half : 2 * i + 1;
    const float x0 = xr[*i0], x1 = xr[*i1];
    *y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    *y1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    xr[*i0] = *y0;
    xr[*i1] = *y1;
}

__global__ void kernel_rope(kargs_rope a, float* x, const float* ff, const kstep* step) {
    pdl_enter();
    const int half = a.n_rot / 2;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)a.n_tokens * a.n_heads * half) return;
    int i = (int)(idx % half);
    int64_t r = idx / half;             // row = t * n_heads + h
    int t = (int)(r / a.n_heads);
    float c, s, y0, y1;
    int i0, i1;
    rope_cs(a, ff, KSTEP_POS(step, a.by_row, t), i, &c, &s);
    rope_pair(a, x + r * a.head_dim, i, c, s, &i0, &i1, &y0, &y1);
}

// kernel_rope_kv_store: the fused stage for the four commands rope(q), rope(k),
// kv_store(k -> k cache), kv_store(v -> v cache) in one launch (n_rot == head_dim):
// threads [0, nq) rotate q's pairs, [nq, nq + nk) rotate k's pairs and write both values
// to the k cache as f16, the rest copy v to the v cache. Same arithmetic as the split stages.
__global__ void kernel_rope_kv_store(kargs_rope aq, kargs_rope ak, int n_ctx, float* q, float* k, const float* v,
                                     const float* ff, __half* kc, __half* vc, const kstep* step, int* err) {
    pdl_enter();
    const int half = aq.n_rot / 2, hd = aq.head_dim, kv_dim = ak.n_heads * hd;
    const int64_t nq = (int64_t)aq.n_tokens * aq.n_heads * half, nk = (int64_t)ak.n_tokens * ak.n_heads * half;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= nq + nk + (int64_t)ak.n_tokens * kv_dim) return;
    const int rope_q = idx < nq;
    int64_t r;
    if (idx < nq + nk) {
        const int64_t p = rope_q ? idx : idx - nq;
        const int i = (int)(p % half);
        r = p / half;                                   // row = t * n_heads + h
        const int t = (int)(r / (rope_q ? aq.n_heads : ak.n_heads));
        const int row = step->pos0 + t;
        float c, s, y0, y1;
        int i0, i1;
        rope_cs(aq, ff, row, i, &c, &s);
        rope_pair(aq, (rope_q ? q : k) + r * hd, i, c, s, &i0, &i1, &y0, &y1);
        if (!rope_q) {
            if (row < 0 || row >= n_ctx) { atomicExch(err, ERR_KV_POS); return; }
            __half* cr = kc + (int64_t)row * kv_dim + (r % ak.n_heads) * hd;
            cr[i0] = __float2half_rn(y0);
            cr[i1] = __float2half_rn(y1);
        }
    } else {
        const int64_t e = idx - nq - nk;
        const int t = (int)(e / kv_dim), c = (int)(e % kv_dim);
        const int row = step->pos0 + t;
        if (row < 0 || row >= n_ctx) { atomicExch(err, ERR_KV_POS); return; }
        vc[(int64_t)row * kv_dim + c] = __float2half_rn(v[e]);
    }
}

// ---- kv_store: cache[cache0 + pos, :] = half(src[t, :]) (row t's KSTEP_CACHE0 / KSTEP_POS) ------------------------------------------
__global__ void kernel_kv_store(kargs_kv_store a, const float* src, __half* cache, const kstep* step, int* err) {
    pdl_enter();
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)a.n_tokens * a.kv_dim) return;
    int t = (int)(idx / a.kv_dim), c = (int)(idx % a.kv_dim);
    int row = KSTEP_CACHE0(step, a.by_row, t) + KSTEP_POS(step, a.by_row, t);
    if (row < 0 || row >= a.n_ctx) {
        atomicExch(err, ERR_KV_POS);
        return;
    }
    cache[(int64_t)row * a.kv_dim + c] = __float2half_rn(src[idx]);
}

// ---- attention (flash-decoding) --------------------------------------------------------------
// Grid (n_splits, n_heads, n_tokens), 4 warps a block. Split s of query (t, h) covers the
// visible keys [lo + s*chunk, lo + (s+1)*chunk) ∩ [lo, pos]; each warp takes every 4th group
// of ATT_KG keys of it, keeps a running max / sum / weighted V (online softmax) with head_dim spread over the
// lanes, and the 4 warps merge in shared memory. With one split the block writes the output;
// otherwise it writes (max, sum, acc[hd]) to `part` and kernel_attention_combine merges.
// Keys outside the visible range are never read (the tests put NaN there).
// ATT_WARPS, ATT_MAXD (head_dim <= 32 * ATT_MAXD), ATT_KG: geometry.h

__global__ void __launch_bounds__(ATT_WARPS * 32)
kernel_attention(kargs_attention a, const float* q, const __half* kc, const __half* vc, float* out,
                 float* part, int n_splits, int chunk, const kstep* step) {
    pdl_enter();
    const int s = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hd = a.head_dim, kv_dim = a.n_kv_heads * hd;
    const int g = h / (a.n_heads / a.n_kv_heads);
    const int pos = KSTEP_POS(step, a.by_row, t);
    const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
    const int j0 = lo + s * chunk, j1 = min(pos + 1, j0 + chunk);
    if (a.by_row) {   // the row's own sequence: its cache rows start at cache0
        kc += (int64_t)KSTEP_CACHE0(step, 1, t) * kv_dim;
        vc += (int64_t)KSTEP_CACHE0(step, 1, t) * kv_dim;
    }

    const float* qr = q + ((int64_t)t * a.n_heads + h) * hd;
    float qv[ATT_MAXD], acc[ATT_MAXD];
#pragma unroll
    for (int i = 0; i < ATT_MAXD; ++i) {
        int d = lane + 32 * i;
        qv[i] = d < hd ? qr[d] : 0.f;
        acc[i] = 0.f;
    }
    // Keys go in groups of ATT_KG per warp: the group's K rows are loaded together (their
    // latencies overlap), then its V rows, so a warp waits on memory twice per group rather
    // than twice per key. A key past the range reads the last visible row instead (its
    // score is masked to -inf, its weight is 0): the loads need no branch, which is what lets
    // them all be in flight at once (with a branch per key they went one round trip at a
    // time: ~18 us for 64 keys, seen with ncu).
    float mx = -INFINITY, sum = 0.f;
    for (int jg = j0 + warp * ATT_KG; jg < j1; jg += ATT_WARPS * ATT_KG) {
        float sc[ATT_KG];
#pragma unroll
        for (int u = 0; u < ATT_KG; ++u) {
            const __half* kr = kc + (int64_t)min(jg + u, j1 - 1) * kv_dim + g * hd;
            float p = 0.f;
#pragma unroll
            for (int i = 0; i < ATT_MAXD; ++i) {
                int d = lane + 32 * i;
                if (d < hd) p += qv[i] * __half2float(kr[d]);
            }
            sc[u] = p;
        }
        float gm = mx;
#pragma unroll
        for (int u = 0; u < ATT_KG; ++u) {
            float v = warp_sum(sc[u]) * a.scale;
            if (a.softcap > 0.f) v = a.softcap * tanhf(v / a.softcap);
            sc[u] = jg + u < j1 ? v : -INFINITY;
            gm = fmaxf(gm, sc[u]);
        }
        const float corr = __expf(mx - gm);   // 0 on the first group (mx = -inf)
        sum *= corr;
#pragma unroll
        for (int i = 0; i < ATT_MAXD; ++i) acc[i] *= corr;
#pragma unroll
        for (int u = 0; u < ATT_KG; ++u) {
            const float pe = __expf(sc[u] - gm);   // 0 for a key past the range (score -inf)
            sum += pe;
            const __half* vr = vc + (int64_t)min(jg + u, j1 - 1) * kv_dim + g * hd;
#pragma unroll
            for (int i = 0; i < ATT_MAXD; ++i) {
                int d = lane + 32 * i;
                if (d < hd) acc[i] += pe * __half2float(vr[d]);
            }
        }
        mx = gm;
    }

    // merge the warps
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][ATT_MAXD * 32];
    if (lane == 0) { s_m[warp] = mx; s_l[warp] = sum; }
#pragma unroll
    for (int i = 0; i < ATT_MAXD; ++i) s_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; ++w) M = fmaxf(M, s_m[w]);
    float L = 0.f, wt[ATT_WARPS];
    for (int w = 0; w < ATT_WARPS; ++w) {
        wt[w] = s_m[w] == -INFINITY ? 0.f : __expf(s_m[w] - M);
        L += s_l[w] * wt[w];
    }
    const int64_t qi = (int64_t)t * a.n_heads + h;
    if (n_splits == 1) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float v = 0.f;
            for (int w = 0; w < ATT_WARPS; ++w) v += s_acc[w][d] * wt[w];
            out[qi * hd + d] = v / L;
        }
    } else {
        float* pr = part + (qi * n_splits + s) * (hd + 2);
        if (threadIdx.x == 0) { pr[0] = M; pr[1] = L; }
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float v = 0.f;
            for (int w = 0; w < ATT_WARPS; ++w) v += s_acc[w][d] * wt[w];
            pr[2 + d] = v;
        }
    }
}

// Merge the splits of each (t, h): grid (n_heads, n_tokens), one thread per head dim.
// Only the splits that hold a visible key are read: split s starts at key lo + s * chunk, so
// those are s <= (pos - lo) / chunk (at decode early in a long context, a few of many).
__global__ void kernel_attention_combine(kargs_attention a, const float* part, float* out, int n_splits, int chunk,
                                         const kstep* step) {
    pdl_enter();
    const int h = blockIdx.x, t = blockIdx.y, hd = a.head_dim;
    const int64_t qi = (int64_t)t * a.n_heads + h;
    const float* pr = part + qi * n_splits * (hd + 2);
    const int pos = KSTEP_POS(step, a.by_row, t);
    const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
    const int ns = min(n_splits, (pos - lo) / chunk + 1);
    float M = -INFINITY;
    for (int s = 0; s < ns; ++s) M = fmaxf(M, pr[s * (hd + 2)]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float L = 0.f, v = 0.f;
        for (int s = 0; s < ns; ++s) {
            float m = pr[s * (hd + 2)];
            if (m == -INFINITY) continue;   // a split with no visible key
            float w = __expf(m - M);
            L += pr[s * (hd + 2) + 1] * w;
            v += pr[s * (hd + 2) + 2 + d] * w;
        }
        out[qi * hd + d] = v / L;
    }
}

// ---- elementwise ---------------------------------------------------------------------------
__global__ void kernel_add(kargs_eltwise a, const float* x, const float* y, float* out) {
    pdl_enter();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) out[i] = x[i] + y[a.b_n == a.n ? i : i % a.b_n];
}
__global__ void kernel_swiglu(kargs_glu a, const float* g, const float* u, float* out) {
    pdl_enter();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (int64_t)a.n_tokens * a.n_ff) {
        float v = g[i];
        out[i] = v / (1.0f + expf(-v)) * u[i];
    }
}
// kernel_swiglu_q<QB>: the fused stage swiglu + the 8-bit quantization of its output for
// the quantized matmul that reads it next (n_ff % QB == 0; blocks of 256 threads).
struct GluArgs {
    kargs_glu a;
    const float* g;
    const float* u;
    float* out;
    Q8Act xq;
};
template <int QB, class C>
__device__ __forceinline__ void swiglu_q_body(const C& cx, const GluArgs& p) {
    cx.enter();
    const int64_t n = (int64_t)p.a.n_tokens * p.a.n_ff;
    const int64_t i = (int64_t)cx.x() * 256 + threadIdx.x;
    float v = 0.f;
    if (i < n) {
        const float gv = p.g[i];
        v = gv / (1.0f + expf(-gv)) * p.u[i];
        p.out[i] = v;
    }
    const float amax = block_amax<QB>(v, cx);
    const int q = i < n ? store_q8(v, amax, i, QB, p.xq) : 0;
    q8_sum32(q, i & ~31ll, i < n, p.xq);
}
template <int QB>
__global__ void __launch_bounds__(256) kernel_swiglu_q(GluArgs p) { swiglu_q_body<QB>(Launched{}, p); }
__global__ void kernel_geglu(kargs_glu a, const float* g, const float* u, float* out) {
    pdl_enter();
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (int64_t)a.n_tokens * a.n_ff) {
        float v = g[i];
        const float c = 0.7978845608028654f;   // sqrt(2/pi)
        out[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v))) * u[i];
    }
}

// ---- argmax (greedy sampling): ids[r] = the first maximum of row r, -1 for a row that holds a
// NaN or an infinity (kargs_argmax). One block per row (blockDim a multiple of 32, at most
// 1024). Each thread walks the row with the block's stride (VW = 4: float4 loads, for rows of a
// multiple of 4 values, 16-byte aligned), keeping its first maximum (a strictly larger value
// replaces it, and its indices only grow); the warps merge (value, index) pairs -- the larger
// value, and on equal values the lower index -- by shuffles, then warp 0 merges the warps'
// results from shared memory. A NaN or an infinity is told by its exponent bits.
__device__ __forceinline__ void argmax_merge(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}
__device__ __forceinline__ void argmax_warp(float& v, int& i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        argmax_merge(v, i, ov, oi);
    }
}
template <int VW>
__global__ void __launch_bounds__(1024) kernel_argmax(kargs_argmax a, const float* x, int32_t* ids) {
    pdl_enter();
    __shared__ float wv[32];
    __shared__ int wi[32];
    const float* xr = x + (int64_t)blockIdx.x * a.n_cols;
    float v = -INFINITY;
    int idx = 0x7fffffff;   // none yet: loses every tie
    bool bad = false;
    auto see = [&](float y, int i) {
        bad |= (__float_as_uint(y) & 0x7f800000u) == 0x7f800000u;
        if (y > v) {
            v = y;
            idx = i;
        }
    };
    if (VW == 4) {
        const float4* x4 = (const float4*)xr;
        for (int k = threadIdx.x; k < a.n_cols / 4; k += blockDim.x) {
            const float4 q = x4[k];
            see(q.x, 4 * k); see(q.y, 4 * k + 1); see(q.z, 4 * k + 2); see(q.w, 4 * k + 3);
        }
    } else {
        for (int k = threadIdx.x; k < a.n_cols; k += blockDim.x) see(xr[k], k);
    }
    argmax_warp(v, idx);
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        wv[w] = v;
        wi[w] = idx;
    }
    bad = __syncthreads_or(bad);   // also the barrier before wv / wi are read
    if (w == 0) {
        const bool have = lane < (int)(blockDim.x / 32);
        v = have ? wv[lane] : -INFINITY;
        idx = have ? wi[lane] : 0x7fffffff;
        argmax_warp(v, idx);
        if (lane == 0) ids[blockIdx.x] = bad ? -1 : idx;
    }
}

}  // namespace llmetal_cuda
