#include "features.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace llmetal::cpu {

static Features detect() {
    Features f;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    // __builtin_cpu_supports checks the OS saves the wide registers (XCR0) as well.
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.f16c = __builtin_cpu_supports("f16c");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    f.avxvnni = __builtin_cpu_supports("avxvnni");
#endif
#elif defined(__aarch64__)
    f.neon = true;
#if defined(__ARM_FEATURE_DOTPROD)
    f.dotprod = true;
#endif
#endif
    return f;
}

const Features& features() {
    static Features f = detect();
    return f;
}

Simd best_simd() {
    const Features& f = features();
    if (f.neon) return Simd::neon;
    if (f.avx512f && f.avx512bw && f.avx512vl && f.fma && f.f16c) return Simd::avx512;
    if (f.avx2 && f.fma && f.f16c) return Simd::avx2;
    return Simd::scalar;
}

static Simd g_forced = (Simd)-1;

Simd active_simd() { return g_forced == (Simd)-1 ? best_simd() : g_forced; }

void force_simd(Simd s) {
    Simd b = best_simd();
    bool ok = s == Simd::scalar || s == b || (b == Simd::avx512 && s == Simd::avx2);
    if (!ok) throw std::runtime_error(std::string("this CPU cannot run SIMD level ") + simd_name(s));
    g_forced = s;
}

const char* simd_name(Simd s) {
    switch (s) {
        case Simd::scalar: return "scalar";
        case Simd::avx2: return "avx2";
        case Simd::avx512: return "avx512";
        case Simd::neon: return "neon";
    }
    return "?";
}

std::string features_string() {
    const Features& f = features();
    std::string s;
    auto add = [&](bool on, const char* n) { if (on) { if (!s.empty()) s += " "; s += n; } };
    add(f.avx2, "avx2"); add(f.fma, "fma"); add(f.f16c, "f16c"); add(f.avx512f, "avx512f");
    add(f.avx512bw, "avx512bw"); add(f.avx512vl, "avx512vl"); add(f.avx512vnni, "avx512vnni");
    add(f.avxvnni, "avxvnni"); add(f.neon, "neon"); add(f.dotprod, "dotprod");
    return s;
}

int default_threads() {
    int n = (int)std::thread::hardware_concurrency();
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
    // cgroup v2 quota: "max 100000" or "200000 100000"
    std::ifstream q("/sys/fs/cgroup/cpu.max");
    std::string quota, period;
    if (q >> quota >> period && quota != "max") {
        double cores = std::stod(quota) / std::stod(period);
        int c = (int)std::ceil(cores);
        if (c > 0 && c < n) n = c;
    }
#endif
    return n > 0 ? n : 1;
}

}  // namespace llmetal::cpu
