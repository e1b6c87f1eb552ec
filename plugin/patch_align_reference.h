// CPU reference of patch alignment (float32 I/O, double accumulation): the oracle for the CUDA
// kernel's tests and the implementation behind the C entry point that Python tests and the ONNX
// Runtime custom op call. Shapes and semantics: patch_align_common.h.
#pragma once

#include <cstdint>

#include "patch_align_common.h"

namespace sccan
{

//! Runs patch alignment on the CPU. Returns an empty string, or what is wrong with the shape.
char const* patchAlignReference(float const* queryWindows, float const* supportPrototypes,
    float const* supportHasFg, float const* supportTokens, float* aligned, int32_t* index,
    PatchAlignShape const& shape, float eps = kCosineEps);

} // namespace sccan

extern "C"
{
//! C entry point (ctypes): 0 on success, 1 on a bad shape.
int32_t sccan_patch_align_cpu(float const* queryWindows, float const* supportPrototypes,
    float const* supportHasFg, float const* supportTokens, float* aligned, int32_t* index, int64_t classes,
    int64_t windows, int64_t tokens, int64_t channels, float eps);
}
