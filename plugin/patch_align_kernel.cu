#include "patch_align_kernel.h"

#include <cfloat>

namespace sccan
{
namespace
{

constexpr int kThreads = 256;

//! The mean's shared-memory length: D rounded up to a multiple of 4 plus 4. ptxas widens the
//! unrolled loop's shared loads to 8/12/16 bytes; compute-sanitizer's memcheck reported such a
//! 12-byte read crossing the end of an unpadded D = 33 buffer on an H100. Zeros after D.
__host__ __device__ constexpr int64_t paddedChannels(int64_t D)
{
    return (D + 3) / 4 * 4 + 4;
}

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}

//! Block-wide sum; every thread gets the total. `scratch` holds kThreads floats.
__device__ float blockSum(float value, float* scratch)
{
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2)
    {
        if (threadIdx.x < stride)
        {
            scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        }
        __syncthreads();
    }
    float const total = scratch[0];
    __syncthreads();
    return total;
}

// One block per (query window b, class c): blockIdx.x = b, blockIdx.y = c.
// Dynamic shared memory: paddedChannels(D) floats (the query window's mean, zeros after D).
template <typename T>
__global__ void __launch_bounds__(kThreads) patchAlignKernel(T const* __restrict__ queryWindows,
    T const* __restrict__ supportPrototypes, T const* __restrict__ supportHasFg, T const* __restrict__ supportTokens,
    T* __restrict__ aligned, int32_t* __restrict__ index, int64_t W, int64_t T_, int64_t D, float eps)
{
    extern __shared__ float mean[];
    __shared__ float scratch[kThreads];
    __shared__ float bestScores[kThreads];
    __shared__ int32_t bestIndices[kThreads];

    int64_t const b = blockIdx.x;
    int64_t const c = blockIdx.y;

    // 1. The query window's mean over its tokens, and its norm.
    float partial = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += kThreads)
    {
        float sum = 0.0f;
        for (int64_t t = 0; t < T_; ++t)
        {
            sum += toFloat(queryWindows[tokenOffset(c, b, t, d, W, T_, D)]);
        }
        float const m = sum / static_cast<float>(T_);
        mean[d] = m;
        partial += m * m;
    }
    for (int64_t d = D + threadIdx.x; d < paddedChannels(D); d += kThreads)
    {
        mean[d] = 0.0f;
    }
    float const queryNorm = sqrtf(blockSum(partial, scratch)); // blockSum synchronises: mean[] is complete

    // 2. Each thread scores a strided subset of the support windows and keeps its winner.
    float myScore = -FLT_MAX;
    int32_t myIndex = static_cast<int32_t>(W);
    for (int64_t a = threadIdx.x; a < W; a += kThreads)
    {
        float dot = 0.0f;
        float sq = 0.0f;
        for (int64_t d = 0; d < D; ++d)
        {
            float const p = toFloat(supportPrototypes[windowOffset(c, a, d, W, D)]);
            dot += p * mean[d];
            sq += p * p;
        }
        float const score = alignScore(dot, sqrtf(sq), queryNorm, toFloat(supportHasFg[windowOffset(c, a, 0, W, 1)]), eps);
        if (beats(score, static_cast<int32_t>(a), myScore, myIndex))
        {
            myScore = score;
            myIndex = static_cast<int32_t>(a);
        }
    }

    // 3. Reduce the winners: highest score, then lowest index (the reference's first index on ties).
    bestScores[threadIdx.x] = myScore;
    bestIndices[threadIdx.x] = myIndex;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2)
    {
        if (threadIdx.x < stride)
        {
            int const other = threadIdx.x + stride;
            if (beats(bestScores[other], bestIndices[other], bestScores[threadIdx.x], bestIndices[threadIdx.x]))
            {
                bestScores[threadIdx.x] = bestScores[other];
                bestIndices[threadIdx.x] = bestIndices[other];
            }
        }
        __syncthreads();
    }
    int32_t const best = clampIndex(bestIndices[0], static_cast<int32_t>(W));
    if (threadIdx.x == 0 && index != nullptr)
    {
        index[windowOffset(c, b, 0, W, 1)] = best;
    }

    // 4. Gather the aligned window's tokens (contiguous T x D).
    T const* src = supportTokens + tokenOffset(c, best, 0, 0, W, T_, D);
    T* dst = aligned + tokenOffset(c, b, 0, 0, W, T_, D);
    for (int64_t i = threadIdx.x; i < T_ * D; i += kThreads)
    {
        dst[i] = src[i];
    }
}

} // namespace

template <typename T>
cudaError_t launchPatchAlign(T const* queryWindows, T const* supportPrototypes, T const* supportHasFg,
    T const* supportTokens, T* aligned, int32_t* index, PatchAlignShape const& shape, cudaStream_t stream, float eps)
{
    if (*validateShape(shape) != '\0')
    {
        return cudaErrorInvalidValue;
    }
    if (shape.classes == 0)
    {
        return cudaSuccess;
    }
    dim3 const grid(static_cast<unsigned>(shape.windows), static_cast<unsigned>(shape.classes));
    size_t const sharedBytes = static_cast<size_t>(paddedChannels(shape.channels)) * sizeof(float);
    patchAlignKernel<T><<<grid, kThreads, sharedBytes, stream>>>(queryWindows, supportPrototypes, supportHasFg,
        supportTokens, aligned, index, shape.windows, shape.tokens, shape.channels, eps);
    return cudaGetLastError();
}

template cudaError_t launchPatchAlign<float>(float const*, float const*, float const*, float const*, float*, int32_t*,
    PatchAlignShape const&, cudaStream_t, float);
template cudaError_t launchPatchAlign<__half>(__half const*, __half const*, __half const*, __half const*, __half*,
    int32_t*, PatchAlignShape const&, cudaStream_t, float);

} // namespace sccan

extern "C" __attribute__((visibility("default"))) int32_t sccan_patch_align_cuda(void const* queryWindows,
    void const* supportPrototypes, void const* supportHasFg, void const* supportTokens, void* aligned, int32_t* index,
    int64_t classes, int64_t windows, int64_t tokens, int64_t channels, int32_t half, void* stream)
{
    sccan::PatchAlignShape const shape{classes, windows, tokens, channels};
    auto const s = static_cast<cudaStream_t>(stream);
    if (half != 0)
    {
        return static_cast<int32_t>(sccan::launchPatchAlign(static_cast<__half const*>(queryWindows),
            static_cast<__half const*>(supportPrototypes), static_cast<__half const*>(supportHasFg),
            static_cast<__half const*>(supportTokens), static_cast<__half*>(aligned), index, shape, s));
    }
    return static_cast<int32_t>(sccan::launchPatchAlign(static_cast<float const*>(queryWindows),
        static_cast<float const*>(supportPrototypes), static_cast<float const*>(supportHasFg),
        static_cast<float const*>(supportTokens), static_cast<float*>(aligned), index, shape, s));
}
