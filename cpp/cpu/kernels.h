// kernels.h -- the CPU device's row kernels. Each stage method in device_cpu.cpp splits
// its work over threads and calls these on its share of rows.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

#include "../kargs.h"
#include "features.h"
#include "quants.h"

namespace llmetal::cpu {

class ThreadPool;

void rmsnorm_row(const float* x, const float* w, float* out, int n, float eps);
// RoPE in two steps: the cos / sin table of one position (n_rot floats: cos of the n_rot/2
// angles, then their sin), then applied to each head's row. The CPU device keeps the tables
// of the positions it has seen (one set per rope configuration), so all layers share them.
void rope_table(const kargs_rope& a, int pos, const float* factors, float* cs);
void rope_apply(float* x, const kargs_rope& a, const float* cs);
void f32_to_f16_row(const float* x, uint16_t* y, int n);
// One query row of head h at position pos against cache rows [lo, pos]; `sc` is scratch
// of at least pos + 1 floats.
void attention_row(const kargs_attention& a, const float* q, const uint16_t* kc, const uint16_t* vc,
                   float* out, int h, int pos, float* sc);
// attention_row's first half: the softmax weights of the query row over its keys lo..pos,
// unnormalized in sc[0 .. pos - lo], 1/sum in *inv; returns lo.
int attention_weights_row(const kargs_attention& a, const float* q, const uint16_t* kc, int h, int pos,
                          float* sc, float* inv);

// The SIMD attention kernel for the active level, or null for the scalar path (attention_row
// per head): null also where the shape does not suit it (head_dim % 16 != 0, groups > 64).
AttnGroup attention_kernel(const kargs_attention& a);
// The first half of that kernel (the softmax weights, quants.h), or null exactly where
// attention_kernel is: the attention_probs stage then uses attention_weights_row.
AttnWeights attention_weights_kernel(const kargs_attention& a);

// The SIMD GLU row kernel (gelu_tanh or silu, quants.h) of the active level, or null (scalar).
GluRow glu_kernel(bool gelu);

// The argmax row kernel of the active level (argmax_part, the scalar code, where it has none).
ArgmaxRow argmax_kernel();

// Matmul in two steps: prepare (once per call, single-threaded: picks the row kernel for
// the weight type and the active SIMD level, and quantizes the activations into the
// device's scratch) and run (each thread computes its share of the output rows).
struct MatmulJob {
    kargs_matmul a;
    const uint8_t* W;
    float* y;
    const uint8_t* xq;    // prepared activation rows (f32 as is, or BlockQ8 / BlockQ8K)
    size_t xq_stride;     // bytes from one prepared activation row to the next
    RowDot dot;           // the row kernel (quants.h)
    RowDot2 dot2;         // two-row tile kernel for batches (null: rows one at a time)
    // Optional work stealing: when set (one counter per thread), each thread runs its own
    // contiguous share of rows in chunks of `chunk` rows (a multiple of 4) taken from its
    // counter, then helps with the other shares' remaining chunks; else a static split.
    struct alignas(64) Counter { std::atomic<int> next; };
    Counter* counters = nullptr;
    int chunk = 0;
    // Q8_0 repacked in 16-row groups (quants.h): when set, rows go 16 at a time through
    // dot16 from Wr (row ranges are then multiples of 16), with xc the activation blocks'
    // -128 * sum(qs), xc_stride ints per activation row.
    const uint8_t* Wr = nullptr;
    RowDot16 dot16 = nullptr;
    const int32_t* xc = nullptr;
    size_t xc_stride = 0;
    // 16 rows per vector (quants.h, Rows16): when set, groups of 16 rows go
    // through rows16, the last n_out % 16 rows through dot2 / dot; each thread's tmp holds
    // matmul_tmp_bytes.
    Rows16 rows16 = nullptr;
    const Rows16Level* r16 = nullptr;
};
// The kernels with 16 rows per vector of the active SIMD level, or null (only AVX-512
// VNNI has them).
const Rows16Level* rows16_level();
// The 16-row repacked kernel for a matmul, or null where it does not apply: Q8_0 weights,
// n_out a multiple of 16, at the AVX-512 level on a CPU with AVX512_VNNI.
RowDot16 matmul_kernel16(const kargs_matmul& a);
// The rows [*b, *e) of share ith of nth (a multiple of 16 rows: no two threads write one
// 16-byte piece of y, and the 16-row repacked groups stay whole; matmul_run's counters
// start at *b).
void matmul_share(int n_out, int ith, int nth, int* b, int* e);
// Wr: the weights repacked for matmul_kernel16 (null: use W as it is).
MatmulJob matmul_prepare(const kargs_matmul& a, const uint8_t* W, const float* x, float* y,
                         ThreadPool* pool, std::vector<uint8_t>* scratch, const uint8_t* Wr = nullptr);
// tmp: per-thread scratch of matmul_tmp_bytes(job) bytes.
void matmul_run(const MatmulJob& job, int ith, int nth, float* tmp);
size_t matmul_tmp_bytes(const MatmulJob& job);
// The row kernel matmul uses for a weight type at a SIMD level (throws if there is none).
RowDot matmul_kernel(int ktype, Simd level);

}  // namespace llmetal::cpu
