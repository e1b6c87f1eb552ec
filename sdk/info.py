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
    from .int8_kernels import describe, u8s8_saturates

    return {"available": True, "version": ort.__version__, "providers": ort.get_available_providers(),
            "u8s8_saturates": u8s8_saturates(), "int8_products": describe()}


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


def _cuda_python_devices(cudart) -> tuple[list[dict[str, Any]], str | None]:
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        hint = (" (cuda-python's runtime is newer than the driver: install cuda-python of the driver's CUDA "
                "major, e.g. 'cuda-python<13' on a CUDA 12 driver or JetPack 6)"
                if "InsufficientDriver" in name else " (no usable NVIDIA driver or device)")
        return [], f"cuda-python: {name}{hint}"
    devices = []
    for i in range(count):
        err, prop = cudart.cudaGetDeviceProperties(i)
        name = prop.name.decode(errors="replace").rstrip("\x00") if int(err) == 0 else "?"
        devices.append({"index": i, "name": name, "compute_capability": f"{prop.major}.{prop.minor}"})
    return devices, None if devices else "cuda-python: the CUDA runtime reports no device"


def pycuda_driver():
    """pycuda's driver module, or None when pycuda is not installed."""
    try:
        import pycuda.driver as drv
    except ImportError:
        return None
    return drv


def _pycuda_devices(drv) -> tuple[list[dict[str, Any]], str | None]:
    try:
        drv.init()
        devices = [{"index": i, "name": drv.Device(i).name(),
                    "compute_capability": "%d.%d" % drv.Device(i).compute_capability()}
                   for i in range(drv.Device.count())]
    except Exception as exc:  # noqa: BLE001 - pycuda raises its own error types for a missing driver
        return [], f"pycuda: {exc}"
    return devices, None if devices else "pycuda: no device"


def cuda_bindings() -> dict[str, dict[str, Any]]:
    """Each CUDA binding the SDK can use (cuda-python's runtime, pycuda): whether it works here
    and why not. ``{"cuda-python": {"works": bool, "why": str | None, "devices": [...]}, ...}``"""
    report = {}
    cudart = cuda_runtime_module()
    if cudart is None:
        report["cuda-python"] = {"works": False, "why": "not installed", "devices": []}
    else:
        devices, why = _cuda_python_devices(cudart)
        report["cuda-python"] = {"works": bool(devices), "why": why, "devices": devices}
    drv = pycuda_driver()
    if drv is None:
        report["pycuda"] = {"works": False, "why": "not installed", "devices": []}
    else:
        devices, why = _pycuda_devices(drv)
        report["pycuda"] = {"works": bool(devices), "why": why, "devices": devices}
    return report


def cuda_binding() -> str | None:
    """The binding the TensorRT backend uses: cuda-python when it works, else pycuda, else None.
    (cuda-python 13 on a CUDA 12 driver fails every call; a working pycuda is used then.)"""
    for name, state in cuda_bindings().items():
        if state["works"]:
            return name
    return None


def cuda_devices() -> tuple[list[dict[str, Any]], str | None]:
    """(devices, reason none were found), through the first binding that works."""
    reasons = []
    for name, state in cuda_bindings().items():
        if state["works"]:
            return state["devices"], None
        reasons.append(state["why"] if state["why"] and state["why"].startswith(name) else f"{name}: {state['why']}")
    return [], "; ".join(reasons)


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() or None
    except OSError:
        return None


def system_facts(device: int = 0) -> dict[str, Any]:
    """What an engine is specific to, read off this system: GPU name and compute capability, CUDA
    runtime and driver versions, and the L4T release on a Jetson (``/etc/nv_tegra_release``)."""
    devices, why = cuda_devices()
    gpu = next((d for d in devices if d["index"] == device), None)
    facts: dict[str, Any] = {"gpu": gpu["name"] if gpu else None,
                             "compute_capability": gpu["compute_capability"] if gpu else None,
                             "cuda_runtime": None, "cuda_driver": None,
                             "l4t": _read_first_line("/etc/nv_tegra_release"), "binding": cuda_binding()}
    cudart = cuda_runtime_module()
    if cudart is not None and facts["binding"] == "cuda-python":
        for key, call in (("cuda_runtime", "cudaRuntimeGetVersion"), ("cuda_driver", "cudaDriverGetVersion")):
            err, value = getattr(cudart, call)()
            if int(err) == 0:
                facts[key] = f"{value // 1000}.{value % 1000 // 10}"
    elif facts["binding"] == "pycuda":
        drv = pycuda_driver()
        value = drv.get_driver_version()
        facts["cuda_driver"] = f"{value // 1000}.{value % 1000 // 10}"
        facts["cuda_runtime"] = ".".join(str(v) for v in drv.get_version()[:2])
    return facts


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
        "cuda_bindings": {k: {"works": v["works"], "why": v["why"]} for k, v in cuda_bindings().items()},
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
    if ort["available"]:
        print(f"onnxruntime INT8: {ort['int8_products']}")
    for name, state in info["cuda_bindings"].items():
        print(f"cuda binding {name}: {'works' if state['works'] else 'not usable: ' + str(state['why'])}")
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
