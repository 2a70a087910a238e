// metal_shim.h -- makes plain MSL compile as C++17 (g++ >= 12 / clang >= 15) for the emulator.
//
// prepass.py includes this first in every translated .metal file. What it maps:
//   address spaces      device, thread -> nothing; constant -> const; threadgroup -> nothing
//                       (threadgroup *declarations* are rewritten by the pre-pass into
//                       emu::tg_var, memory shared by the threadgroup and poisoned with NaN)
//   scalar types        half = _Float16, uchar/ushort/uint/ulong
//   vector types        float2..4, half2..4, int/uint/short/ushort/uchar 2..4: members x y z w,
//                       [i], elementwise arithmetic, scalar broadcast; NO swizzles
//   math                metal:: (and metal::precise::, metal::fast::) float functions
//   SIMD groups         simd_sum/max/min/shuffle/shuffle_xor/shuffle_down/broadcast/
//                       broadcast_first/all/any: rendezvous of the 32 lanes (runtime.cpp)
//   matrices            simdgroup_float8x8 / simdgroup_half8x8, simdgroup_load/store,
//                       simdgroup_multiply(_accumulate), make_filled_simdgroup_matrix
//   barriers            threadgroup_barrier, simdgroup_barrier (mem_flags accepted, ignored:
//                       the emulator's memory is always coherent)
// Every synchronizing call records its file:line (the pre-pass keeps the .metal's lines), so
// errors point at the kernel source.
#pragma once
#include <stdint.h>

#include "runtime.h"

// ---- the two builds ---------------------------------------------------------------------------------
// Each translated .metal file is compiled as is (the plain build) and, where the compiler has
// access hooks, again with LLMETAL_EMU_COUNTED_BUILD and -fsanitize=thread (the counted build:
// see "memory traffic" in runtime.h). Everything the two builds define -- this header's inline
// functions and the kernels themselves, which prepass.py puts between EMU_KERNELS_BEGIN and
// EMU_KERNELS_END -- lives in a namespace named for the build, so the linker never merges an
// instrumented function with its plain twin.
#if defined(LLMETAL_EMU_COUNTED_BUILD)
#define EMU_VARIANT counted
#define EMU_COUNTED_BUILD true
// the matrix loads and stores count their bytes themselves, once per SIMD group
#define EMU_NO_HOOKS __attribute__((no_sanitize("thread")))
#else
#define EMU_VARIANT plain
#define EMU_COUNTED_BUILD false
#define EMU_NO_HOOKS
#endif
#define EMU_KERNELS_BEGIN namespace emu_kernels { inline namespace EMU_VARIANT {
#define EMU_KERNELS_END } }

// ---- address spaces and function qualifiers ------------------------------------------------
#define device
#define thread
#define constant const
#define threadgroup
#define kernel

// ---- scalar types ------------------------------------------------------------------------------
typedef _Float16 half;
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;

#ifndef INFINITY
#define INFINITY (__builtin_inff())
#endif
#ifndef FLT_MAX
#define FLT_MAX 3.40282347e+38F
#endif
#ifndef HALF_MAX
#define HALF_MAX ((half)65504.0f)
#endif
#ifndef M_PI_F
#define M_PI_F 3.14159265358979323846264338327950288f
#endif

// ---- vector types ---------------------------------------------------------------------------------
namespace emu {
inline namespace EMU_VARIANT {
template <class T, int N> struct vec;
template <class T> struct vec<T, 2> {
    T x, y;
    vec() = default;
    constexpr vec(T s) : x(s), y(s) {}
    constexpr vec(T a, T b) : x(a), y(b) {}
    template <class U> explicit constexpr vec(const vec<U, 2>& o) : x(T(o.x)), y(T(o.y)) {}
    T& operator[](int i) { return (&x)[i]; }
    const T& operator[](int i) const { return (&x)[i]; }
};
template <class T> struct vec<T, 3> {
    T x, y, z;
    vec() = default;
    constexpr vec(T s) : x(s), y(s), z(s) {}
    constexpr vec(T a, T b, T c) : x(a), y(b), z(c) {}
    template <class U> explicit constexpr vec(const vec<U, 3>& o) : x(T(o.x)), y(T(o.y)), z(T(o.z)) {}
    T& operator[](int i) { return (&x)[i]; }
    const T& operator[](int i) const { return (&x)[i]; }
};
template <class T> struct vec<T, 4> {
    T x, y, z, w;
    vec() = default;
    constexpr vec(T s) : x(s), y(s), z(s), w(s) {}
    constexpr vec(T a, T b, T c, T d) : x(a), y(b), z(c), w(d) {}
    template <class U> explicit constexpr vec(const vec<U, 4>& o) : x(T(o.x)), y(T(o.y)), z(T(o.z)), w(T(o.w)) {}
    T& operator[](int i) { return (&x)[i]; }
    const T& operator[](int i) const { return (&x)[i]; }
};
#define EMU_VEC_OP(op)                                                                      \
    template <class T, int N> vec<T, N> operator op(vec<T, N> a, const vec<T, N>& b) {      \
        for (int i = 0; i < N; ++i) a[i] = a[i] op b[i];                                   \
        return a;                                                                          \
    }                                                                                      \
    template <class T, int N> vec<T, N> operator op(vec<T, N> a, T b) {                     \
        for (int i = 0; i < N; ++i) a[i] = a[i] op b;                                      \
        return a;                                                                          \
    }                                                                                      \
    template <class T, int N> vec<T, N> operator op(T a, vec<T, N> b) {                     \
        for (int i = 0; i < N; ++i) b[i] = a op b[i];                                      \
        return b;                                                                          \
    }                                                                                      \
    template <class T, int N> vec<T, N>& operator op##=(vec<T, N>& a, const vec<T, N>& b) { \
        return a = a op b;                                                                 \
    }                                                                                      \
    template <class T, int N> vec<T, N>& operator op##=(vec<T, N>& a, T b) { return a = a op b; }
EMU_VEC_OP(+)
EMU_VEC_OP(-)
EMU_VEC_OP(*)
EMU_VEC_OP(/)
#undef EMU_VEC_OP

// A kernel's position argument from the runtime's three values, in the declared type.
template <class P> struct PosCast { static P get(const Pos3& p) { return (P)p.x; } };
template <class T> struct PosCast<vec<T, 2>> { static vec<T, 2> get(const Pos3& p) { return {(T)p.x, (T)p.y}; } };
template <class T> struct PosCast<vec<T, 3>> {
    static vec<T, 3> get(const Pos3& p) { return {(T)p.x, (T)p.y, (T)p.z}; }
};
template <class P> P pos(const Pos3& p) { return PosCast<P>::get(p); }
template <class P> P pos(uint32_t v) { return (P)v; }
}  // namespace EMU_VARIANT
}  // namespace emu

#define EMU_VEC_TYPES(T, name) \
    typedef emu::vec<T, 2> name##2; typedef emu::vec<T, 3> name##3; typedef emu::vec<T, 4> name##4;
EMU_VEC_TYPES(float, float)
EMU_VEC_TYPES(half, half)
EMU_VEC_TYPES(int, int)
EMU_VEC_TYPES(uint, uint)
EMU_VEC_TYPES(short, short)
EMU_VEC_TYPES(ushort, ushort)
EMU_VEC_TYPES(uchar, uchar)
EMU_VEC_TYPES(signed char, char)
EMU_VEC_TYPES(ulong, ulong)
#undef EMU_VEC_TYPES

// ---- math (float functions; half goes through float) ------------------------------------------------
namespace metal {
inline namespace EMU_VARIANT {
#define EMU_F1(name, builtin)                                             \
    inline float name(float x) { return builtin(x); }                     \
    inline half name(half x) { return (half)builtin((float)x); }
EMU_F1(exp, __builtin_expf)
EMU_F1(exp2, __builtin_exp2f)
EMU_F1(log, __builtin_logf)
EMU_F1(log2, __builtin_log2f)
EMU_F1(sqrt, __builtin_sqrtf)
EMU_F1(tanh, __builtin_tanhf)
EMU_F1(sin, __builtin_sinf)
EMU_F1(cos, __builtin_cosf)
EMU_F1(tan, __builtin_tanf)
EMU_F1(floor, __builtin_floorf)
EMU_F1(ceil, __builtin_ceilf)
EMU_F1(round, __builtin_roundf)
EMU_F1(rint, __builtin_rintf)
EMU_F1(trunc, __builtin_truncf)
EMU_F1(fabs, __builtin_fabsf)
#undef EMU_F1
inline float rsqrt(float x) { return 1.0f / __builtin_sqrtf(x); }
inline float pow(float x, float y) { return __builtin_powf(x, y); }
inline float fmax(float a, float b) { return __builtin_fmaxf(a, b); }
inline float fmin(float a, float b) { return __builtin_fminf(a, b); }
inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline float abs(float x) { return __builtin_fabsf(x); }
inline half abs(half x) { return (half)__builtin_fabsf((float)x); }
template <class T> inline T max(T a, T b) { return a < b ? b : a; }
template <class T> inline T min(T a, T b) { return b < a ? b : a; }
template <class T> inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <class T> inline T select(T a, T b, bool c) { return c ? b : a; }
inline float mix(float a, float b, float t) { return a + (b - a) * t; }
template <class T, int N> inline T dot(const emu::vec<T, N>& a, const emu::vec<T, N>& b) {
    T s = a[0] * b[0];
    for (int i = 1; i < N; ++i) s += a[i] * b[i];
    return s;
}
// bit reinterpretation
template <class To, class From> inline To as_type(const From& v) {
    static_assert(sizeof(To) == sizeof(From), "as_type: sizes differ");
    To t;
    __builtin_memcpy(&t, &v, sizeof t);
    return t;
}
// Metal's precise:: and fast:: variants: the emulator computes both in IEEE float
namespace precise {
using metal::cos; using metal::exp; using metal::exp2; using metal::log; using metal::pow;
using metal::rsqrt; using metal::sin; using metal::sqrt; using metal::tanh;
}  // namespace precise
namespace fast {
using metal::cos; using metal::exp; using metal::exp2; using metal::log; using metal::pow;
using metal::rsqrt; using metal::sin; using metal::sqrt; using metal::tanh;
}  // namespace fast
}  // namespace EMU_VARIANT
}  // namespace metal
using namespace metal;

// ---- barriers ----------------------------------------------------------------------------------------
enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return (mem_flags)((int)a | (int)b); }

namespace emu {
inline namespace EMU_VARIANT {
inline void barrier_(const char* f, int l) { sync(Scope::group, "threadgroup_barrier", f, l, nullptr, 0); }
inline void simd_barrier_(const char* f, int l) { sync(Scope::simd, "simdgroup_barrier", f, l, nullptr, 0); }

template <class T> T& tg_var(const char* type, const char* f, int l) {
    return *(T*)tg_alloc(sizeof(T), alignof(T), type, f, l);
}

// ---- SIMD-group reductions and shuffles --------------------------------------------------------
template <class T> T lane_in(Slot* s) { T v; __builtin_memcpy(&v, s->in, sizeof v); return v; }
template <class T> void lane_out(Slot* s, const T& v) { __builtin_memcpy(s->out, &v, sizeof v); }

template <class T> void res_sum(Slot* const* l, int n) {
    T acc = lane_in<T>(l[0]);
    for (int i = 1; i < n; ++i) acc = acc + lane_in<T>(l[i]);
    for (int i = 0; i < n; ++i) lane_out(l[i], acc);
}
template <class T> void res_max(Slot* const* l, int n) {
    T acc = lane_in<T>(l[0]);
    for (int i = 1; i < n; ++i) acc = metal::max(acc, lane_in<T>(l[i]));
    for (int i = 0; i < n; ++i) lane_out(l[i], acc);
}
template <class T> void res_min(Slot* const* l, int n) {
    T acc = lane_in<T>(l[0]);
    for (int i = 1; i < n; ++i) acc = metal::min(acc, lane_in<T>(l[i]));
    for (int i = 0; i < n; ++i) lane_out(l[i], acc);
}
// lane i reads lane src(i); a source outside the group leaves the lane's own value
template <class T, int MODE> void res_shuffle(Slot* const* l, int n) {
    T v[SIMD_WIDTH];
    for (int i = 0; i < n; ++i) v[i] = lane_in<T>(l[i]);
    for (int i = 0; i < n; ++i) {
        uint32_t a = l[i]->arg;
        int src = MODE == 0 ? (int)a : MODE == 1 ? (int)(i ^ a) : MODE == 2 ? i + (int)a : i - (int)a;
        lane_out(l[i], (src >= 0 && src < n) ? v[src] : v[i]);
    }
}
template <class T> void res_first(Slot* const* l, int n) {
    T v = lane_in<T>(l[0]);
    for (int i = 0; i < n; ++i) lane_out(l[i], v);
}
inline void res_all(Slot* const* l, int n) {
    bool r = true;
    for (int i = 0; i < n; ++i) r &= lane_in<bool>(l[i]);
    for (int i = 0; i < n; ++i) lane_out(l[i], r);
}
inline void res_any(Slot* const* l, int n) {
    bool r = false;
    for (int i = 0; i < n; ++i) r |= lane_in<bool>(l[i]);
    for (int i = 0; i < n; ++i) lane_out(l[i], r);
}

enum Op { SUM, MAX, MIN, SHUF, XOR, DOWN, UP, FIRST, ALL, ANY };
template <int OP, class T> ResolveFn resolver() {
    if constexpr (OP == SUM) return &res_sum<T>;
    else if constexpr (OP == MAX) return &res_max<T>;
    else if constexpr (OP == MIN) return &res_min<T>;
    else if constexpr (OP == SHUF) return &res_shuffle<T, 0>;
    else if constexpr (OP == XOR) return &res_shuffle<T, 1>;
    else if constexpr (OP == DOWN) return &res_shuffle<T, 2>;
    else if constexpr (OP == UP) return &res_shuffle<T, 3>;
    else if constexpr (OP == FIRST) return &res_first<T>;
    else if constexpr (OP == ALL) return &res_all;
    else return &res_any;
}
// T is deduced by value: no reference, no const
template <int OP, class T> T collective(const char* op, T v, uint32_t arg, const char* f, int l) {
    static_assert(sizeof(T) <= sizeof(Slot::in), "value too large for a SIMD-group operation");
    Slot& s = my_slot();
    __builtin_memcpy(s.in, &v, sizeof v);
    s.arg = arg;
    sync(Scope::simd, op, f, l, resolver<OP, T>(), 0);
    T r;
    __builtin_memcpy(&r, my_slot().out, sizeof r);
    return r;
}
}  // namespace EMU_VARIANT
}  // namespace emu

#define simd_sum(v) ::emu::collective<::emu::SUM>("simd_sum", (v), 0u, __FILE__, __LINE__)
#define simd_max(v) ::emu::collective<::emu::MAX>("simd_max", (v), 0u, __FILE__, __LINE__)
#define simd_min(v) ::emu::collective<::emu::MIN>("simd_min", (v), 0u, __FILE__, __LINE__)
#define simd_shuffle(v, i) ::emu::collective<::emu::SHUF>("simd_shuffle", (v), (uint32_t)(i), __FILE__, __LINE__)
#define simd_broadcast(v, i) ::emu::collective<::emu::SHUF>("simd_broadcast", (v), (uint32_t)(i), __FILE__, __LINE__)
#define simd_shuffle_xor(v, m) ::emu::collective<::emu::XOR>("simd_shuffle_xor", (v), (uint32_t)(m), __FILE__, __LINE__)
#define simd_shuffle_down(v, d) ::emu::collective<::emu::DOWN>("simd_shuffle_down", (v), (uint32_t)(d), __FILE__, __LINE__)
#define simd_shuffle_up(v, d) ::emu::collective<::emu::UP>("simd_shuffle_up", (v), (uint32_t)(d), __FILE__, __LINE__)
#define simd_broadcast_first(v) ::emu::collective<::emu::FIRST>("simd_broadcast_first", (v), 0u, __FILE__, __LINE__)
#define simd_all(c) ::emu::collective<::emu::ALL>("simd_all", (bool)(c), 0u, __FILE__, __LINE__)
#define simd_any(c) ::emu::collective<::emu::ANY>("simd_any", (bool)(c), 0u, __FILE__, __LINE__)
#define threadgroup_barrier(flags) ::emu::barrier_(__FILE__, __LINE__)
#define simdgroup_barrier(flags) ::emu::simd_barrier_(__FILE__, __LINE__)

// ---- simdgroup matrices ---------------------------------------------------------------------------
// On the GPU an 8x8 matrix is spread over the 32 lanes; here every lane holds all of it. Each
// operation is a SIMD-group rendezvous (all lanes must reach it, with the same address and
// stride), after which every lane computes the whole result itself.
namespace metal {
inline namespace EMU_VARIANT {
template <class T, int R, int C> struct simdgroup_matrix { T e[R * C]; };
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
template <class T, int R, int C> simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T v) {
    simdgroup_matrix<T, R, C> m;
    for (int i = 0; i < R * C; ++i) m.e[i] = v;
    return m;
}
}  // namespace EMU_VARIANT
}  // namespace metal

namespace emu {
inline namespace EMU_VARIANT {
struct MatArgs { const void* p; uint64_t epr, ox, oy; uint32_t transpose; uint32_t pad; };
inline void mat_sync(const char* op, const void* p, uint64_t epr, ulong2 origin, bool tr, const char* f, int l) {
    MatArgs a{p, epr, origin.x, origin.y, tr ? 1u : 0u, 0u};
    Slot& s = my_slot();
    __builtin_memcpy(s.in, &a, sizeof a);
    sync(Scope::simd, op, f, l, nullptr, (int)sizeof a);
}
// Counted build: the bytes an 8x8 load or store moves, counted by lane 0 of the SIMD group
// (every lane here reads the whole matrix; on the GPU each lane moves its share once). Row i
// of the stored matrix is contiguous in memory, or column i when transposed.
template <int R, int C, class U>
inline void sg_count(const U* p, ulong epr, ulong2 origin, bool tr, bool write) {
    if (!EMU_COUNTED_BUILD || lane_in_simdgroup() != 0) return;
    const int runs = tr ? C : R, len = tr ? R : C;
    for (int i = 0; i < runs; ++i) count_access(p + (origin.y + i) * epr + origin.x, (uint64_t)len * sizeof(U), write);
}
// element (r, c) of the matrix sits at src[(oy + r) * epr + ox + c], or at (oy + c, ox + r)
// when transposed
template <class T, int R, int C, class U>
EMU_NO_HOOKS void sg_load(const char* f, int l, metal::simdgroup_matrix<T, R, C>& d, const U* src, ulong epr = C,
                          ulong2 origin = ulong2(0), bool tr = false) {
    mat_sync("simdgroup_load", src, epr, origin, tr, f, l);
    sg_count<R, C>(src, epr, origin, tr, false);
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c)
            d.e[r * C + c] = (T)(tr ? src[(origin.y + c) * epr + origin.x + r] : src[(origin.y + r) * epr + origin.x + c]);
}
template <class T, int R, int C, class U>
EMU_NO_HOOKS void sg_store(const char* f, int l, const metal::simdgroup_matrix<T, R, C>& m, U* dst, ulong epr = C,
                           ulong2 origin = ulong2(0), bool tr = false) {
    mat_sync("simdgroup_store", dst, epr, origin, tr, f, l);
    sg_count<R, C>((const U*)dst, epr, origin, tr, true);
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            U v = (U)m.e[r * C + c];
            if (tr) dst[(origin.y + c) * epr + origin.x + r] = v;
            else dst[(origin.y + r) * epr + origin.x + c] = v;
        }
}
template <class T, int R, int K, int C, class TA, class TB, class TC>
void sg_mma(const char* f, int l, metal::simdgroup_matrix<T, R, C>& d, const metal::simdgroup_matrix<TA, R, K>& a,
            const metal::simdgroup_matrix<TB, K, C>& b, const metal::simdgroup_matrix<TC, R, C>& c) {
    sync(Scope::simd, "simdgroup_multiply_accumulate", f, l, nullptr, 0);
    metal::simdgroup_matrix<T, R, C> out;
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) {
            float s = (float)c.e[i * C + j];
            for (int k = 0; k < K; ++k) s += (float)a.e[i * K + k] * (float)b.e[k * C + j];
            out.e[i * C + j] = (T)s;
        }
    d = out;
}
template <class T, int R, int K, int C, class TA, class TB>
void sg_mul(const char* f, int l, metal::simdgroup_matrix<T, R, C>& d, const metal::simdgroup_matrix<TA, R, K>& a,
            const metal::simdgroup_matrix<TB, K, C>& b) {
    sg_mma(f, l, d, a, b, metal::make_filled_simdgroup_matrix<T, R, C>((T)0));
}
}  // namespace EMU_VARIANT
}  // namespace emu

#define simdgroup_load(...) ::emu::sg_load(__FILE__, __LINE__, __VA_ARGS__)
#define simdgroup_store(...) ::emu::sg_store(__FILE__, __LINE__, __VA_ARGS__)
#define simdgroup_multiply_accumulate(...) ::emu::sg_mma(__FILE__, __LINE__, __VA_ARGS__)
#define simdgroup_multiply(...) ::emu::sg_mul(__FILE__, __LINE__, __VA_ARGS__)
