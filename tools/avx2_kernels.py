"""Run a command with the kernels an AVX2-only x86-64 host would run, on an AVX-512 host.

    python tools/avx2_kernels.py [--check] [--workdir DIR] -- COMMAND [ARGS...]
    python tools/avx2_kernels.py --emulate -- COMMAND [ARGS...]

Examples::

    python tools/avx2_kernels.py --check
    python tools/avx2_kernels.py -- sccan bench --bundle B --precision int8 --shots 1,5
    python tools/avx2_kernels.py -- python -m pytest -q
    python tools/avx2_kernels.py --emulate -- sccan demo

Each library of the pipeline picks its kernels from the CPU's flags, and each but ONNX Runtime has
a switch to cap them, which the command gets in its environment: PyTorch ``ATEN_CPU_CAPABILITY``,
oneDNN ``ONEDNN_MAX_CPU_ISA``, MKL ``MKL_ENABLE_INSTRUCTIONS``, OpenBLAS ``OPENBLAS_CORETYPE``,
numpy ``NPY_DISABLE_CPU_FEATURES``, OpenCV ``OPENCV_CPU_DISABLE``. ONNX Runtime (MLAS) has none,
so this script copies its Python package into ``--workdir``, rewrites every ``cpuid`` instruction
of the copy's extension module to ``int3; nop``, and preloads ``tools/cpuid_mask.c`` (compiled
with the system's C compiler), whose SIGTRAP handler answers those calls with the AVX-512, VNNI and
BF16 flags cleared. The copy comes first on ``PYTHONPATH``; the installed package is not touched.
Nothing here needs root, and the command's own ``cpuid`` calls elsewhere are not changed.

What this measures is the AVX2 kernels on this machine's cores, caches and clock: not a real AVX2
host, whose cores (Haswell to Zen 3) differ in more than their vector width. ``--check`` prints
what each library reports in the capped environment and times one INT8 and one FP32 product in
ONNX Runtime with and without the mask, so the switch is seen to take.

``--emulate`` runs the command instead on an emulated Haswell (``qemu-x86_64 -cpu Haswell``, from
Debian's ``qemu-user``), with nothing masked or switched: every library reads a CPU that has AVX2
and FMA and no AVX-512, and QEMU's translator has no AVX-512 instructions at all, so any AVX-512
code left anywhere would stop the command with an illegal instruction. It is about 100 to 300
times slower than the host, so it is for results, never for timing; it checks the masked mode
(both must compute the same bytes: ``tests/test_int8_kernels.py``, ``tests/test_quantize.py``). Programs that the command starts
with ``exec`` run natively (QEMU follows threads and forks, not ``exec``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("cpuid_mask.c")
CPUID = b"\x0f\xa2"
PATCH = b"\xcc\x90"  # int3; nop: the shim resumes after the nop

# QEMU's Haswell, without the system features its translator lacks (it warns of each otherwise).
QEMU_CPU = "Haswell-v4,-pcid,-x2apic,-tsc-deadline,-invpcid,-spec-ctrl"

# Feature switches of the other libraries (documented by each), capped at AVX2 + FMA.
CAPPED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "OPENCV_CPU_DISABLE": "AVX512F,AVX512-SKX",  # OpenCV's own names (it warns on unknown ones)
}


def numpy_disabled_features() -> str:
    """numpy's dispatched targets above AVX2 in this build (disabling one it lacks is an error)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return " ".join(t for t in __cpu_dispatch__ if t.startswith("AVX512") or t == "X86_V4")


def load_segments(elf: bytes) -> list[tuple[int, int, int]]:
    """(vaddr, offset, filesz) of each PT_LOAD segment of a little-endian ELF64 file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise SystemExit("not a little-endian ELF64 file")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    segments = []
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type == 1:
            segments.append((vaddr, offset, filesz))
    return segments


def cpuid_sites(path: Path) -> list[int]:
    """Virtual addresses of the ``cpuid`` instructions objdump disassembles in ``path``."""
    if shutil.which("objdump") is None:
        raise SystemExit("objdump (binutils) is needed to find the cpuid instructions")
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], check=True,
                             capture_output=True, text=True).stdout
    return [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s+cpuid\s*$", listing, re.M)]


def patch_cpuid(path: Path) -> int:
    """Rewrite every ``cpuid`` of the ELF file at ``path`` in place; returns how many."""
    elf = bytearray(path.read_bytes())
    segments = load_segments(bytes(elf))
    sites = cpuid_sites(path)
    for vaddr in sites:
        for seg_vaddr, offset, filesz in segments:
            if seg_vaddr <= vaddr < seg_vaddr + filesz:
                at = offset + vaddr - seg_vaddr
                break
        else:
            raise SystemExit(f"cpuid at {vaddr:#x} lies in no loaded segment of {path}")
        if elf[at:at + 2] != CPUID:
            raise SystemExit(f"{path}: expected cpuid at file offset {at:#x}, found {elf[at:at + 2].hex()}")
        elf[at:at + 2] = PATCH
    tmp = path.with_suffix(".patching")
    tmp.write_bytes(elf)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return len(sites)


def prepare(workdir: Path) -> tuple[Path, Path]:
    """A masked copy of the installed onnxruntime package and the compiled shim, made once per
    onnxruntime build and shim source: (directory for PYTHONPATH, shim .so)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        raise SystemExit("onnxruntime is not installed in this Python")
    package = Path(spec.origin).parent
    extensions = sorted((package / "capi").glob("onnxruntime_pybind11_state*.so"))
    if len(extensions) != 1:
        raise SystemExit(f"expected one onnxruntime extension module in {package / 'capi'}, found {extensions}")
    digest = hashlib.sha256(extensions[0].read_bytes() + SHIM_SOURCE.read_bytes()).hexdigest()[:16]
    root = workdir / digest
    shim = root / "cpuid_mask.so"
    if shim.exists():
        return root, shim
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=workdir))
    shutil.copytree(package, staging / "onnxruntime", ignore=shutil.ignore_patterns("__pycache__"))
    count = patch_cpuid(staging / "onnxruntime" / "capi" / extensions[0].name)
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("a C compiler (cc) is needed to build the cpuid shim")
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", str(SHIM_SOURCE), "-o", str(staging / "cpuid_mask.so")],
                   check=True)
    print(f"avx2_kernels: {count} cpuid instructions masked in a copy of {package}", file=sys.stderr)
    try:
        os.replace(staging, root)
    except OSError:  # another run made it first
        shutil.rmtree(staging, ignore_errors=True)
    return root, shim


def capped_env(root: Path, shim: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CAPPED_ENV)
    env["NPY_DISABLE_CPU_FEATURES"] = numpy_disabled_features()
    env["LD_PRELOAD"] = " ".join(filter(None, [str(shim), env.get("LD_PRELOAD")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


CHECK = r"""
import os, sys, time
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

def timed(model, feeds):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s.run(None, feeds)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter(); s.run(None, feeds); best = min(best, time.perf_counter() - t)
    return best

m, k, n = 512, 1024, 512
rng = np.random.default_rng(0)
int8 = helper.make_model(helper.make_graph(
    [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
     helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])],
    [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])]), opset_imports=[helper.make_opsetid("", 17)])
fp32 = helper.make_model(helper.make_graph(
    [helper.make_node("MatMul", ["a", "b"], ["y"])], "fp32",
    [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
     helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])]), opset_imports=[helper.make_opsetid("", 17)])
i8 = timed(int8, {"a": rng.integers(0, 255, (m, k), dtype=np.uint8), "b": rng.integers(-127, 127, (k, n), dtype=np.int8)})
f32 = timed(fp32, {"a": rng.standard_normal((m, k), dtype=np.float32), "b": rng.standard_normal((k, n), dtype=np.float32)})
gmac = m * k * n / 1e9
print(f"onnxruntime {ort.__version__} from {os.path.dirname(ort.__file__)}")
print(f"  MatMulInteger {m}x{k}x{n}, 1 thread: {i8 * 1e3:.2f} ms ({gmac / i8:.0f} GMAC/s)")
print(f"  MatMul FP32   {m}x{k}x{n}, 1 thread: {f32 * 1e3:.2f} ms ({gmac / f32:.0f} GMAC/s)")
from numpy._core._multiarray_umath import __cpu_features__
from numpy._core._multiarray_umath import __cpu_dispatch__
print(f"numpy dispatch targets in use: {[t for t in __cpu_dispatch__ if __cpu_features__.get(t)]}")
import cv2
# OpenCV's CpuFeatures ids (core/cvdef.h): 13 AVX_512F, 256 AVX512_SKX.
print(f"OpenCV AVX-512 in use: {cv2.checkHardwareSupport(13) or cv2.checkHardwareSupport(256)}")
try:
    import torch
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
except ImportError:
    print("torch: not installed")
"""


def emulated(command: list[str]) -> list[str]:
    """``command`` under ``qemu-x86_64 -cpu Haswell``. QEMU runs ELF executables only, so a script
    (``sccan``, ``pytest``) is run by the interpreter its ``#!`` line names, as the kernel would."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("--emulate needs qemu-x86_64 (Debian: apt-get install qemu-user)")
    program = shutil.which(command[0]) or command[0]
    if not Path(program).is_file():
        raise SystemExit(f"{command[0]}: no such program")
    with open(program, "rb") as f:
        head = f.readline(256)
    if head.startswith(b"#!"):
        interpreter = head[2:].decode().split()
        if Path(interpreter[0]).name == "env":
            interpreter = [shutil.which(interpreter[1]) or interpreter[1], *interpreter[2:]]
        return [qemu, "-cpu", QEMU_CPU, *interpreter, program, *command[1:]]
    return [qemu, "-cpu", QEMU_CPU, program, *command[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="show each library's kernels, and ONNX Runtime's product speed masked and not")
    parser.add_argument("--emulate", action="store_true",
                        help="run the command on an emulated Haswell (qemu-x86_64) instead: for results, not timing")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sccan-avx2-kernels",
                        help="where the masked onnxruntime copy is kept (default: %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and not args.check:
        parser.error("give a command after --, or --check")
    if os.uname().machine != "x86_64":
        raise SystemExit("AVX2 capping applies to x86-64 hosts only")
    if args.emulate:
        if args.check:
            parser.error("--check times the masked kernels; it does not combine with --emulate")
        return subprocess.run(emulated(command)).returncode
    args.workdir.mkdir(parents=True, exist_ok=True)
    root, shim = prepare(args.workdir)
    env = capped_env(root, shim)
    if args.check:
        print("== unmasked (this host's own kernels)", flush=True)
        subprocess.run([sys.executable, "-c", CHECK], check=True)
        print("== AVX2 kernels", flush=True)
        subprocess.run([sys.executable, "-c", CHECK], check=True, env={**env, "SCCAN_CPUID_MASK_LOG": "1"})
        if not command:
            return 0
    return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
