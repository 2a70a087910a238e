// kv.metal -- kv_store: cache[cache0 + pos, :] = half(src[t, :]) (row t's KSTEP_CACHE0, KSTEP_POS) (round to nearest even), one
// thread per element. A row outside the cache is not written (the host checks positions
// before it submits).
#include <metal_stdlib>
using namespace metal;
#include "../cpp/metal/kargs_metal.h"

kernel void kernel_kv_store_f16(constant kargs_kv_store& a [[buffer(0)]],
                                device const float* src [[buffer(1)]],
                                device half* cache [[buffer(2)]],
                                device const kstep* step [[buffer(3)]],
                                uint3 tgpig [[threadgroup_position_in_grid]],
                                ushort tiitg [[thread_index_in_threadgroup]]) {
    const long idx = (long)tgpig.x * EW_THREADS + tiitg;
    if (idx >= (long)a.n_tokens * a.kv_dim) return;
    const int t = (int)(idx / a.kv_dim), c = (int)(idx % a.kv_dim);
    const int row = KSTEP_CACHE0(step, a.by_row, t) + KSTEP_POS(step, a.by_row, t);
    if (row < 0 || row >= a.n_ctx) return;
    cache[(long)row * a.kv_dim + c] = (half)src[idx];
}
