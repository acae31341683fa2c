"""`simdex train` and `simdex model-info`."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import click

from simdex.cli.progress import ProgressBar


@click.command()
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: model.pt (best), last.pt (resume), metrics.csv, curves.png.")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Adam learning rate.")
@click.option("--width", default=0.5, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Channel multiplier of Table I (1.0 = 1,600 channels in φ).")
@click.option("--image-size", default=64, show_default=True, type=click.IntRange(8),
              help="Images are fitted (scaled down, padded) to this size; divisible by 8.")
@click.option("--channels", default="3", show_default=True, type=click.Choice(["1", "3"]),
              help="3 = RGB input (grey images are fed as three equal channels), 1 = grey only.")
@click.option("--target-sparsity", default=0.7, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Wanted ratio of inactive channels R_sp^0; β = 1 − this.")
@click.option("--alpha", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="α of γ = ((R_sp − β)/(1 − β))^α: how fast the pressure fades near the target.")
@click.option("--lam", "lam", default=1.0, show_default=True, type=click.FloatRange(0),
              help="λ, weight of the sparsity term L_sp (0 = no sparsity).")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True,
                                                                                      max_open=True))
@click.option("--max-images", default=0, show_default=True, type=click.IntRange(0),
              help="Train on at most this many images (0 = all).")
@click.option("--lr-schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "constant"]),
              help="cosine: decay the learning rate over --epochs to 5 % of --lr (a resumed run keeps "
                   "its first horizon); constant: the paper's fixed rate.")
@click.option("--invert", "invert_prob", default=0.3, show_default=True, type=click.FloatRange(0, 1),
              help="Chance that a training image is inverted (1 − x), so dark-on-light objects are "
                   "learnt as well as light-on-dark ones.")
@click.option("--dice-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Weight of a soft-Dice term added to the pixel-wise cross-entropy (0: cross-entropy alone, as "
                   "the paper and the shipped model). 1 raised the scenes' Dice 0.925 → 0.933 but made the "
                   "features rank worse (benchmarks/results/bench_scenes_dice8.md).")
@click.option("--precision", default="bf16", show_default=True, type=click.Choice(["bf16", "fp32"]),
              help="bf16: the training forward pass under bfloat16 autocast (weights, Adam and the loss stay "
                   "fp32; 1.7x the images/s of fp32 on a CPU with AVX-512 BF16; the model is used in fp32).")
@click.option("--cache-gb", default=4.0, show_default=True, type=click.FloatRange(0),
              help="Decode image files once into memory when they fit in this many GiB, instead of every "
                   "epoch (0: always decode; IDX data is in memory anyway).")
@click.option("--no-calibration", is_flag=True,
              help="Keep the object class's bias as trained (by default the last step adds to it the constant "
                   "with the best validation Dice, from -2 to 2 in steps of 0.05; the features do not change).")
@click.option("--no-augment", is_flag=True, help="Turn off polarity/shift/rotation/scale augmentation.")
@click.option("--mask-threshold", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="Mask rule: a pixel is object when it differs from the border's median colour by more.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0),
              help="DataLoader workers decoding image files (IDX data is read in-process).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(source, out, epochs, batch_size, lr, lr_schedule, invert_prob, width, image_size, channels, target_sparsity, alpha, lam,
          val_fraction, max_images, dice_weight, precision, cache_gb, no_calibration, no_augment, mask_threshold, seed, workers, resume, quiet):
    """Train the sparse U-Net on SOURCE: a folder of images, a .csv/.parquet list with a
    `path` column (and optional `mask`), an IDX file, or `fashion-mnist:train`.

    Objects must lie on a blank background unless masks are given: the training mask is
    every pixel that differs from the median colour of the image border by more than
    --mask-threshold. Each epoch prints the task loss, the validation Dice and R_sp^0
    (the paper's Table II); the best epoch is kept in OUT/model.pt, loadable without
    executing code. Ctrl-C saves OUT/last.pt: run the same command with --resume.

    \b
    Example (the shipped default model, after `simdex scenes`):
      simdex train fashion-mnist-scenes:train --out runs/default --epochs 18 --batch-size 32
    """
    from simdex.indexer.sources import SourceError, open_source
    from simdex.indexer.train import TrainConfig
    from simdex.indexer.train import train as run_training

    if image_size % 8:
        raise click.BadParameter("must be divisible by 8 (the U-Net pools three times)", param_hint="--image-size")
    try:
        src = open_source(source)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, beta=1.0 - target_sparsity, alpha=alpha,
                      lam=lam, val_fraction=val_fraction, max_train_images=max_images, augment=not no_augment,
                      mask_threshold=mask_threshold, seed=seed, workers=workers, width=width,
                      in_channels=int(channels), image_size=image_size, invert_prob=invert_prob,
                      dice_weight=dice_weight, precision=precision, cache_gb=cache_gb, calibrate=not no_calibration, decay_epochs=epochs if lr_schedule == "cosine" else 0)
    logging.basicConfig(level=logging.WARNING)
    bar: list[ProgressBar | None] = [None]
    epochs_run = [0]  # in this call: a resumed run that has its epochs runs none

    def progress(p: dict) -> None:
        if "decoded" in p:  # decoding the images into memory (--cache-gb), before the first epoch
            if bar[0] is None:
                bar[0] = ProgressBar(p["total"], "decoding", unit="img", enabled=not quiet)
            bar[0].set(p["decoded"])
            if p["decoded"] >= p["total"]:
                bar[0].close()
                bar[0] = None
            return
        if "calibrated" in p:
            c = p["calibrated"]
            click.echo(f"calibrated: object bias {c['object_bias']:+.2f} (validation Dice {c['val_dice_before']:.4f} "
                       f"→ {c['val_dice_after']:.4f})")
            return
        if "epoch_done" in p:
            m = p["epoch_done"]
            epochs_run[0] += 1
            if bar[0]:
                bar[0].close()
                bar[0] = None
            click.echo(f"epoch {m.epoch:3d}  task loss {m.train_task_loss:.4f} (val {m.val_task_loss:.4f})  "
                       f"val Dice {m.val_dice:.4f}  val R_sp^0 {m.val_r_sp0:.3f}  {m.seconds:.0f} s")
            return
        if bar[0] is None:
            # the run's batch size: a resumed run keeps its own, whatever --batch-size says
            bar[0] = ProgressBar(p["steps"] * p["batch_size"], f"epoch {p['epoch']}", unit="img", enabled=not quiet)
        bar[0].update(p["images"], extra=f"loss {p['loss']:.4f} task {p['task_loss']:.4f} R_sp^0 {p['r_sp0']:.3f}")

    try:
        history = run_training(src, out, cfg, resume=resume, progress=progress)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted: saved {out}/last.pt; continue with the same command and "
                                   f"--resume (best model so far: {out}/model.pt)") from None
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not epochs_run[0]:
        click.echo(f"nothing to do: {out} already trained {len(history)} epoch{'s' * (len(history) != 1)} "
                   f"(raise --epochs to go on); best model: {out}/model.pt")
    else:
        click.echo(f"best model: {out}/model.pt   metrics: {out}/metrics.csv   curves: {out}/curves.png")


@click.command("model-info")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Model file (default: the model shipped with simdex).")
@click.option("--evaluate", "eval_source", default=None,
              help="Also measure Dice and R_sp^0 on this source, e.g. fashion-mnist:test.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def model_info(model_path, eval_source, batch_size, as_json):
    """Show a model's config, φ (layers, channels, strides), checksum and training
    metrics; with --evaluate, its segmentation Dice and sparsity R_sp^0 on a source.

    \b
    Example (the figures of the README):
      simdex model-info --evaluate fashion-mnist:test
    """
    from simdex.indexer.checkpoint import ModelFileError, load_model
    from simdex.indexer.sources import SourceError, open_source

    try:
        lm = load_model(model_path)
    except ModelFileError as exc:
        raise click.ClickException(str(exc)) from None
    info = {"path": str(lm.path), "sha256": lm.sha256, "config": lm.model.config.to_dict(),
            "num_features": lm.model.num_features, "phi": [asdict(s) for s in lm.model.phi],
            "training": lm.meta}
    if eval_source:
        from simdex.indexer.train import TrainConfig, _loader, evaluate

        try:
            src = open_source(eval_source)
        except SourceError as exc:
            raise click.ClickException(str(exc)) from None
        import numpy as np

        c = lm.model.config
        cfg = TrainConfig(batch_size=batch_size, image_size=c.image_size, in_channels=c.in_channels,
                          mask_threshold=lm.meta.get("train", {}).get("mask_threshold", 0.05))
        try:
            info["evaluation"] = {"source": eval_source, **evaluate(lm.model, _loader(src, np.arange(len(src)), cfg,
                                                                                       False, None))}
        except ValueError as exc:  # no readable image in the source
            raise click.ClickException(f"cannot evaluate on {eval_source}: {exc}") from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    c = info["config"]
    click.echo(f"model     {info['path']}\nsha256    {info['sha256']}")
    click.echo(f"config    width {c['width']}, {c['in_channels']} input channel(s), {c['image_size']}×"
               f"{c['image_size']}, {info['num_features']} features in φ")
    click.echo("φ         " + ", ".join(f"{s['name']}:{s['channels']}/{s['stride']}" for s in info["phi"]))
    v = lm.meta.get("validation")
    if v:
        click.echo(f"training  epoch {v['epoch']}: val Dice {v['val_dice']:.4f}, val R_sp^0 {v['val_r_sp0']:.3f}")
    cal = lm.meta.get("calibration")
    if cal:
        click.echo(f"calibrated object bias {cal['object_bias']:+.2f}: val Dice {cal['val_dice_before']:.4f} → "
                   f"{cal['val_dice_after']:.4f}")
    if "evaluation" in info:
        e = info["evaluation"]
        click.echo(f"evaluated on {e['source']} ({e['images']} images): Dice {e['dice']:.4f}, "
                   f"R_sp^0 {e['r_sp0']:.3f}, task loss {e['task_loss']:.4f}")
