// One patch-alignment case on a real GPU, checked against the CPU reference: shared by the kernel
// test (the kernel launched directly) and the TensorRT runtime test (the plugin's enqueue). The
// caller's `launch(query, prototypes, hasFg, tokens, aligned, index)` gets device pointers.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "patch_align_cases.h"
#include "patch_align_reference.h"

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
    Device(Device const&) = delete;
    Device& operator=(Device const&) = delete;
};

//! The score of support window a for query window b of class c, in double (the tie judge).
inline double alignScoreOf(PatchAlignCase const& k, int64_t c, int64_t a, int64_t b)
{
    using sccan::tokenOffset;
    using sccan::windowOffset;
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
inline std::vector<T> toDeviceType(std::vector<float> const& v);
template <>
inline std::vector<float> toDeviceType<float>(std::vector<float> const& v)
{
    return v;
}
template <>
inline std::vector<__half> toDeviceType<__half>(std::vector<float> const& v)
{
    std::vector<__half> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = __float2half(v[i]);
    return out;
}
inline float toFloat(float v)
{
    return v;
}
inline float toFloat(__half v)
{
    return __half2float(v);
}

//! What one case found. A correct launch has decisive == planted == gather == 0 (near-tie index
//! differences, where two windows' scores are within 1e-5, are rounding and allowed).
struct CaseResult
{
    int decisive{0};
    int nearTie{0};
    int planted{0};
    int gather{0};
    bool ok() const
    {
        return decisive == 0 && planted == 0 && gather == 0;
    }
};

template <typename T, typename Launch>
CaseResult runAlignCase(int64_t C, int64_t W, int64_t Tk, int64_t D, uint32_t seed, char const* label, Launch&& launch)
{
    using sccan::tokenOffset;
    PatchAlignCase k = makeCase(C, W, Tk, D, seed);
    // Quantise once, so the reference sees exactly the values the GPU reads.
    std::vector<T> q = toDeviceType<T>(k.query), p = toDeviceType<T>(k.prototypes), f = toDeviceType<T>(k.hasFg),
                   t = toDeviceType<T>(k.tokens);
    for (size_t i = 0; i < q.size(); ++i) k.query[i] = toFloat(q[i]);
    for (size_t i = 0; i < p.size(); ++i) k.prototypes[i] = toFloat(p[i]);
    for (size_t i = 0; i < t.size(); ++i) k.tokens[i] = toFloat(t[i]);

    std::vector<float> refAligned(k.tokens.size());
    std::vector<int32_t> refIndex(static_cast<size_t>(C * W));
    if (*sccan::patchAlignReference(k.query.data(), k.prototypes.data(), k.hasFg.data(), k.tokens.data(),
            refAligned.data(), refIndex.data(), k.shape) != '\0')
    {
        std::fprintf(stderr, "%s: the reference refused the shape\n", label);
        std::exit(1);
    }

    Device<T> dq(q.size()), dp(p.size()), df(f.size()), dt(t.size()), da(t.size());
    Device<int32_t> di(refIndex.size());
    CUDA_OK(cudaMemcpy(dq.ptr, q.data(), q.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dp.ptr, p.data(), p.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(df.ptr, f.data(), f.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dt.ptr, t.data(), t.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(di.ptr, 0xff, refIndex.size() * sizeof(int32_t)));
    CUDA_OK(launch(dq.ptr, dp.ptr, df.ptr, dt.ptr, da.ptr, di.ptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<T> aligned(t.size());
    std::vector<int32_t> index(refIndex.size());
    CUDA_OK(cudaMemcpy(aligned.data(), da.ptr, aligned.size() * sizeof(T), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(index.data(), di.ptr, index.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));

    CaseResult r;
    for (int64_t c = 0; c < C; ++c)
    {
        for (int64_t b = 0; b < W; ++b)
        {
            size_t const i = static_cast<size_t>(c * W + b);
            int32_t const g = index[i], ref = refIndex[i];
            if (g < 0 || g >= W)
            {
                ++r.planted;
                continue;
            }
            if (k.planted[i] >= 0 && g != k.planted[i]) ++r.planted;
            if (g != ref)
            {
                double const gap = std::fabs(alignScoreOf(k, c, g, b) - alignScoreOf(k, c, ref, b));
                (gap > 1e-5 ? r.decisive : r.nearTie) += 1;
            }
            for (int64_t j = 0; j < Tk * D; ++j)
            {
                // Bit for bit: the aligned tokens are the GPU-chosen window's tokens.
                if (toFloat(aligned[static_cast<size_t>(tokenOffset(c, b, 0, 0, W, Tk, D) + j)])
                    != k.tokens[static_cast<size_t>(tokenOffset(c, g, 0, 0, W, Tk, D) + j)])
                {
                    ++r.gather;
                    break;
                }
            }
        }
    }
    std::printf("%-6s C=%lld W=%lld T=%lld D=%lld: decisive index differences %d, near-tie %d, planted wrong %d, "
                "gather wrong %d\n",
        label, static_cast<long long>(C), static_cast<long long>(W), static_cast<long long>(Tk),
        static_cast<long long>(D), r.decisive, r.nearTie, r.planted, r.gather);
    return r;
}
