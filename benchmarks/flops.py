"""GFLOPs of SCCAN per backbone, split into the support-only and the per-frame query parts.

Counted with ``torch.utils.flop_counter`` (2 FLOPs per multiply-add; convolutions and matrix
products, which are nearly all the cost). Not a test: it prints a table.

    python benchmarks/flops.py [--size 473] [--shots 1 5] [--backbones resnet50 resnet101 efficientnet_lite0]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from sccan.train.model import build_model


def gflops(fn, *args) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def measure(backbone: str, size: int, shots: int) -> dict[str, float]:
    """GFLOPs of the whole forward, the support-only part and the per-frame query part."""
    model = build_model(backbone)
    query = torch.randn(1, 3, size, size)
    support = torch.randn(1, shots, 3, size, size)
    masks = torch.zeros(1, shots, size, size)
    masks[..., size // 4: size // 2, size // 4: size // 2] = 1
    with torch.no_grad():
        whole = gflops(model, query, support, masks)
        support_part = gflops(model.encode_support, support, masks)
        features = model.encode_support(support, masks)
        query_part = gflops(model.decode_query, query, features)
    return {"whole": whole, "support": support_part, "query": query_part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101", "efficientnet_lite0"])
    args = parser.parse_args()
    print(f"GFLOPs at {args.size} x {args.size} (support: once per class; query: every frame)")
    print(f"{'backbone':<20}{'shots':>6}{'whole':>10}{'support':>10}{'query':>10}")
    rows = {}
    for backbone in args.backbones:
        for shots in args.shots:
            r = measure(backbone, args.size, shots)
            rows[(backbone, shots)] = r
            print(f"{backbone:<20}{shots:>6}{r['whole']:>10.1f}{r['support']:>10.1f}{r['query']:>10.1f}", flush=True)
    base = rows.get(("resnet50", 1))
    lite = rows.get(("efficientnet_lite0", 1))
    if base and lite:
        print(f"Lite-0 query / ResNet-50 query at 1 shot: {lite['query'] / base['query']:.3f}")


if __name__ == "__main__":
    main()
