// embed.metal -- out[t, e] = dequant(W[ids[t]])[e] * scale: one thread per output element
// (a table lookup: nothing to reuse). An id outside the vocabulary writes NaN (a kernel cannot
// throw; the host checks ids before it submits, so this is a second line of defence).
#include <metal_stdlib>
using namespace metal;
#include "quants.h"
#include "../cpp/metal/kargs_metal.h"

template <int T>
kernel void kernel_embed(constant kargs_embed& a [[buffer(0)]],
                         device const uchar* W [[buffer(1)]],
                         device const int* ids [[buffer(2)]],
                         device float* out [[buffer(3)]],
                         uint3 tgpig [[threadgroup_position_in_grid]],
                         ushort tiitg [[thread_index_in_threadgroup]]) {
    const int t = (int)tgpig.y;
    const int e = (int)tgpig.x * EW_THREADS + tiitg;
    if (e >= a.dim) return;   // no barrier or SIMD-group operation in this kernel
    const int id = ids[t];
    if (id < 0 || id >= a.n_vocab) {
        out[(long)t * a.dim + e] = as_type<float>(0x7fc00000u);
        return;
    }
    float v = dq1(T, W + (ulong)id * a.row_bytes, e);
    out[(long)t * a.dim + e] = a.scale != 1.0f ? v * a.scale : v;
}

typedef decltype(kernel_embed<KT_F32>) kernel_embed_t;
template [[host_name("kernel_embed_f32")]] kernel kernel_embed_t kernel_embed<KT_F32>;
template [[host_name("kernel_embed_f16")]] kernel kernel_embed_t kernel_embed<KT_F16>;
template [[host_name("kernel_embed_bf16")]] kernel kernel_embed_t kernel_embed<KT_BF16>;
template [[host_name("kernel_embed_q4_0")]] kernel kernel_embed_t kernel_embed<KT_Q4_0>;
template [[host_name("kernel_embed_q4_1")]] kernel kernel_embed_t kernel_embed<KT_Q4_1>;
template [[host_name("kernel_embed_q5_0")]] kernel kernel_embed_t kernel_embed<KT_Q5_0>;
template [[host_name("kernel_embed_q5_1")]] kernel kernel_embed_t kernel_embed<KT_Q5_1>;
template [[host_name("kernel_embed_q8_0")]] kernel kernel_embed_t kernel_embed<KT_Q8_0>;
template [[host_name("kernel_embed_q4_k")]] kernel kernel_embed_t kernel_embed<KT_Q4_K>;
template [[host_name("kernel_embed_q5_k")]] kernel kernel_embed_t kernel_embed<KT_Q5_K>;
template [[host_name("kernel_embed_q6_k")]] kernel kernel_embed_t kernel_embed<KT_Q6_K>;
template [[host_name("kernel_embed_q2_k")]] kernel kernel_embed_t kernel_embed<KT_Q2_K>;
template [[host_name("kernel_embed_q3_k")]] kernel kernel_embed_t kernel_embed<KT_Q3_K>;
template [[host_name("kernel_embed_iq4_xs")]] kernel kernel_embed_t kernel_embed<KT_IQ4_XS>;
