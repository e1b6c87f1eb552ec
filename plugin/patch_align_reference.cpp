#include "patch_align_reference.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace sccan
{

char const* patchAlignReference(float const* queryWindows, float const* supportPrototypes,
    float const* supportHasFg, float const* supportTokens, float* aligned, int32_t* index,
    PatchAlignShape const& shape, float eps)
{
    char const* problem = validateShape(shape);
    if (*problem != '\0')
    {
        return problem;
    }
    int64_t const W = shape.windows;
    int64_t const T = shape.tokens;
    int64_t const D = shape.channels;
    std::vector<double> mean(static_cast<size_t>(D));
    std::vector<float> supportNorm(static_cast<size_t>(W));
    for (int64_t c = 0; c < shape.classes; ++c)
    {
        for (int64_t a = 0; a < W; ++a)
        {
            double sq = 0.0;
            for (int64_t d = 0; d < D; ++d)
            {
                double const v = supportPrototypes[windowOffset(c, a, d, W, D)];
                sq += v * v;
            }
            supportNorm[static_cast<size_t>(a)] = static_cast<float>(std::sqrt(sq));
        }
        for (int64_t b = 0; b < W; ++b)
        {
            double sq = 0.0;
            for (int64_t d = 0; d < D; ++d)
            {
                double sum = 0.0;
                for (int64_t t = 0; t < T; ++t)
                {
                    sum += queryWindows[tokenOffset(c, b, t, d, W, T, D)];
                }
                mean[static_cast<size_t>(d)] = sum / static_cast<double>(T);
                sq += mean[static_cast<size_t>(d)] * mean[static_cast<size_t>(d)];
            }
            float const queryNorm = static_cast<float>(std::sqrt(sq));
            float bestScore = -INFINITY;
            int32_t best = static_cast<int32_t>(W);
            for (int64_t a = 0; a < W; ++a)
            {
                double dot = 0.0;
                for (int64_t d = 0; d < D; ++d)
                {
                    dot += supportPrototypes[windowOffset(c, a, d, W, D)] * mean[static_cast<size_t>(d)];
                }
                float const score = alignScore(static_cast<float>(dot), supportNorm[static_cast<size_t>(a)],
                    queryNorm, supportHasFg[windowOffset(c, a, 0, W, 1)], eps);
                if (beats(score, static_cast<int32_t>(a), bestScore, best))
                {
                    bestScore = score;
                    best = static_cast<int32_t>(a);
                }
            }
            best = clampIndex(best, static_cast<int32_t>(W));
            index[windowOffset(c, b, 0, W, 1)] = best;
            std::memcpy(aligned + tokenOffset(c, b, 0, 0, W, T, D), supportTokens + tokenOffset(c, best, 0, 0, W, T, D),
                static_cast<size_t>(T * D) * sizeof(float));
        }
    }
    return "";
}

} // namespace sccan

int32_t sccan_patch_align_cpu(float const* queryWindows, float const* supportPrototypes, float const* supportHasFg,
    float const* supportTokens, float* aligned, int32_t* index, int64_t classes, int64_t windows, int64_t tokens,
    int64_t channels, float eps)
{
    sccan::PatchAlignShape const shape{classes, windows, tokens, channels};
    char const* problem = sccan::patchAlignReference(
        queryWindows, supportPrototypes, supportHasFg, supportTokens, aligned, index, shape, eps);
    return *problem == '\0' ? 0 : 1;
}
