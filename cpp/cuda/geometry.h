// geometry.h -- the CUDA kernels' fixed launch geometry, in plain C++: the kernels (nvcc) and
// the planner (g++, planner.cpp) read the same numbers, so the launch list the planner writes
// is the one the kernels were built for.
#pragma once
#include "../kargs.h"

#if defined(__CUDACC__)
#define LLMETAL_HD __host__ __device__
#else
#define LLMETAL_HD
#endif

namespace llmetal_cuda {

// Errors a kernel detects, written to the device's error flag (wait() reads it and throws).
enum : int { ERR_NONE = 0, ERR_EMBED_ID = 1, ERR_KV_POS = 2 };

// ---- mat-vec (decode matmuls, matvec.cuh) ------------------------------------------------
constexpr int MV_MAX_TOKENS = 8;   // a matmul of more tokens is a prefill: tensor-core GEMM
constexpr int MV_ROWS = 4;         // warps (= weight rows) per block of the mat-vec kernels
constexpr int MV_WIN = 2304;       // bytes of one warp's shared-memory window
constexpr int MVG_MAX = 3;         // weights of one kernel_mmvq_group (Q/K/V)
// kernel_matmul (float activations, one warp a row): rows per block, tokens per launch row
constexpr int MV_WARPS = 4;
constexpr int MV_MT = 8;

// Blocks per window for each format: a whole number of blocks whose bytes are a multiple of
// 16, so every window but a row's last starts 16-byte aligned (given an aligned row).
// Windows of about 2 KB: each warp keeps three in flight while it computes one (24 warps an
// SM: ~160 KB in flight, plenty to cover DRAM latency at full rate). Where it fits, a window
// is a power-of-two number of blocks, so the usual row widths (K = 2048, 4096, 8192, 14336:
// 64, 128, 256, 448 blocks of 32) split into equal windows -- a short last window costs a
// whole round trip for a sliver of work (Q4_0 at K = 4096 was 112 + 16 blocks).
// QB: the block of the 8-bit activations the format's dot product reads.
template <int T> struct MVQ;
template <> struct MVQ<KT_Q4_0> { static constexpr int NB = 128, QB = 32; };   // 2304 B
template <> struct MVQ<KT_Q4_1> { static constexpr int NB = 96, QB = 32; };    // 1920 B
template <> struct MVQ<KT_Q5_0> { static constexpr int NB = 96, QB = 32; };    // 2112 B
template <> struct MVQ<KT_Q5_1> { static constexpr int NB = 96, QB = 32; };    // 2304 B
template <> struct MVQ<KT_Q8_0> { static constexpr int NB = 64, QB = 32; };    // 2176 B
template <> struct MVQ<KT_Q4_K> { static constexpr int NB = 16, QB = 256; };   // 2304 B
template <> struct MVQ<KT_Q5_K> { static constexpr int NB = 8, QB = 256; };    // 1408 B
template <> struct MVQ<KT_Q6_K> { static constexpr int NB = 8, QB = 256; };    // 1680 B
template <> struct MVQ<KT_Q2_K> { static constexpr int NB = 16, QB = 256; };   // 1344 B
template <> struct MVQ<KT_Q3_K> { static constexpr int NB = 16, QB = 256; };   // 1760 B
template <> struct MVQ<KT_IQ4_XS> { static constexpr int NB = 16, QB = 256; }; // 2176 B
template <> struct MVQ<KT_F16> { static constexpr int NB = 1024, QB = 1; };   // "blocks" = values

// ---- the persistent decode kernel (persist.cu) ----------------------------------------------
constexpr int PK_WARPS = 16;                 // warps of its block; one block an SM
constexpr int PK_THREADS = PK_WARPS * 32;    // the most threads an instruction's unit may use
constexpr int PK_MAX_INS = 1024;             // instructions of a program (their starts in shared memory)

// ---- norms --------------------------------------------------------------------------------
constexpr int RMS_V = 4;   // float4s a thread of kernel_add_rmsnorm_q for rows over 4096 values

// ---- prefill GEMM (gemm.cuh) --------------------------------------------------------------
constexpr int GM_BN = 128, GM_BK = 32, GM_STAGES = 4;
// kernel_gemm_q (quantized rows streamed, dequantized into registers) up to this many tokens;
// above, the prompt path (weights dequantized to fp16 scratch, kernel_gemm_f16)
constexpr int GQ_MAX_TOKENS = 64;
constexpr int GQ_WARPS = 4, GQ_ROWS = 128;   // warps a block (32 rows each), weight rows a block
constexpr int GQ_SLOTS = 2;                   // windows in a warp's ring (one in flight)
// Values in a warp's window of one row: whole blocks, 256 (a super-block), or 512 for the
// formats whose 256 values take a byte count that is not a multiple of 4 (Q6_K 210, Q3_K 110),
// so that windows start 4-byte aligned and the cp.async copies need no 2-byte fallback.
LLMETAL_HD constexpr int gq_window(int t) { return t == KT_Q6_K || t == KT_Q3_K ? 512 : 256; }
LLMETAL_HD constexpr int gm_tile(int bm) { return GM_BK * 2 * (bm + GM_BN); }   // bytes of one stage (A then B)
LLMETAL_HD constexpr int gm_smem(int bm) { return GM_STAGES * gm_tile(bm); }    // 64 / 48 KB, dynamic

// ---- attention (attention.cuh, kernels.cuh) -----------------------------------------------
constexpr int ATT_WARPS = 4;   // kernel_attention: warps a block
constexpr int ATT_MAXD = 8;    // head_dim <= 32 * ATT_MAXD = 256
constexpr int ATT_KG = 8;      // keys a warp loads together
constexpr int FA_BQ = 64;      // kernel_attention_prefill: queries per block (16 per warp)
constexpr int FA_BK = 64;      // keys per tile
constexpr int FA_THREADS = 128;
// bytes of dynamic shared memory: the query tile and two stages of K and V tiles
LLMETAL_HD constexpr int fa_smem(int hd) { return (FA_BQ + 2 * 2 * FA_BK) * hd * 2; }
constexpr int AD_KEYS = 32;              // kernel_attention_decode: keys of a split per pass
constexpr int AD_WPH = 4;                // warps per query head
constexpr int AD_KW = AD_KEYS / AD_WPH;  // keys a warp takes per pass (8) ...
constexpr int AD_LPK = 32 / AD_KW;       // ... with 4 lanes a key, each a quarter of the row
constexpr int AD_GMAX = 8;               // query heads per K/V head (so at most 32 warps a block)
constexpr int AD_QMAX = 1024;            // G * head_dim
constexpr int AD_COUNTERS = 4096;        // n_tokens * n_kv_heads at most (the counters' buffer)
// A one-token decode's live blocks at most n_sm * AD_BLOCKS_SM (splits x K/V heads), the best of
// a sweep on an H100 for the 8B and SmolLM2 shapes (docs/benchmarks-cuda.md, "Decode at depth"):
// the 8B's 512-thread blocks at 64 registers (and 76 KB of shared memory) fit two an SM, so two
// is one wave.
constexpr int AD_BLOCKS_SM = 2;
constexpr int AD_PF_KEYS = 128;          // cache rows a block prefetches into L1 before its wait
// A pass's K and V rows are copied once into shared memory (cp.async), where the G heads' warps
// read them, AD_STAGES passes in flight: a K row of head size hd is padded to hd * 2 + 64 bytes
// (ad_krow), so that the 8 lanes of a 16-byte load phase (2 keys x 4 lanes) hit distinct banks.
// 3 stages: 8B Q4_0 at depth 16384 on an H200, 321.8 / 331.9 / 334.3 t/s with 2 / 3 / 4.
constexpr int AD_STAGES = 3;
LLMETAL_HD constexpr int ad_krow(int hd) { return hd * 2 + 64; }
LLMETAL_HD constexpr int ad_stage(int hd) { return AD_KEYS * (ad_krow(hd) + hd * 2); }   // K rows, then V rows
LLMETAL_HD constexpr int ad_smem(int hd) { return AD_STAGES * ad_stage(hd); }           // 54 / 30 KB, dynamic

}  // namespace llmetal_cuda
