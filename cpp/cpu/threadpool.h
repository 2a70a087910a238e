// threadpool.h -- a small fork-join pool: run(fn) calls fn(ith, nth) once for every share
// ith in [0, nth) and returns when all are done. The caller runs share 0; worker i runs
// share i if it claims it in time. Workers spin briefly for the next job, then sleep, so
// back-to-back stages start fast without burning idle cores.
//
// Shares are claimed, not assigned: when the caller has finished share 0 it takes every
// share no worker has claimed yet and runs it itself. On a machine shared with other
// processes a worker is often not running when a job starts (its core is busy elsewhere);
// without claiming, the caller would spin until the scheduler brings it back, for every
// stage of every token. With it, a missing worker costs at worst a single-threaded stage.
// When the workers keep missing jobs (another process holds the cores), the pool runs the
// next jobs on the caller alone for a while (run_raw explains). Tests pin either path with
// Fallback::never / Fallback::always, to check that both compute the same bits.
// No allocation per job: the job is a function pointer plus a context pointer.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace llmetal::cpu {

// When jobs run on the caller alone: automatic (while the workers keep missing jobs), never,
// or always.
enum class Fallback { automatic, never, always };

class ThreadPool {
  public:
    explicit ThreadPool(int n_threads, Fallback fallback = Fallback::automatic);
    ~ThreadPool();
    int size() const { return n_; }

    template <class F>
    void run(F& f) {
        run_raw([](void* ctx, int i, int n) { (*(F*)ctx)(i, n); }, &f);
    }

  private:
    using Fn = void (*)(void*, int, int);
    void run_raw(Fn fn, void* ctx);
    void worker(int ith);

    int n_;
    std::vector<std::thread> threads_;
    std::atomic<uint64_t> gen_{0};
    std::atomic<int> pending_{0};     // claimed shares still running
    std::atomic<uint64_t> todo_{0};   // bit i: share i (1..63) not claimed yet
    std::atomic<bool> stop_{false};
    // fallback to the caller alone while the workers keep missing jobs (run_raw)
    static constexpr int kMissed = 12, kSerialJobs = 1024;
    const Fallback fallback_;
    uint32_t missed_ = 0;      // bit i: the i-th last job of > 20 us had a share unclaimed
    int serial_left_ = 0;      // jobs still to run on the caller alone
    std::atomic<int> sleepers_{0};
    std::exception_ptr error_;   // the first exception a thread threw in this job
    std::mutex err_mu_;
    Fn fn_ = nullptr;
    void* ctx_ = nullptr;
    std::mutex mu_;
    std::condition_variable cv_;
};

}  // namespace llmetal::cpu
