// device_stubs.cpp -- factories for devices this build does not include, so that asking
// for one gives a clear error instead of a missing symbol.
#include "engine.h"

namespace llmetal {
#ifndef LLMETAL_WITH_CUDA
std::shared_ptr<Device> make_cuda_device(int) {
    throw Error("this llmetal build has no CUDA device (built without a CUDA toolkit, or LLMETAL_CUDA=OFF)");
}
#endif
}  // namespace llmetal
