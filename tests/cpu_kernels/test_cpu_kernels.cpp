// test_cpu_kernels.cpp -- standalone test of the CPU matmul kernels, without Python.
//
// Built from cpp/cpu/{quants*,kernels,features}.cpp alone (see run.sh, and
// scripts/ci_neon.sh, which cross-compiles it for arm64 and runs it under qemu-aarch64),
// so the NEON kernels are checked on an x86 machine and the x86 kernels natively.
//
// For every weight type, on random weights and activations:
//   1. the scalar kernels vs a float64 dot over dequant_row (NMSE <= 1e-3: the 8-bit
//      activation quantization is the only approximation);
//   2. every SIMD level this CPU runs vs the scalar kernels on the same quantized
//      activations, for 1..4 activation rows per call (NMSE <= 1e-10: the same integer
//      dot products, only the float summation order differs);
//   3. the matmul driver (matmul_prepare + matmul_run split over 3 "threads") at each
//      level vs the scalar kernels, with the output poisoned first;
//   4. at each level, the driver on the same tokens in batches of 1 to 20 (over 2
//      threads) gives exactly the bits of the batch of all of them (on AVX-512 VNNI small and
//      large batches take different routes through gemm_x86.h).
//   5. the AVX-512 activation quantizers against the scalar ones, byte for byte.
// Prints one line per (type, level) and exits non-zero on any failure.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../cpp/cpu/f16.h"
#include "../../cpp/cpu/features.h"
#include "../../cpp/cpu/kernels.h"
#include "../../cpp/cpu/quants.h"
#include "../../cpp/engine.h"

using namespace llmetal;
using namespace llmetal::cpu;

namespace {

struct TypeDesc {
    int id;
    const char* name;
    int block, bytes;
};
const TypeDesc kTypes[] = {
    {KT_F32, "F32", 1, 4},       {KT_F16, "F16", 1, 2},       {KT_BF16, "BF16", 1, 2},
    {KT_Q8_0, "Q8_0", 32, 34},   {KT_Q4_0, "Q4_0", 32, 18},   {KT_Q4_1, "Q4_1", 32, 20},
    {KT_Q5_0, "Q5_0", 32, 22},   {KT_Q5_1, "Q5_1", 32, 24},   {KT_Q4_K, "Q4_K", 256, 144},
    {KT_Q5_K, "Q5_K", 256, 176}, {KT_Q6_K, "Q6_K", 256, 210}, {KT_Q2_K, "Q2_K", 256, 84},
    {KT_Q3_K, "Q3_K", 256, 110}, {KT_IQ4_XS, "IQ4_XS", 256, 136},
};

std::mt19937 rng(42);

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

void put_f16(uint8_t* p, float v) {
    uint16_t h = f32_to_f16(v);
    std::memcpy(p, &h, 2);
}

// One weight row of K values: random floats for float types; random bytes with sane fp16
// scales (and int8 Q6_K sub-scales in a moderate range) for the block formats.
std::vector<uint8_t> random_row(const TypeDesc& t, int K) {
    std::vector<uint8_t> r((size_t)K / t.block * t.bytes);
    for (auto& b : r) b = (uint8_t)(rng() & 0xFF);
    if (t.id == KT_F32) {
        for (int i = 0; i < K; ++i) { float v = uniform(-1, 1); std::memcpy(&r[4 * i], &v, 4); }
        return r;
    }
    if (t.id == KT_F16) { for (int i = 0; i < K; ++i) put_f16(&r[2 * i], uniform(-1, 1)); return r; }
    if (t.id == KT_BF16) {
        for (int i = 0; i < K; ++i) {
            float v = uniform(-1, 1);
            uint32_t u;
            std::memcpy(&u, &v, 4);
            uint16_t h = (uint16_t)(u >> 16);
            std::memcpy(&r[2 * i], &h, 2);
        }
        return r;
    }
    for (size_t b = 0; b < r.size(); b += t.bytes) {
        uint8_t* p = &r[b];
        switch (t.id) {
            case KT_Q4_1: case KT_Q5_1: case KT_Q4_K: case KT_Q5_K:  // d and a min / dmin
                put_f16(p, uniform(0.001f, 0.02f));
                put_f16(p + 2, t.block == 256 ? uniform(0.001f, 0.02f) : uniform(-0.2f, 0.2f));
                break;
            case KT_Q6_K:
                for (int i = 0; i < 16; ++i) p[192 + i] = (uint8_t)(int8_t)((int)(rng() % 128) - 64);
                put_f16(p + 208, uniform(0.001f, 0.01f));
                break;
            case KT_Q2_K:  // d and dmin at the end
                put_f16(p + 80, uniform(0.001f, 0.02f));
                put_f16(p + 82, uniform(0.001f, 0.02f));
                break;
            case KT_Q3_K:
                put_f16(p + 108, uniform(0.001f, 0.01f));
                break;
            case KT_IQ4_XS:  // values up to 32 * 127 * d
                put_f16(p, uniform(0.0001f, 0.001f));
                break;
            default:  // Q4_0 Q5_0 Q8_0: f16 d first
                put_f16(p, uniform(0.001f, 0.02f));
        }
    }
    return r;
}

double nmse(const float* a, const double* b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; ++i) { num += (a[i] - b[i]) * (a[i] - b[i]); den += b[i] * b[i]; }
    return den > 0 ? num / den : num;
}

int failures = 0;

void check(bool ok, const std::string& what) {
    if (!ok) { ++failures; std::printf("FAIL %s\n", what.c_str()); }
}

std::vector<Simd> levels_here() {
    std::vector<Simd> v{Simd::scalar};
    Simd b = best_simd();
    if (b == Simd::avx512) { v.push_back(Simd::avx2); v.push_back(Simd::avx512); }
    else if (b != Simd::scalar) v.push_back(b);
    return v;
}

void test_type(const TypeDesc& t) {
    const int K = t.block == 1 ? 515 : t.block == 32 ? 224 : 768;  // 7 blocks / 3 super-blocks
    // N = 37: two groups of 16 rows (gemm_x86.h on AVX-512 VNNI) and 5 left to the row-dot
    // kernels; M = 40: five times 8 tokens through the slabs there (more than 32)
    const int N = 37, M = 40;
    const uint64_t rb = (uint64_t)K / t.block * t.bytes;
    std::vector<uint8_t> W;
    for (int n = 0; n < N; ++n) { auto r = random_row(t, K); W.insert(W.end(), r.begin(), r.end()); }
    std::vector<float> x((size_t)M * K);
    for (auto& v : x) v = uniform(-1, 1);

    // Prepared activations, as matmul_prepare makes them.
    const int fmt = act_format(t.id);
    const size_t xs = act_row_bytes(fmt, K);
    std::vector<uint8_t> xq(xs * M + 64);
    for (int m = 0; m < M; ++m) {
        if (fmt == 0) std::memcpy(&xq[m * xs], &x[(size_t)m * K], xs);
        else if (fmt == 1) quantize_row_q8(&x[(size_t)m * K], (BlockQ8*)&xq[m * xs], K);
        else quantize_row_q8k(&x[(size_t)m * K], (BlockQ8K*)&xq[m * xs], K);
    }

    // 1. scalar kernels vs float64 over dequant_row
    std::vector<float> wrow(K), ys((size_t)M * N);
    std::vector<double> ref((size_t)M * N), ysd((size_t)M * N);
    RowDot scal = rowdot_scalar(t.id);
    for (int n = 0; n < N; ++n) {
        dequant_row(t.id, &W[n * rb], wrow.data(), K);
        for (int m = 0; m < M; ++m) {
            double s = 0;
            for (int k = 0; k < K; ++k) s += (double)wrow[k] * x[(size_t)m * K + k];
            ref[m * N + n] = s;
        }
        for (int m = 0; m < M; ++m) scal(K, &W[n * rb], &xq[m * xs], xs, 1, &ys[m * N + n]);
    }
    for (size_t i = 0; i < ys.size(); ++i) ysd[i] = ys[i];
    double e0 = nmse(ys.data(), ref.data(), M * N);
    const double tol0 = fmt == 0 ? 1e-10 : 1e-3;
    check(e0 <= tol0, std::string(t.name) + " scalar vs dequant NMSE " + std::to_string(e0));
    std::printf("%-6s scalar  vs float64 dequant: NMSE %.1e\n", t.name, e0);

    for (Simd lv : levels_here()) {
        if (lv == Simd::scalar) continue;
        RowDot k = matmul_kernel(t.id, lv);
        // 2. the kernel on 1..4 rows per call vs the scalar kernel
        double worst = 0;
        for (int nx = 1; nx <= 4; ++nx) {
            std::vector<float> y((size_t)M * N, NAN);
            for (int n = 0; n < N; ++n)
                for (int m = 0; m + nx <= M; m += nx) {
                    float out[4];
                    k(K, &W[n * rb], &xq[m * xs], xs, nx, out);
                    for (int j = 0; j < nx; ++j) y[(m + j) * N + n] = out[j];
                }
            // rows past the last full group of nx were not computed: compare the rest
            int rows = M / nx * nx;
            double e = nmse(y.data(), ysd.data(), rows * N);
            worst = std::max(worst, e);
            check(e <= 1e-10, std::string(t.name) + " " + simd_name(lv) + " nx=" + std::to_string(nx) +
                                  " vs scalar NMSE " + std::to_string(e));
        }
        // 3. the driver: prepare + run over 3 threads' shares, output poisoned
        force_simd(lv);
        std::vector<float> y((size_t)M * N, NAN);
        std::vector<uint8_t> scratch;
        kargs_matmul a{M, K, N, t.id, rb};
        MatmulJob job = matmul_prepare(a, W.data(), x.data(), y.data(), nullptr, &scratch);
        std::vector<float> tmp(matmul_tmp_bytes(job) / 4 + 1);
        for (int ith = 0; ith < 3; ++ith) matmul_run(job, ith, 3, tmp.data());
        force_simd(best_simd());
        double ed = nmse(y.data(), ysd.data(), M * N);
        check(ed <= 1e-10, std::string(t.name) + " " + simd_name(lv) + " driver vs scalar NMSE " + std::to_string(ed));
        // 4. batch invariance: the same tokens in batches of 1 to 20 (gemm_x86.h: 32-value
        // blocks transposed in registers, 8 tokens at a time; super-blocks up to 8 tokens row by
        // row, 3 at a time, then slabs) give the same bits as in the batch of 40 (slabs)
        force_simd(lv);
        int differ = 0;
        for (int mb : {1, 2, 3, 4, 5, 8, 13, 20}) {
            for (int m0 = 0; m0 + mb <= M; m0 += mb) {
                std::vector<float> yb((size_t)mb * N, NAN);
                kargs_matmul ab{mb, K, N, t.id, rb};
                MatmulJob jb = matmul_prepare(ab, W.data(), &x[(size_t)m0 * K], yb.data(), nullptr, &scratch);
                std::vector<float> tb(matmul_tmp_bytes(jb) / 4 + 1);
                for (int ith = 0; ith < 2; ++ith) matmul_run(jb, ith, 2, tb.data());
                differ += std::memcmp(yb.data(), &y[(size_t)m0 * N], yb.size() * sizeof(float)) != 0;
            }
        }
        force_simd(best_simd());
        check(differ == 0, std::string(t.name) + " " + simd_name(lv) + ": " + std::to_string(differ) +
                               " batches of 1-20 tokens differ from the same tokens in the batch of " + std::to_string(M));
        std::printf("%-6s %-7s vs scalar: kernel NMSE %.1e, driver NMSE %.1e\n", t.name, simd_name(lv), worst, ed);
    }
}

// 5. the AVX-512 activation quantizers give the bytes of the scalar ones: random rows at several
// scales, a row of zeros, rows with a NaN or an inf, and values on the rounding ties (k + 0.5
// times the scale).
void test_quantizers() {
    QuantizeQ8 q8 = quantize_q8_avx512();
    QuantizeQ8K q8k = quantize_q8k_avx512();
    if (!q8 || !q8k || best_simd() != Simd::avx512 || !features().avx512vnni) return;
    const int K = 512;
    int differ = 0;
    for (int c = 0; c < 8; ++c) {
        std::vector<float> x(K);
        const float scale = c == 1 ? 1e-30f : c == 2 ? 1e20f : 1.0f;
        for (auto& v : x) v = c == 3 ? 0.0f : uniform(-1, 1) * scale;
        if (c == 4) x[37] = x[31] = x[255] = x[511] = NAN;   // the last lanes too: a NaN met last
        if (c == 5) x[300] = -INFINITY;
        if (c == 6) for (int i = 0; i < K; ++i) x[i] = (i % 32 == 0) ? 127.0f : (float)(i % 255 - 127) + 0.5f;
        if (c == 7) for (int i = 0; i < K; ++i) x[i] = (i % 7) * 0.5f - 1.5f;
        std::vector<BlockQ8> a(K / 32), b(K / 32);
        std::vector<BlockQ8K> ak(K / 256), bk(K / 256);
        quantize_row_q8(x.data(), a.data(), K);
        q8(x.data(), b.data(), K);
        quantize_row_q8k(x.data(), ak.data(), K);
        q8k(x.data(), bk.data(), K);
        differ += std::memcmp(a.data(), b.data(), a.size() * sizeof(BlockQ8)) != 0;
        differ += std::memcmp(ak.data(), bk.data(), ak.size() * sizeof(BlockQ8K)) != 0;
    }
    check(differ == 0, std::to_string(differ) + " rows quantized differently by the AVX-512 and scalar quantizers");
    std::printf("activation quantizers: avx512 = scalar, byte for byte\n");
}

}  // namespace

int main() {
    std::printf("CPU features: %s; best SIMD level: %s\n", features_string().c_str(), simd_name(best_simd()));
    for (const TypeDesc& t : kTypes) {
        try {
            test_type(t);
        } catch (const std::exception& e) {
            check(false, std::string(t.name) + ": exception " + e.what());
        }
    }
    test_quantizers();
    if (best_simd() == Simd::scalar) std::printf("note: no SIMD level on this CPU, only scalar checked\n");
    std::printf(failures ? "%d FAILURES\n" : "all passed\n", failures);
    return failures ? 1 : 0;
}
