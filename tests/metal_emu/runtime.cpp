// runtime.cpp -- fibers and the rendezvous scheduler of the Metal emulator (see runtime.h).
//
// The context switch: on x86-64 a hand-written switch (saves the six callee-saved registers
// and the stack pointer: a few ns); elsewhere ucontext (portable, slower: it saves the signal
// mask with a system call).
#include "runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

// ---- kernel registry -------------------------------------------------------------------------
// std::less<>: lookups by const char* construct no string (no allocation per dispatch)
static std::map<std::string, KernelFn, std::less<>>& registry() {
    static std::map<std::string, KernelFn, std::less<>> r;
    return r;
}
Register::Register(const char* name, KernelFn fn, const char*) { registry()[name] = fn; }
KernelFn find_kernel(const char* name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second;
}
std::string kernel_names() {
    std::string s;
    for (auto& kv : registry()) s += (s.empty() ? "" : ", ") + kv.first;
    return s;
}

Stats& stats() {
    static Stats s;
    return s;
}

// ---- context switch --------------------------------------------------------------------------
#if defined(__x86_64__)
extern "C" void llmetal_emu_switch(void** save_sp, void* to_sp);
extern "C" void llmetal_emu_trampoline();
asm(R"(
    .text
    .globl llmetal_emu_switch
    .hidden llmetal_emu_switch
    .type llmetal_emu_switch,@function
llmetal_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size llmetal_emu_switch, .-llmetal_emu_switch

    .globl llmetal_emu_trampoline
    .hidden llmetal_emu_trampoline
    .type llmetal_emu_trampoline,@function
llmetal_emu_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size llmetal_emu_trampoline, .-llmetal_emu_trampoline
)");
#endif

namespace {

constexpr size_t STACK_BYTES = 128 << 10;   // per fiber; a guard page below each

enum class St : uint8_t { ready, parked, done };

struct Fiber {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
    char* stack = nullptr;
    St st = St::ready;
    // where it is parked
    Scope scope = Scope::simd;
    const char* op = nullptr;
    const char* file = nullptr;
    int line = 0;
    ResolveFn resolve = nullptr;
    int uniform_bytes = 0;
    Slot slot;
    ThreadCtx ctx;
    int tg_decl = 0;            // index of the next threadgroup declaration it reaches
};

struct TgDecl { void* p; size_t bytes; const char* type; };

struct Runner {
    Runner() {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        region_bytes = (STACK_BYTES + page) * MAX_THREADS;
        region = (char*)mmap(nullptr, region_bytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (region == MAP_FAILED) throw std::runtime_error("metal-emu: cannot map fiber stacks");
        fibers.resize(MAX_THREADS);
        for (int i = 0; i < MAX_THREADS; ++i) {
            char* base = region + i * (STACK_BYTES + page);
            mprotect(base, page, PROT_NONE);     // a stack overflow faults instead of corrupting
            fibers[i].stack = base + page;
        }
        arena.resize(64 << 10);
        decls.reserve(64);
    }
    ~Runner() { munmap(region, region_bytes); }

    char* region = nullptr;
    size_t region_bytes = 0;
    std::vector<Fiber> fibers;
    std::vector<unsigned char> arena;    // threadgroup memory of the running group
    size_t arena_used = 0;
    std::vector<TgDecl> decls;           // threadgroup declarations of the running group
    const Launch* launch = nullptr;
    Fiber* cur = nullptr;
    std::string error;
#if defined(__x86_64__)
    void* main_sp = nullptr;
#else
    ucontext_t main_uc;
#endif
};

thread_local Runner* T = nullptr;

Runner& runner() {
    static thread_local std::unique_ptr<Runner> r;
    if (!r) r.reset(new Runner());
    T = r.get();
    return *r;
}

void to_scheduler() {
    Runner& r = *T;
    ++stats().switches;
#if defined(__x86_64__)
    llmetal_emu_switch(&r.cur->sp, r.main_sp);
#else
    swapcontext(&r.cur->uc, &r.main_uc);
#endif
}

void fiber_main(void* arg) {
    Fiber* f = (Fiber*)arg;
    T->launch->fn(f->ctx);
    f->st = St::done;
    to_scheduler();
    __builtin_trap();   // never resumed
}

#if !defined(__x86_64__)
void fiber_main_uc(unsigned lo, unsigned hi) {
    fiber_main((void*)(((uintptr_t)hi << 32) | lo));
}
#endif

void start_fiber(Fiber& f) {
    f.st = St::ready;
    f.tg_decl = 0;
#if defined(__x86_64__)
    uintptr_t top = ((uintptr_t)f.stack + STACK_BYTES) & ~(uintptr_t)15;
    void** sp = (void**)(top - 72);
    sp[0] = nullptr;                       // r15
    sp[1] = nullptr;                       // r14
    sp[2] = (void*)&fiber_main;            // r13: the function the trampoline calls
    sp[3] = &f;                            // r12: its argument
    sp[4] = nullptr;                       // rbx
    sp[5] = nullptr;                       // rbp
    sp[6] = (void*)&llmetal_emu_trampoline;  // return address of the first switch
    f.sp = sp;
#else
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack;
    f.uc.uc_stack.ss_size = STACK_BYTES;
    f.uc.uc_link = nullptr;
    uintptr_t p = (uintptr_t)&f;
    makecontext(&f.uc, (void (*)())fiber_main_uc, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
#endif
}

void resume(Runner& r, Fiber& f) {
    r.cur = &f;
    ++stats().switches;
#if defined(__x86_64__)
    llmetal_emu_switch(&r.main_sp, f.sp);
#else
    swapcontext(&r.main_uc, &f.uc);
#endif
    r.cur = nullptr;
}

std::string site(const Fiber& f) {
    if (f.st == St::done) return "returned";
    return std::string(f.op) + " at " + f.file + ":" + std::to_string(f.line);
}

// A list of thread indices as ranges: "0-31, 40".
std::string ranges(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size();) {
        size_t j = i;
        while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
        s += (s.empty() ? "" : ", ") + std::to_string(v[i]) + (j > i ? "-" + std::to_string(v[j]) : "");
        i = j + 1;
    }
    return s;
}

// Group the given fibers by where they wait: "threads 0-15: simd_sum at x.metal:12; threads 16-31: returned".
std::string where_they_are(Runner& r, const std::vector<int>& idx) {
    std::vector<std::pair<std::string, std::vector<int>>> groups;
    for (int i : idx) {
        std::string s = site(r.fibers[i]);
        auto it = std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == s; });
        if (it == groups.end()) groups.push_back({s, {i}});
        else it->second.push_back(i);
    }
    std::string out;
    for (auto& g : groups) out += (out.empty() ? "" : "; ") + std::string("threads ") + ranges(g.second) + ": " + g.first;
    return out;
}

[[noreturn]] void sync_error(Runner& r, const std::string& what) {
    throw std::runtime_error(std::string("metal-emu: ") + r.launch->name + ": " + what);
}

thread_local std::vector<int> scratch_all;

void run_group(Runner& r, const Launch& l, Schedule sched, uint32_t gx, uint32_t gy, uint32_t gz) {
    const uint32_t nx = l.tg[0], ny = l.tg[1], nz = l.tg[2];
    const int n = (int)(nx * ny * nz);
    // threadgroup memory: [[threadgroup(i)]] buffers first, poisoned; declarations follow
    std::memset(r.arena.data(), 0xFF, r.arena.size());
    r.arena_used = 0;
    r.decls.clear();
    void* tgbuf[8] = {};
    for (int i = 0; i < 8; ++i) {
        if (!l.tg_mem[i]) continue;
        tgbuf[i] = r.arena.data() + r.arena_used;
        r.arena_used += (l.tg_mem[i] + 15) & ~15u;
    }
    for (int i = 0; i < n; ++i) {
        Fiber& f = r.fibers[i];
        ThreadCtx& c = f.ctx;
        std::memcpy(c.buf, l.buf, sizeof c.buf);
        std::memcpy(c.tgbuf, tgbuf, sizeof c.tgbuf);
        uint32_t tx = i % nx, ty = (i / nx) % ny, tz = i / (nx * ny);
        c.tpitg = {tx, ty, tz};
        c.tgpig = {gx, gy, gz};
        c.tptg = {nx, ny, nz};
        c.tgpg = {l.grid[0], l.grid[1], l.grid[2]};
        c.tpg = {l.grid[0] * nx, l.grid[1] * ny, l.grid[2] * nz};
        c.tpig = {gx * nx + tx, gy * ny + ty, gz * nz + tz};
        c.tiitg = (uint32_t)i;
        c.tiisg = (uint32_t)(i % SIMD_WIDTH);
        c.sgitg = (uint32_t)(i / SIMD_WIDTH);
        start_fiber(f);
    }
    stats().threads += n;
    ++stats().threadgroups;
    const int n_sg = (n + SIMD_WIDTH - 1) / SIMD_WIDTH;
    std::vector<int>& all = scratch_all;
    all.resize(n);
    for (int i = 0; i < n; ++i) all[i] = i;

    for (;;) {
        // one pass: run every ready fiber to its next sync point
        for (int k = 0; k < n; ++k) {
            Fiber& f = r.fibers[sched == Schedule::forward ? k : n - 1 - k];
            if (f.st != St::ready) continue;
            resume(r, f);
            if (!r.error.empty()) {
                std::string e = r.error;
                r.error.clear();
                sync_error(r, e + " (thread " + std::to_string(f.ctx.tiitg) + ")");
            }
        }
        bool live = false, progress = false;
        for (int i = 0; i < n; ++i) live |= r.fibers[i].st != St::done;
        if (!live) return;
        // SIMD-group operations
        for (int g = 0; g < n_sg; ++g) {
            const int b = g * SIMD_WIDTH, e = std::min(n, b + SIMD_WIDTH);
            bool any_simd = false;
            for (int i = b; i < e; ++i)
                any_simd |= r.fibers[i].st == St::parked && r.fibers[i].scope == Scope::simd;
            if (!any_simd) continue;
            const Fiber& f0 = r.fibers[b];
            bool same = true;
            for (int i = b; i < e; ++i) {
                const Fiber& f = r.fibers[i];
                same &= f.st == St::parked && f.scope == Scope::simd && f.line == f0.line &&
                        std::strcmp(f.file, f0.file) == 0 && std::strcmp(f.op, f0.op) == 0;
            }
            if (!same) {
                std::vector<int> lanes;
                for (int i = b; i < e; ++i) lanes.push_back(i);
                sync_error(r, "divergent SIMD-group operation in SIMD group " + std::to_string(g) + " of threadgroup (" +
                                  std::to_string(gx) + "," + std::to_string(gy) + "," + std::to_string(gz) +
                                  "): " + where_they_are(r, lanes) +
                                  " (every lane must reach the same simd_* / simdgroup_* call)");
            }
            if (f0.uniform_bytes)
                for (int i = b + 1; i < e; ++i)
                    if (std::memcmp(r.fibers[i].slot.in, f0.slot.in, f0.uniform_bytes) != 0)
                        sync_error(r, std::string(f0.op) + " at " + f0.file + ":" + std::to_string(f0.line) +
                                          ": arguments differ between lanes " + std::to_string(b) + " and " +
                                          std::to_string(i) + " (they must be uniform across the SIMD group)");
            Slot* slots[SIMD_WIDTH];
            for (int i = b; i < e; ++i) slots[i - b] = &r.fibers[i].slot;
            if (f0.resolve) f0.resolve(slots, e - b);
            for (int i = b; i < e; ++i) r.fibers[i].st = St::ready;
            ++stats().rendezvous;
            progress = true;
        }
        if (progress) continue;
        // the threadgroup barrier
        bool all_at_barrier = true, any_at_barrier = false;
        const Fiber* first = nullptr;
        for (int i = 0; i < n; ++i) {
            const Fiber& f = r.fibers[i];
            bool at = f.st == St::parked && f.scope == Scope::group;
            if (at && !first) first = &f;
            any_at_barrier |= at;
            all_at_barrier &= at && f.line == first->line && std::strcmp(f.file, first->file) == 0;
        }
        if (all_at_barrier) {
            for (int i = 0; i < n; ++i) r.fibers[i].st = St::ready;
            ++stats().rendezvous;
            continue;
        }
        if (any_at_barrier)
            sync_error(r, "threadgroup_barrier not reached by every thread of threadgroup (" + std::to_string(gx) +
                              "," + std::to_string(gy) + "," + std::to_string(gz) + "): " + where_they_are(r, all) +
                              " (never return or branch around a barrier)");
        sync_error(r, "deadlock: " + where_they_are(r, all));
    }
}

}  // namespace

void run(const Launch& l, Schedule sched) {
    Runner& r = runner();
    uint64_t n = (uint64_t)l.tg[0] * l.tg[1] * l.tg[2];
    if (!l.fn) throw std::runtime_error(std::string("metal-emu: no kernel for ") + l.name);
    if (n == 0 || n > MAX_THREADS)
        throw std::runtime_error(std::string("metal-emu: ") + l.name + ": threadgroup of " + std::to_string(n) +
                                 " threads (1.." + std::to_string(MAX_THREADS) + " allowed)");
    uint64_t tgm = 0;
    for (uint32_t b : l.tg_mem) tgm += (b + 15) & ~15u;
    if (tgm > 32768)
        throw std::runtime_error(std::string("metal-emu: ") + l.name + ": " + std::to_string(tgm) +
                                 " bytes of threadgroup memory (Metal allows 32768)");
    r.launch = &l;
    const uint32_t G[3] = {l.grid[0], l.grid[1], l.grid[2]};
    const uint64_t total = (uint64_t)G[0] * G[1] * G[2];
    for (uint64_t k = 0; k < total; ++k) {
        uint64_t g = sched == Schedule::forward ? k : total - 1 - k;
        run_group(r, l, sched, (uint32_t)(g % G[0]), (uint32_t)((g / G[0]) % G[1]), (uint32_t)(g / ((uint64_t)G[0] * G[1])));
    }
    r.launch = nullptr;
}

// ---- called from inside fibers ---------------------------------------------------------------
Slot& my_slot() { return T->cur->slot; }

void sync(Scope scope, const char* op, const char* file, int line, ResolveFn resolve, int uniform_bytes) {
    Fiber& f = *T->cur;
    f.st = St::parked;
    f.scope = scope;
    f.op = op;
    f.file = file;
    f.line = line;
    f.resolve = resolve;
    f.uniform_bytes = uniform_bytes;
    to_scheduler();
}

void* tg_alloc(size_t bytes, size_t align, const char* type, const char* file, int line) {
    Runner& r = *T;
    Fiber& f = *r.cur;
    int k = f.tg_decl++;
    if (k < (int)r.decls.size()) {   // another thread reached this declaration first
        const TgDecl& d = r.decls[k];
        if (d.bytes != bytes || std::strcmp(d.type, type) != 0)
            fail(std::string("threadgroup declaration at ") + file + ":" + std::to_string(line) +
                 " differs between threads (declare threadgroup memory unconditionally, in the same order)");
        return d.p;
    }
    size_t off = (r.arena_used + align - 1) & ~(align - 1);
    if (off + bytes > 32768)
        fail(std::string("threadgroup declaration at ") + file + ":" + std::to_string(line) +
             " exceeds Metal's 32768 bytes of threadgroup memory");
    r.arena_used = off + bytes;
    r.decls.push_back({r.arena.data() + off, bytes, type});
    return r.arena.data() + off;
}

void fail(const std::string& msg) {
    T->error = msg;
    to_scheduler();
    __builtin_trap();   // the scheduler never resumes a failed fiber
}

}  // namespace emu
