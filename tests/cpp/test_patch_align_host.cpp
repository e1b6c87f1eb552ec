// Host tests of patch alignment: the __host__ __device__ index logic the CUDA kernel runs, and the
// CPU reference of the whole op on cases whose answers are known by construction.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "check.h"
#include "patch_align_cases.h"
#include "patch_align_common.h"
#include "patch_align_reference.h"

using namespace sccan;

static void testOffsets()
{
    // C=2, W=3, T=4, D=5 laid out row-major.
    CHECK(tokenOffset(0, 0, 0, 0, 3, 4, 5) == 0);
    CHECK(tokenOffset(0, 0, 0, 4, 3, 4, 5) == 4);
    CHECK(tokenOffset(0, 0, 1, 0, 3, 4, 5) == 5);
    CHECK(tokenOffset(0, 1, 0, 0, 3, 4, 5) == 20);
    CHECK(tokenOffset(1, 0, 0, 0, 3, 4, 5) == 60);
    CHECK(tokenOffset(1, 2, 3, 4, 3, 4, 5) == 2 * 3 * 4 * 5 - 1);
    CHECK(windowOffset(1, 2, 4, 3, 5) == 2 * 3 * 5 - 1);
    CHECK(windowOffset(1, 2, 0, 3, 1) == 5);
}

static void testScore()
{
    CHECK(std::fabs(alignScore(0.0f, 1.0f, 1.0f, 1.0f) - 0.5f) < 1e-7f);  // orthogonal
    CHECK(std::fabs(alignScore(4.0f, 2.0f, 2.0f, 1.0f) - 1.0f) < 1e-6f);  // parallel
    CHECK(std::fabs(alignScore(-4.0f, 2.0f, 2.0f, 1.0f) - 0.0f) < 1e-6f); // opposite
    CHECK(alignScore(4.0f, 2.0f, 2.0f, 0.0f) == 0.0f);                    // no foreground
    CHECK(alignScore(0.0f, 0.0f, 0.0f, 1.0f) == 0.5f);                    // zero vectors: cosine 0
    CHECK(alignScore(1.0f, 1.0f, 1.0f, 1.0f, 1.0f) == 0.75f);            // eps enters the denominator
}

static void testTieRule()
{
    CHECK(beats(0.6f, 5, 0.5f, 0));
    CHECK(!beats(0.4f, 0, 0.5f, 5));
    CHECK(beats(0.5f, 2, 0.5f, 3));  // equal score: the lower index wins
    CHECK(!beats(0.5f, 3, 0.5f, 2));
    CHECK(!beats(0.5f, 3, 0.5f, 3));
    CHECK(clampIndex(-1, 4) == 0 && clampIndex(4, 4) == 3 && clampIndex(2, 4) == 2);

    // The kernel's tree reduction (strided per-thread winners, then pairwise merges) must give the
    // sequential first-index argmax for any scores with many exact ties.
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> level(0, 3);
    for (int trial = 0; trial < 200; ++trial)
    {
        int const n = 1 + trial % 97;
        int const threads = 32;
        std::vector<float> score(static_cast<size_t>(n));
        for (auto& s : score) s = 0.25f * static_cast<float>(level(rng));
        int expected = static_cast<int>(std::max_element(score.begin(), score.end()) - score.begin());
        std::vector<float> bestScore(threads, -1.0f);
        std::vector<int32_t> bestIndex(threads, n);
        for (int t = 0; t < threads; ++t)
        {
            for (int a = t; a < n; a += threads)
            {
                if (beats(score[static_cast<size_t>(a)], a, bestScore[static_cast<size_t>(t)], bestIndex[static_cast<size_t>(t)]))
                {
                    bestScore[static_cast<size_t>(t)] = score[static_cast<size_t>(a)];
                    bestIndex[static_cast<size_t>(t)] = a;
                }
            }
        }
        for (int stride = threads / 2; stride > 0; stride /= 2)
        {
            for (int t = 0; t < stride; ++t)
            {
                if (beats(bestScore[static_cast<size_t>(t + stride)], bestIndex[static_cast<size_t>(t + stride)],
                        bestScore[static_cast<size_t>(t)], bestIndex[static_cast<size_t>(t)]))
                {
                    bestScore[static_cast<size_t>(t)] = bestScore[static_cast<size_t>(t + stride)];
                    bestIndex[static_cast<size_t>(t)] = bestIndex[static_cast<size_t>(t + stride)];
                }
            }
        }
        CHECK(bestIndex[0] == expected);
    }
}

static void testReference()
{
    for (auto const& dims : std::vector<std::vector<int64_t>>{{3, 16, 4, 8}, {2, 81, 9, 32}, {1, 1, 2, 3}})
    {
        PatchAlignCase k = makeCase(dims[0], dims[1], dims[2], dims[3], 11);
        int64_t const C = dims[0], W = dims[1], T = dims[2], D = dims[3];
        std::vector<float> aligned(k.tokens.size(), -99.0f);
        std::vector<int32_t> index(static_cast<size_t>(C * W), -1);
        char const* problem = patchAlignReference(k.query.data(), k.prototypes.data(), k.hasFg.data(), k.tokens.data(),
            aligned.data(), index.data(), k.shape);
        CHECK(*problem == '\0');
        for (int64_t i = 0; i < C * W; ++i)
        {
            CHECK(index[static_cast<size_t>(i)] >= 0 && index[static_cast<size_t>(i)] < W);
            if (k.planted[static_cast<size_t>(i)] >= 0)
            {
                CHECK(index[static_cast<size_t>(i)] == k.planted[static_cast<size_t>(i)]);
            }
        }
        // The aligned tokens are the chosen support window's, unmasked, bit for bit.
        for (int64_t c = 0; c < C; ++c)
        {
            for (int64_t b = 0; b < W; ++b)
            {
                int32_t const a = index[static_cast<size_t>(c * W + b)];
                CHECK(std::equal(aligned.begin() + tokenOffset(c, b, 0, 0, W, T, D),
                    aligned.begin() + tokenOffset(c, b + 1, 0, 0, W, T, D) , k.tokens.begin() + tokenOffset(c, a, 0, 0, W, T, D)));
            }
        }
    }
    // A bad shape is refused with a message, touching nothing.
    std::vector<float> none(1);
    std::vector<int32_t> idx(1, -5);
    CHECK(*patchAlignReference(none.data(), none.data(), none.data(), none.data(), none.data(), idx.data(),
              PatchAlignShape{1, 0, 1, 1}) != '\0');
    CHECK(idx[0] == -5);
    CHECK(sccan_patch_align_cpu(none.data(), none.data(), none.data(), none.data(), none.data(), idx.data(), 1, 1, 1,
              9000, kCosineEps) == 1);
}

int main()
{
    testOffsets();
    testScore();
    testTieRule();
    testReference();
    return checkResult("test_patch_align_host");
}
