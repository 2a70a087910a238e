// features.h -- CPU features detected at run time, and the SIMD level the kernels use.
// One build serves every x86-64 and arm64 machine: kernels for higher levels are compiled
// with per-function target attributes and chosen here, never by -march=native. AMX is
// never used (some CPUs report it and then fault).
#pragma once
#include <string>

namespace llmetal::cpu {

enum class Simd { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

struct Features {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avxvnni = false;
    bool neon = false, dotprod = false;
};

const Features& features();
Simd best_simd();                 // the highest level this CPU supports
Simd active_simd();               // the level in use (best, or forced)
void force_simd(Simd s);          // tests force each level in turn; throws if unsupported
const char* simd_name(Simd s);
std::string features_string();
int default_threads();            // cores this process may run on (affinity, cgroup quota)

}  // namespace llmetal::cpu
