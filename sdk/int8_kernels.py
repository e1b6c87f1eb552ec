"""Whether ONNX Runtime multiplies UINT8 by INT8 exactly on this CPU, and the session entries that
keep the INT8 graphs exact where it does not.

ONNX Runtime's x86 kernels for a UINT8 x INT8 product (MLAS, U8S8) add each pair of neighbouring
byte products in saturating 16-bit arithmetic (``vpmaddubsw``) unless the CPU has VNNI, whose
``vpdpbusd`` adds them in 32 bits: 255 x 127 x 2 = 64770 is clamped to 32767 on AVX2 hosts
(Haswell to Zen 3) and on AVX-512 ones without VNNI (Skylake-SP). The bundles' INT8 graphs use the
whole INT8 range (symmetric per-channel weights, activations stored as UINT8 around 128), so there
the clamp is live: with the real-photo model's INT8 graphs on AVX2 kernels the masks agreed with
FP32 on 93.5% of the gate's held-out pixels, mIoU 0.2467 -> 0.1790, against 99.29% and 0.2477
with VNNI (``tools/avx2_kernels.py``, BENCHMARKS.md).

UINT8 x UINT8 products (U8U8) widen to 16 bits before multiplying and are exact on every x86 CPU,
at about half the speed of U8S8 with VNNI. So where the probe below finds U8S8 saturating, the
project's sessions ask ONNX Runtime for U8U8 everywhere: ``session.x64quantprecision`` turns INT8
weights into UINT8 (Avx2WeightS8ToU8Transformer), and leaving out ``session.qdqisint8allowed``
lets it turn the INT8 activations the encoding keeps signed into UINT8 (QDQS8ToU8Transformer).
Both move a zero point by 128 and keep every value. Where U8S8 is exact (VNNI, and ARM, whose
kernels widen), nothing changes. TensorRT engines are not concerned: they never run these kernels.
"""

from __future__ import annotations

import base64
import functools

import numpy as np

# A MatMulInteger of a UINT8 4 x 64 input by an INT8 64 x 16 input, no zero points (opset 13,
# IR 7), serialized: tests/test_int8_kernels.py rebuilds it with onnx.helper and compares bytes.
PROBE_MODEL = base64.b64decode(
    "CAcSBXNjY2FuOmUKGAoBYQoBYhIBeSINTWF0TXVsSW50ZWdlchIKdThzOF9wcm9iZVoTCgFhEg4KDAgCEggKAggECgIIQFoTCgFiEg4KDAgD"
    "EggKAghACgIIEGITCgF5Eg4KDAgGEggKAggECgIIEEIECgAQDQ=="
)


def probe_u8s8() -> tuple[int, int]:
    """Run the probe product (every A byte 255, every B byte 127) and return (what ONNX Runtime
    gave for one output, the exact value 255 x 127 x 64 = 2072640). Saturating pairs give 32 x
    32767 = 1048544."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(PROBE_MODEL, options, providers=["CPUExecutionProvider"])
    a = np.full((4, 64), 255, np.uint8)
    b = np.full((64, 16), 127, np.int8)
    got = session.run(None, {"a": a, "b": b})[0]
    exact = 255 * 127 * 64
    worst = got.flat[int(np.abs(got.astype(np.int64) - exact).argmax())]
    return int(worst), exact


@functools.cache
def u8s8_saturates() -> bool:
    """True where ONNX Runtime's UINT8 x INT8 product is not exact on this CPU (x86 without VNNI).
    Measured once per process with :data:`PROBE_MODEL`, not read from the CPU's flags: the probe
    runs the kernel the sessions will run."""
    got, exact = probe_u8s8()
    return got != exact


def int8_session_entries() -> dict[str, str]:
    """The session configuration entries for exact INT8 products on this CPU (see the module)."""
    if u8s8_saturates():
        return {"session.x64quantprecision": "1"}
    # The encoding keeps the second operands of products of two activations INT8, so that the
    # product runs as UINT8 x INT8 (VNNI's pair) rather than UINT8 x UINT8 at half the speed;
    # without this entry ONNX Runtime turns INT8 activations into UINT8 on x86.
    return {"session.qdqisint8allowed": "1"}


def describe() -> str:
    """One line for ``sccan info``."""
    if u8s8_saturates():
        return ("UINT8 x INT8 products saturate on this CPU (no VNNI): INT8 sessions run UINT8 x UINT8, exact and "
                "slower")
    return "UINT8 x INT8 products are exact on this CPU: INT8 sessions run them"
