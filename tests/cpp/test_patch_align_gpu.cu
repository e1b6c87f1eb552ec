// The CUDA kernel against the CPU reference on a real GPU (float and half I/O, planted winners,
// exact ties, windows without foreground, SCCAN's real sizes), plus its time per call.
// Exits 77 (ctest: skipped) where no CUDA device is present.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "check.h"
#include "patch_align_cases.h"
#include "patch_align_kernel.h"
#include "patch_align_reference.h"

using namespace sccan;

#define CUDA_OK(call)                                                                                                  \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess)                                                                                         \
        {                                                                                                              \
            std::fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));              \
            std::exit(1);                                                                                              \
        }                                                                                                              \
    } while (0)

template <typename T>
struct Device
{
    T* ptr{nullptr};
    explicit Device(size_t n)
    {
        CUDA_OK(cudaMalloc(&ptr, n * sizeof(T)));
    }
    ~Device()
    {
        cudaFree(ptr);
    }
};

static double scoreOf(PatchAlignCase const& k, int64_t c, int64_t a, int64_t b)
{
    int64_t const W = k.shape.windows, T = k.shape.tokens, D = k.shape.channels;
    double dot = 0, pn = 0, qn = 0;
    for (int64_t d = 0; d < D; ++d)
    {
        double m = 0;
        for (int64_t t = 0; t < T; ++t) m += k.query[static_cast<size_t>(tokenOffset(c, b, t, d, W, T, D))];
        m /= static_cast<double>(T);
        double const p = k.prototypes[static_cast<size_t>(windowOffset(c, a, d, W, D))];
        dot += p * m;
        pn += p * p;
        qn += m * m;
    }
    return (dot / (std::sqrt(pn) * std::sqrt(qn) + 1e-7) + 1.0) / 2.0 * k.hasFg[static_cast<size_t>(c * W + a)];
}

template <typename T>
static std::vector<T> convert(std::vector<float> const& v);
template <>
std::vector<float> convert<float>(std::vector<float> const& v)
{
    return v;
}
template <>
std::vector<__half> convert<__half>(std::vector<float> const& v)
{
    std::vector<__half> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = __float2half(v[i]);
    return out;
}
static float back(float v)
{
    return v;
}
static float back(__half v)
{
    return __half2float(v);
}

template <typename T>
static void runCase(int64_t C, int64_t W, int64_t Tk, int64_t D, uint32_t seed, char const* label)
{
    PatchAlignCase k = makeCase(C, W, Tk, D, seed);
    // Quantise once, so the reference sees exactly the values the GPU reads.
    std::vector<T> q = convert<T>(k.query), p = convert<T>(k.prototypes), f = convert<T>(k.hasFg),
                   t = convert<T>(k.tokens);
    for (size_t i = 0; i < q.size(); ++i) k.query[i] = back(q[i]);
    for (size_t i = 0; i < p.size(); ++i) k.prototypes[i] = back(p[i]);
    for (size_t i = 0; i < t.size(); ++i) k.tokens[i] = back(t[i]);

    std::vector<float> refAligned(k.tokens.size());
    std::vector<int32_t> refIndex(static_cast<size_t>(C * W));
    CHECK(*patchAlignReference(k.query.data(), k.prototypes.data(), k.hasFg.data(), k.tokens.data(),
              refAligned.data(), refIndex.data(), k.shape) == '\0');

    Device<T> dq(q.size()), dp(p.size()), df(f.size()), dt(t.size()), da(t.size());
    Device<int32_t> di(refIndex.size());
    CUDA_OK(cudaMemcpy(dq.ptr, q.data(), q.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dp.ptr, p.data(), p.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(df.ptr, f.data(), f.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dt.ptr, t.data(), t.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(di.ptr, 0xff, refIndex.size() * sizeof(int32_t)));
    CUDA_OK(launchPatchAlign<T>(dq.ptr, dp.ptr, df.ptr, dt.ptr, da.ptr, di.ptr, k.shape, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<T> aligned(t.size());
    std::vector<int32_t> index(refIndex.size());
    CUDA_OK(cudaMemcpy(aligned.data(), da.ptr, aligned.size() * sizeof(T), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(index.data(), di.ptr, index.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));

    int decisiveDiffer = 0, nearTieDiffer = 0, plantedWrong = 0, gatherWrong = 0;
    for (int64_t c = 0; c < C; ++c)
    {
        for (int64_t b = 0; b < W; ++b)
        {
            size_t const i = static_cast<size_t>(c * W + b);
            int32_t const g = index[i], r = refIndex[i];
            if (g < 0 || g >= W)
            {
                ++plantedWrong;
                continue;
            }
            if (k.planted[i] >= 0 && g != k.planted[i]) ++plantedWrong;
            if (g != r)
            {
                double const gap = std::fabs(scoreOf(k, c, g, b) - scoreOf(k, c, r, b));
                (gap > 1e-5 ? decisiveDiffer : nearTieDiffer) += 1;
            }
            for (int64_t j = 0; j < Tk * D; ++j)
            {
                // Bit for bit: the aligned tokens are the GPU-chosen window's tokens.
                if (back(aligned[static_cast<size_t>(tokenOffset(c, b, 0, 0, W, Tk, D) + j)])
                    != k.tokens[static_cast<size_t>(tokenOffset(c, g, 0, 0, W, Tk, D) + j)])
                {
                    ++gatherWrong;
                    break;
                }
            }
        }
    }
    std::printf("%-6s C=%lld W=%lld T=%lld D=%lld: decisive index differences %d, near-tie %d, planted wrong %d, "
                "gather wrong %d\n",
        label, static_cast<long long>(C), static_cast<long long>(W), static_cast<long long>(Tk),
        static_cast<long long>(D), decisiveDiffer, nearTieDiffer, plantedWrong, gatherWrong);
    CHECK(decisiveDiffer == 0);
    CHECK(plantedWrong == 0);
    CHECK(gatherWrong == 0);
}

template <typename T>
static void timeCase(int64_t C, int64_t W, int64_t Tk, int64_t D, char const* label)
{
    PatchAlignShape const shape{C, W, Tk, D};
    size_t const tokens = static_cast<size_t>(C * W * Tk * D);
    Device<T> dq(tokens), dp(static_cast<size_t>(C * W * D)), df(static_cast<size_t>(C * W)), dt(tokens), da(tokens);
    Device<int32_t> di(static_cast<size_t>(C * W));
    CUDA_OK(cudaMemset(dq.ptr, 0, tokens * sizeof(T)));
    CUDA_OK(cudaMemset(dp.ptr, 0, static_cast<size_t>(C * W * D) * sizeof(T)));
    CUDA_OK(cudaMemset(df.ptr, 0, static_cast<size_t>(C * W) * sizeof(T)));
    CUDA_OK(cudaMemset(dt.ptr, 0, tokens * sizeof(T)));
    cudaEvent_t start, stop;
    CUDA_OK(cudaEventCreate(&start));
    CUDA_OK(cudaEventCreate(&stop));
    for (int i = 0; i < 20; ++i) CUDA_OK(launchPatchAlign<T>(dq.ptr, dp.ptr, df.ptr, dt.ptr, da.ptr, di.ptr, shape, nullptr));
    int const reps = 200;
    CUDA_OK(cudaEventRecord(start));
    for (int i = 0; i < reps; ++i) CUDA_OK(launchPatchAlign<T>(dq.ptr, dp.ptr, df.ptr, dt.ptr, da.ptr, di.ptr, shape, nullptr));
    CUDA_OK(cudaEventRecord(stop));
    CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    std::printf("time %-6s C=%lld W=%lld T=%lld D=%lld: %.2f us per call (mean of %d, CUDA events)\n", label,
        static_cast<long long>(C), static_cast<long long>(W), static_cast<long long>(Tk), static_cast<long long>(D),
        1000.0 * ms / reps, reps);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
}

int main(int argc, char** argv)
{
    bool const timing = !(argc > 1 && std::string(argv[1]) == "--no-timing");
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
    {
        std::printf("test_patch_align_gpu: no CUDA device, skipped\n");
        return 77;
    }
    cudaDeviceProp prop{};
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    // ResNet-50 at 473: 64 x 64 grid, 8 x 8 windows -> 64 windows (81 when shifted), D 256.
    // Lite-0 edge config: 32 x 32 grid -> 16 (25 shifted) windows, D 128. Plus odd sizes.
    int64_t const sizes[][4] = {{8, 81, 64, 256}, {8, 64, 64, 256}, {3, 25, 64, 128}, {1, 16, 64, 128},
        {5, 300, 7, 33}, {2, 1, 1, 1}};
    uint32_t seed = 1;
    for (auto const& s : sizes)
    {
        runCase<float>(s[0], s[1], s[2], s[3], seed, "float");
        runCase<__half>(s[0], s[1], s[2], s[3], seed, "half");
        ++seed;
    }
    if (timing)
    {
        timeCase<float>(8, 81, 64, 256, "float");
        timeCase<__half>(8, 81, 64, 256, "half");
        timeCase<float>(1, 25, 64, 128, "float");
    }
    return checkResult("test_patch_align_gpu");
}
