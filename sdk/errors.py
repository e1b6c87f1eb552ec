"""The exceptions of SCCAN Edge.

Every error the project raises on purpose is a :class:`SCCANError`, so an application can catch
one type and still tell the cases apart by subclass. Messages say what was expected and what was
given.
"""

from __future__ import annotations


class SCCANError(Exception):
    """Base class of every error raised on purpose by SCCAN Edge."""


class BadImageError(SCCANError, ValueError):
    """An image is empty, of the wrong dtype, channel count or shape, or holds NaN."""


class BadMaskError(SCCANError, ValueError):
    """A mask does not fit its image (size, dtype, dimensionality)."""


class EmptyMaskError(BadMaskError):
    """A support mask has no foreground (or none left after resizing)."""


class UnknownClassError(SCCANError, KeyError):
    """A class name that was never registered."""


class BundleMismatchError(SCCANError):
    """A bundle, engine or cache does not belong to this model, precision or system."""


class BundleError(SCCANError):
    """A model bundle is missing a file, has an altered file (hash), or an invalid manifest."""


class CorruptCacheError(SCCANError):
    """A file (support cache, bundle member) fails its checksum or cannot be parsed."""


class BadArgumentError(SCCANError, ValueError):
    """An argument outside what the API accepts (class name, backend, threshold, colour order...)."""


class MissingFileError(SCCANError, FileNotFoundError):
    """A file the user named does not exist (also a ``FileNotFoundError``)."""


class UnauthorizedError(SCCANError, PermissionError):
    """A request that changes a served model's classes without the server's token (``sccan serve --token-file``)."""


class CheckpointError(SCCANError):
    """A checkpoint file cannot be read or does not fit the model."""
