// Loads the built TensorRT plugin library (no GPU, no libnvinfer needed), finds its creator
// through getCreators(), creates the plugin from fields, checks its build-time answers and
// round-trips its serialisation. setLoggerFinder() (which a real TensorRT's loadLibrary requires)
// routes the creator's refusals to the logger it finds.
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

#include <NvInferRuntime.h>

#include "check.h"

using namespace nvinfer1;
using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
using SetLoggerFinder = void (*)(ILoggerFinder*);

namespace
{
struct RecordingLogger : ILogger
{
    std::vector<std::string> errors;
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR) errors.emplace_back(msg);
    }
};
struct Finder : ILoggerFinder
{
    RecordingLogger logger;
    ILogger* findLogger() override
    {
        return &logger;
    }
};
} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s LIBRARY\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 1;
    }
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    CHECK(getCreators != nullptr);
    if (getCreators == nullptr) return checkResult("test_plugin_library");
    int32_t n = -1;
    IPluginCreatorInterface* const* creators = getCreators(n);
    CHECK(n == 1 && creators != nullptr);
    CHECK(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    CHECK(std::strcmp(creator->getPluginName(), "SccanPatchAlign") == 0);
    CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator->getPluginNamespace(), "sccan") == 0);
    PluginFieldCollection const* names = creator->getFieldNames();
    CHECK(names->nbFields == 1 && std::strcmp(names->fields[0].name, "cosine_eps") == 0);

    float eps = 2.5e-7f;
    PluginField field("cosine_eps", &eps, PluginFieldType::kFLOAT32, 1);
    PluginFieldCollection fc{1, &field};
    IPluginV3* plugin = creator->createPlugin("align0", &fc, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (plugin == nullptr) return checkResult("test_plugin_library");

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core && build && runtime);
    CHECK(std::strcmp(core->getPluginName(), "SccanPatchAlign") == 0);
    CHECK(build->getNbOutputs() == 2);

    DataType in[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF};
    DataType out[2];
    CHECK(build->getOutputDataTypes(out, 2, in, 4) == 0);
    CHECK(out[0] == DataType::kHALF && out[1] == DataType::kINT32);
    DataType bad[4] = {DataType::kINT32, DataType::kINT32, DataType::kINT32, DataType::kINT32};
    CHECK(build->getOutputDataTypes(out, 2, bad, 4) != 0);

    DynamicPluginTensorDesc io[6]{};
    for (auto& d : io) d.desc.format = TensorFormat::kLINEAR;
    for (int i = 0; i < 5; ++i) io[i].desc.type = DataType::kFLOAT;
    io[5].desc.type = DataType::kINT32;
    for (int pos = 0; pos < 6; ++pos) CHECK(build->supportsFormatCombination(pos, io, 4, 2));
    io[2].desc.type = DataType::kHALF; // mixed float types are refused
    CHECK(!build->supportsFormatCombination(2, io, 4, 2));
    io[2].desc.type = DataType::kFLOAT;
    io[5].desc.type = DataType::kINT64;
    CHECK(!build->supportsFormatCombination(5, io, 4, 2));
    io[0].desc.format = TensorFormat::kHWC8;
    CHECK(!build->supportsFormatCombination(0, io, 4, 2));

    // An unknown attribute is refused, a known one of the wrong type too.
    int32_t wrong = 3;
    PluginField unknown("window", &wrong, PluginFieldType::kINT32, 1);
    PluginFieldCollection fcUnknown{1, &unknown};
    CHECK(creator->createPlugin("x", &fcUnknown, TensorRTPhase::kBUILD) == nullptr);
    PluginField mistyped("cosine_eps", &wrong, PluginFieldType::kINT32, 1);
    PluginFieldCollection fcMistyped{1, &mistyped};
    CHECK(creator->createPlugin("x", &fcMistyped, TensorRTPhase::kBUILD) == nullptr);

    // With a logger finder set, the same refusals say why.
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    CHECK(setLoggerFinder != nullptr);
    if (setLoggerFinder != nullptr)
    {
        Finder finder;
        setLoggerFinder(&finder);
        CHECK(creator->createPlugin("x", &fcUnknown, TensorRTPhase::kBUILD) == nullptr);
        CHECK(creator->createPlugin("x", &fcMistyped, TensorRTPhase::kBUILD) == nullptr);
        CHECK(finder.logger.errors.size() == 2);
        CHECK(finder.logger.errors.size() == 2 && finder.logger.errors[0] == "SccanPatchAlign: unknown attribute window"
            && finder.logger.errors[1] == "SccanPatchAlign: attribute cosine_eps must be one float32");
        setLoggerFinder(nullptr);
    }

    // Serialisation round trip: the runtime phase gets back exactly the fields it serialised.
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    CHECK(saved->nbFields == 1 && std::strcmp(saved->fields[0].name, "cosine_eps") == 0);
    IPluginV3* restored = creator->createPlugin("align0", saved, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    if (restored != nullptr)
    {
        auto* rt = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* again = rt->getFieldsToSerialize();
        float restoredEps = 0;
        std::memcpy(&restoredEps, again->fields[0].data, sizeof(float));
        CHECK(restoredEps == eps);
        IPluginV3* attached = rt->attachToContext(nullptr);
        CHECK(attached != nullptr);
        delete attached;
        delete restored;
    }
    IPluginV3* copy = plugin->clone();
    CHECK(copy != nullptr);
    delete copy;
    delete plugin;
    return checkResult("test_plugin_library");
}
