"""SCCAN Edge runtime SDK (numpy, OpenCV, ONNX Runtime; TensorRT where available). Never imports torch."""

from .errors import (BadArgumentError, BadImageError, BadMaskError, BundleError, BundleMismatchError, CheckpointError,
                     CorruptCacheError, EmptyMaskError, MissingFileError, SCCANError, UnauthorizedError,
                     UnknownClassError)
from .schema import SupportFeatures, SupportLayout, TensorSpec
from .segmenter import Result, Segmenter, UngatedWarning

__all__ = ["Segmenter", "Result", "SCCANError", "BadImageError", "BadMaskError", "EmptyMaskError", "UnknownClassError",
           "BundleError", "BundleMismatchError", "CorruptCacheError", "CheckpointError", "BadArgumentError",
           "MissingFileError", "UnauthorizedError", "SupportFeatures",
           "SupportLayout", "TensorSpec", "UngatedWarning"]
