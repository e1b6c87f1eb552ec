#!/usr/bin/env bash
# What a GPU session runs (one short script): build the native code for the local GPU, run ctest
# (the kernel against the CPU reference), compute-sanitizer (memcheck, racecheck) on the kernel
# test, and the Python GPU tests. Usage: bash tests/gpu/run_device_checks.sh [TensorRT_ROOT] [OUT]
# With TensorRT_RUNTIME_LIBRARY set (libnvinfer.so.N, or libnvinfer_lean.so.N from the
# tensorrt-lean-cuXX-libs wheel), ctest also runs the plugin through that TensorRT's registry and
# its enqueue on this GPU (tests/cpp/test_plugin_trt_runtime.cu).
set -uo pipefail
cd "$(dirname "$0")/../.."
trt_root="${1:-}"
out="${2:-${OUT:-/tmp/sccan-gpu}}"
mkdir -p "$out"
if [ -z "${TensorRT_RUNTIME_LIBRARY:-}" ]; then
  # Else the runtime of an installed TensorRT wheel, full or lean (the dev extra installs the lean one).
  TensorRT_RUNTIME_LIBRARY=$(python3 - 2> /dev/null << 'PY'
import glob, importlib, os
for name, lib in (("tensorrt_libs", "libnvinfer.so.*"), ("tensorrt_lean_libs", "libnvinfer_lean.so.*")):
    try:
        found = sorted(glob.glob(os.path.join(os.path.dirname(importlib.import_module(name).__file__), lib)))
    except ImportError:
        continue
    if found:
        print(found[0])
        break
PY
  )
  export TensorRT_RUNTIME_LIBRARY
fi
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv | tee "$out/gpu.txt"
echo "TensorRT runtime library for the plugin's registry test: ${TensorRT_RUNTIME_LIBRARY:-none}"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
cmake -S . -B build -DSCCAN_REQUIRE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" ${trt_root:+-DTensorRT_ROOT=$trt_root} \
  ${TensorRT_RUNTIME_LIBRARY:+-DTensorRT_RUNTIME_LIBRARY=$TensorRT_RUNTIME_LIBRARY} \
  > "$out/cmake.log" 2>&1 && cmake --build build -j "$(nproc)" >> "$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
status=0
ctest --test-dir build --output-on-failure -V > "$out/ctest.log" 2>&1 || status=1
grep -E "device:|C=|time|Passed|Failed|Skipped|tests passed|TensorRT runtime|negative|enqueue|CHECK" "$out/ctest.log"
for tool in memcheck racecheck; do
  if command -v compute-sanitizer > /dev/null; then
    compute-sanitizer --tool "$tool" --error-exitcode 3 build/test_patch_align_gpu --no-timing > "$out/$tool.log" 2>&1 \
      && echo "compute-sanitizer $tool: clean ($(tail -1 "$out/$tool.log"))" || { echo "compute-sanitizer $tool FAILED"; tail -20 "$out/$tool.log"; status=1; }
  fi
done
if [ -n "${TensorRT_RUNTIME_LIBRARY:-}" ] && command -v compute-sanitizer > /dev/null; then
  # The plugin's enqueue as TensorRT's registry hands it out, under memcheck.
  compute-sanitizer --tool memcheck --error-exitcode 3 build/test_plugin_trt_runtime "$TensorRT_RUNTIME_LIBRARY" \
    "$PWD/build/libsccan_trt_plugin.so" "$PWD/build/libsccan_patch_align_cpu.so" > "$out/memcheck_plugin.log" 2>&1 \
    && echo "compute-sanitizer memcheck, plugin through TensorRT: clean ($(tail -1 "$out/memcheck_plugin.log"))" \
    || { echo "compute-sanitizer memcheck, plugin through TensorRT, FAILED"; tail -20 "$out/memcheck_plugin.log"; status=1; }
fi
if python3 -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/pip.log" 2>&1 || tail -5 "$out/pip.log"
  python3 -m pytest -q -s -p no:cacheprovider tests/gpu 2>&1 | tee "$out/pytest_gpu.log" | tail -25
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status
