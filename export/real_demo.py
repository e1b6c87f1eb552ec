"""``sccan demo --real``: the shipped real-photo edge model on a clip or photos you point it to.

Exports ``sccan/train/weights/real_lite0.pt`` (EfficientNet-Lite0 at 321 px, trained on COCO-128
and the clothing photos, then fine-tuned with CamVid and the DAVIS-2016 training videos, see
``train/configs/real_lite0*.yaml``) to ``OUTPUT/bundle`` with the parity gate, registers the object
from the first frame and its mask through the SDK, segments every later frame, and writes
``OUTPUT/real_demo.mp4`` and ``OUTPUT/real_demo_strip.png``. Where the later frames have masks (a
DAVIS-layout folder), it prints J and F.

The checkpoint is reproduced, from the repository root with ``../shared/realdata`` beside it, by::

    sccan train --config real_lite0           # stage 1 -> runs/real_lite0/last.pt
    sccan train --config real_lite0_stage2    # stage 2, from it -> runs/real_lite0_stage2/last.pt
    python -m sccan.train.checkpoint runs/real_lite0_stage2/last.pt real_lite0.pt   # weights only
    sccan train --config real_lite0_cpu       # the fine-tune, from real_lite0.pt -> runs/real_lite0_cpu/last.pt
    python -m sccan.train.checkpoint runs/real_lite0_cpu/last.pt real_lite0.pt

(the two stages on an NVIDIA H100, 2049 + 1494 steps in 6.5 + 4.5 minutes, on a copy of the photos
made with ``python -m sccan.train.data.shrink SRC DST --max-side 352 --quality 85``, which is what
``data.max_side: 352`` does on every read, re-encoded as JPEG; GPU kernels are not bit-reproducible;
the fine-tune on 2 CPU cores, 600 steps on cached backbone features, about 40 minutes with the cache.)

No photos ship with the package (the real sets' licences allow research use, not
redistribution), so ``--video`` names one of:

* a DAVIS-layout root (``JPEGImages/480p/<seq>/``, ``Annotations/480p/<seq>/``), with ``--sequence``;
* a folder of frames (or photos of one object), with ``--mask`` for the first of them;
* a video file, with ``--mask`` for its first frame.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import cv2
import numpy as np

from sccan.sdk import SCCANError, Segmenter
from sccan.sdk.sources import open_source, read_image
from sccan.sdk.sources import read_mask as read_mask_file

#: The shipped real-photo model and its input size.
REAL_CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "weights" / "real_lite0.pt"
REAL_SIZE = 321


def read_mask(path: Path) -> np.ndarray:
    """A 0/1 mask from a file (any non-zero pixel is the object), or the SDK's error naming it."""
    return (read_mask_file(path) > 0).astype(np.uint8)


def absent_frames(video: Path, name: str, count: int) -> tuple[str, list[np.ndarray]]:
    """Frames where the clip's object is absent: the first ``count`` annotated frames of the next
    sequence of a DAVIS-layout folder (another object); none for other inputs."""
    if count <= 0 or not (video.is_dir() and (video / "JPEGImages").is_dir()):
        return "", []
    from sccan.train.video import list_sequences

    sequences = list_sequences(video)
    others = [s for s in sequences if s.name != name]
    if not others:
        return "", []
    index = next((i for i, s in enumerate(sequences) if s.name == name), -1)
    other = sequences[(index + 1) % len(sequences)] if index >= 0 and sequences[(index + 1) % len(sequences)].name != name \
        else others[0]
    return other.name, [read_image(p) for p in other.frames[:count]]


def load_clip(video: Path, sequence: str | None, mask: Path | None, max_frames: int
              ) -> tuple[str, list[np.ndarray], np.ndarray, list[np.ndarray | None]]:
    """(name, BGR frames, the first frame's mask, truth masks of the later frames or None)."""
    if not video.exists():
        raise SCCANError(f"--video {video} does not exist")
    if video.is_dir() and ((video / "JPEGImages").is_dir() or (video / "Annotations").is_dir()):
        from sccan.train.video import list_sequences

        seq = list_sequences(video, [sequence] if sequence else None)[0]
        frames = [read_image(p) for p in seq.frames[:max_frames]]
        masks = [read_mask(p) for p in seq.masks[:max_frames]]
        return seq.name, frames, masks[0], masks[1:]
    if mask is None:
        raise SCCANError("--mask is needed with a folder of frames or a video file (the object in the first "
                         "frame: any non-zero pixel is the object)")
    source = open_source(str(video))  # a folder of images (sorted by name) or a video file
    frames = [frame for _, frame in itertools.islice(source.frames, max_frames)]
    if source.skipped:  # a frame missing from a clip would shift every later one: refuse, naming it
        raise SCCANError(source.skipped[0][1])
    if len(frames) < 2:
        raise SCCANError(f"--video {video}: {len(frames)} frame(s) read; the demo needs a first frame and more")
    first = read_mask(mask)
    if first.shape != frames[0].shape[:2]:
        raise SCCANError(f"--mask {mask} is {first.shape[1]} x {first.shape[0]} but the first frame is "
                         f"{frames[0].shape[1]} x {frames[0].shape[0]}")
    return video.stem, frames, first, [None] * (len(frames) - 1)


def _plain_j(seg: Segmenter, name: str, frames: list[np.ndarray], first_mask: np.ndarray,
             truths: list[np.ndarray | None]) -> float:
    """J over the clip without track mode, with the same Segmenter (its memory left empty)."""
    from sccan.train.video import region_similarity

    h, w = frames[0].shape[:2]
    scores = []
    for frame, truth in zip(frames[1:], truths):
        if truth is None:
            continue
        if frame.shape[:2] != (h, w):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        scores.append(region_similarity(seg.segment(frame, classes=[name]).masks[name].astype(np.uint8), truth))
    return float(np.mean(scores))


def run_real(args: argparse.Namespace) -> int:
    from sccan.train.video import _tile, boundary_measure, region_similarity

    from .exporter import export_bundle

    if not args.video:
        raise SCCANError("sccan demo --real needs --video: a DAVIS-layout folder (with --sequence), a folder of "
                         "frames or a video file (with --mask for the first frame). No photos ship with the "
                         "package; this team's copies are in ../shared/realdata (davis2016-val-part)")
    checkpoint = Path(args.checkpoint) if args.checkpoint else REAL_CHECKPOINT
    if not checkpoint.is_file():
        raise SCCANError(f"checkpoint {checkpoint} does not exist")
    name, frames, first_mask, truths = load_clip(Path(args.video), args.sequence,
                                                 Path(args.mask) if args.mask else None, args.frames)
    if not first_mask.any():
        raise SCCANError("the first frame's mask is empty: nothing to register")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"[1/3] exporting the real-photo edge model {checkpoint.name} ({REAL_SIZE} px) with the parity gate...")
    memory = int(getattr(args, "memory", 0) or 0)
    if memory < 0:
        raise SCCANError(f"--memory must be 0 or more shot slots, got {memory}")
    bundle = export_bundle(checkpoint, work / "bundle", size=REAL_SIZE, max_shots=max(2, 1 + memory), max_classes=2,
                           check_episodes=1, fp16=False, force=True, progress=not args.quiet).bundle
    seg = Segmenter(bundle, backend="onnxruntime", memory=memory)
    print(f"[2/3] registering '{name}' from its first frame, segmenting {len(frames) - 1} more (ONNX Runtime, CPU)"
          + (f", track mode with {memory} remembered frame(s)..." if memory else "..."))
    seg.add_class(name, [frames[0]], [first_mask])
    plain_j = _plain_j(seg, name, frames, first_mask, truths) if memory and any(t is not None for t in truths) else None
    h, w = frames[0].shape[:2]
    video_path = work / "real_demo.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (w, h))
    j, f, tiles, timings = [], [], [_tile(frames[0][..., ::-1], first_mask, None)], []
    for frame, truth in zip(frames[1:], truths):
        if frame.shape[:2] != (h, w):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        result = seg.segment(frame, classes=[name], remember=bool(memory))
        timings.append({**result.timings, "presence": result.presence[name]})
        mask = result.masks[name].astype(np.uint8)
        if writer.isOpened():
            writer.write(result.overlay(frame))
        if truth is not None:
            j.append(region_similarity(mask, truth))
            f.append(boundary_measure(mask, truth))
        if len(tiles) < 8:
            tiles.append(_tile(frame[..., ::-1], mask, truth))
    # The object leaves: frames of another sequence, where the registered object is absent.
    other, gone = absent_frames(Path(args.video), name, int(getattr(args, "absent_frames", 3) or 0))
    present_scores = [t["presence"] for t in timings]
    absent_scores, emptied = [], 0
    for frame in gone:
        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) if frame.shape[:2] != (h, w) else frame
        result = seg.segment(frame, classes=[name])
        absent_scores.append(result.presence[name])
        emptied += int(not result.masks[name].any())
        if writer.isOpened():
            writer.write(result.overlay(frame))
        if len(tiles) < 10:
            # red: what it predicts where the object is absent (an all-zero truth: no green outline)
            mask = result.masks[name].astype(np.uint8)
            tiles.append(_tile(frame[..., ::-1], mask, np.zeros_like(mask)))
    writer.release()
    strip = work / "real_demo_strip.png"
    cv2.imwrite(str(strip), np.concatenate(tiles, axis=1)[..., ::-1])
    median = {k: 1000 * float(np.median([t[k] for t in timings if k in t])) for k in timings[0] if k != "presence"}
    print(f"[3/3] wrote {video_path if video_path.is_file() and video_path.stat().st_size else '(no MP4: '}"
          f"{'' if video_path.is_file() and video_path.stat().st_size else 'this OpenCV cannot write mp4v)'} "
          f"and {strip} (support in blue, predictions in red, truth outlined in green)")
    print(f"median latency per {w} x {h} frame (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in median.items()))
    if j:
        print(f"J mean {np.mean(j):.3f}, F mean {np.mean(f):.3f} over {len(j)} frames of {name}"
              + (f" with track mode (memory {memory}); without it J mean {plain_j:.3f}" if plain_j is not None else ""))
    threshold = seg.presence_threshold
    print(f"presence of '{name}' (threshold {threshold:.2f}): median {np.median(present_scores):.3f} over its "
          f"{len(present_scores)} frames" + (f"; {np.median(absent_scores):.3f} over {len(gone)} frames of {other}, "
                                            f"where it is absent: {emptied} of {len(gone)} masks empty"
                                            if gone else ""))
    print(f"bundle:   {bundle}\ntotal:    {time.perf_counter() - started:.0f} s")
    return 0
