// Test inputs for patch alignment shared by the host and GPU tests: random windows plus planted
// structure (known winners, exact ties, windows without foreground).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "patch_align_common.h"

struct PatchAlignCase
{
    sccan::PatchAlignShape shape;
    std::vector<float> query, prototypes, hasFg, tokens;
    std::vector<int32_t> planted; // the expected index of each (c, query window), -1 where not planted
};

//! Random inputs; in class 0 every query window b's mean is planted equal to the prototype of
//! support window perm(b) (a clear winner), window 1 duplicates window 0 (an exact tie that the
//! first index must win), and the last class has no foreground at all (every index 0).
inline PatchAlignCase makeCase(int64_t C, int64_t W, int64_t T, int64_t D, uint32_t seed)
{
    PatchAlignCase k;
    k.shape = sccan::PatchAlignShape{C, W, T, D};
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::bernoulli_distribution coin(0.7);
    k.query.resize(static_cast<size_t>(C * W * T * D));
    k.prototypes.resize(static_cast<size_t>(C * W * D));
    k.hasFg.resize(static_cast<size_t>(C * W));
    k.tokens.resize(k.query.size());
    k.planted.assign(static_cast<size_t>(C * W), -1);
    for (auto& v : k.query) v = normal(rng);
    for (auto& v : k.prototypes) v = normal(rng);
    for (auto& v : k.tokens) v = normal(rng);
    for (auto& v : k.hasFg) v = coin(rng) ? 1.0f : 0.0f;
    // Class 0: all windows foreground, window 1 a copy of window 0, query windows planted.
    for (int64_t a = 0; a < W; ++a) k.hasFg[static_cast<size_t>(a)] = 1.0f;
    if (W > 1)
    {
        for (int64_t d = 0; d < D; ++d) k.prototypes[static_cast<size_t>(D + d)] = k.prototypes[static_cast<size_t>(d)];
    }
    for (int64_t b = 0; b < W; ++b)
    {
        int64_t target = (b * 7 + 3) % W;
        if (target == 1) target = 0; // window 1 ties with window 0: the first index wins
        for (int64_t t = 0; t < T; ++t)
        {
            for (int64_t d = 0; d < D; ++d)
            {
                // Every token equals the (scaled) prototype: the mean is exactly parallel to it.
                k.query[static_cast<size_t>(sccan::tokenOffset(0, b, t, d, W, T, D))]
                    = 2.0f * k.prototypes[static_cast<size_t>(sccan::windowOffset(0, target, d, W, D))];
            }
        }
        k.planted[static_cast<size_t>(b)] = static_cast<int32_t>(target);
    }
    if (C > 1)
    {
        for (int64_t a = 0; a < W; ++a)
        {
            k.hasFg[static_cast<size_t>((C - 1) * W + a)] = 0.0f;
            k.planted[static_cast<size_t>((C - 1) * W + a)] = 0;
        }
    }
    return k;
}
