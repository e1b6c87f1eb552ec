// The library's entry points. IPluginRegistry::loadLibrary() (and trtexec --dynamicPlugins) needs
// both: without setLoggerFinder a real TensorRT refuses the library (loadLibrary returns null).
#pragma once

#include <NvInferRuntime.h>

#define SCCAN_PLUGIN_API __attribute__((visibility("default")))

extern "C" SCCAN_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" SCCAN_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
