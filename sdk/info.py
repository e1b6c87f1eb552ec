"""``sccan info``: what this machine offers SCCAN Edge (versions, providers, GPUs, TensorRT)."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

PACKAGES = ("sccan", "numpy", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "onnx",
            "torch", "tensorrt", "cuda-python", "pycuda")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cv2() -> dict[str, Any]:
    try:
        import cv2
    except ImportError as exc:
        return {"available": False, "why": str(exc)}
    build = cv2.getBuildInformation()
    gst = any("GStreamer" in ln and "YES" in ln for ln in build.splitlines())
    return {"available": True, "version": cv2.__version__, "path": cv2.__file__, "gstreamer": gst}


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"available": False, "why": str(exc)}
    return {"available": True, "version": ort.__version__, "providers": ort.get_available_providers()}


def cuda_runtime_module():
    """cuda-python's CUDA runtime bindings, or None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            return None
    return cudart


def cuda_devices() -> tuple[list[dict[str, Any]], str | None]:
    """(devices, reason none were found), through cuda-python's runtime, then pycuda."""
    cudart = cuda_runtime_module()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            return [], f"CUDA runtime: {getattr(err, 'name', err)} (no usable NVIDIA driver or device)"
        devices = []
        for i in range(count):
            err, prop = cudart.cudaGetDeviceProperties(i)
            name = prop.name.decode(errors="replace").rstrip("\x00") if int(err) == 0 else "?"
            devices.append({"index": i, "name": name, "compute_capability": f"{prop.major}.{prop.minor}"})
        return devices, None if devices else "CUDA runtime reports no device"
    try:
        import pycuda.driver as drv
    except ImportError:
        return [], "neither cuda-python nor pycuda is installed"
    try:
        drv.init()
        return [{"index": i, "name": drv.Device(i).name(),
                 "compute_capability": "%d.%d" % drv.Device(i).compute_capability()}
                for i in range(drv.Device.count())], None
    except Exception as exc:  # pycuda raises its own error types for a missing driver
        return [], f"pycuda: {exc}"


def tensorrt_status() -> tuple[bool, str]:
    """Whether the SDK can run TensorRT engines here, and why not."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        return False, f"tensorrt is not importable ({exc})"
    major = int(trt.__version__.split(".")[0])
    minor = int(trt.__version__.split(".")[1])
    if (major, minor) < (10, 3):
        return False, f"TensorRT {trt.__version__} is older than the supported 10.3"
    devices, why = cuda_devices()
    if not devices:
        return False, f"TensorRT {trt.__version__} found but no CUDA device: {why}"
    return True, f"TensorRT {trt.__version__} on {devices[0]['name']}"


def collect() -> dict[str, Any]:
    """Everything ``sccan info`` reports, as a JSON-able dict."""
    devices, why = cuda_devices()
    usable, reason = tensorrt_status()
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "packages": {p: _version(p) for p in PACKAGES},
        "opencv": _cv2(),
        "onnxruntime": _onnxruntime(),
        "cuda_devices": devices,
        "cuda_devices_note": why,
        "tensorrt_usable": usable,
        "tensorrt_note": reason,
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"SCCAN Edge {info['packages']['sccan'] or '(not installed)'} on Python {info['python']} "
          f"({info['machine']})")
    print("packages:")
    for name, ver in info["packages"].items():
        print(f"  {name:<24}{ver or '-'}")
    cv = info["opencv"]
    if cv["available"]:
        print(f"opencv: {cv['version']} from {cv['path']} (GStreamer: {'yes' if cv['gstreamer'] else 'no'})")
    else:
        print(f"opencv: unavailable ({cv['why']})")
    ort = info["onnxruntime"]
    print(f"onnxruntime providers: {', '.join(ort['providers']) if ort['available'] else ort['why']}")
    if info["cuda_devices"]:
        for d in info["cuda_devices"]:
            print(f"cuda device {d['index']}: {d['name']} (sm {d['compute_capability']})")
    else:
        print(f"cuda devices: none ({info['cuda_devices_note']})")
    print(f"tensorrt backend: {'usable' if info['tensorrt_usable'] else 'not usable'}: {info['tensorrt_note']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, ONNX Runtime providers, CUDA devices, TensorRT status")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)
