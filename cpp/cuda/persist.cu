// persist.cu -- kernel_persistent (persist.cuh) and its two host entry points.
//
// This file compiles the kernel bodies a second time, with plain loads for the activations
// (LLMETAL_PERSISTENT_TU: see ldact in kernels.cuh), in a namespace of their own so that its
// copies of the headers' kernels and device functions never meet launch.cu's.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define LLMETAL_PERSISTENT_TU 1
#define llmetal_cuda llmetal_cuda_persistent
#include "persist.cuh"
#undef llmetal_cuda

namespace llmetal {

// Resident blocks of kernel_persistent on this GPU (n_sm x blocks an SM); sets its shared memory.
int persistent_blocks(int n_sm) {
    using namespace llmetal_cuda_persistent;
    if (cudaFuncSetAttribute(kernel_persistent, cudaFuncAttributeMaxDynamicSharedMemorySize, PK_SMEM) != cudaSuccess)
        return cudaGetLastError(), 0;
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel_persistent, PK_THREADS, PK_SMEM) != cudaSuccess)
        return cudaGetLastError(), 0;
    return per_sm * n_sm;
}

// The program (prog: n instructions in device memory) on `blocks` blocks; ctl: its counters;
// reverse: each instruction's units in reverse order (the stress test); prof: the profile's
// records (persist.cuh) or null.
cudaError_t persistent_launch(cudaStream_t s, const void* prog, int n, int* ctl, const void* step, int blocks,
                              int reverse, long long* prof) {
    using namespace llmetal_cuda_persistent;
    kernel_persistent<<<blocks, PK_THREADS, PK_SMEM, s>>>((const PInstr*)prog, n, ctl, (const kstep*)step, reverse,
                                                          prof);
    return cudaGetLastError();
}
size_t persistent_instr_bytes() { return sizeof(llmetal_cuda_persistent::PInstr); }

}  // namespace llmetal
