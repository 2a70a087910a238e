// eltwise.metal -- add (b broadcast over rows when it holds one row) and the
// gated activations swiglu = silu(gate) * up, geglu = gelu_tanh(gate) * up. One thread per
// element. precise:: exp/tanh: fast-math tanh is not safe for large arguments.
#include <metal_stdlib>
using namespace metal;
#include "../cpp/metal/kargs_metal.h"

kernel void kernel_add_f32(constant kargs_eltwise& a [[buffer(0)]],
                           device const float* x [[buffer(1)]],
                           device const float* y [[buffer(2)]],
                           device float* out [[buffer(3)]],
                           uint3 tgpig [[threadgroup_position_in_grid]],
                           ushort tiitg [[thread_index_in_threadgroup]]) {
    const long i = (long)tgpig.x * EW_THREADS + tiitg;
    if (i < a.n) out[i] = x[i] + y[a.b_n == a.n ? i : i % a.b_n];
}

kernel void kernel_swiglu_f32(constant kargs_glu& a [[buffer(0)]],
                              device const float* g [[buffer(1)]],
                              device const float* u [[buffer(2)]],
                              device float* out [[buffer(3)]],
                              uint3 tgpig [[threadgroup_position_in_grid]],
                              ushort tiitg [[thread_index_in_threadgroup]]) {
    const long i = (long)tgpig.x * EW_THREADS + tiitg;
    if (i >= (long)a.n_tokens * a.n_ff) return;
    const float v = g[i];
    out[i] = v / (1.0f + precise::exp(-v)) * u[i];
}

kernel void kernel_geglu_f32(constant kargs_glu& a [[buffer(0)]],
                             device const float* g [[buffer(1)]],
                             device const float* u [[buffer(2)]],
                             device float* out [[buffer(3)]],
                             uint3 tgpig [[threadgroup_position_in_grid]],
                             ushort tiitg [[thread_index_in_threadgroup]]) {
    const long i = (long)tgpig.x * EW_THREADS + tiitg;
    if (i >= (long)a.n_tokens * a.n_ff) return;
    const float v = g[i];
    const float c = 0.7978845608028654f;   // sqrt(2/pi)
    out[i] = 0.5f * v * (1.0f + precise::tanh(c * (v + 0.044715f * v * v * v))) * u[i];
}
