// rope.metal -- rotary embedding in place on x [n_tokens, n_heads, head_dim], token t at
// position KSTEP_POS(step, a.by_row, t) (pos0 + t for one sequence); one thread per rotated pair. Mode 0 (llama "norm") rotates
// (2i, 2i+1), mode 2 (neox) rotates (i, i + n_rot/2). Dims past n_rot are not touched.
// The angle is float (Metal has no double; the CPU and CUDA devices use double): at position
// ~1000 it is off by ~1e-4 rad, as in ggml's own Metal and CPU kernels.
#include <metal_stdlib>
using namespace metal;
#include "../cpp/metal/kargs_metal.h"

kernel void kernel_rope_f32(constant kargs_rope& a [[buffer(0)]],
                            device float* x [[buffer(1)]],
                            device const float* ff [[buffer(2)]],
                            device const kstep* step [[buffer(3)]],
                            uint3 tgpig [[threadgroup_position_in_grid]],
                            ushort tiitg [[thread_index_in_threadgroup]]) {
    const int half_rot = a.n_rot / 2;
    const long idx = (long)tgpig.x * EW_THREADS + tiitg;
    if (idx >= (long)a.n_tokens * a.n_heads * half_rot) return;
    const int i = (int)(idx % half_rot);
    const long r = idx / half_rot;               // row = t * n_heads + h
    const int t = (int)(r / a.n_heads);
    const float p = (float)KSTEP_POS(step, a.by_row, t);
    float theta = p * a.freq_scale * precise::pow(a.freq_base, -2.0f * (float)i / (float)a.n_rot);
    if (a.has_factors) theta = theta / ff[i];
    const float c = precise::cos(theta), s = precise::sin(theta);
    device float* xr = x + r * a.head_dim;
    const int i0 = a.mode == KROPE_NEOX ? i : 2 * i;
    const int i1 = a.mode == KROPE_NEOX ? i + half_rot : 2 * i + 1;
    const float x0 = xr[i0], x1 = xr[i1];
    xr[i0] = x0 * c - x1 * s;
    xr[i1] = x0 * s + x1 * c;
}
