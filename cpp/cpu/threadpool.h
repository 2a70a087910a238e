// threadpool.h -- a small fork-join pool: run(fn) calls fn(ith, nth) on every thread
// (the caller is thread 0) and returns when all are done. Workers spin briefly for the
// next job, then sleep, so back-to-back stages start fast without burning idle cores.
// No allocation per job: the job is a function pointer plus a context pointer.
#pragma once
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace llmetal::cpu {

class ThreadPool {
  public:
    explicit ThreadPool(int n_threads);
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
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
    std::atomic<int> sleepers_{0};
    std::exception_ptr error_;   // the first exception a thread threw in this job
    std::mutex err_mu_;
    Fn fn_ = nullptr;
    void* ctx_ = nullptr;
    std::mutex mu_;
    std::condition_variable cv_;
};

}  // namespace llmetal::cpu
