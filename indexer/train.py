"""Training of the sparse U-Net (paper, Appendix A).

Adam at 1e-3 (optionally decayed on a cosine to 5 % of it), shift/rotation/scale augmentation
(and optionally polarity: the whole image inverted), pixel-wise softmax cross-entropy (plus,
with `dice_weight`, a soft-Dice term) and the channel-sparsity objective of `indexer.sparsity`.
Each epoch reports the task loss (the cross-entropy), the validation Dice and R_sp^0 = 1 − R_sp
(the paper's Table II).

A run writes into one folder:
    model.pt      best model by validation (safe format, see indexer.checkpoint)
    last.pt       model + optimizer + epoch, for `--resume`; written every epoch and on Ctrl-C
    metrics.csv   one row per epoch
    curves.png    the curves of metrics.csv

After the last epoch the best model's head is calibrated: one constant δ added to the object
class's bias (so a pixel is object when its logit margin exceeds −δ), the δ of the grid
`CALIBRATION_BIASES` with the highest Dice on the validation images (the training set's
cross-entropy weighs every pixel alike, and its images are augmented and a third inverted, so its
argmax need not be the validation Dice's best cut). The features are untouched; model.pt's
`calibration` says what was done.

"Best" is the highest validation Dice among the epochs whose R_sp^0 is within
`sparsity_tolerance` of the target, or the highest Dice if none is yet: a model that
segments well but has not reached its sparsity is not what was asked for.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from simdex.indexer.checkpoint import save_model
from simdex.indexer.model import SparseUNet, UNetConfig, build_model
from simdex.indexer.sources import (
    IdxSource,
    ImageReadError,
    ImageSource,
    border_background,
    fit_to_size,
    mask_from_background,
)
from simdex.indexer.sparsity import active_ratio, channel_activity, sparsity_gamma, weight_sparsity_loss

log = logging.getLogger(__name__)

METRIC_FIELDS = ["epoch", "train_loss", "train_task_loss", "train_r_sp0", "val_task_loss", "val_dice",
                 "val_r_sp0", "seconds"]


@dataclass
class TrainConfig:
    """Options of a training run; saved in last.pt and model.pt."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    beta: float = 0.3  # target ratio of active channels (target sparsity 1 − β)
    alpha: float = 1.0  # γ's exponent: the learning speed of the sparsity
    lam: float = 1.0  # λ, weight of the sparsity term
    val_fraction: float = 0.1
    max_train_images: int = 0  # 0 = all
    augment: bool = True
    max_shift: float = 0.1  # fraction of the image size
    max_rotation_deg: float = 15.0
    min_scale: float = 0.9
    max_scale: float = 1.1
    invert_prob: float = 0.0  # chance that an image is trained on inverted (1 − x): dark on light as light on dark
    decay_epochs: int = 0  # cosine decay of the learning rate over this many epochs (0 = constant)
    mask_threshold: float = 0.05
    dice_weight: float = 0.0  # weight of the soft-Dice term added to the cross-entropy (0 = cross-entropy only)
    precision: str = "fp32"  # "bf16": the training forward pass under bfloat16 autocast (weights, Adam, loss in fp32)
    calibrate: bool = True  # after the last epoch, fit the object logit's bias to the validation Dice
    cache_gb: float = 0.0  # decode the images once into memory when they fit in this many GiB (0 = decode every epoch)
    sparsity_tolerance: float = 0.05
    seed: int = 0
    workers: int = 0
    width: float = 0.5
    in_channels: int = 1
    image_size: int = 32

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_task_loss: float
    train_r_sp0: float
    val_task_loss: float
    val_dice: float
    val_r_sp0: float
    seconds: float


class SegmentationDataset(Dataset):
    """Images of a source fitted to the model's size, with their masks.

    Returns (image (C, S, S) float32, mask (S, S) uint8, background (C,) float32, ok);
    an unreadable image gives ok = False and is dropped by `collate`.
    """

    def __init__(self, source: ImageSource, indices: np.ndarray, size: int, channels: int, mask_threshold: float):
        self.source, self.indices = source, indices
        self.size, self.channels, self.mask_threshold = size, channels, mask_threshold

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = int(self.indices[j])
        try:
            image = self.source.read(i, self.channels)
            if self.source.records[i].mask:
                mask = self.source.read_mask(i, image)
            else:
                mask = mask_from_background(image, self.mask_threshold)
        except ImageReadError:
            empty = np.zeros((self.channels, self.size, self.size), np.float32)
            return empty, np.zeros((self.size, self.size), np.uint8), np.zeros(self.channels, np.float32), False
        bg = border_background(image)
        canvas, _, _, _ = fit_to_size(image, self.size, bg)
        mcanvas, _, _, _ = fit_to_size(mask[None].astype(np.float32), self.size, np.zeros(1, np.float32))
        return canvas, (mcanvas[0] > 0.5).astype(np.uint8), bg, True


def collate(batch):
    kept = [b for b in batch if b[3]]
    if not kept:
        return None
    images, masks, bgs, _ = zip(*kept)
    return _stack(images), _stack(masks), _stack(bgs)


def _stack(items) -> torch.Tensor:
    """Stack numpy arrays (decoded items) or tensors (cached items) into one tensor."""
    return torch.stack([torch.as_tensor(x) for x in items])


def augment_batch(x: torch.Tensor, mask: torch.Tensor, bg: torch.Tensor, cfg: TrainConfig,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random polarity, shift, rotation and scale applied to images and masks together.

    x (B, C, H, W), mask (B, H, W), bg (B, C). The image is warped as (x − bg) with zero
    padding, so uncovered pixels get the image's own background colour.
    """
    b = x.shape[0]
    if cfg.invert_prob > 0:
        flip = (torch.rand(b, generator=gen) < cfg.invert_prob)[:, None]
        bg = torch.where(flip, 1.0 - bg, bg)
        x = torch.where(flip[:, :, None, None], 1.0 - x, x)
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(cfg.max_rotation_deg)
    scale = cfg.min_scale + torch.rand(b, generator=gen) * (cfg.max_scale - cfg.min_scale)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * cfg.max_shift * 2  # grid units span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    bgv = bg[:, :, None, None]
    xw = F.grid_sample(x - bgv, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bgv
    mw = F.grid_sample(mask[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return xw.clamp(0, 1), mw[:, 0].round().to(mask.dtype)


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice of the object class over the whole batch (the object's softmax probability
    as a fuzzy prediction). Cross-entropy weighs every pixel alike, so the thin rim around a small
    object, which is most of what Dice loses, counts little in it; this term weighs pixels by
    the object they belong to."""
    p = torch.softmax(logits, 1)[:, 1]
    t = (mask == 1).to(p.dtype)
    return 1.0 - (2.0 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


def dice_counts(logits: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(2·|pred ∩ target|, |pred| + |target|) for the object class, summed over the batch."""
    pred = logits.argmax(1) == 1
    target = mask == 1
    inter = (pred & target).sum().item()
    return 2.0 * inter, float(pred.sum().item() + target.sum().item())


@torch.inference_mode()
def evaluate(model: SparseUNet, loader: DataLoader) -> dict:
    """Task loss, Dice (over all pixels of the set) and R_sp^0 (channels never active on the set)."""
    model.eval()
    loss_sum, n, num, den = 0.0, 0, 0.0, 0.0
    activity = None
    for batch in loader:
        if batch is None:
            continue
        x, mask, _ = batch
        logits, acts = model(x)
        loss_sum += F.cross_entropy(logits, mask.long(), reduction="sum").item() / mask[0].numel()
        n += x.shape[0]
        a, b = dice_counts(logits, mask)
        num, den = num + a, den + b
        act = channel_activity(acts)
        activity = act if activity is None else activity + act
    if n == 0:
        raise ValueError("no readable images to evaluate on")
    r_sp = (activity > 0).float().mean().item()
    return {"task_loss": loss_sum / n, "dice": num / den if den else 1.0, "r_sp0": 1.0 - r_sp, "images": n}


CALIBRATION_STEP = 0.05
CALIBRATION_BIASES = np.round(np.arange(-2.0, 2.0 + 1e-9, CALIBRATION_STEP), 2)  # δ tried by `calibrate_foreground`


@torch.inference_mode()
def dice_by_bias(model: SparseUNet, loader: DataLoader, biases: np.ndarray = CALIBRATION_BIASES) -> np.ndarray:
    """Dice of the object class over all pixels of `loader`'s images when δ is added to the object
    logit, for each δ of `biases`: counts of object and background pixels per margin bin, so
    memory stays one batch whatever the set's size. (len(biases),)"""
    model.eval()
    edges = -biases[::-1]  # pixel predicted object at δ ⇔ margin > −δ
    above_obj = np.zeros(len(biases), np.int64)  # per δ: object pixels predicted object
    above_all = np.zeros(len(biases), np.int64)
    n_obj = 0
    for batch in loader:
        if batch is None:
            continue
        x, mask, _ = batch
        logits, _ = model(x)
        margin = (logits[:, 1] - logits[:, 0]).numpy().ravel()
        obj = mask.numpy().ravel() == 1
        n_obj += int(obj.sum())
        for counts, values in ((above_obj, margin[obj]), (above_all, margin)):
            # values > edge, for each edge: len − (values ≤ edge)
            counts += (len(values) - np.searchsorted(np.sort(values), edges, side="right"))[::-1]
    den = above_all + n_obj
    return np.where(den > 0, 2.0 * above_obj / np.maximum(den, 1), 1.0)


def calibrate_foreground(path: Path, loader: DataLoader) -> dict | None:
    """Add to model.pt's object bias the δ of `CALIBRATION_BIASES` with the best validation Dice (ties:
    the smallest |δ|) and record it; None when the file is already calibrated or has not two classes."""
    from simdex.indexer.checkpoint import load_model

    loaded = load_model(path)
    model, meta = loaded.model, dict(loaded.meta)
    if "calibration" in meta or model.config.num_classes != 2:
        return None
    dice = dice_by_bias(model, loader)
    best = max(range(len(dice)), key=lambda i: (round(float(dice[i]), 12), -abs(CALIBRATION_BIASES[i])))
    delta = float(CALIBRATION_BIASES[best])
    zero = int(np.flatnonzero(CALIBRATION_BIASES == 0)[0])
    with torch.no_grad():
        model.head.bias[1] += delta
    meta["calibration"] = {"object_bias": delta, "val_dice_before": float(dice[zero]),
                           "val_dice_after": float(dice[best]), "biases_tried": [float(CALIBRATION_BIASES[0]),
                                                                                 float(CALIBRATION_BIASES[-1]),
                                                                                 CALIBRATION_STEP]}
    save_model(model, path, meta=meta)
    return meta["calibration"]


def split_indices(n: int, val_fraction: float, seed: int, max_train: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/validation split of range(n)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    val, train = perm[:n_val], perm[n_val:]
    if max_train:
        train = train[:max_train]
    if len(train) == 0:
        raise ValueError(f"not enough images to train on ({n}); need at least 2")
    return np.sort(train), np.sort(val)


class CachedDataset(Dataset):
    """A `SegmentationDataset` decoded once into memory: the same items, in the same order.

    Decoding and fitting a 64×64 PNG and its mask costs about 0.5 ms of CPU, which the decode
    workers took from the training step's threads every epoch for the same result; the whole
    scenes training split (30,000 images) holds 1.5 GB decoded.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, backgrounds: torch.Tensor, ok: torch.Tensor):
        self.images, self.masks, self.backgrounds, self.ok = images, masks, backgrounds, ok

    def __len__(self) -> int:
        return len(self.ok)

    def __getitem__(self, j: int):
        return self.images[j], self.masks[j], self.backgrounds[j], bool(self.ok[j])

    @staticmethod
    def nbytes(n: int, cfg: TrainConfig) -> int:
        """Memory of `n` cached images: float32 (C, S, S) + uint8 mask + background."""
        s = cfg.image_size
        return n * (4 * cfg.in_channels * s * s + s * s + 4 * cfg.in_channels)

    @classmethod
    def decode(cls, ds: SegmentationDataset, workers: int,
               progress: Callable[[int, int], None] | None = None) -> CachedDataset:
        n, c, s = len(ds), ds.channels, ds.size
        images = torch.empty((n, c, s, s), dtype=torch.float32)
        masks = torch.empty((n, s, s), dtype=torch.uint8)
        backgrounds = torch.empty((n, c), dtype=torch.float32)
        ok = torch.empty(n, dtype=torch.bool)
        loader = DataLoader(ds, batch_size=256, num_workers=workers, collate_fn=_collate_all)
        at = 0
        for x, m, bg, good in loader:
            k = len(good)
            images[at:at + k], masks[at:at + k], backgrounds[at:at + k], ok[at:at + k] = x, m, bg, good
            at += k
            if progress:
                progress(at, n)
        return cls(images, masks, backgrounds, ok)


def _collate_all(batch):
    """`collate` keeping the unreadable items, with their ok flags (the cache keeps every slot)."""
    images, masks, bgs, ok = zip(*batch)
    return _stack(images), _stack(masks), _stack(bgs), torch.tensor(ok, dtype=torch.bool)


def _loader(source, idx, cfg: TrainConfig, shuffle: bool, gen: torch.Generator | None,
            progress: Callable[[int, int], None] | None = None) -> DataLoader:
    ds = SegmentationDataset(source, idx, cfg.image_size, cfg.in_channels, cfg.mask_threshold)
    # In-memory IDX images decode in microseconds: worker processes would only add overhead.
    workers = 0 if isinstance(source, IdxSource) else cfg.workers
    if workers and cfg.cache_gb > 0 and CachedDataset.nbytes(len(ds), cfg) <= cfg.cache_gb * 2**30:
        ds, workers = CachedDataset.decode(ds, workers, progress), 0
    # The shuffle draws from `gen` and nothing else does: a DataLoader given the generator also
    # draws its workers' base seed from it, once per new iterator, so a resumed run (a new
    # iterator) would shuffle differently from an uninterrupted one (a reused, persistent one).
    sampler = RandomSampler(ds, generator=gen) if shuffle else None
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=False, persistent_workers=workers > 0)


def write_metrics(out: Path, history: list[EpochMetrics]) -> None:
    tmp = out / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        for m in history:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(m).items()})
    os.replace(tmp, out / "metrics.csv")
    plot_curves(out / "curves.png", history)


def plot_curves(path: Path, history: list[EpochMetrics]) -> None:
    from simdex.indexer.plots import save_panels

    ep = [m.epoch for m in history]
    save_panels(path, [
        {"x": ep, "series": {"train": [m.train_task_loss for m in history],
                             "validation": [m.val_task_loss for m in history]},
         "title": "task loss (cross-entropy)", "xlabel": "epoch"},
        {"x": ep, "series": {"validation": [m.val_dice for m in history]}, "title": "Dice", "xlabel": "epoch"},
        {"x": ep, "series": {"train": [m.train_r_sp0 for m in history],
                             "validation": [m.val_r_sp0 for m in history]},
         "title": "R_sp^0 (ratio of inactive channels)", "xlabel": "epoch"},
    ])


def _selection_score(m: EpochMetrics, cfg: TrainConfig) -> float:
    reached = abs(m.val_r_sp0 - (1.0 - cfg.beta)) <= cfg.sparsity_tolerance
    return m.val_dice + (1.0 if reached else 0.0)


def _save_last(out: Path, model, opt, cfg: TrainConfig, epoch_done: int, history, best_score: float) -> None:
    state = {
        "header": json.dumps({"config": asdict(cfg), "model_config": model.config.to_dict(),
                              "epoch_done": epoch_done, "best_score": best_score,
                              "history": [asdict(m) for m in history]}),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
    }
    tmp = out / "last.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / "last.pt")


ProgressFn = Callable[[dict], None]


def _resume_state(out: Path, cfg: TrainConfig) -> tuple[TrainConfig, dict, list[EpochMetrics], int, float]:
    """What out/last.pt holds: the run's options (but `cfg.epochs`), the saved state, the metrics so far,
    the epoch to start at and the best selection score."""
    last = out / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"nothing to resume: {last} does not exist (start without --resume)")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    header = json.loads(saved["header"])
    epochs = cfg.epochs
    cfg = TrainConfig.from_dict(header["config"])
    cfg.epochs = epochs
    history = [EpochMetrics(**m) for m in header["history"]]
    return cfg, saved, history, header["epoch_done"] + 1, header["best_score"]


LR_FLOOR = 0.05  # the cosine ends at this fraction of the learning rate


def learning_rate(cfg: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The learning rate of step `step` (0-based) of epoch `epoch` (1-based) with `steps` steps per epoch.

    A function of the position only, so a resumed run follows the same schedule. Past
    `decay_epochs` (a run resumed with more epochs) it stays at the floor.
    """
    if cfg.decay_epochs <= 0:
        return cfg.lr
    t = min(((epoch - 1) * steps + step) / (cfg.decay_epochs * max(steps, 1)), 1.0)
    return cfg.lr * (LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)))


def train_step(model, opt, convs, x: torch.Tensor, mask: torch.Tensor, cfg: TrainConfig,
               channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimisation step of R(θ) = L_seg + λ·γ·L_sp on a batch (x (B, C, S, S), mask (B, S, S)):
    the forward pass in channels_last (`channels_last=False`: as given, for benchmarks/bench_index.py's
    NCHW baseline) under bf16 autocast when `cfg.precision` says so. Returns the loss, the task loss
    (cross-entropy, as on validation) and R_sp."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        logits, acts = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    logits = logits.float()  # the loss in fp32; acts only feed R_sp (any positive sum stays positive in bf16)
    task = F.cross_entropy(logits, mask.long())
    seg = task + cfg.dice_weight * soft_dice_loss(logits, mask) if cfg.dice_weight > 0 else task
    r_sp = active_ratio(acts)
    gamma = sparsity_gamma(r_sp, cfg.beta, cfg.alpha)
    loss = seg + cfg.lam * gamma * weight_sparsity_loss(convs) if gamma > 0 else seg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, task, r_sp


def _train_epoch(model, opt, convs, train_loader, cfg: TrainConfig, gen, epoch: int,
                 progress: ProgressFn | None) -> dict[str, float]:
    """One pass over the training images with the sparsity objective R(θ) = L_task + λ·L_sp·γ;
    returns the means of the loss, the task loss and R_sp^0 over its steps."""
    model.train()
    sums = {"loss": 0.0, "task": 0.0, "r": 0.0}
    steps = 0
    n_steps = len(train_loader)
    for i, batch in enumerate(train_loader):
        if batch is None:
            continue
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, epoch, i, n_steps)
        x, mask, bg = batch
        if cfg.augment:
            x, mask = augment_batch(x, mask, bg, cfg, gen)
        loss, task, r_sp = train_step(model, opt, convs, x, mask, cfg)
        steps += 1
        sums["loss"] += loss.item()
        sums["task"] += task.item()
        sums["r"] += 1.0 - r_sp
        if progress:
            progress({"epoch": epoch, "step": steps, "steps": len(train_loader), "batch_size": cfg.batch_size,
                      "images": int(x.shape[0]), "loss": loss.item(),
                      "task_loss": task.item(), "r_sp0": 1.0 - r_sp})
    return {key: value / max(steps, 1) for key, value in sums.items()}


def _save_interrupted(out: Path, model, opt, cfg: TrainConfig, epoch: int, history: list[EpochMetrics],
                      best_score: float) -> None:
    """Keep the weights of the interrupted epoch; resuming runs that epoch again."""
    _save_last(out, model, opt, cfg, epoch - 1, history, best_score)
    if history:
        write_metrics(out, history)
    if not (out / "model.pt").exists():
        save_model(model, out / "model.pt", meta={"train": asdict(cfg), "epoch": epoch - 1, "interrupted": True})


def train(source: ImageSource, out: str | Path, cfg: TrainConfig, resume: bool = False,
          progress: ProgressFn | None = None) -> list[EpochMetrics]:
    """Train a sparse U-Net on `source` and write model.pt, last.pt, metrics.csv, curves.png into `out`.

    Args:
        source: images (and optional masks) to learn the object/background segmentation from.
        out: the run folder.
        cfg: options; with `resume`, the saved options of the run win except `epochs`.
        resume: continue from out/last.pt (the epoch that was interrupted is run again).
        progress: called after every step with {"epoch", "step", "steps", "batch_size", "images", "loss",
            "task_loss", "r_sp0"}, after every epoch with {"epoch_done": EpochMetrics}, and while
            `cfg.cache_gb` decodes the images into memory with {"decoded", "total"}.

    Returns the metrics of every epoch of the run. Ctrl-C stops after saving last.pt
    (and metrics) and re-raises KeyboardInterrupt; model.pt is the best epoch so far.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, saved, history, start_epoch, best_score = _resume_state(out, cfg) if resume else (cfg, None, [], 1, -math.inf)

    torch.manual_seed(cfg.seed + start_epoch)
    model = build_model(UNetConfig(width=cfg.width, in_channels=cfg.in_channels, image_size=cfg.image_size))
    # channels_last: oneDNN's convolutions run faster in NHWC on the CPU (1.18x here: bench_index.py --train-steps)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])

    train_idx, val_idx = split_indices(len(source), cfg.val_fraction, cfg.seed, cfg.max_train_images)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + start_epoch)
    decoded = (lambda done, total: progress({"decoded": done, "total": total})) if progress else None
    # a run that has all its epochs (resumed only to calibrate) decodes no training image
    train_loader = _loader(source, train_idx, cfg, True, gen, decoded) if start_epoch <= cfg.epochs else None
    val_loader = _loader(source, val_idx, cfg, False, None, decoded)
    convs = model.phi_convs()
    log.info("training on %d images, validating on %d; %d features in φ", len(train_idx), len(val_idx),
             model.num_features)

    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            # Each epoch's shuffle and augmentation from its own seed: a run resumed at epoch e
            # draws what an uninterrupted run draws, so both end with the same weights.
            gen.manual_seed(cfg.seed * 1000 + epoch)
            t0 = time.perf_counter()
            means = _train_epoch(model, opt, convs, train_loader, cfg, gen, epoch, progress)
            val = evaluate(model, val_loader)
            m = EpochMetrics(epoch, means["loss"], means["task"], means["r"], val["task_loss"], val["dice"],
                             val["r_sp0"], time.perf_counter() - t0)
            history.append(m)
            score = _selection_score(m, cfg)
            if score > best_score:
                best_score = score
                save_model(model, out / "model.pt", meta={"train": asdict(cfg), "epoch": epoch,
                                                           "validation": asdict(m)})
            _save_last(out, model, opt, cfg, epoch, history, best_score)
            write_metrics(out, history)
            log.info("epoch %d: task %.4f dice %.4f r_sp0 %.3f", epoch, m.val_task_loss, m.val_dice, m.val_r_sp0)
            if progress:
                progress({"epoch_done": m})
    except KeyboardInterrupt:
        _save_interrupted(out, model, opt, cfg, epoch, history, best_score)
        raise
    if cfg.calibrate and (out / "model.pt").exists():  # once, when the run has its epochs (also after a resume)
        done = calibrate_foreground(out / "model.pt", val_loader)
        if done and progress:
            progress({"calibrated": done})
    return history
