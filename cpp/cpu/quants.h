// quants.h -- GGUF weight block formats on the CPU: dequantization of rows (used by
// embed, and as the portable scalar path of matmul) and the matmul row kernels.
#pragma once
#include <cstdint>

namespace llmetal::cpu {

// Dequantize n elements (a multiple of the type's block size) starting at src.
void dequant_row(int ktype, const void* src, float* dst, int64_t n);

// y[t, n] for n in [n0, n1), t in [0, M): dot of weight row n (K elements, row_bytes
// apart, in its block format) with activation row t of x (K floats, ldx apart).
// `tmp` is scratch of at least K floats owned by the calling thread.
void matmul_rows_scalar(int ktype, const uint8_t* W, uint64_t row_bytes, int K, int n0, int n1,
                        const float* x, int M, int64_t ldx, float* y, int64_t ldy, float* tmp);

}  // namespace llmetal::cpu
