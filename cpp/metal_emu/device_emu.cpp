// device_emu.cpp -- the metal-emu device: the Metal device's dispatch plan (cpp/metal/dispatch)
// executed by the CPU emulator of Metal (runtime.cpp) running the kernels compiled from the
// unmodified metal/*.metal sources. Memory is host memory, as Metal's shared storage on Apple
// silicon is: weights stay in the mmapped file (device.mm wraps the same pages zero-copy).
// Every kernel of the planner's table is looked up when the device is made (as device.mm makes
// every pipeline then). A submitted command buffer runs to completion before submit returns.
//
// Schedules: "forward" runs threads, threadgroups and dispatches in order; "reverse" runs the
// threads and threadgroups of every dispatch backwards, and also the dispatches between two
// barriers backwards (the real device encodes them into a concurrent encoder, so they may run
// in any order): a missing barrier in the plan then shows as a wrong result.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "../engine.h"
#include "../metal/dispatch.h"
#include "runtime.h"

namespace llmetal {
namespace {

struct EmuDevice final : metal::PlannedDevice {
    explicit EmuDevice(emu::Schedule s) : sched(s) {
        // Every kernel the planner can name, found now (the emulator's pipelines): a missing
        // one is an error here, not in the middle of a command list.
        for (int k = 0; k < metal::kernel_count(); ++k) {
            const char* name = metal::kernel_name(k);
            fns.push_back(emu::find_kernel(name));
            if (!fns.back())
                throw Error(std::string("metal-emu: no kernel named ") + name + " (have: " + emu::kernel_names() + ")");
        }
        step_buf = alloc(sizeof(kstep), "step");
        std::memset(step_buf->host, 0, sizeof(kstep));
    }
    ~EmuDevice() override {
        step_buf.reset();
        scratch.reset();
    }
    const char* name() const override { return "metal-emu"; }

    BufferRef alloc(uint64_t bytes, const std::string& label) override {
        void* p = nullptr;
        if (posix_memalign(&p, 256, bytes ? bytes : 256) != 0)
            throw Error("metal-emu: out of memory allocating " + std::to_string(bytes) + " bytes for " + label);
        std::memset(p, 0xFF, bytes);   // like fresh GPU memory: not zero (NaN as float)
        auto b = new_buffer();
        b->host = b->dev = p;
        b->bytes = bytes;
        b->label = label;
        ++n_allocs;
        bytes_allocated += bytes;
        return b;
    }
    BufferRef map_file(const std::string& path) override { return map_file_readonly(*this, path); }
    void free_buffer(Buffer& b) override { free_host_buffer(b); }

    void upload(const Binding& dst, const void* src, uint64_t n) override {
        if (dst.buf->read_only) throw Error("cannot write into read-only buffer " + dst.buf->label);
        std::memcpy(dst.ptr<char>(), src, n);
    }
    void download(void* dst, const Binding& src, uint64_t n) override { std::memcpy(dst, src.ptr<char>(), n); }
    void wait() override {}   // execute() runs to completion

    void execute(const metal::DispatchDesc* d, size_t n) override {
        if (sched == emu::Schedule::forward) {
            for (size_t i = 0; i < n; ++i) launch(d[i]);
            return;
        }
        // reverse: each run of dispatches between barriers, backwards
        size_t b = 0;
        while (b < n) {
            size_t e = b + 1;
            while (e < n && !d[e].barrier) ++e;
            for (size_t i = e; i-- > b;) launch(d[i]);
            b = e;
        }
    }

    void launch(const metal::DispatchDesc& d) {
        emu::Launch l;
        l.fn = fns[d.kernel_id];
        l.name = d.kernel;
        l.buf[0] = (void*)d.args;
        for (int i = 1; i < d.n_bufs; ++i)
            l.buf[i] = d.bufs[i].buf ? (char*)d.bufs[i].buf->host + d.bufs[i].offset : nullptr;
        for (int k = 0; k < 3; ++k) { l.grid[k] = d.grid[k]; l.tg[k] = d.tg[k]; }
        l.tg_mem[0] = d.tg_mem;
        // what counting mode classifies accesses by, and the record's label
        l.label = d.stage;
        l.buf_bytes[0] = d.args_bytes;
        for (int i = 1; i < d.n_bufs; ++i) {
            const metal::BufferBinding& b = d.bufs[i];
            l.buf_bytes[i] = b.buf && b.buf->bytes > b.offset ? b.buf->bytes - b.offset : 0;
        }
        try {
            emu::run(l, sched);
        } catch (const std::runtime_error& e) {
            throw Error(std::string(e.what()) + " [stage " + d.stage + "]");
        }
    }

    emu::Schedule sched;
    std::vector<emu::KernelFn> fns;   // by kernel index (metal::kernel_name)
};

}  // namespace

std::shared_ptr<Device> make_metal_emu_device(const std::string& schedule) {
    emu::Schedule s;
    if (schedule == "forward") s = emu::Schedule::forward;
    else if (schedule == "reverse") s = emu::Schedule::reverse;
    else throw Error("metal-emu: schedule must be 'forward' or 'reverse', not '" + schedule + "'");
    return std::make_shared<EmuDevice>(s);
}

// Counters of a metal-emu (or metal) device, and the emulator's own.
void metal_counters(Device& d, uint64_t out[7]) {
    auto* p = dynamic_cast<metal::PlannedDevice*>(&d);
    if (!p) throw Error(std::string("not a metal device: ") + d.name());
    const emu::Stats& s = emu::stats();
    uint64_t v[7] = {p->n_command_buffers, p->n_dispatches, p->n_barriers, s.threads, s.threadgroups,
                     s.switches, s.rendezvous};
    std::memcpy(out, v, sizeof v);
}

// Runs one kernel by name on raw host memory (the emulator's self-tests).
void metal_emu_run_kernel(const std::string& name, const std::vector<void*>& bufs,
                          const std::vector<uint64_t>& sizes, const void* args, uint32_t args_bytes,
                          const uint32_t grid[3], const uint32_t tg[3], uint32_t tg_mem, const std::string& schedule) {
    emu::Launch l;
    l.fn = emu::find_kernel(name.c_str());
    l.name = name.c_str();
    if (!l.fn) throw Error("metal-emu: no kernel named " + name);
    l.buf[0] = (void*)args;
    l.buf_bytes[0] = args_bytes;
    for (size_t i = 0; i < bufs.size() && i + 1 < 31; ++i) {
        l.buf[i + 1] = bufs[i];
        l.buf_bytes[i + 1] = sizes[i];
    }
    for (int k = 0; k < 3; ++k) { l.grid[k] = grid[k]; l.tg[k] = tg[k]; }
    l.tg_mem[0] = tg_mem;
    try {
        emu::run(l, schedule == "reverse" ? emu::Schedule::reverse : emu::Schedule::forward);
    } catch (const std::runtime_error& e) {
        throw Error(e.what());
    }
}

}  // namespace llmetal
