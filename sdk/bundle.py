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
#: 2: the manifest carries ``manifest_sha256``, the hash of its own content. 3: ``prior_keys`` is
#: C x Dh x S x N: all shots' keys one matrix, support positions last (one product per frame, and
#: the prior's softmax over contiguous memory). 4: the SCCA blocks' support tensors are the keys
#: and values of the support tokens (``block{i}_keys``, ``block{i}_values``, per head), computed
#: at registration, not the tokens; the layout records ``num_heads``.
FORMAT_VERSION = 4
GRAPHS = ("backbone", "support_encoder", "query_decoder")
PRECISIONS = ("fp32", "fp16", "int8")


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
        readable_by_others(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable_by_others(path: str | os.PathLike, directory: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would (0666/0777 less the umask).

    ``tempfile`` creates 0600 files and 0700 directories; without this a bundle written through
    them could not be read by a service running as another user.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's content (canonical JSON, without ``manifest_sha256`` itself)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Stamp ``manifest`` with its own hash and write it atomically as ``directory/manifest.json``.

    Every writer of a manifest (``sccan export``, engine builds) goes through here, so that any
    later hand edit is caught by :func:`load_bundle`.
    """
    manifest["manifest_sha256"] = manifest_digest(manifest)
    write_json_atomic(Path(directory) / MANIFEST, manifest)


def _require(manifest: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BundleError(f"{where}: '{key}' must be {expected}, got {value!r}")
    return value


def validate_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Check the manifest's structure and the values the SDK relies on, or :class:`BundleError`."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where} must hold a JSON object")
    size = _require(manifest, "input_size", int, where)
    if size < 8 or size % 8 != 1:
        raise BundleError(f"{where}: input_size must be 8k + 1 (such as 473), got {size}")
    for key in ("max_shots", "max_classes"):
        if _require(manifest, key, int, where) < 1:
            raise BundleError(f"{where}: '{key}' must be at least 1")
    norm = _require(manifest, "normalization", dict, where)
    for key in ("mean", "std"):
        values = norm.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)):
            raise BundleError(f"{where}: normalization.{key} must be 3 numbers, got {values!r}")
    if any(v <= 0 for v in norm["std"]):
        raise BundleError(f"{where}: normalization.std must be positive, got {norm['std']}")
    _require(manifest, "support_layout", dict, where)
    _require(manifest, "model", dict, where)
    files = _require(manifest, "files", dict, where)
    graphs = _require(manifest, "graphs", dict, where)
    for graph in GRAPHS:
        variants = graphs.get(graph)
        if not isinstance(variants, dict) or "fp32" not in variants:
            raise BundleError(f"{where}: no fp32 '{graph}' graph is listed")
        for precision, spec in variants.items():
            name = spec.get("file") if isinstance(spec, dict) else None
            if name not in files:
                raise BundleError(f"{where}: the {precision} {graph} graph {name!r} has no hash in 'files'")
            if spec.get("onnxruntime_file", name) not in files:
                raise BundleError(f"{where}: the {precision} {graph} graph's ONNX Runtime encoding "
                                  f"{spec['onnxruntime_file']!r} has no hash in 'files'")
            split = spec.get("onnxruntime_prior")
            if split is not None and (not isinstance(split, dict)
                                      or any(split.get(role) not in files for role in ("keys", "product", "rest"))):
                raise BundleError(f"{where}: the {precision} {graph} graph's split at the prior's product "
                                  f"{split!r} names files without a hash in 'files'")
    if not isinstance(manifest.get("engines", {}), dict):
        raise BundleError(f"{where}: 'engines' must be an object")


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

    def graph_path(self, graph: str, precision: str = "fp32", onnxruntime: bool = False) -> Path:
        """The graph file; with ``onnxruntime``, the encoding ONNX Runtime runs where the bundle has
        one (INT8: activations as UINT8 + 128, the same values; see ``sccan.export.quantize``)."""
        try:
            spec = self.manifest["graphs"][graph][precision]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no {precision} {graph} graph") from None
        return self.path / (spec.get("onnxruntime_file") if onnxruntime and spec.get("onnxruntime_file")
                            else spec["file"])

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
    """Read ``manifest.json`` of a bundle directory, check its structure and its own hash, and (by
    default) verify every file's hash."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist (make one with `sccan export`)")
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a model bundle: no {MANIFEST} (make one with `sccan export`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path} is not an {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path} has format version {manifest.get('format_version')}; "
                          f"this SDK reads version {FORMAT_VERSION}: export the bundle again")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise BundleError(f"{manifest_path} was edited after it was written (its content no longer matches "
                          "its manifest_sha256): export the bundle again rather than editing it")
    validate_manifest(manifest, manifest_path)
    bundle = Bundle(path, manifest)
    if verify:
        bundle.verify()
    return bundle
