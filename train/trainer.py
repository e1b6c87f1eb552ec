"""Episodic meta-training of SCCAN (``sccan train``).

The backbone is frozen (eval mode). SGD with poly decay trains ``down_*``, ``init_merge_*`` and the
decoder; AdamW trains the transformer; the loss is Dice. Multi-process training runs under
``torchrun`` with DistributedDataParallel (``nccl`` on CUDA, ``gloo`` on the CPU). Checkpoints are
written atomically every epoch and on interrupt, with both optimisers, the schedule position and
the RNG state, so ``--resume`` continues the same trajectory: episodes are a function of
(seed, epoch, index), never of a running random state.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from sccan.sdk.errors import SCCANError

from .checkpoint import load_backbone_weights, load_model, read_checkpoint, save_checkpoint
from .data.datasets import build_dataset
from .data.episodes import collate
from .evaluate import evaluate, model_predictor, save_grid
from .losses import dice_loss
from .model import SCCAN, build_model

HEAD_MODULES = ("down_query", "down_supp", "init_merge_query", "init_merge_supp", "ASPP_meta", "res1_meta",
                "res2_meta", "cls_meta")


class TrainingInterrupted(SCCANError):
    """Training stopped on a signal; a checkpoint was written first."""


@dataclass
class TrainResult:
    output: Path
    steps: int
    epochs: int
    best_miou: float
    last_checkpoint: Path
    interrupted: bool = False


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local


def optimizers(model: SCCAN, cfg: dict[str, Any]) -> tuple[torch.optim.SGD, torch.optim.AdamW]:
    heads = [p for name in HEAD_MODULES for p in getattr(model, name).parameters()]
    sgd = torch.optim.SGD(heads, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    adamw = torch.optim.AdamW(model.transformer.parameters(), lr=cfg["transformer_lr"],
                              weight_decay=cfg["transformer_weight_decay"])
    return sgd, adamw


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * (1 - min(step, total) / max(total, 1)) ** power


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (to compare ranks or runs)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])


def episode_batches(dataset: Any, index_lists: list[list[int]], mean: tuple[float, ...], std: tuple[float, ...],
                    workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches of ``dataset[i]`` for each list of indices, in order.

    With ``workers`` > 0, that many background threads prepare the next batches while the current
    one trains. Threads, not processes: making an episode is numpy/OpenCV work that releases the
    GIL, and threads need no pickling of datasets. Episodes are functions of their index, so the
    batches are the same either way.
    """
    def make(indices: list[int]) -> dict[str, torch.Tensor]:
        return collate([dataset[i] for i in indices], mean, std)

    if workers <= 0:
        for indices in index_lists:
            yield make(indices)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="episodes") as pool:
        upcoming = iter(index_lists)
        pending = collections.deque(pool.submit(make, i) for i in itertools.islice(upcoming, workers))
        while pending:
            inputs = pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(pool.submit(make, following))
            yield inputs


def train(config: dict[str, Any], resume: str | Path | None = None, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Train SCCAN as ``config`` (see :mod:`sccan.train.config`) says; returns where it wrote.

    ``stop_after`` stops after that many steps as an interrupt would (checkpoint, no schedule
    change), so that ``resume`` can be checked against an uninterrupted run.
    """
    if config["train"].get("feature_cache"):
        from .cached import train_cached

        return train_cached(config, resume=resume, progress=progress, stop_after=stop_after)
    rank, world, local = _distributed()
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    tcfg, dcfg = config["train"], config["data"]
    output = Path(config["output"])
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tcfg["seed"])

    model = build_model(**config["model"])
    if config.get("backbone_weights"):
        load_backbone_weights(model, config["backbone_weights"])
    if config.get("init_checkpoint") and not resume:
        # A second stage: start from trained weights with fresh optimisers and schedule.
        model.load_state_dict(load_model(config["init_checkpoint"], model.config).state_dict(), strict=True)
    model.to(device)
    sgd, adamw = optimizers(model, tcfg)
    train_set = build_dataset(dcfg, "train", seed=tcfg["seed"])
    val_set = build_dataset(dcfg, "test", seed=config["eval"]["seed"], episodes=config["eval"]["episodes"])
    batch = tcfg["batch_size"]
    per_rank = math.ceil(len(train_set) / world)
    steps_per_epoch = max(1, per_rank // batch)
    total_steps = steps_per_epoch * tcfg["epochs"]
    if tcfg.get("max_steps"):
        total_steps = min(total_steps, int(tcfg["max_steps"]))

    budget = tcfg.get("time_budget_s")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    start_epoch, global_step, best = 0, 0, -1.0
    if resume:
        state = read_checkpoint(resume)
        model.load_state_dict(state["state_dict"])
        sgd.load_state_dict(state["optimizer"])
        adamw.load_state_dict(state["optimizer_swin"])
        start_epoch, global_step, best = state["epoch"], state["step"], state.get("best_miou", -1.0)
        _set_rng_state(state["rng"])
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None) \
        if world > 1 else model
    amp = bool(tcfg.get("amp")) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    log_path = output / "metrics.jsonl"
    if rank == 0 and not resume and log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log; a resumed one appends
    tb = _tensorboard(output) if rank == 0 else None

    def checkpoint(name: str, epoch: int) -> Path:
        return save_checkpoint(model, output / name, epoch=epoch, step=global_step, best_miou=best,
                               optimizer=sgd.state_dict(), optimizer_swin=adamw.state_dict(), rng=_rng_state(),
                               train_config=json.loads(json.dumps(config, default=str)))

    stop = {"signal": None}

    def on_signal(signum, _frame):  # finish the current step, then checkpoint and stop
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if _main_thread() else {}
    last = output / "last.pt"
    epochs_done = start_epoch
    clock = {"start": time.perf_counter(), "first_step": global_step}
    try:
        for epoch in range(start_epoch, tcfg["epochs"]):
            if global_step >= total_steps:
                break
            train_set.set_epoch(epoch)
            done_in_epoch = global_step - epoch * steps_per_epoch
            model.train()
            bar = tqdm(range(done_in_epoch, steps_per_epoch), desc=f"epoch {epoch + 1}/{tcfg['epochs']}",
                       disable=not progress or rank != 0, leave=False)
            index_lists = [[i % len(train_set) for i in range(rank * per_rank + step * batch,
                                                              rank * per_rank + (step + 1) * batch)]
                           for step in range(done_in_epoch, steps_per_epoch)]
            waited, ready = 0.0, time.perf_counter()
            for step, inputs in zip(bar, episode_batches(train_set, index_lists, model.mean, model.std,
                                                         int(tcfg.get("workers") or 0))):
                waited += time.perf_counter() - ready  # time the step waited for its batch
                sgd.param_groups[0]["lr"] = poly_lr(tcfg["lr"], global_step, total_steps, tcfg["power"])
                sgd.zero_grad(set_to_none=True)
                adamw.zero_grad(set_to_none=True)
                # enable_grad: the caller's grad mode (e.g. no_grad around an evaluation) must not matter.
                with torch.enable_grad():
                    with torch.autocast(device.type, enabled=amp):
                        logits = net(inputs["query"].to(device), inputs["support"].to(device),
                                     inputs["support_labels"].to(device))
                        loss = dice_loss(logits, inputs["query_label"].to(device))
                    scaler.scale(loss).backward()
                scaler.step(sgd)
                scaler.step(adamw)
                scaler.update()
                global_step += 1
                if budget and world == 1:
                    total_steps = _fit_budget(clock, global_step, total_steps, float(budget), log_path)
                if rank == 0 and global_step % tcfg["log_every"] == 0:
                    record = {"step": global_step, "epoch": epoch, "loss": float(loss.detach()),
                              "lr": sgd.param_groups[0]["lr"], "data_wait_s": round(waited, 3), "time": time.time()}
                    waited = 0.0
                    _log(log_path, record, tb)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                if stop["signal"] is not None or global_step >= total_steps or global_step == stop_after:
                    break
                ready = time.perf_counter()
            epoch_done = global_step % steps_per_epoch == 0 or global_step >= total_steps
            interrupted = stop["signal"] is not None or (global_step == stop_after and global_step < total_steps)
            if interrupted or not epoch_done:
                # Mid-epoch (or on a signal): save where we are; an epoch finished this way skips its
                # evaluation, and --resume continues with the next step.
                if rank == 0:
                    checkpoint("last.pt", epoch + 1 if epoch_done else epoch)
                if stop["signal"] is not None:
                    raise TrainingInterrupted(f"stopped by signal {stop['signal']} at step {global_step}; "
                                              f"resume with --resume {last}")
                if interrupted:
                    return TrainResult(output, global_step, epochs_done, best, last, interrupted=True)
                break
            epochs_done = epoch + 1
            if rank == 0:
                if epochs_done % config["eval"]["every"] == 0 or epochs_done == tcfg["epochs"]:
                    result = evaluate(model_predictor(model, dcfg["size"], str(device)),
                                      (val_set[i] for i in range(len(val_set))), total=len(val_set),
                                      progress=progress)
                    model.train()
                    _log(log_path, {"step": global_step, "epoch": epochs_done, "val_miou": result.miou,
                                    "val_fbiou": result.fbiou, "time": time.time()}, tb)
                    if result.miou > best:
                        best = result.miou
                        checkpoint("best.pt", epochs_done)
                        save_grid(result.samples, output / "val_samples.png")
                checkpoint("last.pt", epochs_done)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if tb is not None:
            tb.close()
    if world > 1:
        # Every rank records its weights' digest: DDP must leave them identical.
        (output / f"rank{rank}.digest").write_text(weights_digest(model) + "\n")
        dist.barrier()
    return TrainResult(output, global_step, epochs_done, best, last)


#: Steps timed before a time budget fixes the schedule's length (the first 10 are warm-up).
BUDGET_WARMUP, BUDGET_PROBE = 10, 40


def _fit_budget(clock: dict[str, float], step: int, total: int, budget: float, log_path: Path) -> int:
    """With ``train.time_budget_s``, once the step rate is known, shorten the schedule (the poly
    decay's end) so that training ends within the budget, evaluation excluded. The number of steps
    chosen is logged (``budget_steps``): pass it as ``train.max_steps`` to repeat the run exactly."""
    done = step - clock["first_step"]
    if done == BUDGET_WARMUP:
        clock["probe"] = time.perf_counter()
    elif done == BUDGET_WARMUP + BUDGET_PROBE:
        rate = BUDGET_PROBE / (time.perf_counter() - clock["probe"])
        left = budget - (time.perf_counter() - clock["start"])
        fitted = min(total, step + max(0, int(left * rate)))
        _log(log_path, {"step": step, "budget_steps": fitted, "steps_per_s": rate, "time": time.time()}, None)
        return fitted
    return total


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _tensorboard(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(str(output / "tensorboard"))


def _log(path: Path, record: dict[str, Any], tb) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if tb is not None:
        for k, v in record.items():
            if k not in ("step", "epoch", "time") and isinstance(v, (int, float)):
                tb.add_scalar(k, v, record["step"])


__all__ = ["train", "TrainResult", "TrainingInterrupted", "weights_digest", "optimizers"]
