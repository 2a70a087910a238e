// selftest.metal -- kernels for the emulator's own tests (tests/test_metal_emu.py): correct
// ones that exercise each synchronizing operation, and deliberately broken ones that the
// emulator must catch. Not part of the Metal device.
#include <metal_stdlib>
using namespace metal;

struct st_args { int n; int mode; };

// out[i] = buf[(i + 1) % n] after every thread wrote buf[i] = in[i] (mode 1: without the barrier)
kernel void selftest_neighbour(constant st_args& a [[buffer(0)]],
                               device const float* in [[buffer(1)]],
                               device float* out [[buffer(2)]],
                               ushort tid [[thread_index_in_threadgroup]]) {
    threadgroup float buf[256];
    buf[tid] = in[tid];
    if (a.mode == 0) threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = buf[(tid + 1) % a.n];
}

// out[lane] = simd_sum over the group (mode 1: only lanes < 16 call it: divergent)
kernel void selftest_simd_sum(constant st_args& a [[buffer(0)]],
                              device const float* in [[buffer(1)]],
                              device float* out [[buffer(2)]],
                              ushort tid [[thread_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]]) {
    float v = in[tid];
    if (a.mode == 0 || lane < 16) v = simd_sum(v);
    out[tid] = v;
}

// mode 1: threads past the first SIMD group return before the barrier
kernel void selftest_early_return(constant st_args& a [[buffer(0)]],
                                  device float* out [[buffer(1)]],
                                  ushort tid [[thread_index_in_threadgroup]]) {
    if (a.mode == 1 && tid >= 32) return;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = 1.0f;
}

// shuffles and reductions of one SIMD group: out[0..32) shuffle_xor(1), [32..64) shuffle_down(3),
// [64..96) broadcast(lane 5), [96..128) simd_max, [128..160) simd_min
kernel void selftest_shuffles(constant st_args& a [[buffer(0)]],
                              device const float* in [[buffer(1)]],
                              device float* out [[buffer(2)]],
                              ushort lane [[thread_index_in_simdgroup]]) {
    float v = in[lane];
    out[lane] = simd_shuffle_xor(v, 1);
    out[32 + lane] = simd_shuffle_down(v, 3);
    out[64 + lane] = simd_broadcast(v, 5);
    out[96 + lane] = simd_max(v);
    out[128 + lane] = simd_min(v);
}

// C[8x8] = A[8x8] B[8x8] with simdgroup matrices (one SIMD group)
kernel void selftest_mma(constant st_args& a [[buffer(0)]],
                         device const float* A [[buffer(1)]],
                         device const float* B [[buffer(2)]],
                         device float* C [[buffer(3)]],
                         ushort lane [[thread_index_in_simdgroup]]) {
    simdgroup_float8x8 ma, mb, mc;
    simdgroup_load(ma, A, 8);
    simdgroup_load(mb, B, 8);
    simdgroup_multiply(mc, ma, mb);
    simdgroup_store(mc, C, 8);
}
