// norm.metal -- rmsnorm: out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w[:].
// One threadgroup of NORM_THREADS per row (also the per-head Q/K norm: rows = tokens * heads).
// Each SIMD group reduces with simd_sum; the SIMD groups' partials meet in threadgroup memory
// and every thread adds them in the same order (so all threads use the same factor).
#include <metal_stdlib>
using namespace metal;
#include "../cpp/metal/kargs_metal.h"

kernel void kernel_rmsnorm_f32(constant kargs_rmsnorm& a [[buffer(0)]],
                               device const float* x [[buffer(1)]],
                               device const float* w [[buffer(2)]],
                               device float* out [[buffer(3)]],
                               uint3 tgpig [[threadgroup_position_in_grid]],
                               ushort tiitg [[thread_index_in_threadgroup]],
                               ushort tiisg [[thread_index_in_simdgroup]],
                               ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float part[NORM_THREADS / 32];
    device const float* xr = x + (long)tgpig.x * a.dim;
    device float* o = out + (long)tgpig.x * a.dim;
    float ss = 0.0f;
    for (int i = tiitg; i < a.dim; i += NORM_THREADS) ss += xr[i] * xr[i];
    ss = simd_sum(ss);
    if (tiisg == 0) part[sgitg] = ss;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float tot = 0.0f;
    for (int s = 0; s < NORM_THREADS / 32; ++s) tot += part[s];
    const float r = 1.0f / precise::sqrt(tot / (float)a.dim + a.eps);
    for (int i = tiitg; i < a.dim; i += NORM_THREADS) o[i] = (xr[i] * r) * w[i];
}
