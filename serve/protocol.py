"""What travels between :class:`~sccan.serve.remote.RemoteSegmenter` and the Triton model.

One Python-backend model, ``sccan``, with a batch dimension (Triton's dynamic batcher groups
clients' frames of the same size; the model runs their backbone together). Every request carries
a ``COMMAND`` and the inputs that command reads; it asks for the outputs that command writes.

==============  ============================  ==============================================
command         inputs                        outputs
==============  ============================  ==============================================
segment         IMAGE (H x W x 3 uint8 BGR),   PROBABILITIES (C x H x W float32) or MASKS
                CLASS_NAMES (optional),        (C x H x W bool), LABEL_MAP (H x W int32),
                THRESHOLD, OUTPUT_KIND         CLASSES, INFO (JSON: timings)
add_class       CLASS_NAMES (one), SUPPORT_    CLASSES (all registered)
                IMAGES (PNG) and SUPPORT_
                MASKS (PNG) or SUPPORT_BOXES
                (K x 4 float32: x0, y0, x1,
                y1 in pixels; the server
                makes the masks from them)
remove_class    CLASS_NAMES (one)             CLASSES
classes         -                             CLASSES
load_support    SUPPORT_FILE (an .npz)        CLASSES (the file's)
save_support    CLASS_NAMES (optional)        SUPPORT_FILE
==============  ============================  ==============================================

A server started with a token (``sccan serve --token-file``) refuses the commands that change
its classes (``PROTECTED``) unless the request's ``TOKEN`` input holds it: ``UnauthorizedError``.
``segment`` may carry ``PRESENCE_THRESHOLD``; its ``INFO`` holds the classes' presence scores.

Errors come back as Triton errors whose message is ``SCCAN <ErrorClass>: <message>``, so the
client raises the same :mod:`sccan.sdk.errors` class the in-process Segmenter would.
"""

from __future__ import annotations

import re

from sccan.sdk import errors

MODEL_NAME = "sccan"
COMMANDS = ("segment", "add_class", "remove_class", "classes", "load_support", "save_support")

#: name -> (Triton type, dims without the batch dimension)
INPUTS = {
    "COMMAND": ("TYPE_STRING", [1]),
    "IMAGE": ("TYPE_UINT8", [-1, -1, 3]),
    "CLASS_NAMES": ("TYPE_STRING", [-1]),
    "THRESHOLD": ("TYPE_FP32", [1]),
    "OUTPUT_KIND": ("TYPE_STRING", [1]),
    "SUPPORT_IMAGES": ("TYPE_STRING", [-1]),
    "SUPPORT_MASKS": ("TYPE_STRING", [-1]),
    "SUPPORT_BOXES": ("TYPE_FP32", [-1, 4]),
    "SUPPORT_FILE": ("TYPE_STRING", [1]),
    "TOKEN": ("TYPE_STRING", [1]),
    "PRESENCE_THRESHOLD": ("TYPE_FP32", [1]),
}
#: the commands that change the served classes: a server with a token refuses them without it
PROTECTED = ("add_class", "remove_class", "load_support")
#: the environment variable through which ``sccan serve`` hands the token's sha256 to the model
TOKEN_ENV = "SCCAN_SERVE_TOKEN_SHA256"
OUTPUTS = {
    "PROBABILITIES": ("TYPE_FP32", [-1, -1, -1]),
    "MASKS": ("TYPE_BOOL", [-1, -1, -1]),
    "LABEL_MAP": ("TYPE_INT32", [-1, -1]),
    "CLASSES": ("TYPE_STRING", [-1]),
    "SUPPORT_FILE_OUT": ("TYPE_STRING", [1]),
    "INFO": ("TYPE_STRING", [1]),
}
#: what each command answers with
COMMAND_OUTPUTS = {
    "segment": ("LABEL_MAP", "CLASSES", "INFO"),  # + PROBABILITIES or MASKS
    "add_class": ("CLASSES",), "remove_class": ("CLASSES",), "classes": ("CLASSES",),
    "load_support": ("CLASSES",), "save_support": ("SUPPORT_FILE_OUT",),
}
OUTPUT_KINDS = ("probabilities", "masks")

_ERROR = re.compile(r"SCCAN (\w+): (.*)", re.DOTALL)


def error_message(exc: BaseException) -> str:
    """The Triton error text for an exception raised while serving a request."""
    kind = type(exc).__name__ if isinstance(exc, errors.SCCANError) else "SCCANError"
    # KeyError subclasses (UnknownClassError) quote their str(); the message is the first argument
    message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    text = message if isinstance(exc, errors.SCCANError) else f"{type(exc).__name__}: {message}"
    return f"SCCAN {kind}: {text}"


def raise_remote(message: str) -> None:
    """Raise the :mod:`sccan.sdk.errors` class a Triton error message names (SCCANError if none)."""
    match = _ERROR.search(message)
    if match is None:
        raise errors.SCCANError(f"the server failed the request: {message}")
    cls = getattr(errors, match.group(1), errors.SCCANError)
    if not (isinstance(cls, type) and issubclass(cls, errors.SCCANError)):
        cls = errors.SCCANError
    raise cls(match.group(2))
