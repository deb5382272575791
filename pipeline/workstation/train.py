"""The train stage: a ResNet from a dataset to ``model.pt``.

Writes, under the run folder: ``last.pt`` every epoch (for ``--resume``), ``best.pt`` on
every improvement of val top-1, and at the end ``model.pt`` (the best weights, with the
fp32 val accuracy) plus ``train.json``/``train.png`` (the curves). ``model.pt`` appears
only when training finished, so Make never takes an interrupted run for a finished one.
Under torchrun rank 0 writes all of them; a group torchrun restarts after a failure
(``--max-restarts``) resumes from ``last.pt`` by itself, and a fresh start removes an
earlier run's ``last.pt``/``best.pt`` so that no restart resumes from them.
A NaN or infinite loss, or val logit, stops training at once with
:class:`TrainingDivergedError` (no ``model.pt``; ``last.pt`` keeps the last good epoch).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import warnings
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.artifacts import atomic_path, write_json, write_text
from pipeline.workstation.augment import augment_batch, epoch_seed, image_seeds, normalize_batch, size_for_epoch
from pipeline.workstation.checkpoint import Checkpoint, expect_model, load_checkpoint, save_checkpoint
from pipeline.config import Config, TrainConfig, config_to_dict, dump_toml
from pipeline.errors import PipelineError
from pipeline.workstation.data import ImageDataset, open_dataset
from pipeline.workstation.data.memory import load_split
from pipeline.workstation.distributed import (DistContext, RankError, all_sum, barrier, from_main, init_distributed,
                                               lost_rank, once, params_in_sync, shutdown)
from pipeline.workstation.models import build_model
from pipeline.workstation.models.weights import load_weights
from pipeline.workstation.sync_batchnorm import synchronise_batchnorm
from pipeline.plots import plot_training
from pipeline.preprocess import Preprocessing
from pipeline.progress import progress


class TrainingDivergedError(PipelineError):
    """A NaN or infinite loss or val logit: the weights are lost, training stops."""


@dataclass
class Tensors:
    """A split in memory: uint8 images (N, 3, S, S) and labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class Trainer:
    """What one epoch needs; built once per run."""

    cfg: TrainConfig
    ctx: DistContext
    model: nn.Module          # the DDP wrapper when data-parallel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    pre: Preprocessing
    amp_dtype: torch.dtype | None
    per_rank_batch: int
    steps: int
    seed: int = 0   # the run's: the epoch's order and each image's augmentation derive from it
    taken: int = 0  # optimisation steps in the current weights' lineage (a restart's lost ones not counted)

    @property
    def net(self) -> nn.Module:
        """The bare model (inside DDP), for evaluation and saving."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model


def run(cfg: Config) -> Path:
    """Train per ``cfg`` and return the path of ``model.pt``."""
    ctx = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        return _train(cfg, ctx)
    except PipelineError as exc:  # under torchrun every rank prints its own line: say which
        if ctx.active and not isinstance(exc, RankError):
            raise type(exc)(f"rank {ctx.rank}: {exc}") from None
        raise
    except RuntimeError as exc:
        lost = lost_rank(ctx, exc)
        if lost is None:
            raise
        raise lost from None
    finally:
        shutdown(ctx)


def _train(cfg: Config, ctx: DistContext) -> Path:
    out = cfg.run_dir
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    dataset = once(ctx, "to prepare the dataset", lambda: open_dataset(cfg.data), cfg.train.dist_timeout_s)
    pre = Preprocessing.from_config(cfg.preprocess)
    model = _initial_model(cfg, len(dataset.classes), ctx)
    train, val = _load_tensors(dataset, pre, cfg, ctx)
    trainer = _make_trainer(cfg, ctx, model, pre, len(train.labels))
    template = _template(cfg, dataset, pre)
    resume = from_main(ctx, "to read the checkpoint to resume from", lambda: _resume_point(cfg, ctx),
                       cfg.train.dist_timeout_s)
    start, history = _restore(trainer, resume, cfg, len(dataset.classes)) if resume else (0, [])
    for epoch in range(start, cfg.train.epochs):
        record = _run_epoch(trainer, train, val, epoch)
        history.append(record)
        if ctx.is_main:
            _save_epoch(trainer, template, history, out)
        barrier(ctx)
    in_sync = params_in_sync(ctx, trainer.net)
    if not ctx.is_main:
        return out / "model.pt"
    return _finish(trainer, template, history, val, out, cfg, in_sync)


def _initial_model(cfg: Config, num_classes: int, ctx: DistContext) -> nn.Module:
    torch.manual_seed(cfg.run.seed)  # right here: laying the dataset out may have drawn from the generator
    model = build_model(cfg.model.name, num_classes, **cfg.model.options())
    if cfg.model.weights:
        replaced = load_weights(model, Path(cfg.model.weights))
        if replaced and ctx.is_main:
            print(f"fine-tuning from {cfg.model.weights}: new head for {num_classes} classes "
                  f"({', '.join(replaced)} replaced)")
    return model


def _load_tensors(dataset: ImageDataset, pre: Preprocessing, cfg: Config,
                  ctx: DistContext) -> tuple[Tensors, Tensors]:
    """Train images cached at ``cache_size`` for augmentation; val exactly as deployed."""
    cache = cfg.train.cache_size or pre.input_size
    show = ctx.is_main
    train = load_split(dataset.split("train"), lambda a: pre.resize_crop(a, cache, cache),
                       cfg.data.workers, show)
    val = load_split(dataset.split("val"), pre.prepare, cfg.data.workers, show)
    return Tensors(*train), Tensors(*val)


def _make_trainer(cfg: Config, ctx: DistContext, model: nn.Module, pre: Preprocessing,
                  n_train: int) -> Trainer:
    tc = cfg.train
    per_rank = max(1, tc.batch_size // ctx.world_size)
    steps = max(1, (n_train // ctx.world_size) // per_rank)
    if ctx.is_main and per_rank * ctx.world_size != tc.batch_size:
        print(f"train.batch_size {tc.batch_size} is not a multiple of {ctx.world_size} ranks: "
              f"the global batch is {per_rank * ctx.world_size}")
    model = model.to(ctx.device, torch.float64 if tc.precision == "fp64" else torch.float32)
    if ctx.active and tc.sync_batchnorm:
        model = synchronise_batchnorm(model, ctx.device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, tc)
    scheduler = _scheduler(optimizer, tc, steps)
    wrapped = DistributedDataParallel(model) if ctx.active else model
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    return Trainer(tc, ctx, wrapped, optimizer, scheduler, loss_fn, pre,
                   _amp_dtype(tc.precision, ctx.device), per_rank, steps, cfg.run.seed)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD; no weight decay on BatchNorm and bias parameters (it only shrinks their scale)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
               steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    total = cfg.epochs * steps
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                pct_start=cfg.warmup_fraction)
    warm = max(1, int(total * cfg.warmup_fraction))
    return sched.SequentialLR(optimizer, [
        sched.LinearLR(optimizer, start_factor=0.04, total_iters=warm),
        sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warm)),
    ], milestones=[warm])


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively (it halves CPU training time).
    ``fp64`` trains in double precision without autocast: slow, and for checking that a
    setup (ranks, nodes, a restart) trains what one process does, where float32's rounding
    alone already moves a ResNet's early gradients by a percent at initialisation."""
    if precision in ("fp32", "fp64"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def _run_epoch(t: Trainer, train: Tensors, val: Tensors, epoch: int) -> dict[str, Any]:
    size = size_for_epoch(t.cfg.sizes, epoch, t.cfg.epochs, t.pre.input_size)
    stats = train_one_epoch(t, train, epoch, size)
    val_top1, val_images = evaluate_top1(t, val, where=f"training diverged at epoch {epoch + 1}")
    record = {"epoch": epoch + 1, "size": size, **stats, "val_top1": val_top1, "val_images": val_images,
              "lr": t.optimizer.param_groups[0]["lr"], "optimizer_steps": t.taken}
    if t.ctx.is_main:
        print(f"epoch {epoch + 1}/{t.cfg.epochs} {size}px  loss {stats['loss']:.3f}  "
              f"train {stats['train_top1']:.2%}  val {val_top1:.2%}  "
              f"{stats['images_per_s']:.0f} img/s  {stats['seconds']:.0f} s", flush=True)
    return record


def train_one_epoch(t: Trainer, data: Tensors, epoch: int, size: int) -> dict[str, float]:
    """One pass over this rank's shard of a seeded permutation shared by all ranks: step s
    of N ranks trains, between them, the images step s of one process with the same global
    batch trains (rank r takes every N-th of them from the r-th)."""
    t.model.train()
    order = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(epoch_seed(t.seed, epoch)))
    mine = order[t.ctx.rank::t.ctx.world_size][: t.steps * t.per_rank_batch]
    loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    bar = progress(range(t.steps), t.ctx.is_main, desc=f"epoch {epoch + 1}/{t.cfg.epochs}", unit="batch")
    for step in bar:
        index = mine[step * t.per_rank_batch:(step + 1) * t.per_rank_batch]
        loss, hits = _train_step(t, data.images[index], data.labels[index], size, image_seeds(t.seed, epoch, index))
        _require_finite_loss(t, loss, epoch, step)
        loss_sum, correct, seen = loss_sum + loss * len(index), correct + hits, seen + len(index)
        rate = seen * t.ctx.world_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    loss_sum, correct, seen = all_sum(t.ctx, [loss_sum, correct, seen])
    return {"loss": loss_sum / seen, "train_top1": correct / seen,
            "images_per_s": seen / seconds, "seconds": seconds}


def _train_step(t: Trainer, images: torch.Tensor, labels: torch.Tensor, size: int,
                seeds: list[int]) -> tuple[float, int]:
    x = _to_input(t, augment_batch(images, t.cfg, size, seeds))
    y = labels.to(t.ctx.device)
    with torch.autocast(t.ctx.device.type, dtype=t.amp_dtype or torch.float32,
                        enabled=t.amp_dtype is not None):
        logits = t.model(x)
        loss = t.loss_fn(logits.float(), y)
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()
    t.scheduler.step()
    t.taken += 1
    return loss.item(), int((logits.argmax(1) == y).sum())


def _require_finite_loss(t: Trainer, loss: float, epoch: int, step: int) -> None:
    """Stop at the first NaN or infinite loss (its value is fetched every step anyway).

    Under DDP all ranks learn of it at the same step (one scalar all-reduce): a rank that
    stopped alone would leave the others waiting at the next collective."""
    bad = not math.isfinite(loss)
    if t.ctx.active:
        bad = all_sum(t.ctx, [float(bad)])[0] > 0
    if bad:
        what = f"loss is {loss}" if not math.isfinite(loss) else "another rank's loss is NaN or infinite"
        raise TrainingDivergedError(f"training diverged at epoch {epoch + 1}, step {step + 1}/{t.steps}: "
                                    f"{what}; {_advice(t)}")


def _advice(t: Trainer) -> str:
    return (f"lower the learning rate (train.lr={t.cfg.lr:g}) or check the data and starting "
            f"weights; model.pt not written")


def _to_input(t: Trainer, images: torch.Tensor) -> torch.Tensor:
    x = normalize_batch(images.to(t.ctx.device), t.pre)  # (N, 3, S, S) float32
    x = x.to(next(t.net.parameters()).dtype)  # float64 when training in fp64
    return x.contiguous(memory_format=torch.channels_last) if t.cfg.channels_last else x


@torch.no_grad()
def evaluate_top1(t: Trainer, data: Tensors, amp: bool = True, where: str = "val evaluation") -> tuple[float, int]:
    """Val top-1 and the number of images scored; each rank scores every N-th image (no
    padding, so no image counts twice) and the counts are summed. NaN or infinite logits
    raise :class:`TrainingDivergedError` on every rank, its message led by ``where``."""
    net = t.net.eval()
    index = torch.arange(t.ctx.rank, len(data.labels), t.ctx.world_size)
    chunks = index.split(max(1, t.per_rank_batch * 2))
    correct, flags = 0, []
    for chunk in chunks:
        with torch.autocast(t.ctx.device.type, dtype=t.amp_dtype or torch.float32,
                            enabled=amp and t.amp_dtype is not None):
            logits = net(_to_input(t, data.images[chunk]))
        flags.append(torch.stack([logits.isnan().any(), logits.isinf().any()]))
        correct += int((logits.argmax(1).cpu() == data.labels[chunk]).sum())
    flags = torch.stack(flags).cpu() if flags else torch.zeros(0, 2, dtype=torch.bool)  # (chunks, 2)
    correct, total, failed = all_sum(t.ctx, [correct, len(index), int(flags.any(1).sum())])
    if failed:
        raise TrainingDivergedError(_non_finite_logits(t, where, flags, chunks))
    return correct / max(1, total), int(total)


def _non_finite_logits(t: Trainer, where: str, flags: torch.Tensor, chunks: tuple[torch.Tensor, ...]) -> str:
    bad = flags.any(1).nonzero().flatten()
    if not len(bad):
        return f"{where}: NaN or infinite logits on another rank's val images; {_advice(t)}"
    i = int(bad[0])
    kinds = " and ".join(k for k, present in zip(("NaN", "infinite"), flags[i].tolist()) if present)
    return (f"{where}: {kinds} logits on val batch {i} (images {int(chunks[i][0])}.."
            f"{int(chunks[i][-1])}); {_advice(t)}")


def _template(cfg: Config, dataset: ImageDataset, pre: Preprocessing) -> Checkpoint:
    return Checkpoint(model_name=cfg.model.name, model_options=cfg.model.options(),
                      classes=list(dataset.classes), class_names=list(dataset.names),
                      preprocessing=pre, config=config_to_dict(cfg), state_dict={})


def _snapshot(t: Trainer, template: Checkpoint, history: list[dict[str, Any]]) -> Checkpoint:
    best = max(h["val_top1"] for h in history)
    state = {k: v.detach().cpu().contiguous() for k, v in t.net.state_dict().items()}
    training = {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                "world_size": t.ctx.world_size, "optimizer_steps": t.taken}
    return dataclasses.replace(template, state_dict=state, epoch=len(history),
                               metrics={"best_val_top1": best}, history=list(history),
                               training=training)


def _save_epoch(t: Trainer, template: Checkpoint, history: list[dict[str, Any]], out: Path) -> None:
    snapshot = _snapshot(t, template, history)
    save_checkpoint(snapshot, out / "last.pt")
    if history[-1]["val_top1"] >= snapshot.metrics["best_val_top1"]:
        _last_is_best(out)


def _last_is_best(out: Path) -> None:
    """``last.pt`` copied to ``best.pt``, whole or not at all."""
    with atomic_path(out / "best.pt") as tmp:
        shutil.copyfile(out / "last.pt", tmp)


def _resume_point(cfg: Config, ctx: DistContext) -> Checkpoint | None:
    """On rank 0: the checkpoint to go on from, or None to start at epoch 0. ``--resume``
    and a torchrun restart go on from ``last.pt`` (a restart before the first epoch ended
    starts over); a fresh start removes ``last.pt``/``best.pt`` left by an earlier run, which
    a restart would otherwise take for this run's, and any file a killed rank left half-written."""
    out, last = cfg.run_dir, cfg.run_dir / "last.pt"
    for partial in out.glob(".*.partial*"):  # temporary files (artifacts.atomic_path) a killed rank left
        if partial.is_file():
            partial.unlink(missing_ok=True)
    if cfg.train.resume or (ctx.restarts and last.exists()):
        return load_checkpoint(last)
    if ctx.restarts:
        print(f"torchrun restart {ctx.restarts}: no epoch had finished, training starts over")
    else:
        for stale in (last, out / "best.pt"):
            stale.unlink(missing_ok=True)
    return None


def _restore(t: Trainer, ckpt: Checkpoint, cfg: Config, num_classes: int) -> tuple[int, list[dict[str, Any]]]:
    """Continue from ``ckpt`` (``last.pt``): weights, optimiser, schedule, step count and the
    curves so far. The epoch it was in when a rank died runs again from its start."""
    expect_model(ckpt, cfg.model.name, num_classes)
    t.net.load_state_dict(ckpt.state_dict)
    t.optimizer.load_state_dict(ckpt.training["optimizer"])
    _fast_forward(t.scheduler, ckpt.epoch * t.steps)
    t.taken = ckpt.training.get("optimizer_steps", ckpt.epoch * t.steps)
    if t.ctx.is_main:
        _best_up_to_date(ckpt, cfg.run_dir)
        why = f"torchrun restart {t.ctx.restarts}: " if t.ctx.restarts and not cfg.train.resume else ""
        print(f"{why}resuming from {ckpt.path} after epoch {ckpt.epoch}", flush=True)
    return ckpt.epoch, list(ckpt.history)


def _best_up_to_date(last: Checkpoint, out: Path) -> None:
    """``best.pt`` is copied from ``last.pt`` after it is written: a rank killed in between
    left the best epoch only in ``last.pt``."""
    if not last.history or last.history[-1]["val_top1"] < max(h["val_top1"] for h in last.history):
        return
    best = out / "best.pt"
    if not best.exists() or load_checkpoint(best).epoch != last.epoch:
        _last_is_best(out)


def _fast_forward(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Put the schedule where ``steps`` steps of this run's schedule would be.

    Recomputed rather than loaded, so a resumed run may ask for more epochs than the
    first one planned (the loaded one-cycle state would stop at its old total).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(steps):
            scheduler.step()


def _finish(t: Trainer, template: Checkpoint, history: list[dict[str, Any]], val: Tensors,
            out: Path, cfg: Config, in_sync: bool) -> Path:
    """The best weights, scored in fp32 exactly as deployed, become ``model.pt``."""
    best = load_checkpoint(out / "best.pt")
    t.net.float().load_state_dict(best.state_dict)  # scored, and kept, in float32 as deployed
    fp32_top1, _ = evaluate_top1(_alone(t), val, amp=False, where=f"{best.path}, evaluated in fp32")
    metrics = {"val_top1": fp32_top1, "best_epoch": best.epoch,
               "best_val_top1_autocast": best.metrics["best_val_top1"],
               "precision": _trained_in(t),
               "world_size": t.ctx.world_size, "ddp_params_in_sync": in_sync,
               "optimizer_steps": t.taken, "restarts": t.ctx.restarts,
               "train_seconds": sum(h["seconds"] for h in history)}
    state = {k: v.float() if v.is_floating_point() else v for k, v in best.state_dict.items()}
    final = dataclasses.replace(best, state_dict=state, metrics=metrics, history=history, training={})
    write_text(out / "config.toml", dump_toml(cfg))
    write_json(out / "train.json", {"metrics": metrics, "history": history})
    plot_training(history, out / "train.png", title=f"{cfg.run_name}: {cfg.model.name}")
    save_checkpoint(final, out / "model.pt")
    print(f"val top-1 (fp32) {fp32_top1:.2%} after {len(history)} epochs, "
          f"{metrics['train_seconds']:.0f} s of training -> {out / 'model.pt'}")
    return out / "model.pt"


def _trained_in(t: Trainer) -> str:
    if t.cfg.precision == "fp64":
        return "float64"
    return str(t.amp_dtype or torch.float32).replace("torch.", "")


def _alone(t: Trainer) -> Trainer:
    """This trainer seen as one process (the final score is computed on rank 0 only)."""
    return dataclasses.replace(t, ctx=DistContext(device=t.ctx.device))

