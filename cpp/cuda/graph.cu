// graph.cu -- a recorded plan on the CUDA device: its launch list is planned once and captured
// into a CUDA graph on the first replay (a one-token decode list, with LLMETAL_CUDA_PERSISTENT=1,
// as one kernel_persistent running the list as its program: persist.cuh); every later replay is one graph launch (no planning,
// no allocation). A one-token replay (replay_token) also captures kernel_set_token in front of
// the plan and passes the token id and position as that kernel's arguments: a parameter update
// of the instantiated graph, no host-to-device copies ahead of the launch.
#include "device_cuda.cuh"

namespace llmetal {

// ids: capture kernel_set_token in front of the plan (see replay_token), with these values.
void CudaDevice::capture(Plan& p, const Binding* ids, int32_t token, int32_t pos) {
    auto ge = std::make_shared<GraphExec>();
    ge->list = cuda::plan(p.cmds, caps);
    prepare(p.cmds, ge->list, true);
    const int pk_blocks = ge->list.persist.blocks;   // run as kernel_persistent's program
    if (pk_blocks) persistent_setup(p.cmds, ge->list, *ge);
    cudaGraph_t graph = nullptr;
    ck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    try {
        pdl_now = ge->list.pdl;
        if (ids) launch_set_token(ids->ptr<int32_t>(), token, pos);
        if (pk_blocks) ck(persistent_launch(stream, ge->prog, ge->n_ins, ge->ctl, step_buf->dev, pk_blocks, pk_reverse,
                                                 ge->prof),
                          "kernel_persistent");
        else run_list(p.cmds, ge->list);
    } catch (...) {
        cudaStreamEndCapture(stream, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
    }
    ck(cudaStreamEndCapture(stream, &graph), "end capture");
    if (ids) {   // the head is the graph's one root: every later kernel follows it in the stream
        size_t n = 0;
        cudaGraphNode_t root = nullptr;
        cudaError_t e = cudaGraphGetRootNodes(graph, nullptr, &n);
        if (e == cudaSuccess && n == 1) e = cudaGraphGetRootNodes(graph, &root, &n);
        if (e != cudaSuccess || n != 1) {
            cudaGraphDestroy(graph);
            ck(e == cudaSuccess ? cudaErrorUnknown : e, "graph head");
        }
        ge->head = root;
    }
    cudaError_t e = cudaGraphInstantiate(&ge->exec, graph, 0);
    if (ge->head) ge->graph = graph;
    else cudaGraphDestroy(graph);
    ck(e, "graph instantiate");
    p.exec = ge;
}

void CudaDevice::set_head(GraphExec* ge, int32_t* ids, int32_t token, int32_t pos, int on) {
    kstep* step = (kstep*)step_buf->dev;
    void* args[] = {&ids, &step, &token, &pos, &on};
    cudaKernelNodeParams kp = {};
    kp.func = set_token_kernel();
    kp.gridDim = dim3(1);
    kp.blockDim = dim3(32);
    kp.kernelParams = args;
    ck(cudaGraphExecKernelNodeSetParams(ge->exec, ge->head, &kp), "set token");
}

void CudaDevice::submit_plan(Plan& p) {
    cudaSetDevice(ordinal);
    if (!p.exec) capture(p, nullptr, 0, 0);
    else prepare(p.cmds, static_cast<GraphExec*>(p.exec.get())->list, false);   // position checks only
    GraphExec* ge = static_cast<GraphExec*>(p.exec.get());
    if (ge->head) set_head(ge, nullptr, 0, 0, 0);   // replayed with set_step: the head idles
    ck(cudaGraphLaunch(ge->exec, stream), "graph launch");
}

// One token: the id and position go in as kernel_set_token's arguments. The first call also
// uploads them, so that the capture's host-side checks see them.
void CudaDevice::replay_token(Plan& p, const Binding& ids, int32_t token, int32_t pos) {
    cudaSetDevice(ordinal);
    GraphExec* ge = static_cast<GraphExec*>(p.exec.get());
    if (ge && !ge->head) return Device::replay_token(p, ids, token, pos);   // captured by submit_plan
    if (!ge) {
        upload(ids, &token, sizeof token);
        set_step(kstep{pos, 1, 0, 0});
        capture(p, &ids, token, pos);
        ge = static_cast<GraphExec*>(p.exec.get());
    } else {
        hstep = kstep{pos, 1, 0, 0};
        for (const Command& c : p.cmds) check_positions(c, hstep);
    }
    set_head(ge, ids.ptr<int32_t>(), token, pos, 1);
    ck(cudaGraphLaunch(ge->exec, stream), "graph launch");
}

}  // namespace llmetal
