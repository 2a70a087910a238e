// bindings.cpp -- llmetal._engine: the engine's objects as Python classes (nanobind).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <cstring>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "cpu/features.h"
#include "cuda/planner.h"
#include "engine.h"

#ifdef LLMETAL_WITH_METAL_EMU   // cpp/metal_emu/device_emu.cpp
namespace llmetal {
void metal_counters(Device& d, uint64_t out[7]);
void metal_emu_run_kernel(const std::string& name, const std::vector<void*>& bufs,
                          const std::vector<uint64_t>& sizes, const void* args, uint32_t args_bytes,
                          const uint32_t grid[3], const uint32_t tg[3], uint32_t tg_mem, const std::string& schedule);
}
#include "metal_emu/runtime.h"   // counting mode
#endif
#if defined(LLMETAL_WITH_METAL_EMU) || defined(LLMETAL_WITH_METAL)   // cpp/metal/dispatch.cpp
namespace llmetal::metal {
void plan_counters(Device& d, uint64_t out[3]);
int kernel_count();
const char* kernel_name(int id);
}
#endif
#ifdef LLMETAL_WITH_METAL_SHIM   // tests/metal_shim/shim.mm (test builds only)
namespace llmetal {
std::vector<std::pair<std::string, int64_t>> metal_shim_stats();
void metal_shim_fail_command_buffer(int64_t k);
std::vector<std::tuple<std::string, int64_t, std::string>> metal_shim_events();
}
#endif

namespace nb = nanobind;
using namespace llmetal;

#ifndef LLMETAL_VERSION
#define LLMETAL_VERSION "0.0.0"
#endif

// The CUDA planner's launch list for a plan's commands as dicts (tests without a GPU).
// caps: CudaCaps fields to change from the H100 defaults (n_sm, cc_major, pdl, fuse, persist, pk_blocks,
// ad_blocks_sm, mv_resident / mvg_resident: {ggml type: [one token, 2-8 tokens]}).
static cuda::CudaCaps caps_from(const nb::dict& d) {
    cuda::CudaCaps c;
    for (auto [k, v] : d) {
        const std::string key = nb::cast<std::string>(k);
        if (key == "n_sm") c.n_sm = nb::cast<int>(v);
        else if (key == "cc_major") c.cc_major = nb::cast<int>(v);
        else if (key == "pdl") c.pdl = nb::cast<bool>(v);
        else if (key == "fuse") c.fuse = nb::cast<bool>(v);
        else if (key == "persist") c.persist = nb::cast<bool>(v);
        else if (key == "pk_blocks") c.pk_blocks = nb::cast<int>(v);
        else if (key == "ad_blocks_sm") c.ad_blocks_sm = nb::cast<int>(v);
        else if (key == "mv_resident" || key == "mvg_resident") {
            auto& t = key == "mv_resident" ? c.mv_resident : c.mvg_resident;
            for (auto [ty, r] : nb::cast<nb::dict>(v)) {
                const int i = nb::cast<int>(ty);
                if (i < 0 || i >= 32) throw Error("cuda_plan: ggml type " + std::to_string(i) + " out of range");
                t[i][0] = nb::cast<int>(nb::cast<nb::sequence>(r)[0]);
                t[i][1] = nb::cast<int>(nb::cast<nb::sequence>(r)[1]);
            }
        } else throw Error("cuda_plan: unknown capability '" + key + "'");
    }
    return c;
}
static nb::dict caps_dict(const cuda::CudaCaps& c) {
    nb::dict d, mv, mvg;
    d["n_sm"] = c.n_sm; d["cc_major"] = c.cc_major; d["pdl"] = c.pdl; d["fuse"] = c.fuse;
    d["persist"] = c.persist; d["pk_blocks"] = c.pk_blocks; d["ad_blocks_sm"] = c.ad_blocks_sm;
    for (int t = 0; t < 32; ++t) {
        mv[nb::int_(t)] = nb::make_tuple(c.mv_resident[t][0], c.mv_resident[t][1]);
        mvg[nb::int_(t)] = nb::make_tuple(c.mvg_resident[t][0], c.mvg_resident[t][1]);
    }
    d["mv_resident"] = mv; d["mvg_resident"] = mvg;
    return d;
}
static nb::dict cuda_plan(const Plan& p, const nb::dict& caps) {
    const cuda::LaunchList l = cuda::plan(p.cmds, caps_from(caps));
    nb::list launches;
    const auto descs = cuda::describe(l);
    for (size_t i = 0; i < l.launches.size(); ++i) {
        const cuda::Launch& x = l.launches[i];
        nb::dict d;
        d["kernel"] = descs[i].kernel; d["first"] = x.first; d["count"] = x.count; d["fusion"] = descs[i].fusion;
        d["grid"] = nb::make_tuple(x.grid[0], x.grid[1], x.grid[2]); d["block"] = x.block; d["smem"] = x.smem;
        d["S"] = x.S; d["chunk"] = x.chunk; d["qb"] = x.qb; d["qcmd"] = x.qcmd; d["nks"] = x.nks;
        launches.append(d);
    }
    nb::dict out;
    out["launches"] = launches; out["pdl"] = l.pdl;
    out["scratch_bytes"] = l.scratch_bytes; out["qscratch_bytes"] = l.qscratch_bytes;
    out["hscratch_bytes"] = l.hscratch_bytes;
    // the persistent kernel's program: blocks (0: launches), why not, and per instruction its
    // units, threads, the instruction it waits for and a mat-vec's warps per weight
    nb::dict ps;
    nb::list ins;
    ps["blocks"] = l.persist.blocks; ps["why"] = l.persist.why;
    for (const cuda::PersistIns& x : l.persist.ins) {
        nb::dict d;
        d["units"] = x.units; d["nt"] = x.nt; d["dep"] = x.dep;
        d["g_nwarps"] = nb::make_tuple(x.g_nwarps[0], x.g_nwarps[1], x.g_nwarps[2]);
        ins.append(d);
    }
    ps["ins"] = ins;
    out["persist"] = ps;
    return out;
}

static nb::dict build_info() {
    nb::dict d;
    d["version"] = LLMETAL_VERSION;
    nb::list devices;
    devices.append("cpu");
#ifdef LLMETAL_WITH_CUDA
    devices.append("cuda");
#endif
#ifdef LLMETAL_WITH_METAL
    devices.append("metal");
#endif
#ifdef LLMETAL_WITH_METAL_SHIM
    d["metal_shim"] = true;   // "metal" is device.mm on the Linux shim (tests/metal_shim)
#endif
#ifdef LLMETAL_WITH_METAL_EMU
    devices.append("metal-emu");
    d["metal_emu_counting"] = emu::counting_built();   // the kernels' counted build exists
#endif
    d["devices"] = devices;
#if defined(__clang__)
    d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    d["compiler"] = std::string("gcc ") + __VERSION__;
#else
    d["compiler"] = "unknown";
#endif
    d["cxx_flags"] = LLMETAL_CXX_FLAGS;
    d["build_type"] = LLMETAL_BUILD_TYPE;
#if defined(__x86_64__)
    d["arch"] = "x86_64";
#elif defined(__aarch64__)
    d["arch"] = "arm64";
#else
    d["arch"] = "other";
#endif
    d["cpu_features"] = cpu::features_string();
    d["simd"] = cpu::simd_name(cpu::best_simd());
    d["default_threads"] = cpu::default_threads();
    return d;
}

// Copy a tensor out of its buffer into a new numpy array (an explicit download).
static nb::object to_numpy(const Tensor& t) {
    nb::module_ np = nb::module_::import_("numpy");
    const char* dt = nullptr;
    std::vector<int64_t> shape = t.shape;
    switch (t.type) {
        case KT_F32: dt = "float32"; break;
        case KT_F16: dt = "float16"; break;
        case KT_BF16: dt = "uint16"; break;
        case KT_I32: dt = "int32"; break;
        default:  // block formats come out as raw bytes [rows, row_bytes]
            dt = "uint8";
            shape = {t.rows(), (int64_t)row_bytes(t.type, t.cols())};
    }
    nb::tuple sh = nb::tuple(nb::cast(shape));
    nb::object arr = np.attr("empty")(sh, dt);
    nb::object iface = arr.attr("__array_interface__");
    uintptr_t addr = nb::cast<uintptr_t>(nb::cast<nb::tuple>(iface["data"])[0]);
    uint64_t n = t.nbytes();
    if (n) t.buf->device->download((void*)addr, Binding{t.buf.get(), t.offset}, n);
    return arr;
}

// Copy a numpy array (C-contiguous, same byte size) into a tensor (an explicit upload).
static void upload(const Tensor& t, nb::object arr) {
    nb::module_ np = nb::module_::import_("numpy");
    nb::object a = np.attr("ascontiguousarray")(arr);
    uint64_t n = nb::cast<uint64_t>(a.attr("nbytes"));
    if (n != t.nbytes())
        throw Error("upload: array has " + std::to_string(n) + " bytes, tensor " + t.repr() + " has " +
                    std::to_string(t.nbytes()));
    nb::object iface = a.attr("__array_interface__");
    uintptr_t addr = nb::cast<uintptr_t>(nb::cast<nb::tuple>(iface["data"])[0]);
    t.buf->device->upload(Binding{t.buf.get(), t.offset}, (const void*)addr, n);
}

// Download into an existing C-contiguous numpy array (no allocation on the decode path).
static void download_into(const Tensor& t, nb::object arr) {
    if (!nb::cast<bool>(arr.attr("flags")["C_CONTIGUOUS"]) || !nb::cast<bool>(arr.attr("flags")["WRITEABLE"]))
        throw Error("download_into: the array must be C-contiguous and writeable");
    uint64_t n = nb::cast<uint64_t>(arr.attr("nbytes"));
    if (n != t.nbytes()) throw Error("download_into: array has " + std::to_string(n) + " bytes, tensor has " +
                                     std::to_string(t.nbytes()));
    uintptr_t addr = nb::cast<uintptr_t>(nb::cast<nb::tuple>(arr.attr("__array_interface__")["data"])[0]);
    t.buf->device->download((void*)addr, Binding{t.buf.get(), t.offset}, n);
}

void bind_tokenizer(nb::module_& m);  // cpp/tokenizer/bind_tokenizer.cpp

NB_MODULE(_engine, m) {
    m.doc() = "llmetal's compiled engine: devices, buffers, tensors, encoder, stages";
    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const Error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });

    m.def("build_info", &build_info, "Version, compiler, flags, devices built, CPU features.");
    m.def("cpu_features", &cpu::features_string);
    m.def("alloc_count", &alloc_count, "Allocations (heap and mmap) made by engine code so far.");
    m.def("default_threads", &cpu::default_threads);
    m.def("simd_level", [] { return std::string(cpu::simd_name(cpu::active_simd())); });
    m.def("best_simd", [] { return std::string(cpu::simd_name(cpu::best_simd())); });
    m.def("force_simd", [](const std::string& s) {
        if (s == "scalar") cpu::force_simd(cpu::Simd::scalar);
        else if (s == "avx2") cpu::force_simd(cpu::Simd::avx2);
        else if (s == "avx512") cpu::force_simd(cpu::Simd::avx512);
        else if (s == "neon") cpu::force_simd(cpu::Simd::neon);
        else if (s == "best" || s.empty()) cpu::force_simd(cpu::best_simd());
        else throw Error("unknown SIMD level '" + s + "' (scalar, avx2, avx512, neon, best)");
    }, "Force the CPU kernels' SIMD level (tests run each level the CPU has).");
    m.def("type_block", [](int t) { auto& i = type_info(t); return nb::make_tuple(i.block, i.block_bytes); });
    m.def("type_supported", &type_known);
    // The engine's tensor types by name (F32, Q4_K, ...: GGML's ids) and TYPE_NAMES {id: name}.
    nb::dict type_names;
    for (int t : known_types()) {
        type_names[nb::int_(t)] = type_info(t).name;
        m.attr(type_info(t).name) = t;
    }
    m.attr("TYPE_NAMES") = type_names;

    m.attr("ROPE_NORM") = KROPE_NORM;
    m.attr("ROPE_NEOX") = KROPE_NEOX;
    m.attr("STEP_MAX_ROWS") = KSTEP_MAX_ROWS;   // rows of a batch of several sequences

    nb::class_<Buffer>(m, "Buffer")
        .def_ro("bytes", &Buffer::bytes)
        .def_ro("label", &Buffer::label)
        .def_ro("read_only", &Buffer::read_only)
        .def_prop_ro("address", [](const Buffer& b) { return (uintptr_t)b.host; });

    nb::class_<Device>(m, "Device")
        .def_prop_ro("name", [](const Device& d) { return std::string(d.name()); })
        .def_ro("n_allocs", &Device::n_allocs)
        .def_ro("bytes_allocated", &Device::bytes_allocated)
        .def("alloc", &Device::alloc, nb::arg("bytes"), nb::arg("label") = "buffer")
        .def("map_file", &Device::map_file, "Memory-map a whole file read-only (weights in place).")
        .def("set_step", [](Device& d, int pos0, int n_tokens) { d.set_step(kstep{pos0, n_tokens, 0, 0}); })
        .def("set_step_rows", [](Device& d, nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> rows) {
            if (rows.shape(1) != 2 || rows.shape(0) == 0 || rows.shape(0) > KSTEP_MAX_ROWS)
                throw Error("set_step_rows: rows must be int32 [n, 2] (position, first cache row), 1 <= n <= " +
                            std::to_string(KSTEP_MAX_ROWS));
            const int n = (int)rows.shape(0);
            kstep s{0, n, n, 0, {}};
            std::memcpy(s.rows, rows.data(), sizeof(kstep_row) * n);
            d.set_step(s);
        }, nb::arg("rows"), "A step of several sequences: row t at (position, first cache row of its sequence).")
        .def("wait", &Device::wait)
        .def("describe", [](Device& d, const Plan& p) {
            std::vector<nb::tuple> out;
            for (auto& k : d.describe(p.cmds)) out.push_back(nb::make_tuple(k.kernel, k.first, k.count, k.fusion));
            return out;
        }, nb::arg("plan"), "The kernels this device launches for a recorded plan: "
                            "(kernel, first command, command count, fusion name or '').")
        .def_prop_ro("cuda_caps", [](const Device& d) -> nb::object {
            const cuda::CudaCaps* c = cuda::device_caps(d);
            return c ? nb::object(caps_dict(*c)) : nb::none();
        }, "The capabilities a CUDA device plans with (None on other devices).")
        .def("host_empty", [](Device& d, int64_t n) {
            if (n < 0) throw Error("host_empty: negative size");
            float* p = (float*)d.host_alloc((uint64_t)n * sizeof(float));
            // the array owns the block and keeps the device alive until it goes
            auto* keep = new std::pair<std::shared_ptr<Device>, void*>(d.shared_from_this(), p);
            nb::capsule owner(keep, [](void* k) noexcept {
                auto* kp = (std::pair<std::shared_ptr<Device>, void*>*)k;
                kp->first->host_free(kp->second);
                delete kp;
            });
            size_t shape[1] = {(size_t)n};
            return nb::ndarray<nb::numpy, float, nb::ndim<1>>(p, 1, shape, owner);
        }, nb::arg("n"), "An empty float32 array [n] in host memory that download_into fills fastest "
                          "(page-locked on cuda), for buffers reused every token.");

    m.def("cpu_device", &make_cpu_device, nb::arg("n_threads") = 0, nb::arg("pool_fallback") = "auto",
          "The CPU device with a pool of n_threads (0 = the cores this process may use). "
          "pool_fallback: 'auto' runs jobs on the calling thread alone while the pool's workers keep "
          "missing them (another process holds the cores); tests pin that path with 'always', or "
          "the threaded one with 'never'.");
    m.def("cuda_device", &make_cuda_device, nb::arg("ordinal") = 0);
    m.def("cuda_persistent_profile", [](const Plan& p) {
        auto* v = new std::vector<int64_t>(cuda::persistent_profile(p));
        nb::capsule owner(v, [](void* q) noexcept { delete (std::vector<int64_t>*)q; });
        size_t shape[2] = {v->size() / 4, 4};
        return nb::ndarray<nb::numpy, int64_t, nb::ndim<2>>(v->data(), 2, shape, owner);
    }, nb::arg("plan"), "kernel_persistent's profile of the plan's last run (LLMETAL_CUDA_PERSISTENT_PROFILE=1): "
                        "per ticket (start ns, wait returned ns, end ns, SM << 32 | instruction); [0, 4] otherwise.");
    m.def("cuda_plan", &cuda_plan, nb::arg("plan"), nb::arg("caps") = nb::dict(),
          "The CUDA planner's launch list for a plan recorded on any device (no GPU needed).");
    m.def("cuda_fusions", [] {
        nb::list out;
        for (const cuda::Fusion& f : cuda::FUSIONS) {
            nb::dict d;
            d["name"] = f.name; d["matches"] = f.matches; d["kernel"] = f.kernel; d["why"] = f.why;
            out.append(d);
        }
        return out;
    }, "The CUDA planner's fusion table.");
    m.def("metal_device", &make_metal_device, "The Metal device (Apple builds only).");
    m.def("metal_emu_device", &make_metal_emu_device, nb::arg("schedule") = "forward",
          "The Metal device's plan run by the CPU emulator of Metal (LLMETAL_METAL_EMU builds).");
#ifdef LLMETAL_WITH_METAL_EMU
    m.def("metal_counters", [](Device& d) {
        uint64_t v[7];
        metal_counters(d, v);
        nb::dict r;
        const char* k[7] = {"command_buffers", "dispatches", "barriers", "emu_threads", "emu_threadgroups",
                            "emu_switches", "emu_rendezvous"};
        for (int i = 0; i < 7; ++i) r[k[i]] = v[i];
        return r;
    }, "Command buffers, dispatches and barriers of a metal-emu device; the emulator's totals.");
    // Run one emulated kernel on numpy arrays (bound at [[buffer(1..)]], args bytes at 0).
    m.def("metal_emu_run_kernel", [](const std::string& name, nb::list arrays, nb::bytes args,
                                     std::vector<uint32_t> grid, std::vector<uint32_t> tg, uint32_t tg_mem,
                                     const std::string& schedule) {
        std::vector<void*> bufs;
        std::vector<uint64_t> sizes;
        for (nb::handle a : arrays) {
            nb::object iface = a.attr("__array_interface__");
            bufs.push_back((void*)nb::cast<uintptr_t>(nb::cast<nb::tuple>(iface["data"])[0]));
            sizes.push_back(nb::cast<uint64_t>(a.attr("nbytes")));
        }
        if (grid.size() != 3 || tg.size() != 3) throw Error("metal_emu_run_kernel: grid and tg take 3 values");
        std::string a(args.c_str(), args.size());
        a.resize(64);
        metal_emu_run_kernel(name, bufs, sizes, a.data(), (uint32_t)args.size(), grid.data(), tg.data(), tg_mem,
                             schedule);
    }, nb::arg("name"), nb::arg("arrays"), nb::arg("args"), nb::arg("grid"), nb::arg("tg"),
       nb::arg("tg_mem") = 0, nb::arg("schedule") = "forward");
    // Counting mode (cpp/metal_emu/runtime.h, "memory traffic"): per dispatch, the bytes the
    // kernel's loads and stores move in device, constant and threadgroup memory.
    m.def("metal_emu_counting", [](nb::object on) {
        bool was = emu::counting();
        if (!on.is_none()) {
            try {
                emu::set_counting(nb::cast<bool>(on));
            } catch (const std::runtime_error& e) {
                throw Error(e.what());
            }
        }
        return was;
    }, nb::arg("on") = nb::none(),
       "Turn the emulator's counting mode on or off (None: leave it); returns whether it was on. "
       "Raises where the kernels' counted build could not be made.");
    m.def("metal_emu_traffic", []() {
        nb::list out;
        for (const emu::TrafficRecord& r : emu::take_traffic()) {
            nb::dict d;
            d["kernel"] = r.kernel;
            d["stage"] = r.label;
            d["grid"] = nb::make_tuple(r.grid[0], r.grid[1], r.grid[2]);
            d["tg"] = nb::make_tuple(r.tg[0], r.tg[1], r.tg[2]);
            d["device_read"] = r.t.device_read;
            d["device_written"] = r.t.device_written;
            d["threadgroup_read"] = r.t.threadgroup_read;
            d["threadgroup_written"] = r.t.threadgroup_written;
            d["constant_read"] = r.t.constant_read;
            out.append(d);
        }
        return out;
    }, "The counting mode's records since the last call, one dict per dispatch in order: kernel, stage, grid, "
       "tg, and bytes device_read, device_written, threadgroup_read, threadgroup_written, constant_read.");
#endif
#if defined(LLMETAL_WITH_METAL_EMU) || defined(LLMETAL_WITH_METAL)
    m.def("metal_plan_counters", [](Device& d) {
        uint64_t v[3];
        metal::plan_counters(d, v);
        nb::dict r;
        r["replans"] = v[0]; r["ahead_used"] = v[1]; r["ahead_dropped"] = v[2];
        return r;
    }, "A Metal device's recorded plans planned again (for other attention splits), and its command "
       "buffers encoded ahead that were committed or dropped unused.");
    m.def("metal_kernel_names", []() {
        std::vector<std::string> v;
        for (int k = 0; k < metal::kernel_count(); ++k) v.push_back(metal::kernel_name(k));
        return v;
    }, "Every kernel the Metal planner can name: the pipelines a Metal device makes when created.");
#endif
#ifdef LLMETAL_WITH_METAL_SHIM
    m.def("metal_shim_stats", []() {
        nb::dict r;
        for (auto& kv : metal_shim_stats()) r[kv.first.c_str()] = kv.second;
        return r;
    }, "The Linux Metal shim's bookkeeping: live objects per class, retains, open pools, ...");
    m.def("metal_shim_fail_command_buffer", &metal_shim_fail_command_buffer, nb::arg("k"),
          "Make the k-th command buffer committed from now on end with an error (tests).");
    m.def("metal_shim_events", &metal_shim_events,
          "The shim's host-side events since the last call, oldest first: (kind, command buffer, kernel), "
          "kind 'pipeline' (kernel: its name), 'encode', 'commit', 'complete' or 'drop'.");
#endif

    nb::class_<Tensor>(m, "Tensor")
        .def("__init__", [](Tensor* t, BufferRef buf, uint64_t offset, int type, std::vector<int64_t> shape) {
            if (!type_known(type)) throw Error("Tensor: unsupported type id " + std::to_string(type));
            Tensor v;   // validated before the Python object is constructed
            v.buf = std::move(buf); v.offset = offset; v.type = type; v.shape = std::move(shape);
            if (!v.buf) throw Error("Tensor: no buffer");
            for (auto d : v.shape) if (d < 0) throw Error("Tensor: negative dimension");
            if (v.offset + v.nbytes() > v.buf->bytes) throw Error("Tensor outside its buffer: " + v.repr());
            new (t) Tensor(std::move(v));
        }, nb::arg("buffer"), nb::arg("offset"), nb::arg("type"), nb::arg("shape"))
        .def_ro("offset", &Tensor::offset)
        .def_ro("type", &Tensor::type)
        .def_prop_ro("shape", [](const Tensor& t) { return nb::tuple(nb::cast(t.shape)); })
        .def_prop_ro("buffer", [](const Tensor& t) { return t.buf; })
        .def_prop_ro("type_name", [](const Tensor& t) { return std::string(type_info(t.type).name); })
        .def_prop_ro("nbytes", &Tensor::nbytes)
        .def("view", &Tensor::view, nb::arg("byte_offset"), nb::arg("shape"), nb::arg("type") = -1)
        .def("rows", &Tensor::row_slice, "Rows [r0, r1) of the outermost dimension.")
        .def("to_numpy", &to_numpy, "Download into a new numpy array.")
        .def("upload", &upload, "Copy a numpy array into this tensor.")
        .def("download_into", &download_into, "Copy into an existing numpy array of the same byte size.")
        .def("__repr__", &Tensor::repr);

    nb::class_<BufferPool>(m, "BufferPool")
        .def(nb::init<std::shared_ptr<Device>>())
        .def("declare", &BufferPool::declare, nb::arg("name"), nb::arg("type"), nb::arg("shape"))
        .def("reserve", &BufferPool::reserve)
        .def("get", &BufferPool::get)
        .def("names", &BufferPool::names)
        .def_prop_ro("bytes", &BufferPool::bytes)
        .def_prop_ro("n_arenas", &BufferPool::n_arenas);

    nb::class_<Plan>(m, "Plan")
        .def_ro("n_tokens", &Plan::n_tokens)
        .def_prop_ro("n_commands", [](const Plan& p) { return p.cmds.size(); })
        .def_prop_ro("stages", [](const Plan& p) {
            std::vector<std::string> s;
            for (auto& c : p.cmds) s.push_back(stage_name(c.stage));
            return s;
        });

    nb::class_<Encoder>(m, "Encoder")
        .def(nb::init<std::shared_ptr<Device>, bool>(), nb::arg("device"), nb::arg("eager") = false)
        .def_rw("eager", &Encoder::eager)
        .def_ro("n_commits", &Encoder::n_commits)
        .def_prop_ro("n_pending", [](const Encoder& e) { return e.cmds.size(); })
        .def_prop_ro("recording", [](const Encoder& e) { return e.recording; })
        .def("commit", &Encoder::commit)
        .def("wait", &Encoder::wait)
        .def("begin_record", &Encoder::begin_record)
        .def("end_record", &Encoder::end_record)
        .def("replay", [](Encoder& e, Plan& p, int pos0) {
            nb::gil_scoped_release r;
            e.replay(p, kstep{pos0, p.n_tokens, 0, 0});
        })
        .def("replay_rows", [](Encoder& e, Plan& p, const Tensor& ids,
                               nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> tokens,
                               nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> rows) {
            if (rows.shape(1) != 2 || rows.shape(0) != tokens.shape(0))
                throw Error("replay_rows: rows must be int32 [n, 2] for n tokens");
            const int32_t* tk = tokens.data();
            const kstep_row* rw = (const kstep_row*)rows.data();
            const int n = (int)tokens.shape(0);
            nb::gil_scoped_release r;
            e.replay_rows(p, ids, tk, rw, n);
        }, nb::arg("plan"), nb::arg("ids"), nb::arg("tokens"), nb::arg("rows"))
        .def("replay_token", [](Encoder& e, Plan& p, const Tensor& ids, int32_t token, int32_t pos) {
            nb::gil_scoped_release r;
            e.replay_token(p, ids, token, pos);
        }, nb::arg("plan"), nb::arg("ids"), nb::arg("token"), nb::arg("pos"))
        .def("embed", &Encoder::embed, nb::arg("W"), nb::arg("ids"), nb::arg("out"), nb::arg("scale") = 1.0f)
        .def("rmsnorm", &Encoder::rmsnorm, nb::arg("x"), nb::arg("w"), nb::arg("out"), nb::arg("eps"))
        .def("matmul", &Encoder::matmul, nb::arg("W"), nb::arg("x"), nb::arg("y"))
        .def("rope", [](Encoder& e, const Tensor& x, int n_heads, int n_rot, int mode, float base,
                        float fscale, const Tensor* factors, bool by_row) {
            e.rope(x, n_heads, n_rot, mode, base, fscale, factors, by_row);
        }, nb::arg("x"), nb::arg("n_heads"), nb::arg("n_rot"), nb::arg("mode"), nb::arg("freq_base"),
           nb::arg("freq_scale") = 1.0f, nb::arg("factors").none() = nb::none(), nb::arg("by_row") = false)
        .def("kv_store", &Encoder::kv_store, nb::arg("src"), nb::arg("cache"), nb::arg("by_row") = false)
        .def("attention", [](Encoder& e, const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& out,
                             int n_heads, int n_kv_heads, float scale, int window, float softcap, bool by_row) {
            e.attention(q, kc, vc, out, n_heads, n_kv_heads, window, scale, softcap, by_row);
        }, nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"), nb::arg("out"), nb::arg("n_heads"),
           nb::arg("n_kv_heads"), nb::arg("scale"), nb::arg("window") = 0, nb::arg("softcap") = 0.0f,
           nb::arg("by_row") = false)
        .def("attention_probs", [](Encoder& e, const Tensor& q, const Tensor& kc, const Tensor& out, int n_heads,
                                   int n_kv_heads, float scale, int window, float softcap) {
            e.attention_probs(q, kc, out, n_heads, n_kv_heads, window, scale, softcap);
        }, nb::arg("q"), nb::arg("k_cache"), nb::arg("out"), nb::arg("n_heads"), nb::arg("n_kv_heads"),
           nb::arg("scale"), nb::arg("window") = 0, nb::arg("softcap") = 0.0f,
           "The probabilities attention() uses, out [n_heads, T, n_keys = pos0 + T] (eager inspection).")
        .def("add", &Encoder::add)
        .def("swiglu", &Encoder::swiglu)
        .def("geglu", &Encoder::geglu)
        .def("logits", &Encoder::logits, nb::arg("W"), nb::arg("x"), nb::arg("y"))
        .def("argmax", &Encoder::argmax, nb::arg("x"), nb::arg("ids"),
             "ids [R] I32 = the first maximum of each row of x [R, n] (ties: the lowest index), -1 for a "
             "row holding a NaN or an infinity (greedy sampling on the device).");
    bind_tokenizer(m);
}
