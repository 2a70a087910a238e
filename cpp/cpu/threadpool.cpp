#include "threadpool.h"

#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#define LLM_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define LLM_PAUSE() __asm__ __volatile__("yield")
#else
#define LLM_PAUSE() ((void)0)
#endif

namespace llmetal::cpu {

ThreadPool::ThreadPool(int n, Fallback fallback) : n_(n < 1 ? 1 : n), fallback_(fallback) {
    for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> l(mu_);
        stop_ = true;
        gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::run_raw(Fn fn, void* ctx) {
    if (n_ == 1) {
        fn(ctx, 0, 1);
        return;
    }
    if (serial_left_ > 0 || fallback_ == Fallback::always) {
        // The workers have been missing jobs (see the end of this function): run every
        // share here without waking them, so that they sleep and leave the cores to this
        // thread and to whatever else is running.
        if (serial_left_ > 0) --serial_left_;
        for (int i = 0; i < n_; ++i) fn(ctx, i, n_);
        return;
    }
    const auto t_start = std::chrono::steady_clock::now();
    // Publish the job: fn_ / ctx_ first, then the unclaimed shares (release), then the
    // generation that wakes the workers. (pending_ is not reset: it is back at 0 after every
    // job, and a worker waking late for an old job may be holding it at 1 for a moment.)
    fn_ = fn;
    ctx_ = ctx;
    todo_.store(((n_ >= 64 ? ~0ull : (1ull << n_) - 1)) & ~1ull, std::memory_order_release);
    {
        // the lock orders the publication with sleeping workers' wait
        std::lock_guard<std::mutex> l(mu_);
        gen_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load() > 0) cv_.notify_all();
    // Every share must finish before this frame (which owns the job) returns, even when one
    // of them throws; the first exception is rethrown here, on the calling thread.
    auto guarded = [&](int ith) {
        try {
            fn(ctx, ith, n_);
        } catch (...) {
            std::lock_guard<std::mutex> l(err_mu_);
            if (!error_) error_ = std::current_exception();
        }
    };
    guarded(0);
    const auto t_own = std::chrono::steady_clock::now();
    // Take back the shares nobody claimed and run them here.
    uint64_t left = todo_.exchange(0, std::memory_order_acq_rel);
    for (int i = 1; i < n_ && i < 64; ++i)
        if (left & (1ull << i)) guarded(i);
    // Wait for the shares workers did claim (they are running now).
    while (pending_.load(std::memory_order_acquire) != 0) LLM_PAUSE();
    // Fallback to the calling thread alone. When another process keeps a core busy, the
    // workers are often not running: their shares are then taken back above, but they still
    // take CPU time from this thread (spinning for the next job, or holding a job up when
    // preempted after a claim). With one core held by a busy loop, 2 threads decoded the 1B
    // Q8_0 model at 18-20 t/s where 1 thread gives 28-29. So: a job whose share 0 took more
    // than 20 us (a spinning worker claims within about a microsecond) and still had a share
    // unclaimed counts as missed; after kMissed missed jobs among the last 16 such jobs, the
    // next kSerialJobs jobs (~8 decode steps of a 16-layer model) run on this thread alone,
    // then the workers are tried again. (4 of 16 also fired now and then on a quiet machine,
    // where a vCPU is sometimes descheduled by the host; 12 of 16 did not.)
    if (fallback_ == Fallback::automatic && t_own - t_start > std::chrono::microseconds(20)) {
        missed_ = (missed_ << 1) | (left ? 1u : 0u);
        if (__builtin_popcount(missed_ & 0xFFFFu) >= kMissed) {
            serial_left_ = kSerialJobs;
            missed_ = 0;
        }
    }
    if (error_) {
        std::exception_ptr e = error_;
        error_ = nullptr;
        std::rethrow_exception(e);
    }
}

void ThreadPool::worker(int ith) {
    uint64_t seen = 0;
    const uint64_t bit = 1ull << (ith < 64 ? ith : 0);
    for (;;) {
        int spins = 0;
        while (gen_.load(std::memory_order_acquire) == seen) {
            if (++spins < 20000) {
                LLM_PAUSE();
                continue;
            }
            std::unique_lock<std::mutex> l(mu_);
            sleepers_.fetch_add(1);
            cv_.wait(l, [&] { return gen_.load() != seen; });
            sleepers_.fetch_sub(1);
            break;
        }
        seen = gen_.load(std::memory_order_acquire);
        if (stop_.load()) return;
        if (ith >= 64) continue;   // more threads than claim bits: the caller runs the rest
        // Claim share ith: count it as running first, so the caller cannot miss it between
        // the claim and the count. (A stale wake-up from an earlier job finds its bit clear,
        // or claims the current job, whose fn_ / ctx_ were published before todo_.)
        pending_.fetch_add(1, std::memory_order_acq_rel);
        if (todo_.fetch_and(~bit, std::memory_order_acq_rel) & bit) {
            Fn fn = fn_;
            void* ctx = ctx_;
            try {
                fn(ctx, ith, n_);
            } catch (...) {
                std::lock_guard<std::mutex> l(err_mu_);
                if (!error_) error_ = std::current_exception();
            }
        }
        pending_.fetch_sub(1, std::memory_order_release);
    }
}

}  // namespace llmetal::cpu
