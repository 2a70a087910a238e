// plan_dump.cpp -- every dispatch the Metal device's planner (cpp/metal/dispatch.cpp) makes, one
// line each, for msl_check.py to hold against the kernels' signatures:
//   <kernel> args=<bytes setBytes puts at index 0> bufs=<indices 1.. setBuffer binds> tg_mem=<bytes>
// (device.mm and the metal-emu device bind exactly these: the argument bytes at [[buffer(0)]],
// every non-null binding at its index, threadgroup memory at [[threadgroup(0)]] when tg_mem > 0.)
// Every stage is planned, with every weight type the engine knows for embed, matmul and
// logits (a type the planner has no kernel for prints `refused <stage> <type>`); matmul and
// logits both as a mat-vec (1 token) and as a tiled matmul (64 tokens); attention with one
// split (a short context) and with several (a long one: two kernels); rope with and without
// frequency factors. The buffers are placeholders: only the indices matter.
//
//   clang++ -std=c++17 -Icpp tests/metal_shim/plan_dump.cpp cpp/metal/dispatch.cpp cpp/engine.cpp
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "metal/dispatch.h"

using namespace llmetal;

namespace {

Buffer placeholder[5], step_buf, scratch;

Command command(Stage s) {
    Command c{};
    c.stage = s;
    for (int i = 0; i < 5; ++i) c.b[i] = Binding{&placeholder[i], 0};
    c.step = Binding{&step_buf, 0};
    return c;
}

void dump(const Command& c, const char* type = "") {
    metal::Planner p;
    p.begin();
    std::vector<metal::DispatchDesc> out;
    try {
        p.plan(c, &scratch, nullptr, out);   // at the most keys: the whole context
    } catch (const Error&) {
        std::printf("refused %s %s\n", stage_name(c.stage), type);
        return;
    }
    for (const metal::DispatchDesc& d : out) {
        std::string bound;
        for (int i = 1; i < d.n_bufs; ++i)
            if (d.bufs[i].buf) bound += (bound.empty() ? "" : ",") + std::to_string(i);
        std::printf("%s args=%u bufs=%s tg_mem=%u\n", d.kernel, d.args_bytes, bound.c_str(), d.tg_mem);
    }
}

kargs_attention attention_args(int n_ctx) {
    return kargs_attention{1, 4, 2, 64, n_ctx, 0, 0.125f, 0.0f, 0, 0};
}

}  // namespace

int main() {
    for (int s = 0; std::strcmp(stage_name((Stage)s), "?") != 0; ++s) {
        const Stage st = (Stage)s;
        Command c = command(st);
        switch (st) {
            case Stage::embed:
                for (int t : known_types()) {
                    c.a.embed = kargs_embed{2, 256, t, 100, 0, 1.0f, 0};
                    c.a.embed.row_bytes = row_bytes(t, 256);
                    dump(c, type_info(t).name);
                }
                break;
            case Stage::matmul:
            case Stage::logits:
                for (int t : known_types())
                    for (int n_tokens : {1, 64}) {
                        c.a.matmul = kargs_matmul{n_tokens, 256, 64, t, row_bytes(t, 256)};
                        dump(c, type_info(t).name);
                    }
                break;
            case Stage::rmsnorm:
                c.a.rmsnorm = kargs_rmsnorm{4, 64, 1e-5f, 0};
                dump(c);
                break;
            case Stage::rope:
                for (int factors : {0, 1}) {
                    c.a.rope = kargs_rope{2, 4, 64, 64, KROPE_NEOX, factors, 10000.0f, 1.0f, 0, 0};
                    dump(c);
                }
                break;
            case Stage::kv_store:
                c.a.kv_store = kargs_kv_store{2, 128, 16, 0};
                dump(c);
                break;
            case Stage::attention:
                for (int n_ctx : {16, 4096}) {   // one split; several, merged by a second kernel
                    c.a.attention = attention_args(n_ctx);
                    dump(c);
                }
                break;
            case Stage::attention_probs:
                c.a.attention_probs = kargs_attention_probs{attention_args(16), 16, 0};
                dump(c);
                break;
            case Stage::add:
                c.a.eltwise = kargs_eltwise{512, 64};
                dump(c);
                break;
            case Stage::swiglu:
            case Stage::geglu:
                c.a.glu = kargs_glu{2, 256};
                dump(c);
                break;
            case Stage::argmax:
                c.a.argmax = kargs_argmax{3, 1000};
                dump(c);
                break;
            default:
                std::fprintf(stderr, "plan_dump: no sample command for stage %s: add one\n", stage_name(st));
                return 1;
        }
    }
    return 0;
}
