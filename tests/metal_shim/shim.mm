// shim.mm -- TEST INFRASTRUCTURE: the Metal and Foundation subset that cpp/metal/device.mm
// calls, implemented on Linux (Debian's GCC libobjc + BlocksRuntime, compiled by clang) over
// the CPU emulator of Metal (cpp/metal_emu/runtime.h). With it, `device="metal"` runs
// device.mm itself: its buffer wrapping and binding, offsets, dispatch sizes, barriers, command
// buffer lifecycle and error paths, over the real kernels. Built only with -DLLMETAL_METAL_SHIM=ON
// (off by default, on in .ci/run); never part of a product build.
//
// It declares nothing of its own: the API is tests/metal_shim/include/{Foundation,Metal}/*.h,
// the declaration header device.mm is also syntax-checked against. What Apple documents, or a
// GPU would punish, is enforced:
//   fatal (abort, as Metal's validation does): an encoder released without endEncoding, a
//     command buffer committed or given a second encoder while one is open, an encoder used
//     after endEncoding, unbalanced debug groups, waiting on an uncommitted command buffer;
//   errors (a C++ exception out of the call, which device.mm must survive): setBytes over 4 KB,
//     threadgroup memory over maxThreadgroupMemoryLength or not a multiple of 16, more threads
//     per threadgroup than the pipeline allows, a dispatch without a pipeline, buffer offsets
//     outside their buffer, argument indices past 30, NoCopy memory not page-aligned or not
//     whole pages, buffers over maxBufferLength;
//   bookkeeping: every object counts its retains; live objects per class, autoreleases with no
//     pool in place and open pools are reported by llmetal_metal_shim_stats() (the tests check
//     that a dropped model leaves the live objects as they were after the device was made).
// Execution: as on a GPU, a committed command buffer is not done when commit returns: the queue
// keeps the committed ones, and runs them in commit order on the emulator when one of them is
// waited for (waitUntilCompleted runs every earlier one, then it); until then its status is
// Committed, so a host that reads results without waiting reads stale memory, as on a Mac. A
// concurrent encoder's dispatches between two barriers run in reverse order (any order is
// legal), and each dispatch under the emulator's reverse schedule, unless
// LLMETAL_METAL_SHIM_SCHEDULE=forward. An emulator error (divergent barrier, ...) makes the
// command buffer end with MTLCommandBufferStatusError, as a GPU fault does.
//
// The host side's order, for the tests (llmetal_metal_shim_events()): every pipeline made, and
// per command buffer (numbered from 1 as the queue makes them) its encoder opened, its commit,
// its completion, or its release without a commit.
//
// Knobs for the tests (read when the device is made):
//   LLMETAL_METAL_SHIM_DEVICES      default | list-only (MTLCreateSystemDefaultDevice() returns
//                                   nil, as in a process without CoreGraphics) | none
//   LLMETAL_METAL_SHIM_FAMILY       highest Apple GPU family supported (default 7)
//   LLMETAL_METAL_SHIM_SIMD_WIDTH   threadExecutionWidth of every pipeline (default 32)
//   LLMETAL_METAL_SHIM_MAX_THREADS  maxTotalThreadsPerThreadgroup of every pipeline (default 1024)
//   LLMETAL_METAL_SHIM_MAX_BUFFER   maxBufferLength in bytes (default 1 GiB)
//
// Toolchain facts (Debian's libobjc is GCC's runtime): clang builds this with
// -fobjc-runtime=gcc -fblocks; @autoreleasepool becomes [[NSAutoreleasePool alloc] init] and
// -drain; properties are not synthesized (every getter is written out below); and clang gives
// every Objective-C++ frame the objc personality, which with this runtime never catches C++
// exceptions: __gnu_objc_personality_v0 is defined here (hidden, for this module only) to
// forward to the C++ personality, as no Objective-C exception is ever thrown.
#define LLMETAL_METAL_SHIM_IMPL 1
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime.h"

extern "C" {
id class_createInstance(Class cls, size_t extra_bytes);   // GCC libobjc
id object_dispose(id obj);
const char* object_getClassName(id obj);
}

// ---- the C++ personality for Objective-C++ frames --------------------------------------------
struct _Unwind_Exception;
struct _Unwind_Context;
extern "C" int __gxx_personality_v0(int version, int actions, uint64_t exception_class,
                                    _Unwind_Exception* exc, _Unwind_Context* ctx);
extern "C" __attribute__((visibility("hidden"))) int __gnu_objc_personality_v0(
        int version, int actions, uint64_t exception_class, _Unwind_Exception* exc, _Unwind_Context* ctx) {
    return __gxx_personality_v0(version, actions, exception_class, exc, ctx);
}

// ---- memory: the shim stands in for Apple's frameworks --------------------------------------
// Their allocations are not the engine's, so they bypass the engine's allocation counters
// (cpp/alloc_hooks.cpp wraps malloc for engine objects; __real_malloc is the C library's).
#if defined(LLMETAL_WRAP_ALLOC)
extern "C" void* __real_malloc(size_t);
extern "C" void* __real_realloc(void*, size_t);
static void* sys_malloc(size_t n) { return __real_malloc(n); }
static void* sys_realloc(void* p, size_t n) { return __real_realloc(p, n); }
#else
static void* sys_malloc(size_t n) { return std::malloc(n); }
static void* sys_realloc(void* p, size_t n) { return std::realloc(p, n); }
#endif

// A growable array of plain values in system memory (keeps its capacity).
template <class T>
struct Arr {
    T* p = nullptr;
    size_t n = 0, cap = 0;
    void push(const T& v) {
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            p = (T*)sys_realloc(p, cap * sizeof(T));
            if (!p) std::abort();
        }
        p[n++] = v;
    }
    void clear() { n = 0; }
};

[[noreturn]] static void fatal(const std::string& msg) {
    std::fprintf(stderr, "metal-shim: fatal: %s (Metal aborts the process here)\n", msg.c_str());
    std::fflush(stderr);
    std::abort();
}
static void check(bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument("metal-shim: " + msg);
}

static uint64_t env_u64(const char* name, uint64_t dflt) {
    const char* v = std::getenv(name);
    return v && *v ? std::strtoull(v, nullptr, 0) : dflt;
}

// ---- bookkeeping ------------------------------------------------------------------------------
namespace {
// One event of the host side's order: kind 'p' a pipeline made (name), 'e' an encoder opened
// on command buffer cb, 'c' its commit, 'd' its completion (or failure), 'x' its release
// without a commit.
struct Event { char kind; int64_t cb; const char* name; };
struct Stats {
    std::map<std::string, int64_t, std::less<>> live;   // per class
    int64_t retains = 0, releases = 0, objects = 0;
    int64_t autoreleased_without_pool = 0, command_buffers = 0, dispatches = 0;
    int64_t fail_in = 0;   // > 0: the fail_in-th command buffer committed from now fails
    int64_t made = 0;      // command buffers made by the queue (their numbers)
    Arr<Event> events;     // since the tests last read them (at most MAX_EVENTS: then restarted)
    static constexpr size_t MAX_EVENTS = 1 << 20;
    void event(char kind, int64_t cb, const char* name) {
        if (events.n == MAX_EVENTS) events.clear();
        events.push(Event{kind, cb, name});
    }
};
Stats& stats() {
    static Stats* s = new Stats;
    return *s;
}
void count_live(id obj, int d) {
    const char* name = object_getClassName(obj);
    auto& live = stats().live;
    auto it = live.find(name);
    if (it == live.end()) it = live.emplace(name, 0).first;
    it->second += d;
    stats().objects += d;
}
// The autorelease pools of this thread: objects, and where each pool begins.
struct Pools { Arr<id> objs; Arr<size_t> marks; Arr<id> pools; };
Pools& pools() {
    static thread_local Pools p;
    return p;
}
}  // namespace

// ---- Foundation -------------------------------------------------------------------------------
@implementation NSObject
+ (instancetype)alloc {
    NSObject* o = (NSObject*)class_createInstance(self, 0);
    o->shim_refs_ = 1;
    count_live(o, +1);
    return o;
}
+ (instancetype)new { return [[self alloc] init]; }
- (instancetype)init { return self; }
- (instancetype)retain { ++shim_refs_; ++stats().retains; return self; }
- (oneway void)release {
    ++stats().releases;
    if (shim_refs_ == 0) fatal(std::string("release of a deallocated ") + object_getClassName(self));
    if (--shim_refs_ == 0) [self dealloc];
}
- (instancetype)autorelease {
    Pools& p = pools();
    if (p.marks.n == 0) ++stats().autoreleased_without_pool;   // Apple: "just leaking"
    else p.objs.push(self);
    return self;
}
- (NSUInteger)retainCount { return shim_refs_; }
- (void)dealloc {
    count_live(self, -1);
    object_dispose(self);
}
@end

@implementation NSAutoreleasePool
- (instancetype)init {
    Pools& p = pools();
    p.marks.push(p.objs.n);
    p.pools.push(self);
    return self;
}
// Drains this pool, and first every pool above it (Apple: releasing a pool that is not the top
// releases the unreleased pools above it).
- (void)drain {
    Pools& p = pools();
    size_t k = p.pools.n;
    while (k > 0 && p.pools.p[k - 1] != self) --k;
    if (k == 0) fatal("drain of an autorelease pool that is not on this thread's stack");
    while (p.pools.n >= k) {
        size_t mark = p.marks.p[p.marks.n - 1];
        id pool = p.pools.p[p.pools.n - 1];
        while (p.objs.n > mark) [p.objs.p[--p.objs.n] release];
        --p.marks.n;
        --p.pools.n;
        [pool release];
    }
}
@end

@interface ShimString : NSString {
  @public
    char* str_;
}
@end
@implementation NSString
+ (instancetype)stringWithUTF8String:(const char*)s {
    ShimString* o = [ShimString alloc];
    size_t n = std::strlen(s);
    o->str_ = (char*)sys_malloc(n + 1);
    std::memcpy(o->str_, s, n + 1);
    return [o autorelease];
}
- (const char*)UTF8String { return ((ShimString*)self)->str_; }
@end
@implementation ShimString
- (void)dealloc {
    std::free(str_);
    [super dealloc];
}
@end

@interface ShimError : NSError {
  @public
    NSString* text_;
}
@end
@implementation NSError
- (NSString*)localizedDescription { return ((ShimError*)self)->text_; }
@end
@implementation ShimError
- (void)dealloc {
    [text_ release];
    [super dealloc];
}
@end
static NSError* make_error(const std::string& text) {   // autoreleased, as Apple's are
    ShimError* e = [ShimError alloc];
    e->text_ = [[NSString stringWithUTF8String:text.c_str()] retain];
    return [e autorelease];
}

@interface ShimArray : NSArray {
  @public
    id items_[4];
    NSUInteger n_;
}
@end
@implementation NSArray
- (NSUInteger)count { return ((ShimArray*)self)->n_; }
- (id)objectAtIndex:(NSUInteger)i {
    ShimArray* a = (ShimArray*)self;
    check(i < a->n_, "objectAtIndex: past the end of the array");
    return a->items_[i];
}
@end
@implementation ShimArray
- (void)dealloc {
    for (NSUInteger i = 0; i < n_; ++i) [items_[i] release];
    [super dealloc];
}
@end

// ---- Metal ------------------------------------------------------------------------------------
@implementation MTLCompileOptions
- (BOOL)fastMathEnabled { return YES; }
- (void)setFastMathEnabled:(BOOL)v { (void)v; }   // the emulator computes IEEE float either way
- (MTLMathMode)mathMode { return MTLMathModeFast; }
- (void)setMathMode:(MTLMathMode)v { (void)v; }
@end

struct ShimLimits {
    uint64_t family, simd_width, max_threads, max_buffer;
    emu::Schedule sched;
};
static ShimLimits g_limits;

@interface ShimBuffer : NSObject <MTLBuffer> {
  @public
    char* ptr_;
    NSUInteger len_;
    bool owned_, shared_;
}
@end
@implementation ShimBuffer
- (void*)contents { return shared_ ? ptr_ : nullptr; }   // private storage has no CPU address
- (NSUInteger)length { return len_; }
- (void)dealloc {
    if (owned_) std::free(ptr_);
    [super dealloc];
}
@end

@interface ShimFunction : NSObject <MTLFunction> {
  @public
    emu::KernelFn fn_;
    const char* name_;   // the emulator's registered name (lives as long as the process)
}
@end
@implementation ShimFunction
@end

@interface ShimPipeline : NSObject <MTLComputePipelineState> {
  @public
    emu::KernelFn fn_;
    const char* name_;
}
@end
@implementation ShimPipeline
- (NSUInteger)maxTotalThreadsPerThreadgroup { return g_limits.max_threads; }
- (NSUInteger)threadExecutionWidth { return g_limits.simd_width; }
@end

@interface ShimLibrary : NSObject <MTLLibrary> {
  @public
    char* source_;
}
@end
@implementation ShimLibrary
// A kernel exists when the source declares it (`kernel void NAME(` or [[host_name("NAME")]])
// and the emulator has it compiled from the same .metal files.
- (id<MTLFunction>)newFunctionWithName:(NSString*)name {
    const char* n = name.UTF8String;
    std::string decl = std::string("kernel void ") + n + "(";
    std::string host = std::string("[[host_name(\"") + n + "\")]]";
    if (!std::strstr(source_, decl.c_str()) && !std::strstr(source_, host.c_str())) return nil;
    emu::KernelFn fn = emu::find_kernel(n);
    if (!fn) return nil;
    ShimFunction* f = [ShimFunction alloc];
    f->fn_ = fn;
    f->name_ = n;   // replaced below by a pointer that outlives the NSString
    static std::map<std::string, std::string, std::less<>>* names = new std::map<std::string, std::string, std::less<>>;
    auto it = names->find(n);
    if (it == names->end()) it = names->emplace(n, n).first;
    f->name_ = it->second.c_str();
    return f;
}
- (void)dealloc {
    std::free(source_);
    [super dealloc];
}
@end

// One recorded dispatch: what the encoder's argument tables held when it was encoded.
struct ShimDispatch {
    emu::KernelFn fn;
    const char* name;
    char* buf[31];             // contents + offset of bound buffers
    int64_t bytes_at[31];      // setBytes data: offset into the command buffer's byte arena, or -1
    uint32_t grid[3], tg[3];
    uint32_t tg_mem;
    bool barrier;              // a memoryBarrier came before it
};

// The command buffers' recording storage, reused (capacity kept) from one to the next.
struct ShimRecording { Arr<ShimDispatch> d; Arr<unsigned char> bytes; ShimRecording* next; };
static ShimRecording* g_free_recordings = nullptr;

@class ShimEncoder;
@class ShimQueue;
@interface ShimCommandBuffer : NSObject <MTLCommandBuffer> {
  @public
    ShimRecording* rec_;
    ShimQueue* queue_;         // the queue that made it (not retained: queues outlive them here)
    ShimEncoder* open_;        // the encoder being encoded (not retained), or nil
    MTLDispatchType type_;
    MTLCommandBufferStatus status_;
    NSError* error_;
    int64_t serial_;           // 1, 2, ... in the order the queue made them
    bool encoded_;             // an encoder was opened on it
    bool fail_;                // an injected fault: it ends with an error instead of running
}
- (void)run;
@end

// The queue: committed command buffers (retained) not yet run, in commit order.
@interface ShimQueue : NSObject <MTLCommandQueue> {
  @public
    Arr<ShimCommandBuffer*> pending_;
}
- (void)enqueue:(ShimCommandBuffer*)cb;
- (void)runUpTo:(ShimCommandBuffer*)cb;
@end

@interface ShimEncoder : NSObject <MTLComputeCommandEncoder> {
  @public
    ShimCommandBuffer* cb_;    // retained
    bool ended_;
    int debug_depth_;
    ShimPipeline* ps_;         // not retained (the command buffer's pipelines outlive it here)
    char* buf_[31];
    int64_t bytes_at_[31];
    uint32_t tg_mem_;
    bool barrier_;
}
@end

@implementation ShimEncoder
- (void)use:(const char*)what {
    if (ended_) fatal(std::string(what) + " on a compute command encoder after endEncoding");
}
- (void)setComputePipelineState:(id<MTLComputePipelineState>)state {
    [self use:"setComputePipelineState:"];
    ps_ = (ShimPipeline*)state;
}
- (void)setBytes:(const void*)bytes length:(NSUInteger)length atIndex:(NSUInteger)index {
    [self use:"setBytes:length:atIndex:"];
    check(index <= 30, "setBytes at index " + std::to_string(index) + " (the buffer table has 31 entries)");
    check(length <= 4096, "setBytes of " + std::to_string(length) +
                              " bytes: Apple documents it for data under 4 KB (use a buffer)");
    ShimRecording* r = cb_->rec_;
    size_t at = (r->bytes.n + 15) / 16 * 16;
    while (r->bytes.n < at + length) r->bytes.push(0);
    std::memcpy(r->bytes.p + at, bytes, length);
    bytes_at_[index] = (int64_t)at;
    buf_[index] = nullptr;
}
- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index {
    [self use:"setBuffer:offset:atIndex:"];
    check(index <= 30, "setBuffer at index " + std::to_string(index) + " (the buffer table has 31 entries)");
    bytes_at_[index] = -1;
    if (!buffer) { buf_[index] = nullptr; return; }
    ShimBuffer* b = (ShimBuffer*)buffer;
    check(offset < b->len_, "setBuffer offset " + std::to_string(offset) + " at index " + std::to_string(index) +
                                " is outside the buffer (" + std::to_string(b->len_) + " bytes)");
    check(offset % 4 == 0, "setBuffer offset " + std::to_string(offset) + " is not 4-byte aligned");
    buf_[index] = b->ptr_ + offset;
}
- (void)setThreadgroupMemoryLength:(NSUInteger)length atIndex:(NSUInteger)index {
    [self use:"setThreadgroupMemoryLength:atIndex:"];
    check(index == 0, "threadgroup memory at index " + std::to_string(index) + " (the kernels use index 0)");
    check(length % 16 == 0, "threadgroup memory length " + std::to_string(length) + " is not a multiple of 16");
    check(length <= 32768, "threadgroup memory length " + std::to_string(length) +
                               " exceeds maxThreadgroupMemoryLength (32768)");
    tg_mem_ = (uint32_t)length;
}
- (void)dispatchThreadgroups:(MTLSize)grid threadsPerThreadgroup:(MTLSize)tg {
    [self use:"dispatchThreadgroups:threadsPerThreadgroup:"];
    check(ps_ != nil, "dispatch without a compute pipeline state");
    uint64_t threads = (uint64_t)tg.width * tg.height * tg.depth;
    check(threads >= 1 && threads <= g_limits.max_threads,
          std::string(ps_->name_) + ": " + std::to_string(threads) + " threads per threadgroup; the pipeline allows " +
              std::to_string(g_limits.max_threads));
    check(grid.width >= 1 && grid.height >= 1 && grid.depth >= 1, std::string(ps_->name_) + ": an empty grid");
    ShimDispatch d;
    d.fn = ps_->fn_;
    d.name = ps_->name_;
    std::memcpy(d.buf, buf_, sizeof buf_);
    std::memcpy(d.bytes_at, bytes_at_, sizeof bytes_at_);
    d.grid[0] = (uint32_t)grid.width; d.grid[1] = (uint32_t)grid.height; d.grid[2] = (uint32_t)grid.depth;
    d.tg[0] = (uint32_t)tg.width; d.tg[1] = (uint32_t)tg.height; d.tg[2] = (uint32_t)tg.depth;
    d.tg_mem = tg_mem_;
    d.barrier = barrier_;
    barrier_ = false;
    cb_->rec_->d.push(d);
}
- (void)memoryBarrierWithScope:(MTLBarrierScope)scope {
    [self use:"memoryBarrierWithScope:"];
    check(scope == MTLBarrierScopeBuffers, "memory barrier scope other than buffers");
    barrier_ = true;
}
- (void)pushDebugGroup:(NSString*)s {
    [self use:"pushDebugGroup:"];
    check(s != nil && s.UTF8String != nullptr, "pushDebugGroup: without a string");
    ++debug_depth_;
}
- (void)popDebugGroup {
    [self use:"popDebugGroup"];
    if (debug_depth_ == 0) fatal("popDebugGroup without a matching pushDebugGroup:");
    --debug_depth_;
}
- (void)endEncoding {
    [self use:"endEncoding"];
    if (debug_depth_ != 0) fatal("endEncoding with " + std::to_string(debug_depth_) + " debug group(s) still pushed");
    ended_ = true;
    if (cb_->open_ == self) cb_->open_ = nil;
}
- (void)dealloc {
    if (!ended_) fatal("Command encoder released without endEncoding");
    [cb_ release];
    [super dealloc];
}
@end

@implementation ShimCommandBuffer
- (id<MTLComputeCommandEncoder>)computeCommandEncoderWithDispatchType:(MTLDispatchType)type {
    if (status_ != MTLCommandBufferStatusNotEnqueued) fatal("a new encoder on a committed command buffer");
    if (open_) fatal("a new encoder while another encoder of the command buffer is still encoding");
    ShimEncoder* e = [ShimEncoder alloc];
    e->cb_ = [self retain];
    for (int i = 0; i < 31; ++i) { e->buf_[i] = nullptr; e->bytes_at_[i] = -1; }
    open_ = e;
    type_ = type;
    encoded_ = true;
    stats().event('e', serial_, nullptr);
    return [e autorelease];
}
- (void)commit {
    if (open_) fatal("commit of a command buffer whose encoder did not call endEncoding");
    if (status_ != MTLCommandBufferStatusNotEnqueued) fatal("commit of a command buffer committed before");
    status_ = MTLCommandBufferStatusCommitted;
    ++stats().command_buffers;
    Stats& s = stats();
    s.event('c', serial_, nullptr);
    if (s.fail_in > 0 && --s.fail_in == 0) fail_ = true;   // a fault injected by a test
    [queue_ enqueue:self];
}
// Runs the recorded dispatches on the emulator (the queue calls it, in commit order).
- (void)run {
    stats().event('d', serial_, nullptr);
    if (fail_) {
        status_ = MTLCommandBufferStatusError;
        error_ = [make_error("injected GPU fault (llmetal_metal_shim_fail_command_buffer)") retain];
        return;
    }
    ShimRecording* r = rec_;
    auto launch = [&](const ShimDispatch& d) {
        emu::Launch l;
        l.fn = d.fn;
        l.name = d.name;
        for (int i = 0; i < 31; ++i) l.buf[i] = d.bytes_at[i] >= 0 ? (void*)(r->bytes.p + d.bytes_at[i]) : (void*)d.buf[i];
        for (int k = 0; k < 3; ++k) { l.grid[k] = d.grid[k]; l.tg[k] = d.tg[k]; }
        l.tg_mem[0] = d.tg_mem;
        emu::run(l, g_limits.sched);
        ++stats().dispatches;
    };
    try {
        bool concurrent = type_ == MTLDispatchTypeConcurrent && g_limits.sched == emu::Schedule::reverse;
        size_t b = 0;
        while (b < r->d.n) {   // each run of dispatches between barriers
            size_t e = b + 1;
            while (e < r->d.n && !r->d.p[e].barrier) ++e;
            if (concurrent) for (size_t i = e; i-- > b;) launch(r->d.p[i]);
            else for (size_t i = b; i < e; ++i) launch(r->d.p[i]);
            b = e;
        }
        status_ = MTLCommandBufferStatusCompleted;
    } catch (const std::exception& e) {
        status_ = MTLCommandBufferStatusError;
        error_ = [make_error(e.what()) retain];
    }
}
- (void)waitUntilCompleted {
    if (status_ == MTLCommandBufferStatusNotEnqueued) fatal("waitUntilCompleted on a command buffer never committed");
    if (status_ == MTLCommandBufferStatusCommitted) [queue_ runUpTo:self];
}
- (MTLCommandBufferStatus)status { return status_; }
- (NSError*)error { return error_; }
- (void)dealloc {
    if (open_) fatal("Command buffer released while its encoder is still encoding");
    if (status_ == MTLCommandBufferStatusNotEnqueued && encoded_) stats().event('x', serial_, nullptr);
    [error_ release];
    rec_->d.clear();
    rec_->bytes.clear();
    rec_->next = g_free_recordings;
    g_free_recordings = rec_;
    [super dealloc];
}
@end

@implementation ShimQueue
- (void)enqueue:(ShimCommandBuffer*)cb {
    pending_.push([cb retain]);
}
// Runs the committed command buffers in order, up to and including cb.
- (void)runUpTo:(ShimCommandBuffer*)cb {
    size_t k = 0;
    while (k < pending_.n && pending_.p[k] != cb) ++k;
    if (k == pending_.n) fatal("waitUntilCompleted on a command buffer its queue does not hold");
    for (size_t i = 0; i <= k; ++i) {
        [pending_.p[i] run];
        [pending_.p[i] release];
    }
    std::memmove(pending_.p, pending_.p + k + 1, (pending_.n - k - 1) * sizeof(ShimCommandBuffer*));
    pending_.n -= k + 1;
}
- (void)dealloc {
    for (size_t i = 0; i < pending_.n; ++i) [pending_.p[i] release];
    std::free(pending_.p);
    [super dealloc];
}
- (id<MTLCommandBuffer>)commandBuffer {
    ShimCommandBuffer* cb = [ShimCommandBuffer alloc];
    cb->queue_ = self;
    cb->serial_ = ++stats().made;
    if (!g_free_recordings) {
        auto* r = (ShimRecording*)sys_malloc(sizeof(ShimRecording));
        new (r) ShimRecording();
        g_free_recordings = r;
    }
    cb->rec_ = g_free_recordings;
    g_free_recordings = g_free_recordings->next;
    cb->status_ = MTLCommandBufferStatusNotEnqueued;
    return [cb autorelease];
}
@end

@interface ShimDevice : NSObject <MTLDevice>
@end
@implementation ShimDevice
- (NSString*)name { return [NSString stringWithUTF8String:"llmetal metal-shim (CPU emulator of Metal)"]; }
- (NSUInteger)maxBufferLength { return g_limits.max_buffer; }
- (NSUInteger)maxThreadgroupMemoryLength { return 32768; }
- (BOOL)supportsFamily:(MTLGPUFamily)f {
    return f >= 1001 && f <= 1000 + (MTLGPUFamily)g_limits.family;   // Apple1 .. AppleN
}
- (id<MTLCommandQueue>)newCommandQueue { return [ShimQueue new]; }
- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options {
    check(length >= 1, "newBufferWithLength: of 0 bytes");
    check(length <= g_limits.max_buffer, "newBufferWithLength: " + std::to_string(length) +
                                             " bytes exceeds maxBufferLength " + std::to_string(g_limits.max_buffer));
    ShimBuffer* b = [ShimBuffer alloc];
    b->ptr_ = (char*)sys_malloc(length);
    if (!b->ptr_) { [b release]; return nil; }
    std::memset(b->ptr_, 0xFF, length);   // not zero: fresh GPU memory holds anything
    b->len_ = length;
    b->owned_ = true;
    b->shared_ = (options & (0xFUL << 4)) == MTLResourceStorageModeShared;
    return b;
}
- (id<MTLBuffer>)newBufferWithBytesNoCopy:(void*)pointer
                                   length:(NSUInteger)length
                                  options:(MTLResourceOptions)options
                              deallocator:(void (^)(void*, NSUInteger))deallocator {
    const uint64_t page = (uint64_t)getpagesize();
    check(deallocator == nil, "newBufferWithBytesNoCopy: deallocator blocks are not used by device.mm");
    check((uintptr_t)pointer % page == 0, "newBufferWithBytesNoCopy: memory not page-aligned");
    check(length >= 1 && length % page == 0, "newBufferWithBytesNoCopy: length " + std::to_string(length) +
                                                 " is not a whole number of pages");
    check(length <= g_limits.max_buffer, "newBufferWithBytesNoCopy: " + std::to_string(length) +
                                             " bytes exceeds maxBufferLength " + std::to_string(g_limits.max_buffer));
    ShimBuffer* b = [ShimBuffer alloc];
    b->ptr_ = (char*)pointer;
    b->len_ = length;
    b->owned_ = false;
    b->shared_ = (options & (0xFUL << 4)) == MTLResourceStorageModeShared;
    return b;
}
- (id<MTLLibrary>)newLibraryWithSource:(NSString*)source options:(MTLCompileOptions*)options error:(NSError**)error {
    (void)options;
    const char* s = source.UTF8String;
    if (!s || !std::strstr(s, "kernel void")) {
        if (error) *error = make_error("the source declares no kernel");
        return nil;
    }
    ShimLibrary* lib = [ShimLibrary alloc];
    size_t n = std::strlen(s);
    lib->source_ = (char*)sys_malloc(n + 1);
    std::memcpy(lib->source_, s, n + 1);
    return lib;
}
- (id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)fn error:(NSError**)error {
    if (!fn) {
        if (error) *error = make_error("no function");
        return nil;
    }
    ShimPipeline* p = [ShimPipeline alloc];
    p->fn_ = ((ShimFunction*)fn)->fn_;
    p->name_ = ((ShimFunction*)fn)->name_;
    stats().event('p', 0, p->name_);
    return p;
}
@end

static ShimDevice* make_device() {
    const char* sched = std::getenv("LLMETAL_METAL_SHIM_SCHEDULE");
    g_limits.sched = sched && std::strcmp(sched, "forward") == 0 ? emu::Schedule::forward : emu::Schedule::reverse;
    g_limits.family = env_u64("LLMETAL_METAL_SHIM_FAMILY", 7);
    g_limits.simd_width = env_u64("LLMETAL_METAL_SHIM_SIMD_WIDTH", 32);
    g_limits.max_threads = env_u64("LLMETAL_METAL_SHIM_MAX_THREADS", 1024);
    g_limits.max_buffer = env_u64("LLMETAL_METAL_SHIM_MAX_BUFFER", 1ULL << 30);
    return [ShimDevice new];
}
static std::string devices_mode() {
    const char* v = std::getenv("LLMETAL_METAL_SHIM_DEVICES");
    return v ? v : "default";
}

extern "C" id<MTLDevice> MTLCreateSystemDefaultDevice(void) {
    if (devices_mode() != "default") return nil;
    return make_device();
}
extern "C" NSArray<id<MTLDevice>>* MTLCopyAllDevices(void) {
    ShimArray* a = [ShimArray new];
    a->n_ = 0;
    if (devices_mode() != "none") a->items_[a->n_++] = make_device();
    return a;
}

// ---- the tests' window into the shim (tests/test_metal_shim.py) -------------------------------
namespace llmetal {
std::vector<std::pair<std::string, int64_t>> metal_shim_stats() {
    Stats& s = stats();
    std::vector<std::pair<std::string, int64_t>> v;
    for (auto& kv : s.live)
        if (kv.second) v.emplace_back("live." + kv.first, kv.second);
    v.emplace_back("objects", s.objects);
    v.emplace_back("retains", s.retains);
    v.emplace_back("releases", s.releases);
    v.emplace_back("autoreleased_without_pool", s.autoreleased_without_pool);
    v.emplace_back("open_pools", (int64_t)pools().pools.n);
    v.emplace_back("command_buffers", s.command_buffers);
    v.emplace_back("dispatches", s.dispatches);
    return v;
}
// The k-th command buffer committed from now on ends with an error instead of running.
void metal_shim_fail_command_buffer(int64_t k) { stats().fail_in = k; }
// The host side's events since the last call, oldest first: (kind, command buffer, kernel)
// with kind "pipeline" (kernel: its name), "encode", "commit", "complete" or "drop".
std::vector<std::tuple<std::string, int64_t, std::string>> metal_shim_events() {
    Arr<Event>& ev = stats().events;
    std::vector<std::tuple<std::string, int64_t, std::string>> v;
    for (size_t i = 0; i < ev.n; ++i) {
        const Event& e = ev.p[i];
        const char* kind = e.kind == 'p' ? "pipeline" : e.kind == 'e' ? "encode" : e.kind == 'c' ? "commit"
                         : e.kind == 'd' ? "complete" : "drop";
        v.emplace_back(kind, e.cb, e.name ? e.name : "");
    }
    ev.clear();
    return v;
}
}  // namespace llmetal
