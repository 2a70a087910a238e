// Does compute-sanitizer's racecheck follow the persistent kernel's barriers?
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -lineinfo bench/cuda_racecheck_barriers.cu -o /tmp/rcb
//   for m in 0 1 2 3; do compute-sanitizer --tool racecheck --racecheck-report hazard /tmp/rcb $m; done
//
// kernel_persistent (cpp/cuda/persist.cuh) loops over units: at the top a block barrier, an
// instruction copied into shared memory by 16-byte stores, a barrier, its fields read by every
// thread; the first nt threads run a body that syncs with partial named barriers (`bar.sync 15,
// nt` over the unit's threads, the mat-vec's `bar.sync 1 + w / S, 32 S` over a row's S warps);
// a block barrier; thread 0 writes the loop's next state into shared memory. Every pair of a
// write and a read of another thread is ordered by a barrier (a block barrier; within mode 2's
// pair of warps, their own named barrier), yet racecheck reported hazards on such pairs. This
// kernel is that loop with bodies that only sync (mode 1's touches no shared memory at all), so
// what racecheck says here is about the barriers alone:
//   mode 0: the body has no barrier          mode 1: bar.sync 15, nt
//   mode 2: bar.sync 1 + w / 2, 64 (pairs)   mode 3: both
// Each mode prints block 0's checksum (thread 0's sum over the instructions: it shows the loop
// ran them all); the hazards, if any, are racecheck's report.
#include <cstdio>
#include <cstdlib>

struct __align__(16) Ins {
    int a, b, c, nt;
    int pad[12];
};

__global__ void __launch_bounds__(512, 1) kernel_loop(const Ins* prog, int n_ins, int mode, int* out) {
    __shared__ Ins s_p;
    __shared__ int s_tk, s_sum;
    __shared__ float red[16];
    const int tid = threadIdx.x, warp = tid >> 5;
    if (tid == 0) {
        s_tk = 0;
        s_sum = 0;
    }
    for (;;) {
        __syncthreads();   // thread 0's updates seen; every thread out of the last unit
        const int tk = s_tk;
        if (tk >= n_ins) break;
        for (int k = tid; k < (int)(sizeof(Ins) / 16); k += blockDim.x) ((int4*)&s_p)[k] = ((const int4*)(prog + tk))[k];
        __syncthreads();
        const int nt = s_p.nt;
        int v = 0;
        if (tid < nt) {
            v = s_p.a + s_p.b * tid;
            if (mode & 1) asm volatile("bar.sync 15, %0;" ::"r"(nt) : "memory");
            if (mode & 2) {
                if ((tid & 31) == 0) red[warp] = (float)v;
                asm volatile("bar.sync %0, %1;" ::"r"(1 + warp / 2), "r"(64) : "memory");
                v += (int)red[warp ^ 1];
            }
            v += s_p.c;
        }
        __syncthreads();   // every thread done with the unit
        if (tid == 0) {
            s_sum += v;
            s_tk = tk + 1;
        }
    }
    if (tid == 0) out[blockIdx.x] = s_sum;
}

int main(int argc, char** argv) {
    const int mode = argc > 1 ? atoi(argv[1]) : 0, n_ins = 8, blocks = 4;
    Ins h[n_ins] = {};
    for (int i = 0; i < n_ins; ++i) h[i] = Ins{i, 1, 2 * i, i % 2 ? 512 : 256, {}};
    Ins* d;
    int* out;
    cudaMalloc(&d, sizeof h);
    cudaMalloc(&out, blocks * sizeof(int));
    cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice);
    kernel_loop<<<blocks, 512>>>(d, n_ins, mode, out);
    int r[blocks];
    cudaError_t e = cudaMemcpy(r, out, sizeof r, cudaMemcpyDeviceToHost);
    printf("mode %d: %s, checksum %d\n", mode, cudaGetErrorString(e), r[0]);
    return e == cudaSuccess ? 0 : 1;
}
