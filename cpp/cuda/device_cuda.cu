// device_cuda.cu -- the CUDA device's memory, stream, submit and wait. What a command list
// launches is the planner's launch list (planner.cpp); launch.cu launches it, graph.cu
// captures a recorded plan's list once into a CUDA graph launched per token.
//
// Memory: alloc() is cudaMalloc (counted in n_allocs). map_file() reads the GGUF once and
// uploads the whole file to one device buffer, so weight tensors keep their file offsets.
// Scratch (attention partials) grows before a command list runs -- never inside a graph
// capture -- and old scratch is kept until the device goes, so a captured graph never
// points at freed memory.
//
// Ordering: every copy and kernel goes on one stream. upload() and set_step() copy from
// pageable host memory with cudaMemcpyAsync, which stages the bytes before returning, so
// the host may reuse its buffer at once and the copy still lands in stream order (before
// the next graph launch reads the step buffer or the token id). A one-token replay
// (replay_token) passes the id and position as arguments of the graph's first kernel instead.
//
// Errors a kernel detects (a token id outside the vocabulary, a K/V row past the context)
// set a flag in device memory; wait() and download() read it and throw. In eager mode the
// same checks also run on the host before launching, so the message comes at the call.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "device_cuda.cuh"
#include "geometry.h"

namespace llmetal {
using namespace llmetal_cuda;

CudaDevice::CudaDevice(int ordinal) : ordinal(ordinal) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
        throw Error(std::string("cuda: no usable NVIDIA GPU (") +
                    (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + ")");
    if (ordinal < 0 || ordinal >= n)
        throw Error("cuda: device ordinal " + std::to_string(ordinal) + " out of range (" +
                    std::to_string(n) + " GPUs)");
    ck(cudaSetDevice(ordinal), "cudaSetDevice");
    ck(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    ck(cudaDeviceGetAttribute(&caps.n_sm, cudaDevAttrMultiProcessorCount, ordinal), "SM count");
    ck(cudaDeviceGetAttribute(&caps.cc_major, cudaDevAttrComputeCapabilityMajor, ordinal), "compute capability");
    // LLMETAL_CUDA_PDL=0 / LLMETAL_CUDA_FUSE=0 (README): launches without programmatic
    // dependent launch / every stage split. Read once, when the device is made.
    const char* pdl = std::getenv("LLMETAL_CUDA_PDL");
    const char* fuse = std::getenv("LLMETAL_CUDA_FUSE");
    caps.pdl = caps.cc_major >= 9 && !(pdl && std::strcmp(pdl, "0") == 0);
    caps.fuse = !(fuse && std::strcmp(fuse, "0") == 0);
    init_kernels();
    // LLMETAL_CUDA_PERSISTENT=1 (README): captured one-token decode lists run as the program
    // of the persistent kernel (persist.cuh) where every launch has a persistent body.
    const char* pk = std::getenv("LLMETAL_CUDA_PERSISTENT");
    caps.pk_blocks = persistent_blocks(caps.n_sm);
    caps.persist = pk && std::strcmp(pk, "1") == 0 && caps.pk_blocks >= 2;
    // LLMETAL_CUDA_PERSISTENT_STRESS=N > 0, for the stress test of its counters: 2 + N % (blocks
    // - 1) blocks, and for odd N each instruction's units taken in reverse order.
    const char* st = std::getenv("LLMETAL_CUDA_PERSISTENT_STRESS");
    if (caps.persist && st && std::atoi(st) > 0) {
        caps.pk_blocks = 2 + std::atoi(st) % (caps.pk_blocks - 1);
        pk_reverse = std::atoi(st) % 2;
    }
    const char* pf = std::getenv("LLMETAL_CUDA_PERSISTENT_PROFILE");   // bench/cuda_persist_profile.py
    pk_profile = caps.persist && pf && std::strcmp(pf, "1") == 0;
    step_buf = alloc(sizeof(kstep), "step");
    ck(cudaMemsetAsync(step_buf->dev, 0, sizeof(kstep), stream), "memset step");
    err_buf = alloc(sizeof(int), "error flag");
    ck(cudaMemsetAsync(err_buf->dev, 0, sizeof(int), stream), "memset error flag");
    att_count = alloc(AD_COUNTERS * sizeof(int), "attention split counters");   // kernel_attention_decode
    ck(cudaMemsetAsync(att_count->dev, 0, AD_COUNTERS * sizeof(int), stream), "memset split counters");
    ck(cudaMallocHost((void**)&herr, sizeof(int)), "pinned error flag");
    ck(cudaStreamSynchronize(stream), "init");
}

CudaDevice::~CudaDevice() {
    cudaStreamSynchronize(stream);
    if (herr) cudaFreeHost(herr);
    if (hstage) cudaFreeHost(hstage);
    step_buf.reset();
    err_buf.reset();
    att_count.reset();
    for (void* p : scratch_old) cudaFree(p);
    if (scratch) cudaFree(scratch);
    if (qscratch) cudaFree(qscratch);
    if (hscratch) cudaFree(hscratch);
    for (auto& kv : rope_pw_tables) cudaFree(kv.second);
    cudaStreamDestroy(stream);
}

// ---- memory ----------------------------------------------------------------------------
BufferRef CudaDevice::alloc(uint64_t bytes, const std::string& label) {
    cudaSetDevice(ordinal);
    void* p = nullptr;
    ck(cudaMalloc(&p, bytes ? bytes : 256), ("cudaMalloc " + std::to_string(bytes) + " bytes for " + label).c_str());
    auto b = new_buffer();
    b->dev = p; b->bytes = bytes; b->label = label;
    ++n_allocs; bytes_allocated += bytes;
    return b;
}

BufferRef CudaDevice::map_file(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw Error("cannot open " + path + ": " + std::strerror(errno));
    std::fseek(f, 0, SEEK_END);
    long size = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    if (size <= 0) { std::fclose(f); throw Error("cannot map empty file " + path); }
    auto b = alloc((uint64_t)size, path);
    // upload in 64 MiB pieces so the host copy stays small
    std::vector<char> host(std::min<long>(size, 64l << 20));
    for (long off = 0; off < size;) {
        long n = std::min<long>((long)host.size(), size - off);
        if (std::fread(host.data(), 1, n, f) != (size_t)n) {
            std::fclose(f);
            throw Error("short read of " + path);
        }
        ck(cudaMemcpy((char*)b->dev + off, host.data(), n, cudaMemcpyHostToDevice), "upload file");
        off += n;
    }
    std::fclose(f);
    b->read_only = true;
    b->kind = 1;
    return b;
}

void CudaDevice::free_buffer(Buffer& b) {
    if (!b.dev) return;
    cudaFree(b.dev);   // waits for the device's work that may still read it
    b.dev = nullptr;
}

void CudaDevice::upload(const Binding& dst, const void* src, uint64_t n) {
    if (dst.buf->read_only) throw Error("cannot write into read-only buffer " + dst.buf->label);
    ck(cudaMemcpyAsync(dst.ptr<char>(), src, n, cudaMemcpyHostToDevice, stream), "upload");
}
// Downloads go through a pinned staging buffer (up to HSTAGE_MAX bytes a round): the copy
// is one DMA, queued with the error flag's copy behind it, then one synchronization and a
// host memcpy. (A copy into pageable memory is staged by the driver in pieces, and reading
// the flag took a second synchronous copy: two waits per token where one does.)
void* CudaDevice::host_alloc(uint64_t bytes) {
    void* p = nullptr;
    ck(cudaMallocHost(&p, std::max<uint64_t>(bytes, 1)), "pinned host memory");
    std::lock_guard<std::mutex> g(host_mu);
    host_pinned.push_back({(char*)p, bytes});
    return p;
}
void CudaDevice::host_free(void* p) {
    {
        std::lock_guard<std::mutex> g(host_mu);
        for (size_t i = 0; i < host_pinned.size(); ++i)
            if (host_pinned[i].first == p) { host_pinned.erase(host_pinned.begin() + i); break; }
    }
    cudaFreeHost(p);
}
bool CudaDevice::is_pinned(const void* p, uint64_t n) {
    std::lock_guard<std::mutex> g(host_mu);
    for (const auto& r : host_pinned)
        if ((const char*)p >= r.first && (const char*)p + n <= r.first + r.second) return true;
    return false;
}
void CudaDevice::download(void* dst, const Binding& src, uint64_t n) {
    if (n && is_pinned(dst, n)) {   // host_alloc memory: one DMA, no staging
        ck(cudaMemcpyAsync(dst, src.ptr<char>(), n, cudaMemcpyDeviceToHost, stream), "download");
        return wait();
    }
    constexpr uint64_t HSTAGE_MAX = 4u << 20;
    const uint64_t want = std::min<uint64_t>(std::max<uint64_t>(n, 4096), HSTAGE_MAX);
    if (want > hstage_bytes) {
        if (hstage) ck(cudaFreeHost(hstage), "free staging");
        hstage = nullptr;
        hstage_bytes = 0;
        ck(cudaMallocHost(&hstage, want), "pinned staging");
        hstage_bytes = want;
    }
    if (n == 0) return wait();
    for (uint64_t off = 0; off < n; off += hstage_bytes) {
        const uint64_t m = std::min(hstage_bytes, n - off);
        ck(cudaMemcpyAsync(hstage, src.ptr<char>() + off, m, cudaMemcpyDeviceToHost, stream), "download");
        wait();
        std::memcpy((char*)dst + off, hstage, m);
    }
}

void CudaDevice::set_step(const kstep& s) {
    hstep = s;
    ck(cudaMemcpyAsync(step_buf->dev, &hstep, kstep_bytes(hstep), cudaMemcpyHostToDevice, stream), "set_step");
}

// ---- execution -------------------------------------------------------------------------------
void CudaDevice::prepare(const std::vector<Command>& cmds, const cuda::LaunchList& l, bool check_ids) {
    for (const Command& c : cmds) {
        check_positions(c, hstep);
        if (check_ids && c.stage == Stage::embed) {
            std::vector<int32_t> ids(c.a.embed.n_tokens);
            ck(cudaMemcpyAsync(ids.data(), c.b[1].ptr<char>(), ids.size() * 4, cudaMemcpyDeviceToHost, stream), "ids");
            ck(cudaStreamSynchronize(stream), "ids");
            for (int32_t id : ids)
                if (id < 0 || id >= c.a.embed.n_vocab)
                    throw Error("embed: token id " + std::to_string(id) + " outside the vocabulary");
        }
    }
    grow(&scratch, &scratch_bytes, l.scratch_bytes);
    grow(&qscratch, &qscratch_bytes, l.qscratch_bytes);
    grow(&hscratch, &hscratch_bytes, l.hscratch_bytes);
    // the rope's position-independent factors (read by the fused decode attention)
    for (const Command& c : cmds)
        if (c.stage == Stage::rope) rope_powers(c.a.rope);
}

// Grow a scratch buffer (outside any capture); the old one stays until the device goes,
// because a captured graph may still point at it.
void CudaDevice::grow(void** p, uint64_t* have, uint64_t need) {
    if (need <= *have) return;
    if (*p) scratch_old.push_back(*p);
    ck(cudaMalloc(p, need), "cudaMalloc scratch");
    ++n_allocs; bytes_allocated += need;
    *have = need;
}

// A list submitted as it comes (eager stages, a prompt): planned, then launched.
void CudaDevice::submit(const std::vector<Command>& cmds) {
    cudaSetDevice(ordinal);
    cuda::CudaCaps launches = caps;   // the persistent program runs only from a captured plan
    launches.persist = false;
    const cuda::LaunchList l = cuda::plan(cmds, launches);
    prepare(cmds, l, true);
    run_list(cmds, l);
}

std::vector<KernelDesc> CudaDevice::describe(const std::vector<Command>& cmds) {
    return cuda::describe(cuda::plan(cmds, caps));
}

void CudaDevice::wait() {
    int err = 0;
    // the flag's copy queued behind the work, one synchronization for both
    ck(cudaMemcpyAsync(herr, err_buf->dev, sizeof(int), cudaMemcpyDeviceToHost, stream), "read error flag");
    ck(cudaStreamSynchronize(stream), "synchronize");
    err = *herr;
    if (err != ERR_NONE) {
        cudaMemset(err_buf->dev, 0, sizeof(int));
        if (err == ERR_EMBED_ID) throw Error("embed: a token id outside the vocabulary reached the GPU");
        if (err == ERR_KV_POS) throw Error("kv_store: positions exceed the context (on the GPU)");
        throw Error("cuda: kernel error " + std::to_string(err));
    }
}

std::vector<int64_t> cuda::persistent_profile(const Plan& p) {
    const GraphExec* ge = static_cast<const GraphExec*>(p.exec.get());
    if (!ge || !ge->prof) return {};
    std::vector<int64_t> r((size_t)ge->n_tickets * 4);
    ck(cudaDeviceSynchronize(), "profile");
    ck(cudaMemcpy(r.data(), ge->prof, r.size() * sizeof(int64_t), cudaMemcpyDeviceToHost), "profile");
    return r;
}

const cuda::CudaCaps* cuda::device_caps(const Device& d) {
    const CudaDevice* c = dynamic_cast<const CudaDevice*>(&d);
    return c ? &c->caps : nullptr;
}

// One device object per GPU for the life of the process, like CUDA's primary context: its
// stream and scratch are made once, however many times Python asks for cuda_device(0).
std::shared_ptr<Device> make_cuda_device(int ordinal) {
    static std::mutex mu;
    static std::map<int, CudaDevice*> devices;
    std::lock_guard<std::mutex> lock(mu);
    auto it = devices.find(ordinal);
    if (it == devices.end()) it = devices.emplace(ordinal, new CudaDevice(ordinal)).first;
    return std::shared_ptr<Device>(it->second, [](Device*) {});
}

}  // namespace llmetal
