// device.mm -- the Metal device: the only Objective-C++ in the tree (built by CMake's APPLE
// branch, manual reference counting). It turns the dispatch descriptions of dispatch.cpp into
// Metal calls, line for line; everything else (planning, checks, counters) is PlannedDevice.
//
// NEVER COMPILED OR RUN BY THE PROJECT: no Apple hardware exists where llmetal is built and
// tested. The plan it encodes and the kernels it runs are tested on Linux through the metal-emu
// device (tests/test_metal_emu.py); this file is exercised only by the macOS workflow
// (.github/workflows/macos.yml) on machines of users who have a Mac.
//
//   kernels    MSL source embedded at build time (scripts/metal_embed.py -> metal_source.inc),
//              compiled once when the device is made; pipelines made on first use and cached
//              by kernel name (the names are static strings: the pointer is the key)
//   memory     shared storage (Apple silicon: one memory, host pointer == GPU memory);
//              weights wrapped zero-copy from the page-aligned mmap of the GGUF with
//              newBufferWithBytesNoCopy, in overlapping pieces below maxBufferLength
//   execution  one command buffer and one concurrent compute encoder per submit (per token
//              when a plan replays); memoryBarrier where the planner found a hazard; a debug
//              group per dispatch named after its stage, so a GPU capture reads like the trace
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
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

struct MetalDevice final : metal::PlannedDevice {
    MetalDevice() {
        @autoreleasepool {
            dev = MTLCreateSystemDefaultDevice();
            if (!dev) throw Error("metal: no Metal device on this machine");
            queue = [dev newCommandQueue];
            MTLCompileOptions* opt = [[MTLCompileOptions new] autorelease];
            opt.fastMathEnabled = YES;
            NSError* err = nil;
            lib = [dev newLibraryWithSource:[NSString stringWithUTF8String:kMetalSource] options:opt error:&err];
            if (!lib)
                throw Error(std::string("metal: compiling the kernels failed: ") +
                            (err ? err.localizedDescription.UTF8String : "unknown error"));
        }
        step_buf = alloc(sizeof(kstep), "step");
        std::memset(step_buf->host, 0, sizeof(kstep));
    }
    ~MetalDevice() override {
        wait_quiet();
        step_buf.reset();
        scratch.reset();
        for (auto& kv : pipelines) [kv.second release];
        [lib release];
        [queue release];
        [dev release];
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

    id<MTLComputePipelineState> pipeline(const char* kernel) {
        auto it = pipelines.find(kernel);
        if (it != pipelines.end()) return it->second;
        @autoreleasepool {
            id<MTLFunction> fn = [[lib newFunctionWithName:[NSString stringWithUTF8String:kernel]] autorelease];
            if (!fn) throw Error(std::string("metal: no kernel named ") + kernel + " in the library");
            NSError* err = nil;
            id<MTLComputePipelineState> ps = [dev newComputePipelineStateWithFunction:fn error:&err];
            if (!ps)
                throw Error(std::string("metal: pipeline for ") + kernel + ": " +
                            (err ? err.localizedDescription.UTF8String : "unknown error"));
            pipelines[kernel] = ps;
            return ps;
        }
    }

    // ---- execution: one command buffer, descriptions in order ----------------------------------
    void execute(const metal::DispatchDesc* d, size_t n) override {
        @autoreleasepool {
            id<MTLCommandBuffer> cb = [queue commandBuffer];
            id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoderWithDispatchType:MTLDispatchTypeConcurrent];
            for (size_t i = 0; i < n; ++i) {
                const metal::DispatchDesc& x = d[i];
                id<MTLComputePipelineState> ps = pipeline(x.kernel);
                if ((uint64_t)x.tg[0] * x.tg[1] * x.tg[2] > ps.maxTotalThreadsPerThreadgroup)
                    throw Error(std::string("metal: ") + x.kernel + " allows " +
                                std::to_string(ps.maxTotalThreadsPerThreadgroup) + " threads per threadgroup");
                if (x.barrier) [enc memoryBarrierWithScope:MTLBarrierScopeBuffers];
                [enc pushDebugGroup:[NSString stringWithUTF8String:x.stage]];
                [enc setComputePipelineState:ps];
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
            [enc endEncoding];
            [cb commit];
            [last release];
            last = [cb retain];
        }
    }

    void wait() override {
        if (!last) return;
        [last waitUntilCompleted];
        MTLCommandBufferStatus st = last.status;
        NSError* err = last.error;
        std::string msg = err ? err.localizedDescription.UTF8String : "";
        [last release];
        last = nil;
        if (st == MTLCommandBufferStatusError) throw Error("metal: command buffer failed: " + msg);
    }
    void wait_quiet() {
        try { wait(); } catch (...) {}
    }

    id<MTLDevice> dev = nil;
    id<MTLCommandQueue> queue = nil;
    id<MTLLibrary> lib = nil;
    id<MTLCommandBuffer> last = nil;
    std::map<const char*, id<MTLComputePipelineState>> pipelines;
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
