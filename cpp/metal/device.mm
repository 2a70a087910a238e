// device.mm -- the Metal device: the only Objective-C++ of the product (manual reference
// counting; built on Apple, and on Linux against tests/metal_shim with LLMETAL_METAL_SHIM=ON).
// It turns the dispatch descriptions of dispatch.cpp into Metal calls, line for line;
// everything else (planning, checks, counters) is PlannedDevice.
//
// NOT RUN ON APPLE HARDWARE BY THE PROJECT: no Mac exists where llmetal is built and tested.
// What does run here (CI): this file compiled by clang as Objective-C++ against a declaration
// header of the Metal/Foundation API it uses, and run as `device="metal"` against a Linux
// implementation of that API over the CPU emulator of Metal (tests/metal_shim/, CMake option
// LLMETAL_METAL_SHIM), with Metal's documented limits and encoder rules enforced. Apple's
// compiler and GPU run it only in .github/workflows/macos.yml, on machines of users with a Mac.
//
//   device     the system default device, else the first of MTLCopyAllDevices(); Apple7 family
//              (A14 / M1) or newer required: the kernels assume 32-lane SIMD groups, simd_sum and
//              simdgroup_float8x8 (threadExecutionWidth == 32 is checked per pipeline)
//   kernels    MSL source embedded at build time (scripts/metal_embed.py -> metal_source.inc),
//              compiled once when the device is made, and a pipeline made then for every kernel
//              of the planner's table (dispatch.h), indexed as the descriptions name them: a
//              failure is an error of the device's creation, and nothing is compiled while a
//              command buffer is encoded
//   memory     shared storage (Apple silicon: one memory, host pointer == GPU memory);
//              weights wrapped zero-copy from the page-aligned mmap of the GGUF with
//              newBufferWithBytesNoCopy, in overlapping pieces below maxBufferLength
//   execution  one command buffer and one concurrent compute encoder per submit (per token
//              when a plan replays); memoryBarrier where the planner found a hazard; a debug
//              group per dispatch named after its stage, so a GPU capture reads like the trace.
//              Decoding encodes ahead: once a token's command buffer is committed, the next
//              position's is encoded (encode_ahead) while the GPU runs it, and committed by the
//              next replay_token after the token id and position are written (dispatch.h).
//              Everything that can fail (threads and threadgroup memory of each dispatch) is
//              checked before the encoder opens, and the encoder is ended on every path: Metal
//              aborts the process when an encoder is released without endEncoding. No exception
//              leaves an @autoreleasepool block (that would leak the pool). wait() checks every
//              command buffer since the last wait, so a failure in an early one of an eager run
//              is reported.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <string>
#include <mutex>
#include <vector>

#include "../engine.h"
#include "dispatch.h"

namespace llmetal {
namespace {

const char* const kMetalSource =
#include "metal_source.inc"
    ;

// Buffer::dev of a Metal buffer: its MTLBuffer pieces. A piece covers [base, base + len) of
// the Buffer; pieces overlap by half, so any range up to len/2 lies inside one piece.
struct Piece { id<MTLBuffer> buf; uint64_t base, len; };
struct MetalBuf { std::vector<Piece> pieces; uint64_t step = 0; };

// The device: the system default, else the first one MTLCopyAllDevices() lists (Apple
// documents that the default needs CoreGraphics linked in a process without graphics: CMake
// links it; the list is the fallback). Returned retained, or nil.
id<MTLDevice> pick_device() {
    id<MTLDevice> d = MTLCreateSystemDefaultDevice();
    if (d) return d;
    NSArray<id<MTLDevice>>* all = MTLCopyAllDevices();   // a Copy function: we own the array
    if (all && all.count > 0) d = [[all objectAtIndex:0] retain];
    [all release];
    return d;
}

std::string error_text(NSError* err) {
    return err ? std::string(err.localizedDescription.UTF8String) : std::string("unknown error");
}

struct MetalDevice final : metal::PlannedDevice {
    MetalDevice() {
        std::string failure;
        @autoreleasepool {   // no exception may leave the pool: failures are thrown after it
            failure = open();
        }
        if (!failure.empty()) {
            release_all();
            throw Error(failure);
        }
        step_buf = alloc(sizeof(kstep), "step");
        std::memset(step_buf->host, 0, sizeof(kstep));
        encodes_ahead = true;
    }
    // Makes the device, queue, library and every pipeline; "" or why not.
    std::string open() {
        dev = pick_device();
        if (!dev)
            return "metal: no Metal device: MTLCreateSystemDefaultDevice() returned none and "
                   "MTLCopyAllDevices() lists none (a Mac without a Metal GPU, a virtual machine, or "
                   "a login session without access to the GPU); use device=\"cpu\"";
        if (![dev supportsFamily:MTLGPUFamilyApple7])
            return std::string("metal: ") + dev.name.UTF8String +
                   " is not an Apple7-family GPU (Apple A14 / M1 or newer): llmetal's kernels need "
                   "32-lane SIMD groups and simdgroup matrices; use device=\"cpu\"";
        queue = [dev newCommandQueue];
        if (!queue) return "metal: cannot create a command queue";
        MTLCompileOptions* opt = [[MTLCompileOptions new] autorelease];
#if __MAC_OS_X_VERSION_MAX_ALLOWED >= 150000
        if (@available(macOS 15.0, *)) {
            opt.mathMode = MTLMathModeFast;   // fastMathEnabled is deprecated from macOS 15
        } else {
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
            opt.fastMathEnabled = YES;
#pragma clang diagnostic pop
        }
#else
        opt.fastMathEnabled = YES;
#endif
        NSError* err = nil;
        lib = [dev newLibraryWithSource:[NSString stringWithUTF8String:kMetalSource] options:opt error:&err];
        if (!lib) return "metal: compiling the kernels failed: " + error_text(err);
        pipelines.assign(metal::kernel_count(), nil);
        for (int k = 0; k < metal::kernel_count(); ++k) {
            std::string failure = make_pipeline(k);
            if (!failure.empty()) return failure;
        }
        return "";
    }
    // The pipeline of kernel k, checked: 32-lane SIMD groups. "" or why not. (Inside open()'s
    // autorelease pool.)
    std::string make_pipeline(int k) {
        const char* kernel = metal::kernel_name(k);
        id<MTLFunction> fn = [[lib newFunctionWithName:[NSString stringWithUTF8String:kernel]] autorelease];
        if (!fn) return std::string("metal: no kernel named ") + kernel + " in the library";
        NSError* err = nil;
        id<MTLComputePipelineState> ps = [dev newComputePipelineStateWithFunction:fn error:&err];
        if (!ps) return std::string("metal: pipeline for ") + kernel + ": " + error_text(err);
        if (ps.threadExecutionWidth != 32) {
            std::string why = std::string("metal: ") + kernel + " runs in SIMD groups of " +
                              std::to_string(ps.threadExecutionWidth) + " threads on " + dev.name.UTF8String +
                              "; llmetal's kernels need 32";
            [ps release];
            return why;
        }
        pipelines[k] = ps;
        return "";
    }
    void release_all() {
        for (auto& ps : pipelines) [ps release];
        pipelines.clear();
        [lib release];
        [queue release];
        [dev release];
        lib = nil; queue = nil; dev = nil;
    }
    ~MetalDevice() override {
        wait_quiet();
        step_buf.reset();
        scratch.reset();
        release_all();
    }
    const char* name() const override { return "metal"; }

    // ---- memory ------------------------------------------------------------------------------
    BufferRef alloc(uint64_t bytes, const std::string& label) override {
        id<MTLBuffer> b = [dev newBufferWithLength:(bytes ? bytes : 256) options:MTLResourceStorageModeShared];
        if (!b) throw Error("metal: cannot allocate " + std::to_string(bytes) + " bytes for " + label);
        auto r = new_buffer();
        auto* mb = new MetalBuf{{Piece{b, 0, bytes ? bytes : 256}}, 0};
        r->host = b.contents; r->dev = mb; r->bytes = bytes; r->label = label;
        ++n_allocs; bytes_allocated += bytes;
        return r;
    }

    BufferRef map_file(const std::string& path) override {
        int fd = ::open(path.c_str(), O_RDONLY);
        if (fd < 0) throw Error("cannot open " + path + ": " + std::strerror(errno));
        struct stat st;
        if (fstat(fd, &st) != 0 || st.st_size == 0) { ::close(fd); throw Error("cannot map empty file " + path); }
        const uint64_t page = (uint64_t)getpagesize();
        const uint64_t size = ((uint64_t)st.st_size + page - 1) / page * page;   // NoCopy wants whole pages
        void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) { ::close(fd); throw Error("mmap failed for " + path + ": " + std::strerror(errno)); }
        auto* mb = new MetalBuf;
        const uint64_t maxlen = (uint64_t)dev.maxBufferLength / page * page;
        const uint64_t len = std::min(size, maxlen);
        mb->step = size <= maxlen ? size : (len / 2) / page * page;
        for (uint64_t base = 0;; base += mb->step) {
            uint64_t n = std::min(len, size - base);
            id<MTLBuffer> b = [dev newBufferWithBytesNoCopy:(char*)p + base length:n
                                                    options:MTLResourceStorageModeShared deallocator:nil];
            if (!b) {
                for (auto& pc : mb->pieces) [pc.buf release];
                delete mb; munmap(p, size); ::close(fd);
                throw Error("metal: cannot wrap " + path + " (bytes " + std::to_string(base) + ".." +
                            std::to_string(base + n) + ") as a Metal buffer");
            }
            mb->pieces.push_back(Piece{b, base, n});
            if (base + n >= size) break;
        }
        auto r = new_buffer();
        r->host = p; r->dev = mb; r->bytes = (uint64_t)st.st_size; r->read_only = true;
        r->label = path; r->kind = 1; r->fd = fd;
        return r;
    }

    void free_buffer(Buffer& b) override {
        if (!b.dev) return;
        wait_quiet();   // in-flight work may still read it
        auto* mb = static_cast<MetalBuf*>(b.dev);
        for (auto& pc : mb->pieces) [pc.buf release];
        if (b.kind == 1) {
            const uint64_t page = (uint64_t)getpagesize();
            munmap(b.host, (b.bytes + page - 1) / page * page);
            ::close(b.fd);
        }
        delete mb;
        b.dev = b.host = nullptr;
    }

    // Shared storage: the host pointer is the memory. Wait first: the GPU may still use it.
    void upload(const Binding& dst, const void* src, uint64_t n) override {
        if (dst.buf->read_only) throw Error("cannot write into read-only buffer " + dst.buf->label);
        wait();
        std::memcpy((char*)dst.buf->host + dst.offset, src, n);
    }
    void download(void* dst, const Binding& src, uint64_t n) override {
        wait();
        std::memcpy(dst, (const char*)src.buf->host + src.offset, n);
    }
    void grow_scratch(uint64_t bytes) override {
        wait();
        PlannedDevice::grow_scratch(bytes);
    }

    // The MTLBuffer and offset for a binding (a piece with at least half a piece after it).
    void resolve(const metal::BufferBinding& b, id<MTLBuffer>* buf, uint64_t* off) {
        auto* mb = static_cast<MetalBuf*>(b.buf->dev);
        size_t k = mb->pieces.size() == 1 ? 0 : std::min<size_t>(b.offset / mb->step, mb->pieces.size() - 1);
        *buf = mb->pieces[k].buf;
        *off = b.offset - mb->pieces[k].base;
    }

    // ---- execution ------------------------------------------------------------------------------
    // What Metal would refuse of descriptions [0, n), checked before any encoder opens.
    void validate(const metal::DispatchDesc* d, size_t n) {
        for (size_t i = 0; i < n; ++i) {
            const metal::DispatchDesc& x = d[i];
            id<MTLComputePipelineState> ps = pipelines[x.kernel_id];
            if ((uint64_t)x.tg[0] * x.tg[1] * x.tg[2] > ps.maxTotalThreadsPerThreadgroup)
                throw Error(std::string("metal: ") + x.kernel + " allows " +
                            std::to_string(ps.maxTotalThreadsPerThreadgroup) + " threads per threadgroup, not " +
                            std::to_string((uint64_t)x.tg[0] * x.tg[1] * x.tg[2]));
            if ((x.tg_mem + 15) / 16 * 16 > dev.maxThreadgroupMemoryLength)
                throw Error(std::string("metal: ") + x.kernel + " needs " + std::to_string(x.tg_mem) +
                            " bytes of threadgroup memory; the device has " +
                            std::to_string(dev.maxThreadgroupMemoryLength));
        }
    }

    // One command buffer of descriptions [0, n) (validated), its encoder ended, not committed;
    // returned retained.
    id<MTLCommandBuffer> encode(const metal::DispatchDesc* d, size_t n) {
        std::exception_ptr failure;
        id<MTLCommandBuffer> cb = nil;
        @autoreleasepool {   // no exception may leave the pool: it is rethrown after it
            cb = [[queue commandBuffer] retain];
            id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoderWithDispatchType:MTLDispatchTypeConcurrent];
            try {
                for (size_t i = 0; i < n; ++i) {
                    const metal::DispatchDesc& x = d[i];
                    if (x.barrier) [enc memoryBarrierWithScope:MTLBarrierScopeBuffers];
                    [enc pushDebugGroup:[NSString stringWithUTF8String:x.stage]];
                    [enc setComputePipelineState:pipelines[x.kernel_id]];
                    [enc setBytes:x.args length:x.args_bytes atIndex:0];
                    for (int k = 1; k < x.n_bufs; ++k) {
                        if (!x.bufs[k].buf) continue;
                        id<MTLBuffer> b; uint64_t off;
                        resolve(x.bufs[k], &b, &off);
                        [enc setBuffer:b offset:off atIndex:k];
                    }
                    if (x.tg_mem) [enc setThreadgroupMemoryLength:(x.tg_mem + 15) / 16 * 16 atIndex:0];
                    [enc dispatchThreadgroups:MTLSizeMake(x.grid[0], x.grid[1], x.grid[2])
                        threadsPerThreadgroup:MTLSizeMake(x.tg[0], x.tg[1], x.tg[2])];
                    [enc popDebugGroup];
                }
            } catch (...) {
                failure = std::current_exception();
            }
            [enc endEncoding];   // on every path: Metal aborts on an encoder released without it
        }
        if (failure) {
            [cb release];   // never committed: dropped
            std::rethrow_exception(failure);
        }
        return cb;
    }

    // Commits an encoded command buffer (taking the caller's reference into `inflight`).
    void commit(id<MTLCommandBuffer> cb) {
        @autoreleasepool {
            [cb commit];
            retire_completed();
        }
        inflight.push_back(cb);
    }

    void execute(const metal::DispatchDesc* d, size_t n) override {
        validate(d, n);
        commit(encode(d, n));
    }

    // A plan's command buffer: the one encoded ahead for these descriptions, else encoded now.
    void execute_plan(metal::PlanExec& pe) override {
        if (!pe.ahead) return execute(pe.d.data(), pe.d.size());
        id<MTLCommandBuffer> cb = (id<MTLCommandBuffer>)pe.ahead;   // its reference moves to inflight
        pe.ahead = nullptr;
        commit(cb);
    }

    void encode_ahead(metal::PlanExec& pe) override {
        validate(pe.d.data(), pe.d.size());
        id<MTLCommandBuffer> cb = encode(pe.d.data(), pe.d.size());
        pe.ahead = (void*)cb;
        pe.release_ahead = [](void* p) {   // never committed: released unused
            @autoreleasepool {
                [(id<MTLCommandBuffer>)p release];
            }
        };
    }

    // Drops command buffers at the front that completed without error (a queue completes in
    // order); failed ones stay for wait() to report.
    void retire_completed() {
        size_t k = 0;
        while (k < inflight.size() && inflight[k].status == MTLCommandBufferStatusCompleted) [inflight[k++] release];
        if (k) inflight.erase(inflight.begin(), inflight.begin() + k);
    }

    // Waits for every command buffer since the last wait; reports the first that failed.
    void wait() override {
        if (inflight.empty()) return;
        std::string msg;
        @autoreleasepool {
            for (size_t i = 0; i < inflight.size(); ++i) {
                id<MTLCommandBuffer> cb = inflight[i];
                [cb waitUntilCompleted];
                if (msg.empty() && cb.status == MTLCommandBufferStatusError)
                    msg = "metal: command buffer " + std::to_string(i + 1) + " of " +
                          std::to_string(inflight.size()) + " since the last wait failed: " + error_text(cb.error);
                [cb release];
            }
        }
        inflight.clear();
        if (!msg.empty()) throw Error(msg);
    }
    void wait_quiet() {
        try { wait(); } catch (...) {}
    }

    id<MTLDevice> dev = nil;
    id<MTLCommandQueue> queue = nil;
    id<MTLLibrary> lib = nil;
    std::vector<id<MTLCommandBuffer>> inflight;          // committed, not yet waited for
    std::vector<id<MTLComputePipelineState>> pipelines;  // by kernel index (metal::kernel_name)
};

}  // namespace

// One device for the process (like the CUDA device): its library is compiled once.
std::shared_ptr<Device> make_metal_device() {
    static std::mutex mu;
    static MetalDevice* d = nullptr;
    std::lock_guard<std::mutex> lock(mu);
    if (!d) d = new MetalDevice();
    return std::shared_ptr<Device>(d, [](Device*) {});
}

}  // namespace llmetal
