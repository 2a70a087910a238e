// attention.metal -- out[t, h, :] = softmax(scale * q . K^T) V over the visible cache rows
// of row t's sequence (causal: j <= pos, the row's position KSTEP_POS; and j > pos - window
// when window > 0; its sequence's rows from KSTEP_CACHE0), flash-decoding style,
// the same structure as the CUDA device's kernel_attention:
//
// kernel_attention_f16: grid (n_splits, n_heads, n_tokens), ATT_SG SIMD groups a threadgroup.
// Split s of query (t, h) covers visible keys [lo + s*chunk, lo + (s+1)*chunk); each SIMD
// group takes every ATT_SG-th key of it and keeps a running max / sum / weighted V (online
// softmax) with head_dim spread over the lanes (ATT_MAXD values a lane); the SIMD groups then
// merge in threadgroup memory. With one split the threadgroup writes the output; otherwise it
// writes (max, sum, acc[head_dim]) to `part` and kernel_attention_combine_f32 merges them.
// Keys outside the visible range are never read (the tests put NaN there).
#include <metal_stdlib>
using namespace metal;
#include "../cpp/metal/kargs_metal.h"

kernel void kernel_attention_f16(constant kargs_attention_split& p [[buffer(0)]],
                                 device const float* q [[buffer(1)]],
                                 device const half* kc [[buffer(2)]],
                                 device const half* vc [[buffer(3)]],
                                 device float* out [[buffer(4)]],
                                 device float* part [[buffer(5)]],
                                 device const kstep* step [[buffer(6)]],
                                 uint3 tgpig [[threadgroup_position_in_grid]],
                                 ushort tiitg [[thread_index_in_threadgroup]],
                                 ushort tiisg [[thread_index_in_simdgroup]],
                                 ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float s_m[ATT_SG];
    threadgroup float s_l[ATT_SG];
    threadgroup float s_acc[ATT_SG][ATT_MAXD * 32];

    const int s = (int)tgpig.x, h = (int)tgpig.y, t = (int)tgpig.z;
    const int hd = p.a.head_dim, kv_dim = p.a.n_kv_heads * hd;
    const int g = h / (p.a.n_heads / p.a.n_kv_heads);   // the KV head this query head reads
    const int pos = KSTEP_POS(step, p.a.by_row, t);
    const long c0 = (long)KSTEP_CACHE0(step, p.a.by_row, t) * kv_dim;   // the row's sequence
    const int lo = p.a.window > 0 ? max(0, pos - p.a.window + 1) : 0;
    const int j0 = lo + s * p.chunk, j1 = min(pos + 1, j0 + p.chunk);

    device const float* qr = q + ((long)t * p.a.n_heads + h) * hd;
    float qv[ATT_MAXD], acc[ATT_MAXD];
    for (int i = 0; i < ATT_MAXD; ++i) {
        const int d = tiisg + 32 * i;
        qv[i] = d < hd ? qr[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float mx = ATT_NONE, sum = 0.0f;
    // j depends only on the SIMD group: the loop (and its simd_sum) is uniform in the group
    for (int j = j0 + sgitg; j < j1; j += ATT_SG) {
        device const half* kr = kc + c0 + (long)j * kv_dim + g * hd;
        float d0 = 0.0f;
        for (int i = 0; i < ATT_MAXD; ++i) {
            const int d = tiisg + 32 * i;
            if (d < hd) d0 += qv[i] * (float)kr[d];
        }
        float sc = simd_sum(d0) * p.a.scale;
        if (p.a.softcap > 0.0f) sc = p.a.softcap * precise::tanh(sc / p.a.softcap);
        const float nm = max(mx, sc);
        const float corr = exp(mx - nm);   // 0 on the first key (mx = ATT_NONE)
        const float pe = exp(sc - nm);
        sum = sum * corr + pe;
        device const half* vr = vc + c0 + (long)j * kv_dim + g * hd;
        for (int i = 0; i < ATT_MAXD; ++i) {
            const int d = tiisg + 32 * i;
            if (d < hd) acc[i] = acc[i] * corr + pe * (float)vr[d];
        }
        mx = nm;
    }

    // merge the SIMD groups
    if (tiisg == 0) {
        s_m[sgitg] = mx;
        s_l[sgitg] = sum;
    }
    for (int i = 0; i < ATT_MAXD; ++i) s_acc[sgitg][tiisg + 32 * i] = acc[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float M = ATT_NONE;
    for (int w = 0; w < ATT_SG; ++w) M = max(M, s_m[w]);
    float L = 0.0f, wt[ATT_SG];
    for (int w = 0; w < ATT_SG; ++w) {
        wt[w] = exp(s_m[w] - M);   // a group with no key has sum 0 and acc 0: its weight is moot
        L += s_l[w] * wt[w];
    }
    const long qi = (long)t * p.a.n_heads + h;
    if (p.n_splits == 1) {
        for (int d = tiitg; d < hd; d += ATT_SG * 32) {
            float v = 0.0f;
            for (int w = 0; w < ATT_SG; ++w) v += s_acc[w][d] * wt[w];
            out[qi * hd + d] = v / L;
        }
    } else {
        device float* pr = part + (qi * p.n_splits + s) * (hd + 2);
        if (tiitg == 0) {
            pr[0] = M;
            pr[1] = L;
        }
        for (int d = tiitg; d < hd; d += ATT_SG * 32) {
            float v = 0.0f;
            for (int w = 0; w < ATT_SG; ++w) v += s_acc[w][d] * wt[w];
            pr[2 + d] = v;
        }
    }
}

// Merge the splits of each (t, h): grid (n_heads, n_tokens), one thread per head dim.
kernel void kernel_attention_combine_f32(constant kargs_attention_split& p [[buffer(0)]],
                                         device const float* part [[buffer(1)]],
                                         device float* out [[buffer(2)]],
                                         uint3 tgpig [[threadgroup_position_in_grid]],
                                         ushort tiitg [[thread_index_in_threadgroup]]) {
    const int h = (int)tgpig.x, t = (int)tgpig.y, hd = p.a.head_dim, S = p.n_splits;
    const long qi = (long)t * p.a.n_heads + h;
    device const float* pr = part + qi * S * (hd + 2);
    float M = ATT_NONE;
    for (int s = 0; s < S; ++s) M = max(M, pr[s * (hd + 2)]);
    for (int d = tiitg; d < hd; d += ATT_SG * 32) {
        float L = 0.0f, v = 0.0f;
        for (int s = 0; s < S; ++s) {
            const float w = exp(pr[s * (hd + 2)] - M);   // a split with no visible key: sum 0
            L += pr[s * (hd + 2) + 1] * w;
            v += pr[s * (hd + 2) + 2 + d] * w;
        }
        out[qi * hd + d] = v / L;
    }
}

// kernel_attention_probs_f16 -- the probabilities of the attention above, for inspection (eager
// runs only): out[h, t, j] (j < n_keys) = softmax_j(scale * q[t, h] . K[j, g]) over the keys
// query t reads, 0 for every other key. Grid (n_heads, n_tokens), ATT_SG SIMD groups a
// threadgroup; SIMD group w takes keys lo + w, lo + w + ATT_SG, ...: its k-th key's score is
// computed by the whole group (simd_sum, as kernel_attention_f16 does) and kept in out by lane
// k % 32, which alone later turns it into exp(s - max) and then into the probability, so every
// element of out is read back only by the thread that wrote it. The maximum and the sum go
// through threadgroup memory.
kernel void kernel_attention_probs_f16(constant kargs_attention_probs& p [[buffer(0)]],
                                       device const float* q [[buffer(1)]],
                                       device const half* kc [[buffer(2)]],
                                       device float* out [[buffer(3)]],
                                       device const kstep* step [[buffer(4)]],
                                       uint3 tgpig [[threadgroup_position_in_grid]],
                                       ushort tiitg [[thread_index_in_threadgroup]],
                                       ushort tiisg [[thread_index_in_simdgroup]],
                                       ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float s_m[ATT_SG];
    threadgroup float s_l[ATT_SG];

    const int h = (int)tgpig.x, t = (int)tgpig.y;
    const int hd = p.a.head_dim, kv_dim = p.a.n_kv_heads * hd, nk = p.n_keys;
    const int g = h / (p.a.n_heads / p.a.n_kv_heads);
    const int pos = step->pos0 + t;
    const int lo = p.a.window > 0 ? max(0, pos - p.a.window + 1) : 0;
    device float* o = out + ((long)h * p.a.n_tokens + t) * nk;

    device const float* qr = q + ((long)t * p.a.n_heads + h) * hd;
    float qv[ATT_MAXD];
    for (int i = 0; i < ATT_MAXD; ++i) {
        const int d = tiisg + 32 * i;
        qv[i] = d < hd ? qr[d] : 0.0f;
    }
    // scores: j depends only on the SIMD group, so the loop (and its simd_sum) is uniform
    float mx = ATT_NONE;
    for (int j = lo + sgitg, k = 0; j <= pos; j += ATT_SG, ++k) {
        device const half* kr = kc + (long)j * kv_dim + g * hd;
        float d0 = 0.0f;
        for (int i = 0; i < ATT_MAXD; ++i) {
            const int d = tiisg + 32 * i;
            if (d < hd) d0 += qv[i] * (float)kr[d];
        }
        float sc = simd_sum(d0) * p.a.scale;
        if (p.a.softcap > 0.0f) sc = p.a.softcap * precise::tanh(sc / p.a.softcap);
        if (k % 32 == (int)tiisg) o[j] = sc;
        mx = max(mx, sc);
    }
    if (tiisg == 0) s_m[sgitg] = mx;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float M = ATT_NONE;
    for (int w = 0; w < ATT_SG; ++w) M = max(M, s_m[w]);

    // exp(s - M) of this thread's own keys, and their sum
    float sum = 0.0f;
    for (int j = lo + sgitg + ATT_SG * (int)tiisg; j <= pos; j += ATT_SG * 32) {
        const float e = exp(o[j] - M);
        o[j] = e;
        sum += e;
    }
    sum = simd_sum(sum);
    if (tiisg == 0) s_l[sgitg] = sum;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float L = 0.0f;
    for (int w = 0; w < ATT_SG; ++w) L += s_l[w];
    const float inv = 1.0f / L;
    for (int j = lo + sgitg + ATT_SG * (int)tiisg; j <= pos; j += ATT_SG * 32) o[j] *= inv;
    // the keys this query does not read
    for (int j = tiitg; j < lo; j += ATT_SG * 32) o[j] = 0.0f;
    for (int j = pos + 1 + tiitg; j < nk; j += ATT_SG * 32) o[j] = 0.0f;
}
