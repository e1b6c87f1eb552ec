// The CUDA kernel against the CPU reference on a real GPU (float and half I/O, planted winners,
// exact ties, windows without foreground, SCCAN's real sizes), plus its time per call.
// Exits 77 (ctest: skipped) where no CUDA device is present.
#include <cstdio>
#include <string>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "check.h"
#include "patch_align_gpu_check.h"
#include "patch_align_kernel.h"

using namespace sccan;

template <typename T>
static void runCase(int64_t C, int64_t W, int64_t Tk, int64_t D, uint32_t seed, char const* label)
{
    CaseResult const r = runAlignCase<T>(C, W, Tk, D, seed, label,
        [&](T const* q, T const* p, T const* f, T const* t, T* aligned, int32_t* index)
        { return launchPatchAlign<T>(q, p, f, t, aligned, index, PatchAlignShape{C, W, Tk, D}, nullptr); });
    CHECK(r.decisive == 0);
    CHECK(r.planted == 0);
    CHECK(r.gather == 0);
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
