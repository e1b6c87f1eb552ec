// Patch alignment of one SCCA block: the arithmetic shared by the CUDA kernel, the CPU reference
// and the host tests. Everything here is a __host__ __device__ inline function of plain values, so
// the index logic that the GPU runs is the same code that the host tests check.
//
// Tensors (row-major, C = class batch, W = windows, T = tokens per window, D = channels):
//   query_windows       C x W x T x D   query tokens after norm1, windowed
//   support_prototypes  C x W x D       masked window means of the support tokens
//   support_has_fg      C x W           1 where the support window holds foreground, else 0
//   support_tokens      C x W x T x D   support tokens after norm1, windowed
// Outputs:
//   aligned             C x W x T x D   for each query window, the tokens of its aligned support window
//   index               C x W           the aligned support window (int32)
//
// score[a, b] = (cos(support_prototypes[a], mean_t query_windows[b]) + 1) / 2 * has_fg[a], with
// cos(x, y) = x.y / (|x| |y| + 1e-7); index[b] = the first (lowest) a of the highest score.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SCCAN_HD __host__ __device__ __forceinline__
#else
#define SCCAN_HD inline
#endif

namespace sccan
{

constexpr float kCosineEps = 1e-7f;

//! Offset of element (c, w, t, d) of a C x W x T x D tensor.
SCCAN_HD int64_t tokenOffset(int64_t c, int64_t w, int64_t t, int64_t d, int64_t W, int64_t T, int64_t D)
{
    return ((c * W + w) * T + t) * D + d;
}

//! Offset of element (c, w, d) of a C x W x D tensor (also C x W with D = 1, d = 0).
SCCAN_HD int64_t windowOffset(int64_t c, int64_t w, int64_t d, int64_t W, int64_t D)
{
    return (c * W + w) * D + d;
}

//! The alignment score from a dot product, the two norms and the foreground flag.
SCCAN_HD float alignScore(float dot, float supportNorm, float queryNorm, float hasFg, float eps = kCosineEps)
{
    float const cosine = dot / (supportNorm * queryNorm + eps);
    return (cosine + 1.0f) / 2.0f * hasFg;
}

//! True when candidate (score, index) beats the current best under "highest score, then lowest
//! index". Scanning candidates in any order and keeping the winner gives the reference's
//! first-index argmax; the same rule merges partial winners in a parallel reduction.
SCCAN_HD bool beats(float score, int32_t index, float bestScore, int32_t bestIndex)
{
    return score > bestScore || (score == bestScore && index < bestIndex);
}

//! Clamp an index into [0, n - 1]: a guard so that no gather can read outside the support windows.
SCCAN_HD int32_t clampIndex(int32_t index, int32_t n)
{
    return index < 0 ? 0 : (index >= n ? n - 1 : index);
}

//! Problem sizes, checked before any launch.
struct PatchAlignShape
{
    int64_t classes{0};
    int64_t windows{0};
    int64_t tokens{0};
    int64_t channels{0};
};

//! Empty string when the shape can run, else what is wrong with it.
inline char const* validateShape(PatchAlignShape const& s)
{
    if (s.classes < 0 || s.windows <= 0 || s.tokens <= 0 || s.channels <= 0)
    {
        return "patch alignment needs windows, tokens and channels > 0 and classes >= 0";
    }
    if (s.windows > (int64_t{1} << 30) || s.classes > 65535 || s.channels > 8192)
    {
        return "patch alignment supports at most 2^30 windows, 65535 classes and 8192 channels";
    }
    return "";
}

} // namespace sccan
