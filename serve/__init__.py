"""SCCAN Edge on NVIDIA Triton Inference Server: a model repository that serves the Segmenter
(``sccan triton``), the server started on it (``sccan serve``), and :class:`RemoteSegmenter`, the
Segmenter's interface over Triton's HTTP or gRPC client.

Torch-free, like :mod:`sccan.sdk`. The client needs ``tritonclient[http,grpc]``; the server needs a
``tritonserver`` binary with its Python backend (NVIDIA's Triton containers, or the one inside the
``nvidia-pytriton`` wheel).
"""

from .protocol import MODEL_NAME
from .repository import make_repository

__all__ = ["MODEL_NAME", "make_repository", "RemoteSegmenter", "TritonServer"]


def __getattr__(name: str):  # the client and the server launcher import only when used
    if name == "RemoteSegmenter":
        from .remote import RemoteSegmenter

        return RemoteSegmenter
    if name == "TritonServer":
        from .server import TritonServer

        return TritonServer
    raise AttributeError(name)
