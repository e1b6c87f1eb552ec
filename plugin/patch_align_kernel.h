// CUDA patch alignment: one fused kernel per call (query window mean, scores against every support
// window, first-index argmax, gather of the aligned window's tokens). float or half I/O, float
// arithmetic. Shapes and semantics: patch_align_common.h.
#pragma once

#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "patch_align_common.h"

namespace sccan
{

//! Enqueues patch alignment on `stream`. Returns cudaErrorInvalidValue for a bad shape (see
//! validateShape), else the launch's status. `eps` is the cosine's floor (1e-7). `index` may be null when only `aligned` is needed.
template <typename T>
cudaError_t launchPatchAlign(T const* queryWindows, T const* supportPrototypes, T const* supportHasFg,
    T const* supportTokens, T* aligned, int32_t* index, PatchAlignShape const& shape, cudaStream_t stream, float eps = kCosineEps);

extern template cudaError_t launchPatchAlign<float>(float const*, float const*, float const*, float const*, float*,
    int32_t*, PatchAlignShape const&, cudaStream_t, float);
extern template cudaError_t launchPatchAlign<__half>(__half const*, __half const*, __half const*, __half const*,
    __half*, int32_t*, PatchAlignShape const&, cudaStream_t, float);

} // namespace sccan

extern "C"
{
//! C entry point on device pointers (ctypes, tests): returns the cudaError_t as an int.
//! `half` != 0 selects half I/O; `stream` is a cudaStream_t (null: the legacy default stream).
int32_t sccan_patch_align_cuda(void const* queryWindows, void const* supportPrototypes, void const* supportHasFg,
    void const* supportTokens, void* aligned, int32_t* index, int64_t classes, int64_t windows, int64_t tokens,
    int64_t channels, int32_t half, void* stream);
}
