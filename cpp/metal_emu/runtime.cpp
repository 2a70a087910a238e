// runtime.cpp -- fibers and the rendezvous scheduler of the Metal emulator (see runtime.h).
//
// The context switch: on x86-64 a hand-written switch (saves the six callee-saved registers
// and the stack pointer: a few ns); elsewhere ucontext (portable, slower: it saves the signal
// mask with a system call).
// macOS: the SDK's <ucontext.h> (the fallback on arm64) is refused unless _XOPEN_SOURCE is
// defined, and _XOPEN_SOURCE alone hides MAP_ANONYMOUS unless _DARWIN_C_SOURCE is defined too.
// Both must come before the first system header.
#if defined(__APPLE__)
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#ifndef _DARWIN_C_SOURCE
#define _DARWIN_C_SOURCE 1
#endif
#endif
#include "runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

// ---- kernel registry -------------------------------------------------------------------------
// std::less<>: lookups by const char* construct no string (no allocation per dispatch)
struct Builds { KernelFn plain = nullptr, counted = nullptr; };
static std::map<std::string, Builds, std::less<>>& registry() {
    static std::map<std::string, Builds, std::less<>> r;
    return r;
}
Register::Register(const char* name, KernelFn fn, const char*, bool counted) {
    (counted ? registry()[name].counted : registry()[name].plain) = fn;
}
KernelFn find_kernel(const char* name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second.plain;
}
static KernelFn find_counted(const char* name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second.counted;
}
std::string kernel_names() {
    std::string s;
    for (auto& kv : registry())
        if (kv.second.plain) s += (s.empty() ? "" : ", ") + kv.first;
    return s;
}

// ---- context switch --------------------------------------------------------------------------
#include "fiber_switch_x86_64.h"

namespace {

enum class St : uint8_t { ready, parked, done };

struct Runner;

struct Fiber {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
    char* stack = nullptr;      // lowest usable byte
    size_t stack_bytes = 0;
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

constexpr size_t TG_MEM_MAX = 32768;   // Metal's threadgroup memory per threadgroup

// One OS thread's fibers and the state of the threadgroup it runs. Fiber i's slot is
// [header page | guard page | stack], FIBER_SLOT_BYTES long and aligned to it; the stack's
// top is staggered by (i % 16) * 256 bytes so that the hot top frames of the fibers do not
// all fall into the same cache sets.
struct Runner {
    Runner() {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        region_bytes = FIBER_SLOT_BYTES * (MAX_THREADS + 1);   // one slot more, for alignment
        region = (char*)mmap(nullptr, region_bytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (region == MAP_FAILED) throw std::runtime_error("metal-emu: cannot map fiber stacks");
        char* first = (char*)(((uintptr_t)region + FIBER_SLOT_BYTES - 1) & ~(FIBER_SLOT_BYTES - 1));
        fibers.resize(MAX_THREADS);
        for (int i = 0; i < MAX_THREADS; ++i) {
            char* base = first + (size_t)i * FIBER_SLOT_BYTES;
            auto* h = (FiberHeader*)base;
            h->slot = &fibers[i].slot;
            h->fiber = &fibers[i];
            h->runner = this;
            mprotect(base + page, page, PROT_NONE);   // a stack overflow faults instead of corrupting
            fibers[i].stack = base + 2 * page;
            fibers[i].stack_bytes = FIBER_SLOT_BYTES - 2 * page - (size_t)(i % 16) * 256;
        }
        arena.resize(TG_MEM_MAX);
        decls.reserve(64);
        all.reserve(MAX_THREADS);
    }
    ~Runner() { munmap(region, region_bytes); }

    char* region = nullptr;
    size_t region_bytes = 0;
    std::vector<Fiber> fibers;
    std::vector<unsigned char> arena;    // threadgroup memory of the running group
    size_t arena_used = 0;
    std::vector<TgDecl> decls;           // threadgroup declarations of the running group
    void* tgbuf[8] = {};                 // [[threadgroup(i)]] of the running group
    std::vector<int> all;                // 0 .. n-1 (error messages)
    const Launch* launch = nullptr;
    Fiber* cur = nullptr;
    std::string error;
    Stats st;                            // this OS thread's counts, not yet added to the totals
    Traffic tr;                          // counting mode: this OS thread's bytes of the dispatch
#if defined(__x86_64__)
    void* main_sp = nullptr;
#else
    ucontext_t main_uc;
#endif
};

// The calling OS thread's runner (outside fibers: the scheduler side).
Runner& runner() {
    static thread_local std::unique_ptr<Runner> r;
    if (!r) r.reset(new Runner());
    return *r;
}

// Inside a fiber: its runner and fiber, from the stack slot's header.
inline Runner& fiber_runner() { return *(Runner*)my_header().runner; }
inline Fiber& fiber_self() { return *(Fiber*)my_header().fiber; }

void to_scheduler(Runner& r, Fiber& f) {
#if defined(__x86_64__)
    llmetal_emu_switch(&f.sp, r.main_sp);
#else
    swapcontext(&f.uc, &r.main_uc);
#endif
}

void fiber_main(void* arg) {
    Fiber* f = (Fiber*)arg;
    Runner& r = fiber_runner();
    r.launch->fn(f->ctx);
    f->st = St::done;
    to_scheduler(r, *f);
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
    uintptr_t top = ((uintptr_t)f.stack + f.stack_bytes) & ~(uintptr_t)15;
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
    f.uc.uc_stack.ss_size = f.stack_bytes;
    f.uc.uc_link = nullptr;
    uintptr_t p = (uintptr_t)&f;
    makecontext(&f.uc, (void (*)())fiber_main_uc, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
#endif
}

void resume(Runner& r, Fiber& f) {
    r.cur = &f;
    r.st.switches += 2;   // there and back
#if defined(__x86_64__)
    llmetal_emu_switch(&r.main_sp, f.sp);
#else
    swapcontext(&r.main_uc, &f.uc);
#endif
    r.cur = nullptr;
}

// ---- counting mode: the address ranges of the running dispatch and the access hooks ---------
// Set by run() for a counted dispatch (one at a time: count_mu), read by the hooks.
struct CountRanges {
    int n = 0;
    uintptr_t lo[32];
    uint64_t len[32];
    bool constant[32];
};
CountRanges g_ranges;
std::mutex count_mu;                      // one counted dispatch at a time
std::atomic<bool> g_counting{false};
Traffic g_traffic;                        // the running dispatch's totals (under g_traffic_mu)
std::mutex g_traffic_mu;
std::vector<TrafficRecord> g_records;     // under count_mu

// The runner running a counted dispatch on this OS thread, or null: the counted build's code
// run at any other time (its static initialisers) counts nothing. The scheduler's resolve
// functions run while it is set, but touch only the fibers' slots, which lie in no counted
// range. Initial-exec TLS: one register-relative load, no call.
#if defined(__ELF__)
__attribute__((tls_model("initial-exec")))
#endif
thread_local Runner* tl_counter = nullptr;

inline void hook(const void* p, uint64_t n, bool write) {
    Runner* r = tl_counter;
    if (!r) return;
    const uintptr_t a = (uintptr_t)p;
    if (a - (uintptr_t)r->arena.data() < TG_MEM_MAX) {
        (write ? r->tr.threadgroup_written : r->tr.threadgroup_read) += n;
        return;
    }
    const CountRanges& g = g_ranges;
    for (int i = 0; i < g.n; ++i)
        if (a - g.lo[i] < g.len[i]) {
            if (g.constant[i]) r->tr.constant_read += n;
            else (write ? r->tr.device_written : r->tr.device_read) += n;
            return;
        }
}

void flush_traffic(Runner& r) {
    if (!r.tr.device_read && !r.tr.device_written && !r.tr.threadgroup_read && !r.tr.threadgroup_written &&
        !r.tr.constant_read)
        return;
    std::lock_guard<std::mutex> g(g_traffic_mu);
    g_traffic.device_read += r.tr.device_read;
    g_traffic.device_written += r.tr.device_written;
    g_traffic.threadgroup_read += r.tr.threadgroup_read;
    g_traffic.threadgroup_written += r.tr.threadgroup_written;
    g_traffic.constant_read += r.tr.constant_read;
    r.tr = Traffic{};
}

// The same source position: string literals of one file are usually one object, so the
// pointer comparison decides almost always and strcmp runs only for distinct pointers.
inline bool same_str(const char* a, const char* b) { return a == b || std::strcmp(a, b) == 0; }

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

void run_group(Runner& r, const Launch& l, Schedule sched, uint32_t gx, uint32_t gy, uint32_t gz) {
    const uint32_t nx = l.tg[0], ny = l.tg[1], nz = l.tg[2];
    const int n = (int)(nx * ny * nz);
    // threadgroup memory: [[threadgroup(i)]] buffers first, poisoned here; declarations follow,
    // each poisoned when the first thread reaches it (tg_alloc). Only the bytes in use are
    // filled: the same as poisoning the whole arena, for nothing else can be read.
    r.arena_used = 0;
    r.decls.clear();
    for (int i = 0; i < 8; ++i) {
        r.tgbuf[i] = nullptr;
        if (!l.tg_mem[i]) continue;
        r.tgbuf[i] = r.arena.data() + r.arena_used;
        std::memset(r.tgbuf[i], 0xFF, l.tg_mem[i]);
        r.arena_used += (l.tg_mem[i] + 15) & ~15u;
    }
    const Pos3 tgpig{gx, gy, gz}, tptg{nx, ny, nz}, tgpg{l.grid[0], l.grid[1], l.grid[2]};
    const Pos3 tpg{l.grid[0] * nx, l.grid[1] * ny, l.grid[2] * nz};
    uint32_t tx = 0, ty = 0, tz = 0;
    for (int i = 0; i < n; ++i) {
        Fiber& f = r.fibers[i];
        ThreadCtx& c = f.ctx;
        c.buf = l.buf;
        c.tgbuf = r.tgbuf;
        c.tpitg = {tx, ty, tz};
        c.tgpig = tgpig;
        c.tptg = tptg;
        c.tgpg = tgpg;
        c.tpg = tpg;
        c.tpig = {gx * nx + tx, gy * ny + ty, gz * nz + tz};
        c.tiitg = (uint32_t)i;
        c.tiisg = (uint32_t)(i % SIMD_WIDTH);
        c.sgitg = (uint32_t)(i / SIMD_WIDTH);
        start_fiber(f);
        if (++tx == nx) { tx = 0; if (++ty == ny) { ty = 0; ++tz; } }
    }
    r.st.threads += n;
    ++r.st.threadgroups;
    const int n_sg = (n + SIMD_WIDTH - 1) / SIMD_WIDTH;
    auto all = [&]() -> const std::vector<int>& {   // for error messages only
        r.all.resize(n);
        for (int i = 0; i < n; ++i) r.all[i] = i;
        return r.all;
    };

    for (;;) {
        // one pass: run every ready fiber to its next sync point
        bool live = false;
        for (int k = 0; k < n; ++k) {
            Fiber& f = r.fibers[sched == Schedule::forward ? k : n - 1 - k];
            if (f.st == St::ready) {
                resume(r, f);
                if (!r.error.empty()) {
                    std::string e = r.error;
                    r.error.clear();
                    sync_error(r, e + " (thread " + std::to_string(f.ctx.tiitg) + ")");
                }
            }
            live |= f.st != St::done;
        }
        if (!live) return;
        bool progress = false;
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
                        same_str(f.file, f0.file) && same_str(f.op, f0.op);
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
            ++r.st.rendezvous;
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
            all_at_barrier &= at && f.line == first->line && same_str(f.file, first->file);
        }
        if (all_at_barrier) {
            for (int i = 0; i < n; ++i) r.fibers[i].st = St::ready;
            ++r.st.rendezvous;
            continue;
        }
        if (any_at_barrier)
            sync_error(r, "threadgroup_barrier not reached by every thread of threadgroup (" + std::to_string(gx) +
                              "," + std::to_string(gy) + "," + std::to_string(gz) + "): " + where_they_are(r, all()) +
                              " (never return or branch around a barrier)");
        sync_error(r, "deadlock: " + where_they_are(r, all()));
    }
}

// ---- the totals and the pool of OS threads ----------------------------------------------------
std::atomic<uint64_t> tot_threads{0}, tot_switches{0}, tot_rendezvous{0}, tot_groups{0};

void flush_stats(Runner& r) {
    tot_threads += r.st.threads;
    tot_switches += r.st.switches;
    tot_rendezvous += r.st.rendezvous;
    tot_groups += r.st.threadgroups;
    r.st = Stats{};
}

// Threadgroup k of a dispatch in the schedule's order, as (x, y, z).
inline void group_at(const Launch& l, Schedule s, uint64_t total, uint64_t k, uint32_t g3[3]) {
    uint64_t g = s == Schedule::forward ? k : total - 1 - k;
    g3[0] = (uint32_t)(g % l.grid[0]);
    g3[1] = (uint32_t)((g / l.grid[0]) % l.grid[1]);
    g3[2] = (uint32_t)(g / ((uint64_t)l.grid[0] * l.grid[1]));
}

// The pool: the calling thread and n-1 workers take chunks of threadgroups, in the schedule's
// order, from a shared counter. The first error in schedule order wins; the others stop
// taking work once one is seen.
struct Pool {
    explicit Pool(int n) {
        for (int i = 1; i < n; ++i) workers.emplace_back([this] { loop(); });
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> g(mu);
            quit = true;
        }
        cv_work.notify_all();
        for (auto& t : workers) t.join();
    }
    int size() const { return (int)workers.size() + 1; }

    void run(const Launch& l, Schedule s, uint64_t total, bool count) {
        std::lock_guard<std::mutex> one_at_a_time(run_mu);   // devices used from several threads
        launch = &l;
        counted = count;
        sched = s;
        n_groups = total;
        chunk = std::max<uint64_t>(1, total / ((uint64_t)size() * 8));
        next = 0;
        err_k = UINT64_MAX;
        err_seen = UINT64_MAX;
        err_msg.clear();
        {
            std::lock_guard<std::mutex> g(mu);
            busy = (int)workers.size();
            ++generation;
        }
        cv_work.notify_all();
        work();
        std::unique_lock<std::mutex> g(mu);
        cv_done.wait(g, [this] { return busy == 0; });
        launch = nullptr;
        if (err_k != UINT64_MAX) throw std::runtime_error(err_msg);
    }

  private:
    void loop() {
        uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> g(mu);
                cv_work.wait(g, [&] { return quit || generation != seen; });
                if (quit) return;
                seen = generation;
            }
            work();
            {
                std::lock_guard<std::mutex> g(mu);
                --busy;
            }
            cv_done.notify_one();
        }
    }
    void work() {
        Runner& r = runner();
        const Launch& l = *launch;
        r.launch = &l;
        if (counted) tl_counter = &r;
        for (;;) {
            uint64_t k0 = next.fetch_add(chunk);
            if (k0 >= n_groups || err_seen.load(std::memory_order_relaxed) <= k0) break;
            uint64_t k1 = std::min(n_groups, k0 + chunk);
            uint64_t k = k0;
            try {
                for (; k < k1; ++k) {
                    uint32_t g[3];
                    group_at(l, sched, n_groups, k, g);
                    run_group(r, l, sched, g[0], g[1], g[2]);
                }
            } catch (const std::runtime_error& e) {
                std::lock_guard<std::mutex> g(mu);
                if (k < err_k) { err_k = k; err_msg = e.what(); }
                err_seen = err_k;
                break;
            }
        }
        r.launch = nullptr;
        tl_counter = nullptr;
        flush_stats(r);
        flush_traffic(r);
    }

    std::vector<std::thread> workers;
    std::mutex run_mu, mu;
    std::condition_variable cv_work, cv_done;
    uint64_t generation = 0;
    int busy = 0;
    bool quit = false;
    // the dispatch being run
    const Launch* launch = nullptr;
    bool counted = false;
    Schedule sched = Schedule::forward;
    uint64_t n_groups = 0, chunk = 1;
    std::atomic<uint64_t> next{0};
    std::atomic<uint64_t> err_seen{UINT64_MAX};
    uint64_t err_k = UINT64_MAX;   // under mu
    std::string err_msg;
};

int pool_size_from_env() {
    if (const char* e = std::getenv("LLMETAL_EMU_THREADS")) {
        char* end = nullptr;
        long v = std::strtol(e, &end, 10);
        if (end == e || *end || v < 1 || v > 256)
            throw std::runtime_error(std::string("LLMETAL_EMU_THREADS must be a number from 1 to 256, not '") + e + "'");
        return (int)v;
    }
    unsigned hc = std::thread::hardware_concurrency();
    return (int)std::min(8u, std::max(1u, hc));
}

Pool& pool() {
    static Pool p(pool_size_from_env());
    return p;
}

// A dispatch goes to the pool when it has enough threadgroups to share: smaller ones run on
// the calling thread (waking the workers costs more than they would save).
constexpr uint64_t POOL_MIN_GROUPS = 8;

}  // namespace

Stats stats() {
    return Stats{tot_threads.load(), tot_switches.load(), tot_rendezvous.load(), tot_groups.load()};
}

int pool_threads() { return pool().size(); }

namespace {
void run_launch(const Launch& l, Schedule sched, bool count) {
    uint64_t n = (uint64_t)l.tg[0] * l.tg[1] * l.tg[2];
    if (!l.fn) throw std::runtime_error(std::string("metal-emu: no kernel for ") + l.name);
    if (n == 0 || n > MAX_THREADS)
        throw std::runtime_error(std::string("metal-emu: ") + l.name + ": threadgroup of " + std::to_string(n) +
                                 " threads (1.." + std::to_string(MAX_THREADS) + " allowed)");
    uint64_t tgm = 0;
    for (uint32_t b : l.tg_mem) tgm += (b + 15) & ~15u;
    if (tgm > TG_MEM_MAX)
        throw std::runtime_error(std::string("metal-emu: ") + l.name + ": " + std::to_string(tgm) +
                                 " bytes of threadgroup memory (Metal allows 32768)");
#if defined(LLMETAL_EMU_F16C)
    static const bool f16c = __builtin_cpu_supports("f16c");
    if (!f16c)
        throw std::runtime_error("metal-emu: this build converts half with F16C instructions, which this CPU lacks "
                                 "(rebuild with a compiler that does not accept -mf16c, or on this machine)");
#endif
    const uint64_t total = (uint64_t)l.grid[0] * l.grid[1] * l.grid[2];
    Pool& p = pool();
    if (p.size() > 1 && total >= POOL_MIN_GROUPS) {
        p.run(l, sched, total, count);
        return;
    }
    Runner& r = runner();
    r.launch = &l;
    if (count) tl_counter = &r;
    struct Done {   // the counts and the launch pointer, also when a group throws
        Runner& r;
        ~Done() { r.launch = nullptr; tl_counter = nullptr; flush_stats(r); flush_traffic(r); }
    } done{r};
    for (uint64_t k = 0; k < total; ++k) {
        uint32_t g[3];
        group_at(l, sched, total, k, g);
        run_group(r, l, sched, g[0], g[1], g[2]);
    }
}
}  // namespace

void run(const Launch& l, Schedule sched) {
    if (!g_counting.load(std::memory_order_relaxed)) {
        run_launch(l, sched, false);
        return;
    }
    std::lock_guard<std::mutex> one(count_mu);
    Launch c = l;
    c.fn = find_counted(l.name);
    if (!c.fn) throw std::runtime_error(std::string("metal-emu: counting: no counted build of ") + l.name);
    CountRanges& g = g_ranges;
    g.n = 0;
    for (int i = 0; i < 31; ++i) {
        if (!l.buf[i]) continue;
        if (!l.buf_bytes[i])
            throw std::runtime_error(std::string("metal-emu: counting: ") + l.name + ": buffer " + std::to_string(i) +
                                     " is bound without its size");
        g.lo[g.n] = (uintptr_t)l.buf[i];
        g.len[g.n] = l.buf_bytes[i];
        g.constant[g.n] = i == 0;   // [[buffer(0)]]: the kargs struct, constant address space
        ++g.n;
    }
    g_traffic = Traffic{};
    struct Clear {   // no stale ranges for a later dispatch, also when this one throws
        ~Clear() { g_ranges.n = 0; }
    } clear;
    run_launch(c, sched, true);
    TrafficRecord rec;
    rec.kernel = l.name;
    rec.label = l.label ? l.label : "";
    for (int k = 0; k < 3; ++k) { rec.grid[k] = l.grid[k]; rec.tg[k] = l.tg[k]; }
    rec.t = g_traffic;
    g_records.push_back(std::move(rec));
}

// ---- counting mode ---------------------------------------------------------------------------
bool counting_built() {
#if defined(LLMETAL_EMU_COUNTING)
    return true;
#else
    return false;
#endif
}

void set_counting(bool on) {
    if (on && !counting_built())
        throw std::runtime_error("metal-emu: counting mode needs the kernels' counted build, which this compiler "
                                 "could not make (no -fsanitize=thread instrumentation)");
    std::lock_guard<std::mutex> one(count_mu);
    g_counting = on;
}

bool counting() { return g_counting.load(); }

std::vector<TrafficRecord> take_traffic() {
    std::lock_guard<std::mutex> one(count_mu);
    std::vector<TrafficRecord> r;
    r.swap(g_records);
    return r;
}

void count_access(const void* p, uint64_t bytes, bool write) { hook(p, bytes, write); }

uint32_t lane_in_simdgroup() { return fiber_self().ctx.tiisg; }

// ---- called from inside fibers ---------------------------------------------------------------
void sync(Scope scope, const char* op, const char* file, int line, ResolveFn resolve, int uniform_bytes) {
    Fiber& f = fiber_self();
    f.st = St::parked;
    f.scope = scope;
    f.op = op;
    f.file = file;
    f.line = line;
    f.resolve = resolve;
    f.uniform_bytes = uniform_bytes;
    to_scheduler(fiber_runner(), f);
}

void* tg_alloc(size_t bytes, size_t align, const char* type, const char* file, int line) {
    Runner& r = fiber_runner();
    Fiber& f = fiber_self();
    int k = f.tg_decl++;
    if (k < (int)r.decls.size()) {   // another thread reached this declaration first
        const TgDecl& d = r.decls[k];
        if (d.bytes != bytes || std::strcmp(d.type, type) != 0)
            fail(std::string("threadgroup declaration at ") + file + ":" + std::to_string(line) +
                 " differs between threads (declare threadgroup memory unconditionally, in the same order)");
        return d.p;
    }
    size_t off = (r.arena_used + align - 1) & ~(align - 1);
    if (off + bytes > TG_MEM_MAX)
        fail(std::string("threadgroup declaration at ") + file + ":" + std::to_string(line) +
             " exceeds Metal's 32768 bytes of threadgroup memory");
    r.arena_used = off + bytes;
    std::memset(r.arena.data() + off, 0xFF, bytes);   // poison: fresh for this threadgroup
    r.decls.push_back({r.arena.data() + off, bytes, type});
    return r.arena.data() + off;
}

void fail(const std::string& msg) {
    Runner& r = fiber_runner();
    r.error = msg;
    to_scheduler(r, fiber_self());
    __builtin_trap();   // the scheduler never resumes a failed fiber
}

}  // namespace emu

// ---- the access hooks of the counted build ------------------------------------------------------
// -fsanitize=thread makes the compiler call these before every load and store of the counted
// kernels (and, with GCC, __tsan_read_range/__tsan_write_range for block copies). Only the
// address and size matter here; there is no race detection. Defined only where the counted
// build exists, so a library built under the real ThreadSanitizer keeps TSan's own.
#if defined(LLMETAL_EMU_COUNTING)
#define EMU_HOOK(n)                                                                                     \
    void __tsan_read##n(void* p) { emu::hook(p, n, false); }                                        \
    void __tsan_write##n(void* p) { emu::hook(p, n, true); }                                        \
    void __tsan_unaligned_read##n(void* p) { emu::hook(p, n, false); }                              \
    void __tsan_unaligned_write##n(void* p) { emu::hook(p, n, true); }                              \
    void __tsan_volatile_read##n(void* p) { emu::hook(p, n, false); }                               \
    void __tsan_volatile_write##n(void* p) { emu::hook(p, n, true); }                               \
    void __tsan_unaligned_volatile_read##n(void* p) { emu::hook(p, n, false); }                     \
    void __tsan_unaligned_volatile_write##n(void* p) { emu::hook(p, n, true); }
extern "C" {
EMU_HOOK(1)
EMU_HOOK(2)
EMU_HOOK(4)
EMU_HOOK(8)
EMU_HOOK(16)
void __tsan_read_range(void* p, unsigned long n) { emu::hook(p, n, false); }
void __tsan_write_range(void* p, unsigned long n) { emu::hook(p, n, true); }
void* __tsan_memcpy(void* d, const void* s, unsigned long n) {
    emu::hook(s, n, false);
    emu::hook(d, n, true);
    return std::memcpy(d, s, n);
}
void* __tsan_memmove(void* d, const void* s, unsigned long n) {
    emu::hook(s, n, false);
    emu::hook(d, n, true);
    return std::memmove(d, s, n);
}
void* __tsan_memset(void* d, int c, unsigned long n) {
    emu::hook(d, n, true);
    return std::memset(d, c, n);
}
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_read(void**) {}
void __tsan_vptr_update(void**, void*) {}
}
#undef EMU_HOOK
#endif
