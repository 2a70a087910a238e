// persist.cuh -- the persistent decode kernel: a one-token decode list (the planner's launches,
// planner.h Persist) run by ONE kernel whose blocks stay resident, one an SM, and execute the
// launches as instructions. Each instruction is a launch: the same body (the __device__ function
// its __global__ wrapper calls), the same arguments, its grid's blocks as units. model.plan()
// lists them as kernel_persistent/<kernel>: nothing runs that the plan does not show.
//
// How a block goes through the program:
//   - units: the units of all instructions, numbered in list order (tickets), are dealt round
//     robin: block b runs tickets b, b + B, b + 2B, ... (B blocks), in that order. A mat-vec
//     has units for all but one block (planner.cpp), so the single norm after it lands on the
//     block that had none, and the next instruction's units on blocks as they come free;
//   - the wait: where a launch's body waits for the kernel before it (pdl_wait), a unit waits
//     until every unit of the instruction before it is done (its done-counter reaches the
//     instruction's unit count; for an attention, the splits holding a visible key); one warp
//     of the block polls the counter, the others a flag in shared memory (Unit::wait). A mat-vec's
//     warps start copying their first weight windows before that wait, as they do before
//     pdl_wait, so the next matrix streams while a norm or the attention finishes;
//   - done: after the unit's last store, a barrier, then one thread counts the unit (a release).
// No deadlock: a unit only waits for units of smaller tickets; each block runs its tickets in
// increasing order, so (by induction on the ticket) every smaller ticket's block reaches it
// and finishes it. All B blocks must be resident at once (the grid is the resident blocks,
// planner caps.pk_blocks).
// The last block out resets the counters, so every launch starts from zero.
// Profile (prof non-null, LLMETAL_CUDA_PERSISTENT_PROFILE=1): per ticket, the global timer (ns)
// at the unit's start, when warp 0's wait returned (0: it did not wait), at its end, and
// (SM << 32 | instruction); bench/cuda_persist_profile.py sums them per kernel and per SM.
//
// Barriers: a unit of n threads (the launch's block, at most PK_THREADS) syncs with bar.sync 15
// over those n threads; the mat-vec's per-group named barriers (1 + warp / S) stay below 15.
#pragma once
#include "kernels.cuh"
#include "matvec.cuh"
#include "attention.cuh"

namespace llmetal_cuda {

enum PKind : int { PK_EMBED, PK_RMS, PK_MV, PK_ATT, PK_GLU, PK_QUANT };

// Which units of an instruction do work: all `units`, or for an attention (splits > 0) the
// splits holding a visible key times the K/V heads (gy).
struct PLive {
    int units, gy, splits, chunk, window;
};
__device__ __forceinline__ int pk_live(const PLive& l, int pos) {
    return l.splits ? ad_live_splits(l.window, pos, l.splits, l.chunk) * l.gy : l.units;
}

// One instruction: the body (kind, and the template arguments it was launched with), its
// tickets and threads, the launch's grid (unit -> block), the instruction it waits for (and how
// many of its units), and the arguments of the launch. A block copies the instruction it runs
// into shared memory (its fields are read there, also after the wait's fence).
struct __align__(16) PInstr {
    int kind;
    int wtype;     // PK_EMBED, PK_MV: the weight type
    int variant;   // PK_RMS: ADD; PK_ATT: DPL; PK_MV: GS (some weight has S > 1)
    int qb;        // PK_RMS, PK_GLU, PK_QUANT: the 8-bit copy's block (0: none)
    int start, units, nt;   // first ticket, tickets, threads a unit
    int gx, gy;    // unit u is block (u % gx, u / gx); an attention's units go split-major:
                   // u = s * gy + g, so the live splits are the first tickets
    int dep;       // -1: none
    PLive live, dep_live;
    union {
        EmbedArgs embed;
        RmsArgs rms;
        MvArgs mv;
        AttArgs att;
        GluArgs glu;
        QuantArgs quant;
    };
};

// The control words: the count of blocks out on a line of its own, then a done-counter per
// instruction (PK_CTL_HEAD + n ints, zero between launches).
constexpr int PK_CTL_EXIT = 0, PK_CTL_HEAD = 32;
// Dynamic shared memory: the mat-vec rings of the block's warps, then each instruction's first
// ticket and the total (the static 48 KB hold the bodies' own arrays).
constexpr int PK_RINGS = PK_WARPS * MV_STAGES * MV_WIN;
constexpr int PK_SMEM = PK_RINGS + (PK_MAX_INS + 1) * 4;

#ifdef LLMETAL_PERSISTENT_TU
__device__ __forceinline__ int ld_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ int ld_relaxed(const int* p) {
    int v;
    asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// done += 1 with release semantics at GPU scope: every store the unit's threads made before the
// barrier that precedes it is visible to whoever reads the new count with an acquire.
__device__ __forceinline__ void red_release(int* p) {
    asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(p) : "memory");
}


// The context of a unit (see Launched in kernels.cuh).
__device__ __forceinline__ long long pk_clock() {
    long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

struct Unit {
    int ux, uy, uz, u, nt;
    const int* dep_done;   // the done-counter waited for, null: none
    int target;
    volatile int* ready;   // shared: 0 none, 1 a warp polls, 2 the wait is over
    long long* rec;        // the profile's record of this unit (null: no profile)
    __device__ __forceinline__ int x() const { return ux; }
    __device__ __forceinline__ int y() const { return uy; }
    __device__ __forceinline__ int z() const { return uz; }
    __device__ __forceinline__ int n() const { return nt; }
    __device__ __forceinline__ void sync() const { asm volatile("bar.sync 15, %0;" ::"r"(nt) : "memory"); }
    // The counter read with relaxed loads until it reaches the target, then one fence: the
    // acquire that makes the counted units' stores visible (a fence per poll would also drop
    // the SM's L1 every time).
    __device__ __forceinline__ void poll() const {
        if (!dep_done) return;
        while (ld_relaxed(dep_done) < target) __nanosleep(64);
        (void)ld_acquire(dep_done);
    }
    // One warp of the unit polls the counter in global memory (the first to get here: a mat-vec
    // warp without rows never waits), the others watch a flag in shared memory, so a block puts
    // one poller on the counter's L2 line, not one a warp (2,112 pollers on an H100 load one L2
    // slice so that the counters' own increments queue behind the polls: 2-3x slower steps,
    // docs/log/cuda-persistent-decode.md). The flag is written and read by atomics, so that
    // compute-sanitizer's racecheck sees the hand-off as the synchronization it is.
    __device__ __forceinline__ void wait() const {
        if ((threadIdx.x & 31) == 0) {
            if (atomicCAS((int*)ready, 0, 1) == 0) {
                poll();
                if (rec) rec[1] = pk_clock();
                __threadfence_block();
                atomicExch((int*)ready, 2);
            } else {
                while (atomicAdd((int*)ready, 0) != 2) __nanosleep(32);
                __threadfence_block();
            }
        }
        __syncwarp();
    }
    __device__ __forceinline__ void release() const {}
    __device__ __forceinline__ void enter() const { wait(); }
};

template <class F> __device__ __forceinline__ void pk_with_type(int t, F&& f) {
    switch (t) {
        case KT_Q4_0: return f(std::integral_constant<int, KT_Q4_0>{});
        case KT_Q4_1: return f(std::integral_constant<int, KT_Q4_1>{});
        case KT_Q5_0: return f(std::integral_constant<int, KT_Q5_0>{});
        case KT_Q8_0: return f(std::integral_constant<int, KT_Q8_0>{});
        case KT_Q4_K: return f(std::integral_constant<int, KT_Q4_K>{});
        case KT_Q5_K: return f(std::integral_constant<int, KT_Q5_K>{});
        case KT_Q6_K: return f(std::integral_constant<int, KT_Q6_K>{});
    }
}

// One body a function, not inlined into the kernel's loop: each gets the registers it needs (at
// most the kernel's 128) instead of one allocation over every body at once, which spilled.
template <int T> __device__ __noinline__ void pk_embed(const Unit& cx, const EmbedArgs* p) { embed_body<T>(cx, *p); }
template <bool ADD, int QB> __device__ __noinline__ void pk_rms(const Unit& cx, const RmsArgs* p) {
    add_rmsnorm_q_body<ADD, QB>(cx, *p);
}
template <int T, bool GS>
__device__ __noinline__ void pk_mv(const Unit& cx, const MvArgs* p, int gw, uint8_t* slots, float (*red)[PK_WARPS][1]) {
    mmvq_group_warp<T, 1, GS, PK_WARPS>(cx, *p, gw, slots, threadIdx.x & 31, red);
}
// The attention's K / V stages in the mat-vec rings (no mat-vec unit runs on the block meanwhile).
static_assert(ad_smem(128) <= PK_RINGS && ad_smem(64) <= PK_RINGS, "the attention's stages fit the rings");
template <int DPL> __device__ __noinline__ void pk_att(const Unit& cx, const AttArgs* p, uint8_t* rings) {
    attention_decode_body<DPL>(cx, *p, rings);
}
template <int QB> __device__ __noinline__ void pk_glu(const Unit& cx, const GluArgs* p) { swiglu_q_body<QB>(cx, *p); }
template <int QB> __device__ __noinline__ void pk_quant(const Unit& cx, const QuantArgs* p) { quantize_q8_body<QB>(cx, *p); }

__device__ __forceinline__ void pk_run(const Unit& cx, const PInstr& P, uint8_t* rings, float (*red)[PK_WARPS][1]) {
    const int warp = threadIdx.x >> 5;
    switch (P.kind) {
        case PK_EMBED:
            if (P.wtype == KT_F32) return pk_embed<KT_F32>(cx, &P.embed);
            if (P.wtype == KT_F16) return pk_embed<KT_F16>(cx, &P.embed);
            return pk_with_type(P.wtype, [&](auto T) { pk_embed<decltype(T)::value>(cx, &P.embed); });
        case PK_RMS:
            if (P.variant) {
                if (P.qb == 32) return pk_rms<true, 32>(cx, &P.rms);
                if (P.qb == 256) return pk_rms<true, 256>(cx, &P.rms);
                return pk_rms<true, 0>(cx, &P.rms);
            }
            if (P.qb == 32) return pk_rms<false, 32>(cx, &P.rms);
            if (P.qb == 256) return pk_rms<false, 256>(cx, &P.rms);
            return pk_rms<false, 0>(cx, &P.rms);
        case PK_MV:
            return pk_with_type(P.wtype, [&](auto T) {
                constexpr int Q = decltype(T)::value;
                uint8_t* slots = rings + warp * (MV_STAGES * MV_WIN);
                if (P.variant) pk_mv<Q, true>(cx, &P.mv, cx.u * PK_WARPS + warp, slots, red);
                else pk_mv<Q, false>(cx, &P.mv, cx.u * PK_WARPS + warp, slots, red);
            });
        case PK_ATT:
            if (P.variant == 2) return pk_att<2>(cx, &P.att, rings);
            return pk_att<4>(cx, &P.att, rings);
        case PK_GLU:
            if (P.qb == 32) return pk_glu<32>(cx, &P.glu);
            return pk_glu<256>(cx, &P.glu);
        case PK_QUANT:
            if (P.qb == 32) return pk_quant<32>(cx, &P.quant);
            return pk_quant<256>(cx, &P.quant);
    }
}

__global__ void __launch_bounds__(PK_THREADS, 1)
kernel_persistent(const PInstr* prog, int n_ins, int* ctl, const kstep* step, int reverse, long long* prof) {
    extern __shared__ __align__(16) uint8_t pk_rings[];
    __shared__ float red[2][PK_WARPS][1];
    __shared__ int s_ready;
    int* s_start = (int*)(pk_rings + PK_RINGS);
    __shared__ PInstr s_p;                    // the instruction this block runs
    int* done = ctl + PK_CTL_HEAD;
    const int tid = threadIdx.x;
    for (int k = tid; k <= n_ins; k += blockDim.x)
        s_start[k] = k < n_ins ? prog[k].start : prog[n_ins - 1].start + prog[n_ins - 1].units;
    __syncthreads();
    // The block's place in the program lives in shared memory, not in registers: nothing of the
    // loop is live across a body's call (ptxas -v: the kernel's own spill is 8 B so, 68 B with
    // the loop's values in registers).
    // s_tk, s_i, s_have: read by every thread after the loop's first barrier, written by thread
    // 0 after the unit's last barrier; s_cur, s_live: thread 0's alone.
    __shared__ Unit s_cx;                     // the unit being run
    __shared__ int s_tk, s_i, s_have, s_cur, s_live;
    __shared__ long long s_t0;
    if (tid == 0) {
        s_tk = blockIdx.x;
        s_i = 0;
        s_have = -1;
        s_ready = 0;
    }
    for (;;) {
        __syncthreads();   // thread 0's updates seen; every thread out of the last unit
        const int tk = s_tk;
        if (tk >= s_start[n_ins]) break;
        int i = s_i;
        while (tk >= s_start[i + 1]) ++i;
        if (i != s_have) {   // one L2 round trip for the whole instruction, by every thread at once
            for (int k = tid; k < (int)(sizeof(PInstr) / 16); k += blockDim.x)
                ((int4*)&s_p)[k] = ((const int4*)(prog + i))[k];
            __syncthreads();
        }
        const PInstr& P = s_p;
        const int pos = step->pos0;               // written before the launch
        const int nlive = pk_live(P.live, pos);
        const bool live = tk - P.start < nlive;   // else a split past the position: nothing to do
        if (live) {
            if (tid == 0) {
                const int u = reverse ? nlive - 1 - (tk - P.start) : tk - P.start;
                Unit& cx = s_cx;
                if (P.kind == PK_ATT) { cx.ux = u / P.gy; cx.uy = u % P.gy; cx.uz = 0; }
                else { cx.ux = u % P.gx; cx.uy = u / P.gx; cx.uz = 0; }
                cx.u = u;
                cx.nt = P.nt;
                cx.dep_done = P.dep >= 0 ? done + P.dep : nullptr;
                cx.target = P.dep >= 0 ? pk_live(P.dep_live, pos) : 0;
                cx.ready = &s_ready;
                cx.rec = prof ? prof + 4ll * tk : nullptr;
                if (prof) {
                    prof[4ll * tk + 1] = 0;
                    s_t0 = pk_clock();
                }
            }
            __syncthreads();   // s_cx made
            if (tid < P.nt) {
                pk_run(s_cx, P, pk_rings, red);
            }
            if (tid == 0) {
                s_cur = i;
                s_live = 1;
            }
        } else if (tid == 0) {
            s_cur = i;
            s_live = 0;
        }
        __syncthreads();   // every store of the unit made
        if (tid == 0) {
            const int ci = s_i = s_have = s_cur;
            if (s_live) {
                // (a unit none of whose warps waited -- nothing to read -- waits now: its count
                // must still imply that the instructions before it are done)
                if (s_ready != 2) s_cx.poll();
                red_release(done + ci);
                if (prof) {
                    unsigned sm;
                    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
                    s_cx.rec[0] = s_t0;
                    s_cx.rec[2] = pk_clock();
                    s_cx.rec[3] = (long long)sm << 32 | ci;
                }
            }
            s_ready = 0;
            s_tk += gridDim.x;
        }
    }
    // The last block out resets the counters for the next launch (no block reads them any more).
    if (tid == 0) {
        __threadfence();
        if (atomicAdd(ctl + PK_CTL_EXIT, 1) == (int)gridDim.x - 1) {
            for (int j = 0; j < n_ins; ++j) done[j] = 0;
            ctl[PK_CTL_EXIT] = 0;
        }
    }
}
#endif

}  // namespace llmetal_cuda
