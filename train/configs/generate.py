"""Writes the paper-run configs: {pascal,coco} x fold 0-3 x {resnet50,resnet101} x {1,5} shots.

    python train/configs/generate.py      # rewrites train/configs/paper/*.yaml

The data roots are placeholders: point ``data.root`` at your VOC2012 / COCO 2014 directory and
``backbone_weights`` at the authors' ImageNet initialisation files.
"""

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def paper_config(dataset: str, fold: int, backbone: str, shots: int) -> dict:
    pascal = dataset == "pascal"
    return {
        "model": {"backbone": backbone},
        "backbone_weights": f"initmodel/{backbone}_v2.pth",
        "data": {"dataset": dataset, "root": "data/VOCdevkit/VOC2012" if pascal else "data/coco", "fold": fold,
                 "size": 473, "shots": shots, "test_episodes": 1000 if pascal else 4000,
                 **({} if pascal else {"partition": "interleaved"})},
        # PASCAL: batch 8 on one GPU, 200 epochs. COCO: batch 2 per GPU on 4 GPUs (torchrun
        # --nproc_per_node 4), 50 epochs.
        "train": {"epochs": 200 if pascal else 50, "batch_size": 8 if pascal else 2, "lr": 0.005,
                  "transformer_lr": 6e-5, "seed": 123},
        "eval": {"episodes": 1000 if pascal else 4000, "seed": 321, "every": 1},
        "output": f"runs/{dataset}_fold{fold}_{backbone}_{shots}shot",
    }


def main() -> None:
    out = HERE / "paper"
    out.mkdir(exist_ok=True)
    for dataset in ("pascal", "coco"):
        for fold in range(4):
            for backbone in ("resnet50", "resnet101"):
                for shots in (1, 5):
                    name = f"{dataset}_fold{fold}_{backbone}_{shots}shot.yaml"
                    (out / name).write_text(yaml.safe_dump(paper_config(dataset, fold, backbone, shots), sort_keys=False))


if __name__ == "__main__":
    main()
