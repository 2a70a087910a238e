// msl_strict.h -- the Metal Shading Language subset the kernels use, declared for clang (16+)
// in C++14 mode (Metal 3.0 is C++14-based) with MSL's address spaces kept apart, so that a
// pointer passed across address spaces fails to compile here as it does under Apple's
// compiler. Used only by the strict compile check (tests/metal_shim/msl_check.py, which puts
// it where `#include <metal_stdlib>` was); the emulator's runtime header,
// cpp/metal_emu/metal_shim.h, maps the spaces away instead.
//
//   address spaces   device, constant, threadgroup: distinct clang address spaces (1, 2, 3);
//                    thread: the default (an unqualified pointer or reference is thread). A
//                    pointer or reference passed or assigned across spaces does not compile;
//                    an explicit cast across spaces compiles in C++ but not in MSL: the check
//                    rejects it from clang's AST (an AddressSpaceConversion).
//   kernel           expands to nothing: msl_check.py checks the entry points themselves
//                    ([[buffer(n)]] and position attributes only on `kernel` functions, each
//                    index once, host names) and rewrites kernel-scope threadgroup arrays as
//                    references to threadgroup memory (a local variable cannot carry an
//                    address space in C++).
//   types            half = _Float16; uchar..ulong; the fixed-width integers (Metal has them
//                    built in: kargs.h includes no <stdint.h> under __METAL_VERSION__); vector
//                    types as clang ext_vector_type, which has MSL's swizzles and operators
//                    (but not MSL's constructor from several values, float4(a, b, c, d): no
//                    kernel builds a vector so); no double.
//   builtins         declarations only (the check is -fsyntax-only): math in metal:: (and
//                    precise::, fast::) for float and half, SIMD-group reductions and shuffles
//                    of scalar and vector values, barriers with mem_flags, as_type, the 8x8
//                    simdgroup matrices loaded from and stored to device or threadgroup memory
//                    (never thread memory, as in MSL). The signatures are written from Apple's
//                    Metal Shading Language Specification (Apple's headers are not here); a
//                    builtin a kernel needs and this file lacks is an error here, to be added
//                    from that specification. No atomics or textures: the emulator has none
//                    (metal/README.md, rule 6).
#pragma once

#define __METAL_VERSION__ 300

// ---- address spaces ----------------------------------------------------------------------
#define device __attribute__((address_space(1)))
#define constant __attribute__((address_space(2)))
#define threadgroup __attribute__((address_space(3)))
#define thread
#define kernel
// Metal has no double: a kernel that names the type fails here as it would on a Mac
#define double msl_strict_double_is_not_in_MSL

// ---- scalar types --------------------------------------------------------------------------
typedef _Float16 half;
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long int64_t;
typedef unsigned long uint64_t;
typedef unsigned long size_t;
typedef long ptrdiff_t;

#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define FLT_MAX 0x1.fffffep127f
#define MAXFLOAT 0x1.fffffep127f
#define HALF_MAX ((half)65504.0f)
#define M_PI_F 3.14159265358979323846264338327950288f

// ---- vector types ---------------------------------------------------------------------------
#define MSL_VECTORS(T, name)                                   \
    typedef T name##2 __attribute__((ext_vector_type(2)));     \
    typedef T name##3 __attribute__((ext_vector_type(3)));     \
    typedef T name##4 __attribute__((ext_vector_type(4)));
MSL_VECTORS(float, float)
MSL_VECTORS(half, half)
MSL_VECTORS(int, int)
MSL_VECTORS(uint, uint)
MSL_VECTORS(short, short)
MSL_VECTORS(ushort, ushort)
MSL_VECTORS(char, char)
MSL_VECTORS(uchar, uchar)
MSL_VECTORS(long, long)
MSL_VECTORS(ulong, ulong)
#undef MSL_VECTORS

namespace metal {

// ---- math: float and half (metal::, precise::, fast::) ----------------------------------------
#define MSL_MATH1(name) float name(float x); half name(half x);
#define MSL_MATH2(name) float name(float x, float y); half name(half x, half y);
#define MSL_MATH_ALL                                                                            \
    MSL_MATH1(exp) MSL_MATH1(exp2) MSL_MATH1(log) MSL_MATH1(log2) MSL_MATH1(sqrt)                \
    MSL_MATH1(rsqrt) MSL_MATH1(tanh) MSL_MATH1(sin) MSL_MATH1(cos) MSL_MATH1(tan)               \
    MSL_MATH1(floor) MSL_MATH1(ceil) MSL_MATH1(round) MSL_MATH1(rint) MSL_MATH1(trunc)          \
    MSL_MATH1(fabs) MSL_MATH2(pow) MSL_MATH2(fmax) MSL_MATH2(fmin)                              \
    float fma(float a, float b, float c); half fma(half a, half b, half c);
MSL_MATH_ALL
namespace precise { MSL_MATH_ALL }
namespace fast { MSL_MATH_ALL }
#undef MSL_MATH_ALL
#undef MSL_MATH2
#undef MSL_MATH1
bool isnan(float x);
bool isinf(float x);
bool isfinite(float x);
float mix(float x, float y, float a);

// abs, min, max, clamp, select: one overload per scalar type, so mixed types are ambiguous as in
// MSL (max(0, x) with x float does not compile)
#define MSL_MINMAX(T)                                                                        \
    T abs(T x); T min(T x, T y); T max(T x, T y); T clamp(T x, T lo, T hi);                   \
    T select(T a, T b, bool c);
MSL_MINMAX(float) MSL_MINMAX(half) MSL_MINMAX(char) MSL_MINMAX(uchar) MSL_MINMAX(short)
MSL_MINMAX(ushort) MSL_MINMAX(int) MSL_MINMAX(uint) MSL_MINMAX(long) MSL_MINMAX(ulong)
#undef MSL_MINMAX

float dot(float2 a, float2 b); float dot(float3 a, float3 b); float dot(float4 a, float4 b);
half dot(half2 a, half2 b); half dot(half3 a, half3 b); half dot(half4 a, half4 b);

// bit reinterpretation between scalar or vector types of one size
template <class To, class From> To as_type(From v) {
    static_assert(sizeof(To) == sizeof(From), "as_type: the two types differ in size");
    return __builtin_bit_cast(To, v);
}

// ---- barriers ---------------------------------------------------------------------------------
enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
mem_flags operator|(mem_flags a, mem_flags b);
void threadgroup_barrier(mem_flags flags);
void simdgroup_barrier(mem_flags flags);

// ---- SIMD-group functions, for every scalar and vector value type -----------------------------
#define MSL_SIMD(T)                                                                          \
    T simd_sum(T v); T simd_product(T v); T simd_max(T v); T simd_min(T v);                   \
    T simd_prefix_inclusive_sum(T v); T simd_prefix_exclusive_sum(T v);                      \
    T simd_shuffle(T v, ushort lane); T simd_shuffle_xor(T v, ushort mask);                  \
    T simd_shuffle_down(T v, ushort delta); T simd_shuffle_up(T v, ushort delta);            \
    T simd_broadcast(T v, ushort lane); T simd_broadcast_first(T v);
#define MSL_SIMD_VEC(T) MSL_SIMD(T) MSL_SIMD(T##2) MSL_SIMD(T##3) MSL_SIMD(T##4)
MSL_SIMD_VEC(float) MSL_SIMD_VEC(half) MSL_SIMD_VEC(int) MSL_SIMD_VEC(uint) MSL_SIMD_VEC(short)
MSL_SIMD_VEC(ushort) MSL_SIMD_VEC(char) MSL_SIMD_VEC(uchar)
#undef MSL_SIMD_VEC
#undef MSL_SIMD
bool simd_all(bool c);
bool simd_any(bool c);

// ---- simdgroup matrices (Cols x Rows, as MSL orders the parameters) ----------------------------
template <class T, int Cols, int Rows> struct simdgroup_matrix {
  private:
    T e_[Cols * Rows];   // opaque: spread over the SIMD group's lanes on the GPU
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;

template <class T, int Cols, int Rows> simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value);
template <class T, int Cols, int Rows>
void simdgroup_load(thread simdgroup_matrix<T, Cols, Rows>& d, const device T* src, ulong elements_per_row = Cols,
                    ulong2 matrix_origin = 0, bool transpose_matrix = false);
template <class T, int Cols, int Rows>
void simdgroup_load(thread simdgroup_matrix<T, Cols, Rows>& d, const threadgroup T* src,
                    ulong elements_per_row = Cols, ulong2 matrix_origin = 0, bool transpose_matrix = false);
template <class T, int Cols, int Rows>
void simdgroup_store(thread simdgroup_matrix<T, Cols, Rows> a, device T* dst, ulong elements_per_row = Cols,
                     ulong2 matrix_origin = 0, bool transpose_matrix = false);
template <class T, int Cols, int Rows>
void simdgroup_store(thread simdgroup_matrix<T, Cols, Rows> a, threadgroup T* dst, ulong elements_per_row = Cols,
                     ulong2 matrix_origin = 0, bool transpose_matrix = false);
template <class T, class TA, class TB, int Cols, int K, int Rows>
void simdgroup_multiply(thread simdgroup_matrix<T, Cols, Rows>& d, thread const simdgroup_matrix<TA, K, Rows>& a,
                        thread const simdgroup_matrix<TB, Cols, K>& b);
template <class T, class TA, class TB, class TC, int Cols, int K, int Rows>
void simdgroup_multiply_accumulate(thread simdgroup_matrix<T, Cols, Rows>& d,
                                   thread const simdgroup_matrix<TA, K, Rows>& a,
                                   thread const simdgroup_matrix<TB, Cols, K>& b,
                                   thread const simdgroup_matrix<TC, Cols, Rows>& c);

// ---- kernel-scope threadgroup variables ---------------------------------------------------------
// msl_check.py rewrites `threadgroup T name[N];` in a kernel body as
// `auto& name = ::metal::msl_strict_threadgroup_var<T[N]>();`: the same type, in
// threadgroup memory (not an MSL function; only the pre-pass writes it).
template <class T> threadgroup T& msl_strict_threadgroup_var();

}  // namespace metal
