// The plugin inside a real TensorRT runtime library (libnvinfer.so or libnvinfer_lean.so, >= 10.3;
// dlopen'd, so nothing links against it): IPluginRegistry::loadLibrary accepts the library (it
// needs both entry points, getCreators and setLoggerFinder), refuses a second load while the
// creator is registered, finds the creator by name, version and namespace, and the plugin takes the
// path an engine takes when it is deserialised: the fields serialised at build time, createPlugin in
// the runtime phase, attachToContext, onShapeChange, enqueue. On a GPU, enqueue runs SCCAN's sizes
// in float and half against the CPU reference; a negative control (query windows and support
// tokens swapped, same shapes) must fail that comparison. Without a CUDA device the registry checks
// run and enqueue is reported as not run.
//
// Usage: test_plugin_trt_runtime TENSORRT_RUNTIME_LIBRARY PLUGIN_LIBRARY NOT_A_PLUGIN_LIBRARY
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>

#include <NvInferRuntime.h>

#include "check.h"
#include "patch_align_gpu_check.h"

using namespace nvinfer1;
using GetRegistry = IPluginRegistry* (*) ();
using GetVersion = int32_t (*)();

namespace
{

PluginTensorDesc desc(std::initializer_list<int64_t> dims, DataType type)
{
    PluginTensorDesc d{};
    d.dims.nbDims = static_cast<int32_t>(dims.size());
    int32_t i = 0;
    for (int64_t v : dims) d.dims.d[i++] = v;
    d.type = type;
    d.format = TensorFormat::kLINEAR;
    d.scale = 1.0f;
    return d;
}

//! One case through the runtime plugin's onShapeChange and enqueue; `swap` feeds the support
//! tokens as query windows and the query windows as support tokens (the negative control).
template <typename T>
CaseResult enqueueCase(IPluginV3OneRuntime* runtime, int64_t C, int64_t W, int64_t Tk, int64_t D, uint32_t seed,
    char const* label, bool swap)
{
    DataType const type = sizeof(T) == 4 ? DataType::kFLOAT : DataType::kHALF;
    PluginTensorDesc const in[4] = {desc({C, W, Tk, D}, type), desc({C, W, D}, type), desc({C, W}, type),
        desc({C, W, Tk, D}, type)};
    PluginTensorDesc const out[2] = {desc({C, W, Tk, D}, type), desc({C, W}, DataType::kINT32)};
    CHECK(runtime->onShapeChange(in, 4, out, 2) == 0);
    return runAlignCase<T>(C, W, Tk, D, seed, label,
        [&](T const* q, T const* p, T const* f, T const* t, T* aligned, int32_t* index)
        {
            void const* inputs[4] = {swap ? t : q, p, f, swap ? q : t};
            void* outputs[2] = {aligned, index};
            return runtime->enqueue(in, out, inputs, outputs, nullptr, nullptr) == 0 ? cudaSuccess
                                                                                      : cudaErrorLaunchFailure;
        });
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 4)
    {
        std::fprintf(stderr, "usage: %s TENSORRT_RUNTIME_LIBRARY PLUGIN_LIBRARY NOT_A_PLUGIN_LIBRARY\n", argv[0]);
        return 2;
    }
    void* trt = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (trt == nullptr)
    {
        std::fprintf(stderr, "dlopen(%s) failed: %s\n", argv[1], dlerror());
        return 1;
    }
    auto getRegistry = reinterpret_cast<GetRegistry>(dlsym(trt, "getPluginRegistry"));
    auto getVersion = reinterpret_cast<GetVersion>(dlsym(trt, "getInferLibVersion"));
    if (getRegistry == nullptr || getVersion == nullptr)
    {
        std::fprintf(stderr, "%s exports no getPluginRegistry / getInferLibVersion\n", argv[1]);
        return 1;
    }
    std::printf("TensorRT runtime library %s, version %d\n", argv[1], getVersion());
    IPluginRegistry* registry = getRegistry();
    CHECK(registry != nullptr);
    if (registry == nullptr) return checkResult("test_plugin_trt_runtime");

    // A library without the entry points is refused; the plugin library is accepted once.
    CHECK(registry->loadLibrary(argv[3]) == nullptr);
    IPluginRegistry::PluginLibraryHandle handle = registry->loadLibrary(argv[2]);
    CHECK(handle != nullptr);
    if (handle == nullptr) return checkResult("test_plugin_trt_runtime");
    CHECK(registry->loadLibrary(argv[2]) == nullptr); // the creator is registered already

    IPluginCreatorInterface* found = registry->getCreator("SccanPatchAlign", "1", "sccan");
    CHECK(found != nullptr && std::strcmp(found->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    CHECK(registry->getCreator("SccanPatchAlign", "2", "sccan") == nullptr);
    if (found == nullptr) return checkResult("test_plugin_trt_runtime");
    auto* creator = static_cast<IPluginCreatorV3One*>(found);

    // Build phase: the fields TensorRT writes into the engine.
    float eps = 1e-7f;
    PluginField field("cosine_eps", &eps, PluginFieldType::kFLOAT32, 1);
    PluginFieldCollection fc{1, &field};
    IPluginV3* built = creator->createPlugin("align0", &fc, TensorRTPhase::kBUILD);
    CHECK(built != nullptr);
    if (built == nullptr) return checkResult("test_plugin_trt_runtime");
    auto* buildRuntime = static_cast<IPluginV3OneRuntime*>(built->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* serialised = buildRuntime->getFieldsToSerialize();
    CHECK(serialised != nullptr && serialised->nbFields == 1);

    // Runtime phase, as a deserialised engine does it.
    IPluginV3* loaded = creator->createPlugin("align0", serialised, TensorRTPhase::kRUNTIME);
    CHECK(loaded != nullptr);
    if (loaded == nullptr) return checkResult("test_plugin_trt_runtime");
    IPluginV3* attached = static_cast<IPluginV3OneRuntime*>(loaded->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
                              ->attachToContext(nullptr);
    CHECK(attached != nullptr);
    if (attached == nullptr) return checkResult("test_plugin_trt_runtime");
    auto* runtime = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc const wrong[4] = {desc({2, 3, 4}, DataType::kFLOAT), desc({2, 3, 4}, DataType::kFLOAT),
        desc({2, 3}, DataType::kFLOAT), desc({2, 0, 4, 4}, DataType::kFLOAT)};
    CHECK(runtime->onShapeChange(wrong, 4, wrong, 2) != 0); // no windows: refused, not enqueued

    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
    {
        std::printf("no CUDA device: the registry and runtime-phase checks ran, enqueue was not run\n");
    }
    else
    {
        cudaDeviceProp prop{};
        CUDA_OK(cudaGetDeviceProperties(&prop, 0));
        std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
        int64_t const sizes[][4] = {{8, 81, 64, 256}, {3, 25, 64, 128}, {5, 300, 7, 33}};
        uint32_t seed = 11;
        for (auto const& s : sizes)
        {
            CHECK(enqueueCase<float>(runtime, s[0], s[1], s[2], s[3], seed, "float", false).ok());
            CHECK(enqueueCase<__half>(runtime, s[0], s[1], s[2], s[3], seed, "half", false).ok());
            ++seed;
        }
        std::printf("negative control (query windows and support tokens swapped), must differ:\n");
        CHECK(!enqueueCase<float>(runtime, 8, 81, 64, 256, 11, "float", true).ok());
    }

    delete attached;
    delete loaded;
    delete built;
    registry->deregisterLibrary(handle);
    CHECK(registry->getCreator("SccanPatchAlign", "1", "sccan") == nullptr);
    IPluginRegistry::PluginLibraryHandle again = registry->loadLibrary(argv[2]); // loadable after deregistering
    CHECK(again != nullptr);
    if (again != nullptr) registry->deregisterLibrary(again);
    return checkResult("test_plugin_trt_runtime");
}
