// TensorRT plugin for SCCAN's patch alignment (IPluginV3 with the OneCore / OneBuild / OneRuntime
// capabilities and an IPluginCreatorV3One creator), exported through getCreators() and
// setLoggerFinder(), the two entry points IPluginRegistry::loadLibrary() requires. Built from
// TensorRT's public headers alone: nothing here links against libnvinfer.
//
// Node: SccanPatchAlign (version "1", namespace "sccan"), attribute cosine_eps (float, 1e-7).
//   inputs  0 query_windows C x W x T x D, 1 support_prototypes C x W x D, 2 support_has_fg C x W,
//           3 support_tokens C x W x T x D   (all float or all half, linear)
//   outputs 0 aligned C x W x T x D (the inputs' type), 1 index C x W (int32)
#include "patch_align_plugin.h"

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include "patch_align_kernel.h"

using namespace nvinfer1;

namespace sccan
{
namespace
{

constexpr char const* kName = "SccanPatchAlign";
constexpr char const* kVersion = "1";
constexpr char const* kNamespace = "sccan";
constexpr char const* kEpsField = "cosine_eps";
constexpr int32_t kInputs = 4;
constexpr int32_t kOutputs = 2;

//! Set by TensorRT through setLoggerFinder() when it loads the library; null before (and in tests
//! that load the library without TensorRT), when messages are dropped.
std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

void logError(std::string const& message) noexcept
{
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, ("SccanPatchAlign: " + message).c_str());
    }
}

bool isFloatType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

class PatchAlignPlugin final : public IPluginV3,
                               public IPluginV3OneCore,
                               public IPluginV3OneBuild,
                               public IPluginV3OneRuntime
{
public:
    explicit PatchAlignPlugin(float eps)
        : mEps(eps)
    {
    }

    PatchAlignPlugin(PatchAlignPlugin const& other)
        : IPluginV3(other)
        , IPluginV3OneCore(other)
        , IPluginV3OneBuild(other)
        , IPluginV3OneRuntime(other)
        , mEps(other.mEps)
    {
    }

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override
    {
        try
        {
            return new PatchAlignPlugin(*this);
        }
        catch (...)
        {
            return nullptr;
        }
    }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override
    {
        return kName;
    }
    AsciiChar const* getPluginVersion() const noexcept override
    {
        return kVersion;
    }
    AsciiChar const* getPluginNamespace() const noexcept override
    {
        return kNamespace;
    }

    // IPluginV3OneBuild
    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
        int32_t nbOutputs) noexcept override
    {
        if (nbInputs != kInputs || nbOutputs != kOutputs)
        {
            return 1;
        }
        // Static checks where the ranks are known: 4-D tokens, 3-D prototypes, 2-D flags.
        int32_t const ranks[kInputs] = {4, 3, 2, 4};
        for (int32_t i = 0; i < kInputs; ++i)
        {
            if (in[i].desc.dims.nbDims != ranks[i])
            {
                return 1;
            }
        }
        return 0;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
        int32_t nbInputs) const noexcept override
    {
        if (nbInputs != kInputs || nbOutputs != kOutputs || !isFloatType(inputTypes[3]))
        {
            return 1;
        }
        outputTypes[0] = inputTypes[3];
        outputTypes[1] = DataType::kINT32;
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept override
    {
        if (nbInputs != kInputs || nbOutputs != kOutputs || inputs[3].nbDims != 4)
        {
            return 1;
        }
        outputs[0] = inputs[3];
        outputs[1].nbDims = 2;
        outputs[1].d[0] = inputs[3].d[0];
        outputs[1].d[1] = inputs[3].d[1];
        return 0;
    }

    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (nbInputs != kInputs || nbOutputs != kOutputs || pos < 0 || pos >= kInputs + kOutputs)
        {
            return false;
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == kInputs + 1)
        {
            return desc.type == DataType::kINT32;
        }
        if (pos == 0)
        {
            return isFloatType(desc.type);
        }
        return desc.type == inOut[0].desc.type;
    }

    int32_t getNbOutputs() const noexcept override
    {
        return kOutputs;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
        int32_t nbOutputs) noexcept override
    {
        if (nbInputs != kInputs || nbOutputs != kOutputs)
        {
            return 1;
        }
        char const* problem = validateShape(shapeOf(in));
        if (*problem != '\0')
        {
            logError(problem);
            return 1;
        }
        return 0;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
        void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override
    {
        PatchAlignShape const shape = shapeOf(inputDesc);
        auto* index = static_cast<int32_t*>(outputs[1]);
        cudaError_t status = cudaErrorInvalidValue;
        if (inputDesc[0].type == DataType::kFLOAT)
        {
            status = launchPatchAlign(static_cast<float const*>(inputs[0]), static_cast<float const*>(inputs[1]),
                static_cast<float const*>(inputs[2]), static_cast<float const*>(inputs[3]),
                static_cast<float*>(outputs[0]), index, shape, stream, mEps);
        }
        else if (inputDesc[0].type == DataType::kHALF)
        {
            status = launchPatchAlign(static_cast<__half const*>(inputs[0]), static_cast<__half const*>(inputs[1]),
                static_cast<__half const*>(inputs[2]), static_cast<__half const*>(inputs[3]),
                static_cast<__half*>(outputs[0]), index, shape, stream, mEps);
        }
        if (status != cudaSuccess)
        {
            logError(std::string("enqueue failed: ") + cudaGetErrorString(status));
            return 1;
        }
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mSerialField = PluginField(kEpsField, &mEps, PluginFieldType::kFLOAT32, 1);
        mSerialFields.nbFields = 1;
        mSerialFields.fields = &mSerialField;
        return &mSerialFields;
    }

private:
    static PatchAlignShape shapeOf(PluginTensorDesc const* in)
    {
        Dims const& t = in[3].dims;
        return PatchAlignShape{t.d[0], t.d[1], t.d[2], t.d[3]};
    }

    float mEps;
    PluginField mSerialField;
    PluginFieldCollection mSerialFields{};
};

class PatchAlignCreator final : public IPluginCreatorV3One
{
public:
    PatchAlignCreator()
    {
        mFieldNames.emplace_back(kEpsField, nullptr, PluginFieldType::kFLOAT32, 1);
        mFields.nbFields = static_cast<int32_t>(mFieldNames.size());
        mFields.fields = mFieldNames.data();
    }

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override
    {
        try
        {
            float eps = kCosineEps;
            for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
            {
                PluginField const& field = fc->fields[i];
                if (std::strcmp(field.name, kEpsField) == 0)
                {
                    if (field.type != PluginFieldType::kFLOAT32 || field.length != 1 || field.data == nullptr)
                    {
                        logError("attribute cosine_eps must be one float32");
                        return nullptr;
                    }
                    std::memcpy(&eps, field.data, sizeof(float));
                }
                else if (std::strcmp(field.name, "plugin_namespace") != 0 && std::strcmp(field.name, "plugin_version") != 0)
                {
                    // An attribute this plugin does not know: refuse rather than ignore it.
                    logError(std::string("unknown attribute ") + field.name);
                    return nullptr;
                }
            }
            if (!(eps >= 0.0f))
            {
                logError("attribute cosine_eps must be >= 0");
                return nullptr;
            }
            return new PatchAlignPlugin(eps);
        }
        catch (...)
        {
            return nullptr;
        }
    }

    PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mFields;
    }
    AsciiChar const* getPluginName() const noexcept override
    {
        return kName;
    }
    AsciiChar const* getPluginVersion() const noexcept override
    {
        return kVersion;
    }
    AsciiChar const* getPluginNamespace() const noexcept override
    {
        return kNamespace;
    }

private:
    std::vector<PluginField> mFieldNames;
    PluginFieldCollection mFields{};
};

} // namespace
} // namespace sccan

extern "C" SCCAN_PLUGIN_API IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static sccan::PatchAlignCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

extern "C" SCCAN_PLUGIN_API void setLoggerFinder(ILoggerFinder* finder)
{
    sccan::gLoggerFinder.store(finder);
}
