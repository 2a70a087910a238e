// alloc_hooks.cpp -- counts every heap and mmap allocation made by engine code, so tests can
// assert that a replayed token allocates nothing.
//
// operator new/delete are replaced for this module (its own calls bind to these definitions
// first). On Linux the linker also redirects the engine objects' calls to malloc, calloc,
// realloc, posix_memalign, aligned_alloc and mmap through the __wrap_* functions below
// (-Wl,--wrap=..., see CMakeLists.txt). Allocations made inside other libraries
// (libstdc++'s own internals, Python, numpy) are not counted: they are not the engine's.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include <sys/mman.h>

namespace llmetal {
std::atomic<uint64_t> g_alloc_count{0};
uint64_t alloc_count() { return g_alloc_count.load(std::memory_order_relaxed); }
}  // namespace llmetal

using llmetal::g_alloc_count;

#if defined(LLMETAL_WRAP_ALLOC)
extern "C" {
void* __real_malloc(size_t);
void* __real_calloc(size_t, size_t);
void* __real_realloc(void*, size_t);
int __real_posix_memalign(void**, size_t, size_t);
void* __real_aligned_alloc(size_t, size_t);
void* __real_mmap(void*, size_t, int, int, int, off_t);

void* __wrap_malloc(size_t n) { g_alloc_count.fetch_add(1, std::memory_order_relaxed); return __real_malloc(n); }
void* __wrap_calloc(size_t a, size_t b) { g_alloc_count.fetch_add(1, std::memory_order_relaxed); return __real_calloc(a, b); }
void* __wrap_realloc(void* p, size_t n) { g_alloc_count.fetch_add(1, std::memory_order_relaxed); return __real_realloc(p, n); }
int __wrap_posix_memalign(void** p, size_t a, size_t n) {
    g_alloc_count.fetch_add(1, std::memory_order_relaxed);
    return __real_posix_memalign(p, a, n);
}
void* __wrap_aligned_alloc(size_t a, size_t n) { g_alloc_count.fetch_add(1, std::memory_order_relaxed); return __real_aligned_alloc(a, n); }
void* __wrap_mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
    g_alloc_count.fetch_add(1, std::memory_order_relaxed);
    return __real_mmap(addr, len, prot, flags, fd, off);
}
}
#endif

// operator new / delete for this module: count once, then take memory from the C allocator.
#if defined(LLMETAL_WRAP_ALLOC)
#define RAW_MALLOC __real_malloc
#define RAW_MEMALIGN __real_posix_memalign
#else
#define RAW_MALLOC std::malloc
#define RAW_MEMALIGN posix_memalign
#endif
static void* counted_new(size_t n) {
    g_alloc_count.fetch_add(1, std::memory_order_relaxed);
    void* p = RAW_MALLOC(n ? n : 1);
    if (!p) throw std::bad_alloc();
    return p;
}
static void* counted_new_aligned(size_t n, size_t al) {
    g_alloc_count.fetch_add(1, std::memory_order_relaxed);
    void* p = nullptr;
    if (RAW_MEMALIGN(&p, al < sizeof(void*) ? sizeof(void*) : al, n ? n : 1) != 0) throw std::bad_alloc();
    return p;
}
void* operator new(size_t n) { return counted_new(n); }
void* operator new[](size_t n) { return counted_new(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { try { return counted_new(n); } catch (...) { return nullptr; } }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { try { return counted_new(n); } catch (...) { return nullptr; } }
void* operator new(size_t n, std::align_val_t a) { return counted_new_aligned(n, (size_t)a); }
void* operator new[](size_t n, std::align_val_t a) { return counted_new_aligned(n, (size_t)a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
