"""Live segmentation from a Jetson CSI camera with FP16 TensorRT engines.

    python3 samples/jetson_camera.py BUNDLE SUPPORT.npz [--sensor 0] [--display]

Needs JetPack's system OpenCV (with GStreamer; do not pip-install opencv-python on the Jetson)
and a bundle whose FP16 engines were built on this Jetson (``sccan build``). Falls back to ONNX
Runtime with a printed reason when the engines are not usable here.
"""

from __future__ import annotations

import argparse
import time

import cv2

from sccan.sdk import Segmenter
from sccan.sdk.bundle import load_bundle
from sccan.sdk.info import cuda_runtime_module
from sccan.sdk.sources import open_source
from sccan.sdk.tensorrt_backend import tensorrt_unavailable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("support", help="support file from Segmenter.save_support")
    parser.add_argument("--sensor", type=int, default=0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--display", action="store_true", help="show the overlay in a window")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    why = tensorrt_unavailable(bundle, device=0)
    if why is None:
        # CUDA graphs replay the per-frame work with one launch (cuda-python needed; pycuda works without)
        seg = Segmenter(bundle, backend="tensorrt", cuda_graph=cuda_runtime_module() is not None)
    else:
        print(f"TensorRT engines not usable here ({why}); falling back to ONNX Runtime")
        seg = Segmenter(bundle, backend="onnxruntime")
    print(f"backend: {seg.backend.name} ({seg.backend.precision})")
    seg.load_support(args.support)
    camera = open_source(f"csi://{args.sensor}", args.width, args.height)
    frames, start = 0, time.perf_counter()
    for _, frame in camera.frames:
        result = seg.segment(frame)
        frames += 1
        if args.display:
            cv2.imshow("SCCAN", result.overlay(frame))
            if cv2.waitKey(1) & 0xFF == 27:
                break
        if frames % 30 == 0:
            print(f"{frames / (time.perf_counter() - start):.1f} FPS, decode {1000 * result.timings['decode']:.1f} ms")


if __name__ == "__main__":
    main()
