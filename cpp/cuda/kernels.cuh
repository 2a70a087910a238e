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
#include "quants.cuh"

namespace llmetal_cuda {

// Error codes a kernel can raise (read back by Device::wait()).
enum : int { ERR_NONE = 0, ERR_EMBED_ID = 1, ERR_KV_POS = 2 };

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

// ---- embed: out[t, e] = dequant(W[ids[t]])[e] * scale ----------------------------------------
// One thread per output element: a table lookup, no reuse to exploit.
template <int T>
__global__ void kernel_embed(kargs_embed a, const uint8_t* W, const int32_t* ids, float* out, int* err) {
    int t = blockIdx.y;
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= a.dim) return;
    int id = ids[t];
    if (id < 0 || id >= a.n_vocab) {   // cannot throw from a kernel: flag it, write a NaN
        if (e == 0) atomicExch(err, ERR_EMBED_ID);
        out[(int64_t)t * a.dim + e] = __int_as_float(0x7fc00000);
        return;
    }
    float v = dq1<T>(W + (uint64_t)id * a.row_bytes, e);
    out[(int64_t)t * a.dim + e] = a.scale != 1.0f ? __fmul_rn(v, a.scale) : v;
}

// ---- rmsnorm: one block of 256 threads per row --------------------------------------------
__global__ void kernel_rmsnorm(kargs_rmsnorm a, const float* x, const float* w, float* out) {
    const float* xr = x + (int64_t)blockIdx.x * a.dim;
    float* o = out + (int64_t)blockIdx.x * a.dim;
    double ss = 0;   // double, as the CPU does: keeps the norm exact to float for any row length
    for (int i = threadIdx.x; i < a.dim; i += blockDim.x) ss += (double)xr[i] * xr[i];
    __shared__ double part[32];
    ss = warp_sum_d(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        double v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
        v = warp_sum_d(v);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    float r = (float)(1.0 / sqrt(part[0] / a.dim + (double)a.eps));
    for (int i = threadIdx.x; i < a.dim; i += blockDim.x) o[i] = __fmul_rn(__fmul_rn(xr[i], r), w[i]);
}

// ---- matmul: y[t, n] = sum_k W[n, k] x[t, k] ---------------------------------------------------
// One warp per output row n, MT tokens per launch row (grid.y walks token chunks). Lanes take
// consecutive groups of 8 elements, so a warp reads 32 consecutive groups of the weight row
// (one contiguous span) per step, and the activations as two 16-byte loads per group.
// The weight row is read once per chunk of MT tokens: at decode (one token) this streams
// the weights once, which is the whole cost of a decode step.
constexpr int MV_WARPS = 4;   // rows per block
constexpr int MV_MT = 8;      // tokens per launch row

template <int T>
__global__ void __launch_bounds__(MV_WARPS * 32)
kernel_matmul(kargs_matmul a, const uint8_t* W, const float* x, float* y, int vec) {
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
// The angle is computed in double, as the CPU does: a float angle at position ~1000 is off
// by ~1e-4 rad, far above the stage's tolerance.
__global__ void kernel_rope(kargs_rope a, float* x, const float* ff, const kstep* step) {
    const int half = a.n_rot / 2;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)a.n_tokens * a.n_heads * half) return;
    int i = (int)(idx % half);
    int64_t r = idx / half;             // row = t * n_heads + h
    int t = (int)(r / a.n_heads);
    int pos = step->pos0 + t;
    double theta = (double)pos * (double)a.freq_scale * pow((double)a.freq_base, -2.0 * i / a.n_rot);
    if (a.has_factors) theta /= (double)ff[i];
    float c = (float)cos(theta), s = (float)sin(theta);
    float* xr = x + r * a.head_dim;
    int i0 = a.mode == KROPE_NEOX ? i : 2 * i;
    int i1 = a.mode == KROPE_NEOX ? i + half : 2 * i + 1;
    float x0 = xr[i0], x1 = xr[i1];
    xr[i0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    xr[i1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

// ---- kv_store: cache[pos0 + t, :] = half(src[t, :]) ------------------------------------------
__global__ void kernel_kv_store(kargs_kv_store a, const float* src, __half* cache, const kstep* step, int* err) {
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)a.n_tokens * a.kv_dim) return;
    int t = (int)(idx / a.kv_dim), c = (int)(idx % a.kv_dim);
    int row = step->pos0 + t;
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
constexpr int ATT_WARPS = 4;
constexpr int ATT_MAXD = 8;   // head_dim <= 256
constexpr int ATT_KG = 8;     // keys a warp loads together

__global__ void __launch_bounds__(ATT_WARPS * 32)
kernel_attention(kargs_attention a, const float* q, const __half* kc, const __half* vc, float* out,
                 float* part, int n_splits, int chunk, const kstep* step) {
    const int s = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hd = a.head_dim, kv_dim = a.n_kv_heads * hd;
    const int g = h / (a.n_heads / a.n_kv_heads);
    const int pos = step->pos0 + t;
    const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
    const int j0 = lo + s * chunk, j1 = min(pos + 1, j0 + chunk);

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
    // than twice per key.
    float mx = -INFINITY, sum = 0.f;
    for (int jg = j0 + warp * ATT_KG; jg < j1; jg += ATT_WARPS * ATT_KG) {
        float sc[ATT_KG];
#pragma unroll
        for (int u = 0; u < ATT_KG; ++u) {
            const int j = jg + u;
            float p = 0.f;
            if (j < j1) {
                const __half* kr = kc + (int64_t)j * kv_dim + g * hd;
#pragma unroll
                for (int i = 0; i < ATT_MAXD; ++i) {
                    int d = lane + 32 * i;
                    if (d < hd) p += qv[i] * __half2float(kr[d]);
                }
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
            const int j = jg + u;
            if (j < j1) {
                const float pe = __expf(sc[u] - gm);
                sum += pe;
                const __half* vr = vc + (int64_t)j * kv_dim + g * hd;
#pragma unroll
                for (int i = 0; i < ATT_MAXD; ++i) {
                    int d = lane + 32 * i;
                    if (d < hd) acc[i] += pe * __half2float(vr[d]);
                }
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
__global__ void kernel_attention_combine(kargs_attention a, const float* part, float* out, int n_splits) {
    const int h = blockIdx.x, t = blockIdx.y, hd = a.head_dim;
    const int64_t qi = (int64_t)t * a.n_heads + h;
    const float* pr = part + qi * n_splits * (hd + 2);
    float M = -INFINITY;
    for (int s = 0; s < n_splits; ++s) M = fmaxf(M, pr[s * (hd + 2)]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float L = 0.f, v = 0.f;
        for (int s = 0; s < n_splits; ++s) {
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
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) out[i] = x[i] + y[a.b_n == a.n ? i : i % a.b_n];
}
__global__ void kernel_mul(kargs_eltwise a, const float* x, const float* y, float* out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) out[i] = x[i] * y[a.b_n == a.n ? i : i % a.b_n];
}
__global__ void kernel_scale(kargs_eltwise a, const float* x, float* out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) out[i] = x[i] * a.s;
}
__global__ void kernel_swiglu(kargs_glu a, const float* g, const float* u, float* out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (int64_t)a.n_tokens * a.n_ff) {
        float v = g[i];
        out[i] = v / (1.0f + expf(-v)) * u[i];
    }
}
__global__ void kernel_geglu(kargs_glu a, const float* g, const float* u, float* out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (int64_t)a.n_tokens * a.n_ff) {
        float v = g[i];
        const float c = 0.7978845608028654f;   // sqrt(2/pi)
        out[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v))) * u[i];
    }
}

}  // namespace llmetal_cuda
