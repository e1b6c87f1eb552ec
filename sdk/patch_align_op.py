"""Patch alignment as one custom ONNX node, and how ONNX Runtime runs it.

A bundle exported with ``--patch-align plugin`` has, in each SCCA block of the query decoder, two
such nodes in place of the standard-op subgraph (window means, cosine, first-index argmax, gather):
one gathers the aligned support windows' keys, the other their values (a window's keys,
heads x T x head_dim, hold T x D values and pass reshaped to the query windows' shape)::

    SccanPatchAlign (domain "sccan", attributes cosine_eps = 1e-7, plugin_namespace = "sccan",
                     plugin_version = "1")
      inputs   query_windows       C x W x T x D   query tokens after norm1, windowed
               support_prototypes  C x W x D       the block's support window prototypes
               support_has_fg      C x W           1 where the support window holds foreground
               support_tokens      C x W x T x D   the support windows to gather (keys or values)
      outputs  aligned             C x W x T x D   per query window, its aligned support window
               index               C x W (int32)   the aligned support window (a Cast makes it int64)

score[a, b] = (cos(prototype a, mean of query window b) + 1) / 2 * has_fg[a], cosine with 1e-7 in
the denominator; the index is the first (lowest) a of the highest score. TensorRT runs the node
with the ``SccanPatchAlign`` plugin (``plugin/``, built by CMake); ONNX Runtime runs it as a
Python op of ``onnxruntime-extensions`` implemented below in numpy (the domain is rewritten to the
extensions' own when the session is made).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from .errors import BundleError
from .int8_kernels import int8_session_entries

OP_TYPE = "SccanPatchAlign"
DOMAIN = "sccan"
PLUGIN_NAMESPACE = "sccan"
PLUGIN_VERSION = "1"
COSINE_EPS = 1e-7
_EXTENSIONS_DOMAIN = "ai.onnx.contrib"
_registered = threading.Lock()
_library: str | None = None


def patch_align(query_windows: np.ndarray, support_prototypes: np.ndarray, support_has_fg: np.ndarray,
                support_tokens: np.ndarray, cosine_eps: float = COSINE_EPS) -> tuple[np.ndarray, np.ndarray]:
    """The node's semantics in numpy (float32 arithmetic): (aligned C x W x T x D, index C x W int32)."""
    q = query_windows.astype(np.float32, copy=False).mean(axis=2)  # C x W x D
    p = support_prototypes.astype(np.float32, copy=False)
    dots = np.einsum("cad,cbd->cab", p, q)  # C x Wsupport x Wquery
    norms = np.linalg.norm(p, axis=-1)[:, :, None] * np.linalg.norm(q, axis=-1)[:, None, :]
    score = (dots / (norms + np.float32(cosine_eps)) + 1.0) / 2.0 * support_has_fg.astype(np.float32)[:, :, None]
    index = score.argmax(axis=1).astype(np.int32)  # argmax takes the first index on ties
    aligned = np.take_along_axis(support_tokens, index[:, :, None, None].astype(np.intp), axis=1)
    return np.ascontiguousarray(aligned), index


def uses_plugin(model: Any) -> bool:
    """True when an ONNX ModelProto holds a patch-alignment node."""
    return any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node)


def _extensions_library() -> str:
    """Register the numpy op with onnxruntime-extensions (once) and return its library path."""
    global _library
    with _registered:
        if _library is None:
            try:
                from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
            except ImportError as exc:
                raise BundleError("this bundle's graphs hold the patch-alignment plugin node (exported with "
                                  "--patch-align plugin); ONNX Runtime runs it through onnxruntime-extensions: "
                                  f"pip install 'sccan[plugin]' ({exc})") from None
            f32 = PyCustomOpDef.dt_float

            @onnx_op(op_type=OP_TYPE, inputs=[f32, f32, f32, f32], outputs=[f32, PyCustomOpDef.dt_int32],
                     attrs={"cosine_eps": PyCustomOpDef.dt_float, "plugin_namespace": PyCustomOpDef.dt_string,
                            "plugin_version": PyCustomOpDef.dt_string})
            def _sccan_patch_align(q, p, f, t, **attrs):
                return patch_align(q, p, f, t, float(attrs.get("cosine_eps", COSINE_EPS)))

            _library = get_library_path()
    return _library


def session_options(threads: int | None = None) -> Any:
    """The ``onnxruntime.SessionOptions`` every session of this project runs with: all graph
    optimisations, ``threads`` intra-op threads, exact INT8 products (:mod:`sccan.sdk.int8_kernels`),
    and threads that stop spinning when a run ends (see below)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # INT8 graphs: UINT8 x INT8 products where this CPU computes them exactly, else UINT8 x UINT8
    # (sccan.sdk.int8_kernels). No effect on float graphs.
    for key, value in int8_session_entries().items():
        options.add_session_config_entry(key, value)
    # A session's intra-op threads spin for a while after each run, waiting for more work. A frame
    # runs two sessions back to back (backbone, decoder), so on a host with as many cores as
    # threads the first one's spinning threads took cores from the second: the Lite-0 INT8 frame
    # took 105-116 ms with spinning after the run, 64-81 ms without it in four runs of five (2-core
    # host, 2 threads). The threads still spin between the nodes of a run.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def ort_session(source: str | os.PathLike | Any, threads: int | None = None, plugin: bool | None = None,
                **kwargs: Any) -> Any:
    """An ``onnxruntime.InferenceSession`` (all graph optimisations, ``threads`` intra-op threads)
    for a graph file or ModelProto, plugin nodes included. ``plugin``: whether the graph holds
    ``SccanPatchAlign`` nodes (a bundle's manifest says so); None looks, which needs the ``onnx``
    package, so the SDK's own path passes it and runs without ``onnx`` for standard bundles.
    ``kwargs`` go to the session (providers, provider_options)."""
    import onnxruntime as ort

    options = session_options(threads)
    is_proto = not isinstance(source, (str, os.PathLike))
    if plugin is False:
        return ort.InferenceSession(source.SerializeToString() if is_proto else str(source), options, **kwargs)
    try:
        import onnx
    except ImportError as exc:
        raise BundleError(f"this bundle's graphs hold the patch-alignment plugin node; ONNX Runtime needs the onnx "
                          f"and onnxruntime-extensions packages for it: pip install 'sccan[plugin]' ({exc})") from None
    model = source if is_proto else onnx.load(str(source))
    if not uses_plugin(model):
        return ort.InferenceSession(model.SerializeToString() if is_proto else str(source), options, **kwargs)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            node.domain = _EXTENSIONS_DOMAIN
    if _EXTENSIONS_DOMAIN not in {o.domain for o in model.opset_import}:
        model.opset_import.append(onnx.helper.make_opsetid(_EXTENSIONS_DOMAIN, 1))
    options.register_custom_ops_library(_extensions_library())
    return ort.InferenceSession(model.SerializeToString(), options, **kwargs)
