// device_stubs.cpp -- factories for devices this build does not include, so that asking
// for one gives a clear error instead of a missing symbol.
#include "engine.h"
#include "cuda/planner.h"

namespace llmetal {
#ifndef LLMETAL_WITH_CUDA
std::shared_ptr<Device> make_cuda_device(int) {
    throw Error("this llmetal build has no CUDA device (built without a CUDA toolkit, or LLMETAL_CUDA=OFF)");
}
const cuda::CudaCaps* cuda::device_caps(const Device&) { return nullptr; }
std::vector<int64_t> cuda::persistent_profile(const Plan&) { return {}; }
#endif
#ifndef LLMETAL_WITH_METAL
std::shared_ptr<Device> make_metal_device() {
    throw Error("this llmetal build has no Metal device (it is built only on Apple platforms)");
}
#endif
#ifndef LLMETAL_WITH_METAL_EMU
std::shared_ptr<Device> make_metal_emu_device(const std::string&) {
    throw Error("this llmetal build has no metal-emu device (configure with -DLLMETAL_METAL_EMU=ON)");
}
#endif
}  // namespace llmetal
