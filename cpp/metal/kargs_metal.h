// kargs_metal.h -- launch constants and the one extended argument struct of the Metal device,
// shared by the dispatch planner (cpp/metal/dispatch.cpp) and the kernels (metal/*.metal), so
// the grid the host computes and the indexing the kernel does cannot drift apart.
#ifndef LLMETAL_KARGS_METAL_H
#define LLMETAL_KARGS_METAL_H
#include "../kargs.h"

// mat-vec (kernel_matmul_<t>): MV_SG SIMD groups a threadgroup, MV_R output rows each
// (MV_ROWS rows a threadgroup: grid.x), MV_MT tokens per grid row (grid.y walks token chunks);
// the tokens' activations are staged MV_XS floats (16 KiB) at a time in threadgroup memory
#define MV_SG 4
#define MV_R 8
#define MV_ROWS (MV_SG * MV_R)
#define MV_MT 8
#define MV_XS 4096
// tiled matmul (kernel_matmul_mm_<t>): a threadgroup computes MM_TN output rows x MM_TM tokens
// with 4 SIMD groups (each 32 rows x 16 tokens as 4 x 2 8x8 matrices), MM_TK elements of K per
// step; MM_TG_BYTES of threadgroup memory: the weight tile (float at most) and the activation
// tile, or the float output tile at the end
#define MM_TN 64
#define MM_TM 32
#define MM_TK 32
#define MM_THREADS 128
#define MM_TG_BYTES ((MM_TK * MM_TN + MM_TM * MM_TK) * 4)
// elementwise kernels: threads per threadgroup
#define EW_THREADS 256
// rmsnorm: one threadgroup of NORM_THREADS per row
#define NORM_THREADS 256
// argmax: one threadgroup of ARGMAX_THREADS per row
#define ARGMAX_THREADS 256
// attention: ATT_SG SIMD groups per (split, head, token); head_dim <= 32 * ATT_MAXD
#define ATT_SG 4
#define ATT_MAXD 8
#define ATT_CHUNK 256   // keys per split when decoding
// a score below this is "no key yet" (a finite sentinel: Metal compiles with fast math,
// where infinities are not to be relied on)
#define ATT_NONE (-3.0e38f)

// attention: the stage's args plus how its keys are split (flash-decoding)
typedef struct kargs_attention_split {
    kargs_attention a;
    int32_t n_splits;   // splits per query; > 1: partials go to `part`, then a combine pass
    int32_t chunk;      // keys per split
    int32_t pad0;
    int32_t pad1;
} kargs_attention_split;
#endif
