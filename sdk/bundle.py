"""The model bundle: a directory of ONNX graphs (and engines) described by ``manifest.json``.

Written by ``sccan export``, read by the SDK. The manifest is the single source of metadata:
model config, input size, normalisation, resize rule, I/O specs per graph and precision, the
sha256 of every file, the precision plan, the patch-alignment mode, parity figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError
from .schema import SupportLayout

MANIFEST = "manifest.json"
FORMAT = "sccan-bundle"
FORMAT_VERSION = 1
GRAPHS = ("backbone", "support_encoder", "query_decoder")
PRECISIONS = ("fp32", "fp16")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def graph_file(graph: str, precision: str) -> str:
    """File name of a graph: ``backbone.onnx``, ``backbone.fp16.onnx`` ..."""
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


@dataclass
class Bundle:
    """A loaded (and by default verified) bundle."""

    path: Path
    manifest: dict[str, Any]

    @property
    def input_size(self) -> int:
        return int(self.manifest["input_size"])

    @property
    def max_shots(self) -> int:
        return int(self.manifest["max_shots"])

    @property
    def layout(self) -> SupportLayout:
        return SupportLayout(**self.manifest["support_layout"])

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        try:
            return self.path / self.manifest["graphs"][graph][precision]["file"]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no {precision} {graph} graph") from None

    def verify(self) -> None:
        """Check every file listed in the manifest exists and has its recorded sha256."""
        for name, expected in self.manifest["files"].items():
            f = self.path / name
            if not f.is_file():
                raise BundleError(f"bundle {self.path} is missing {name}")
            got = sha256_file(f)
            if got != expected:
                raise BundleError(f"bundle file {f} was altered or is corrupt: sha256 {got[:12]}... "
                                  f"differs from the manifest's {expected[:12]}...")


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read ``manifest.json`` of a bundle directory and (by default) verify every file's hash."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a model bundle: no {MANIFEST} (make one with `sccan export`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path} is not an {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path} has format version {manifest.get('format_version')}; "
                          f"this SDK reads version {FORMAT_VERSION}")
    bundle = Bundle(path, manifest)
    if verify:
        bundle.verify()
    return bundle
