// Load latency on a CUDA GPU, one thread's dependent loads timed by %globaltimer (docs/log/cuda-rounds.md,
// round 15, section 2): the first line of a DRAM page after 4 GB were streamed (cold), another line of it,
// the same line again (an L2 hit), the same after an L2 prefetch 3 us earlier, and while a 4 GB stream
// runs beside the probe on half of each SM's threads.
//   nvcc -O2 -arch=sm_90 bench/cuda_load_latency.cu -o /tmp/lat && /tmp/lat
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)
__device__ __forceinline__ unsigned long long gt() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t) :: "memory"); return t; }
__global__ void stream(const uint4* w, size_t n, uint4* sink) {
    uint4 a = {0, 0, 0, 0};
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(w + i); a.x ^= v.x; a.y ^= v.y; a.z ^= v.z; a.w ^= v.w;
    }
    if (a.x == 0x12345678 && a.y == 1) sink[0] = a;
}
// one thread: a dependent chain of loads (.cg: L2, no L1) at byte offsets off[i] of p; ns per load
__global__ void probe(const char* p, const long long* off, int n, long long* ns, int pf_first, long long spin_ns) {
    if (pf_first) {   // prefetch every address into L2 first, then wait spin_ns
        for (int i = 0; i < n; ++i) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + off[i]));
        const unsigned long long t = gt(); while (gt() - t < (unsigned long long)spin_ns) {}
    }
    unsigned dep = 0;
    for (int i = 0; i < n; ++i) {
        const unsigned long long t0 = gt();
        unsigned v;
        asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p + off[i] + (dep & 0)) : "memory");
        dep += v;
        unsigned long long t1;
        asm volatile("{ .reg .u32 d; mov.u32 d, %1; mov.u64 %0, %%globaltimer; }" : "=l"(t1) : "r"(dep) : "memory");
        asm volatile("add.u32 %0, %0, 0;" : "+r"(dep));
        ns[i] = (long long)(t1 - t0) + (dep == 0xdeadbeef);
    }
}
int main() {
    const size_t WB = 4ull << 30, KB = 128ull << 20;
    char *w, *kv; uint4* sink; long long *doff, *dns;
    CK(cudaMalloc(&w, WB)); CK(cudaMalloc(&kv, KB)); CK(cudaMalloc(&sink, 64));
    CK(cudaMemset(w, 1, WB)); CK(cudaMemset(kv, 2, KB));
    CK(cudaMalloc(&doff, 64 * 8)); CK(cudaMalloc(&dns, 64 * 8));
    // probes: page A (kv + 32 MB) line 0, line +4096, line 0 again, +64 KB, page B (kv + 70 MB) line 0, its +128 B
    std::vector<long long> off = {32ll << 20, (32ll << 20) + 4096, 32ll << 20, (32ll << 20) + 65536, 70ll << 20, (70ll << 20) + 128,
                                  (70ll << 20) + (1 << 20), 100ll << 20};
    const char* what[] = {"A+0 (cold)", "A+4K", "A+0 again", "A+64K", "B+0 (cold)", "B+128", "B+1M", "C+0 (cold)"};
    const int n = off.size();
    CK(cudaMemcpy(doff, off.data(), n * 8, cudaMemcpyHostToDevice));
    cudaStream_t s2; CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaStream_t s1; CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    for (int mode = 0; mode < 4; ++mode) {
        // mode 0: after streaming 4 GB; 1: after streaming, probes prefetched into L2 3 us earlier;
        // 2: the probes run while a 4 GB stream runs beside them; 3: nothing streamed since the last probes (warm)
        std::vector<std::vector<long long>> r(n);
        for (int rep = 0; rep < 7; ++rep) {
            if (mode != 3) { stream<<<sms * 4, 512>>>((const uint4*)w, WB / 16, sink); }
            CK(cudaDeviceSynchronize());
            if (mode == 2) {   // the stream takes half of each SM's threads (room for the probe), 400 us to ramp
                probe<<<1, 1, 0, s2>>>(kv, doff, 0, dns, 1, 400000);
                stream<<<sms * 2, 512, 0, s1>>>((const uint4*)w, WB / 16, sink);
                probe<<<1, 1, 0, s2>>>(kv, doff, n, dns, 0, 0);
            } else
                probe<<<1, 1>>>(kv, doff, n, dns, mode == 1, 3000);
            CK(cudaDeviceSynchronize());
            std::vector<long long> h(n); CK(cudaMemcpy(h.data(), dns, n * 8, cudaMemcpyDeviceToHost));
            if (rep > 0) for (int i = 0; i < n; ++i) r[i].push_back(h[i]);
        }
        const char* mn[] = {"after a 4 GB stream", "after a stream, prefetched into L2 3 us before", "beside a 4 GB stream", "warm (no stream between)"};
        printf("%s:\n", mn[mode]);
        for (int i = 0; i < n; ++i) { std::sort(r[i].begin(), r[i].end()); printf("  %-12s median %5lld ns  (min %5lld max %5lld)\n", what[i], r[i][r[i].size() / 2], r[i].front(), r[i].back()); }
    }
    return 0;
}
