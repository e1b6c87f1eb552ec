"""The prior's product with the support keys as a constant of its own session (INT8, ONNX Runtime
on the CPU).

ONNX Runtime's x86 integer matrix multiply packs its second operand into the layout its VNNI
kernel reads. A constant operand is packed once, when its session is made; an operand fed as a
graph input is packed on every run, and the first operand with it once per 256 columns. The
prior's product (query high features, hw x Dh, times the support keys, Dh x S*N) is the decoder's
largest, and its keys change only when a class is registered. ``sccan quantize`` therefore cuts
the INT8 decoder's ONNX Runtime encoding into three graphs (``sccan.export.prior_split``):

- ``keys``: ``prior_keys`` -> the product's INT8 second operand, with the decoder's own quantize;
- ``product``: ``high`` -> the product, its keys a placeholder initializer (:data:`KEYS_CONSTANT`)
  that each class's session replaces (``SessionOptions.add_initializer``);
- ``rest``: the rest of the decoder, reading the product as the input :data:`PRODUCT_INPUT`.

The three compute the decoder's values node for node: the logits equal the whole decoder's bit
for bit (``tests/test_quantize.py``). On the 2-core AVX-512 host the 5-shot product took
455 to 557 ms this way against 630 to 740 ms with the keys as an input (BENCHMARKS.md).

The Segmenter makes each class's part when the class is registered (``class_part``): the class
cut to its own shots, and its product session (for ResNet-50 at 473 and 5 shots, 48 ms to make,
after 48 ms for the keys graph and their sha256; classes with the same INT8 keys share one). A support batch is then its classes'
parts (``resident_classes``), and no frame pays for a registration. A part lives as long as its
class: it holds the class's INT8 keys and the session's packed copy of them (2 x Dh x S*N bytes:
80 MB of resident memory at 5 shots for ResNet-50 at 473, measured, beside the class's 233 MB of
support arrays).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .schema import cut_to_shots

#: the input through which the rest of the decoder reads the prior's product (C x hw x S*N)
PRODUCT_INPUT = "prior_product"
#: the product graph's placeholder initializer, replaced by one class's INT8 keys (Dh x S*N)
KEYS_CONSTANT = "prior_keys_int8"
#: the graphs' roles and the suffix each file takes after ``<graph>.int8.onnxruntime``
PARTS = {"keys": "prior_keys", "product": "prior_product", "rest": "prior_rest"}
#: the key under which a resident support batch carries its :class:`ClassProducts`
FEED = "#prior_product"


class ClassProduct:
    """One class's product session: its INT8 keys a constant of the session (packed once, when it
    is made). Shared by every support batch that holds the same keys."""

    def __init__(self, session: Any, keys: Any):
        self.session = session
        self._keys = keys  # the session reads this OrtValue's memory: keep it alive


class ClassPart:
    """One registered class on the split decoder: its :class:`ClassProduct` and the rest's support
    inputs (OrtValues over the class's arrays, cut to its shots). It lives as long as the class."""

    def __init__(self, product: ClassProduct, feeds: dict[str, Any]):
        self.product = product
        self.feeds = feeds


class ClassProducts:
    """A support batch on the split decoder: per class, its :class:`ClassProduct` and the rest's
    support inputs."""

    def __init__(self, products: list[ClassProduct], feeds: list[dict[str, Any]]):
        self.products = products
        self.feeds = feeds

    def __len__(self) -> int:
        return len(self.products)


@lru_cache(maxsize=1)
def _register_shared_allocator() -> None:
    """One arena for every product session of the process (``session.use_env_allocators``): a
    session's own arena keeps its largest output (the product, 295 MB at 5 shots and 473) for as
    long as the session lives, one per class; the shared one keeps one."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(info, None)
    except Exception:  # noqa: BLE001 - refused: the sessions use the registered one or their own arenas
        pass


class PriorProduct:
    """The keys and rest sessions of a bundle's split decoder, and the per-class product sessions.

    ``make_session(path_or_bytes, options)`` makes an ``InferenceSession`` with the backend's
    providers; ``options()`` returns fresh session options (the SDK's).
    """

    def __init__(self, root: Path, files: Mapping[str, str], options: Callable[[], Any],
                 make_session: Callable[[Any, Any], Any]):
        import onnxruntime as ort

        self.ort = ort
        self._options = options
        self._make = make_session
        self.keys = make_session(str(root / files["keys"]), options())
        self.rest = make_session(str(root / files["rest"]), options())
        self._template = (root / files["product"]).read_bytes()
        self.rest_inputs = [i.name for i in self.rest.get_inputs()]
        # Product sessions by their keys' digest, for as long as a class part holds them.
        self._made: weakref.WeakValueDictionary[tuple, ClassProduct] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        _register_shared_allocator()

    def for_class(self, part: Mapping[str, np.ndarray]) -> ClassPart:
        """One class's part of a support batch, from its support inputs (1 x ... each;
        ``prior_keys`` 1 x Dh x S x N): made when the class is registered, so that no frame pays
        for it. The class is cut to its own shots (the rest runs class by class, so no class pays
        for another's; a padding slot would only add exact zeros to the prior). Keys that another
        live class part already has (found by their sha256) share its product session."""
        part = {k: np.ascontiguousarray(v, np.float32) for k, v in cut_to_shots(part).items()}
        keys = np.ascontiguousarray(self.keys.run(None, {"prior_keys": part["prior_keys"]})[0][0])
        digest = (keys.shape, keys.dtype.str, hashlib.sha256(memoryview(keys).cast("B")).digest())
        with self._lock:
            product = self._made.get(digest)
            if product is None:
                product = self._make_product(keys)
                self._made[digest] = product
        return ClassPart(product, {k: self.ort.OrtValue.ortvalue_from_numpy(v) for k, v in part.items()
                                   if k in self.rest_inputs})

    @staticmethod
    def for_classes(parts: list[ClassPart]) -> ClassProducts:
        """A support batch of classes' parts (:meth:`for_class`), in the batch's order."""
        return ClassProducts([p.product for p in parts], [p.feeds for p in parts])

    def _make_product(self, keys: np.ndarray) -> ClassProduct:
        """A product session with ``keys`` (Dh x S*N, INT8) in place of the template's placeholder."""
        value = self.ort.OrtValue.ortvalue_from_numpy(keys)
        options = self._options()
        # The template's placeholder is Dh x 1, so ONNX Runtime's static shapes say the product
        # is hw x 1 and it warns on every run that the real one is wider; the values are right
        # (tests/test_quantize.py compares them bit for bit).
        options.log_severity_level = 3
        options.add_initializer(KEYS_CONSTANT, value)
        options.add_session_config_entry("session.use_env_allocators", "1")
        return ClassProduct(self._make(self._template, options), value)

    def run(self, products: ClassProducts, feeds: Mapping[str, Any],
            run_rest: Callable[[Any, dict], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The decoder's outputs for the batch: per class, its product from ``feeds["high"]``, then
        ``run_rest(session, feeds)`` on it; the classes' outputs concatenated (arrays)."""
        high = feeds["high"]
        common = {k: v for k, v in feeds.items() if k in self.rest_inputs}
        outputs = []
        for product, support in zip(products.products, products.feeds):
            session = product.session
            binding = session.io_binding()
            if isinstance(high, self.ort.OrtValue):
                binding.bind_ortvalue_input("high", high)
            else:
                binding.bind_cpu_input("high", np.ascontiguousarray(high, np.float32))
            binding.bind_output(PRODUCT_INPUT, "cpu")
            session.run_with_iobinding(binding)
            outputs.append(run_rest(self.rest, {**common, **support, PRODUCT_INPUT: binding.get_outputs()[0]}))
        if len(outputs) == 1:
            return outputs[0]
        return {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}


__all__ = ["PriorProduct", "ClassProduct", "ClassPart", "ClassProducts", "PRODUCT_INPUT", "KEYS_CONSTANT", "PARTS", "FEED"]
