// The library entry point that TensorRT's IPluginRegistry::loadLibrary() looks up.
#pragma once

#include <NvInferRuntime.h>

#define SCCAN_PLUGIN_API __attribute__((visibility("default")))

extern "C" SCCAN_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
