"""The console script, the torch-free SDK, and the README/CI contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
"""


def test_sdk_imports_without_torch():
    code = BLOCK_TORCH + """
import importlib, pkgutil, sccan.sdk
for m in pkgutil.iter_modules(sccan.sdk.__path__):
    importlib.import_module("sccan.sdk." + m.name)
from sccan.sdk.cli import main
assert main(["info", "--json"]) == 0
assert "torch" not in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert "CPUExecutionProvider" in info["onnxruntime"]["providers"]
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:  # CI and these machines: TensorRT cannot be installed
        assert info["tensorrt_usable"] is False and "tensorrt is not importable" in info["tensorrt_note"]
    else:
        assert isinstance(info["tensorrt_usable"], bool) and info["tensorrt_note"]


def test_sdk_commands_do_not_import_torch_even_when_it_is_installed():
    """Entry points load lazily: `sccan segment` and `sccan info` start without torch (seconds saved)."""
    code = """
import sys
from sccan.sdk.cli import main
for argv in (["segment", "--help"], ["info", "--json"]):
    try:
        main(argv)
    except SystemExit:
        pass
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_sccan_info_console_script():
    out = subprocess.run(["sccan", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "onnxruntime providers:" in out.stdout and "tensorrt backend:" in out.stdout


def test_sccan_without_command_prints_help():
    out = subprocess.run(["sccan"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "info" in out.stdout


def test_readme_commands_and_ci_agree():
    lines = (ROOT / "README.md").read_text().splitlines()
    fence = lines.index("```bash")
    main_job, test_command = lines[fence + 1], lines[fence + 2]
    assert main_job.startswith("pip install") and " sccan " in main_job + " "
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, ".ci/run must run the README's test command exactly"
