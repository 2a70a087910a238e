// argmax.metal -- greedy sampling: ids[r] = the index of the first maximum of row r of x
// [n_rows, n_cols], or -1 when the row holds a NaN or an infinity (kargs_argmax).
// One threadgroup of ARGMAX_THREADS per row. Each thread walks the row with the threadgroup's
// stride, keeping its first maximum (a strictly larger value replaces it; its indices only
// grow). Each SIMD group then takes the largest value and, among the lanes holding it, the
// lowest index; the SIMD groups' results meet in threadgroup memory and every thread merges
// them in the same order. Fast math may assume no NaN or infinity exists, so they are told
// from the exponent bits; a thread that saw no element keeps the row's first value with the
// index ARGMAX_NONE, which loses every tie.
#include <metal_stdlib>
using namespace metal;
#include "../cpp/metal/kargs_metal.h"

#define ARGMAX_NONE 0x7fffffff

kernel void kernel_argmax_f32(constant kargs_argmax& a [[buffer(0)]],
                              device const float* x [[buffer(1)]],
                              device int* ids [[buffer(2)]],
                              uint3 tgpig [[threadgroup_position_in_grid]],
                              ushort tiitg [[thread_index_in_threadgroup]],
                              ushort tiisg [[thread_index_in_simdgroup]],
                              ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float part_v[ARGMAX_THREADS / 32];
    threadgroup int part_i[ARGMAX_THREADS / 32];
    threadgroup int part_bad[ARGMAX_THREADS / 32];
    device const float* xr = x + (long)tgpig.x * a.n_cols;
    float v = xr[0];
    int idx = ARGMAX_NONE;
    bool bad = false;
    for (int i = tiitg; i < a.n_cols; i += ARGMAX_THREADS) {
        const float y = xr[i];
        bad = bad || (as_type<uint>(y) & 0x7f800000u) == 0x7f800000u;
        if (idx == ARGMAX_NONE || y > v) {
            v = y;
            idx = i;
        }
    }
    const float sv = simd_max(v);
    const int si = simd_min(v == sv ? idx : ARGMAX_NONE);
    const bool sbad = simd_any(bad);
    if (tiisg == 0) {
        part_v[sgitg] = sv;
        part_i[sgitg] = si;
        part_bad[sgitg] = sbad ? 1 : 0;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float best = part_v[0];
    int best_i = part_i[0];
    int any_bad = part_bad[0];
    for (int s = 1; s < ARGMAX_THREADS / 32; ++s) {
        if (part_v[s] > best || (part_v[s] == best && part_i[s] < best_i)) {
            best = part_v[s];
            best_i = part_i[s];
        }
        any_bad |= part_bad[s];
    }
    if (tiitg == 0) ids[tgpig.x] = any_bad ? -1 : best_i;
}
