import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from simdex.cli.main import main
from simdex.indexer.checkpoint import load_model
from simdex.indexer.sources import IdxSource, ImageRecord
from simdex.indexer.train import (
    LR_FLOOR,
    TrainConfig,
    _loader,
    augment_batch,
    evaluate,
    learning_rate,
    soft_dice_loss,
    train,
)
from synth import blob_images


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _source(n=96, size=16, seed=1):
    imgs = (blob_images(n, size, seed)[:, 0] * 255).astype(np.uint8)
    return IdxSource("blobs", imgs, [ImageRecord(f"blobs#{i}", i) for i in range(n)])


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=3e-3, width=0.25, image_size=16, lam=0.0, val_fraction=0.25)
    history = train(_source(), tmp_path, cfg)
    assert [m.epoch for m in history] == [1, 2, 3]
    assert history[-1].val_task_loss < 0.5 * history[0].val_task_loss
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.model.config.width == 0.25 and loaded.meta["epoch"] in (1, 2, 3)
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    with Image.open(tmp_path / "curves.png") as im:
        assert im.size[0] > 300

    # --resume goes on from last.pt with the saved options and history.
    more = train(_source(), tmp_path, TrainConfig(epochs=4), resume=True)
    assert [m.epoch for m in more] == [1, 2, 3, 4]
    assert len(_rows(tmp_path / "metrics.csv")) == 4


def test_interrupt_leaves_a_usable_checkpoint_and_resume_continues(tmp_path):
    calls = {"n": 0}

    def stop_in_second_epoch(p):
        if p.get("epoch") == 2 and p.get("step") == 2:
            raise KeyboardInterrupt

    cfg = TrainConfig(epochs=3, batch_size=16, width=0.25, image_size=16, val_fraction=0.25)
    with pytest.raises(KeyboardInterrupt):
        train(_source(), tmp_path, cfg, progress=stop_in_second_epoch)
    assert load_model(tmp_path / "model.pt").meta["epoch"] == 1
    history = train(_source(), tmp_path, TrainConfig(epochs=3), resume=True,
                    progress=lambda p: calls.__setitem__("n", calls["n"] + 1))
    assert [m.epoch for m in history] == [1, 2, 3] and calls["n"] > 0


def test_augmentation_moves_image_and_mask_together():
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(blob_images(8, 32, seed=3))
    mask = (x[:, 0] > 0.05).to(torch.uint8)
    xa, ma = augment_batch(x, mask, torch.zeros(8, 1), TrainConfig(), gen)
    assert not torch.equal(xa, x)
    agreement = ((xa[:, 0] > 0.05) == (ma == 1)).float().mean().item()
    assert agreement > 0.97  # warped mask still matches the warped object


def test_evaluate_reports_perfect_dice_for_a_perfect_model():
    class Oracle(torch.nn.Module):
        def forward(self, x):
            obj = (x[:, 0] > 0.05).float()
            return torch.stack([1 - obj, obj], 1) * 10, [torch.ones(x.shape[0], 2, 4, 4), torch.zeros(
                x.shape[0], 2, 4, 4)]


    src = _source(32)
    res = evaluate(Oracle(), _loader(src, np.arange(32), TrainConfig(batch_size=8, image_size=16), False, None))
    assert res["dice"] == pytest.approx(1.0)
    assert res["r_sp0"] == pytest.approx(0.5)
    assert res["images"] == 32


def test_cli_train_on_a_folder_then_model_info(tmp_path):
    folder = tmp_path / "imgs"
    for i, img in enumerate(blob_images(40, 24, seed=5)):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).astype(np.uint8)).save(sub / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")  # skipped, training goes on
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(main, ["train", str(folder), "--out", str(out), "--epochs", "1", "--width", "0.25",
                               "--image-size", "16", "--batch-size", "8", "--workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "val Dice" in res.output and (out / "model.pt").exists()
    res = runner.invoke(main, ["model-info", "--model", str(out / "model.pt"), "--evaluate", str(folder)])
    assert res.exit_code == 0, res.output
    assert "Dice" in res.output and "sha256" in res.output
    # resuming a run that has its epochs trains nothing, and says so
    res = runner.invoke(main, ["train", str(folder), "--out", str(out), "--epochs", "1", "--resume", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.output and "already trained 1 epoch " in res.output and "val Dice" not in res.output


def test_cli_reports_user_mistakes_without_traceback(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "source not found" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "o"), "--image-size", "28"])
    assert res.exit_code != 0 and "divisible by 8" in res.output
    res = runner.invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "o"), "--resume"])
    assert res.exit_code != 0
    res = runner.invoke(main, ["model-info", "--model", str(tmp_path / "nope.pt")])
    assert res.exit_code != 0 and "not found" in res.output


def test_sigterm_stops_training_like_ctrl_c_with_a_resumable_checkpoint(tmp_path):
    """`kill PID` on a real `simdex train` process saves last.pt and says how to resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(blob_images(64, 16, seed=2)):
        Image.fromarray((img[0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "simdex.cli.main", "train", str(folder), "--out", str(out), "--epochs", "500",
           "--width", "0.25", "--image-size", "16", "--batch-size", "8", "--workers", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while not (out / "metrics.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0]
    os.kill(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1, output
    assert "interrupted: saved" in output and "--resume" in output and "Traceback" not in output
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert "model" in saved and len(_rows(out / "metrics.csv")) >= 1


def test_cli_runs_outside_the_main_thread():
    """The SIGTERM handler is installed from the main thread only: embedding the CLI in a thread works."""
    import threading

    results = []
    thread = threading.Thread(target=lambda: results.append(CliRunner().invoke(main, ["delete", "--help"])))
    thread.start()
    thread.join()
    assert results[0].exit_code == 0 and "tombstone" in results[0].output, results[0].output


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    """Each epoch draws its shuffle and augmentation from its own seed, so `--resume` after any
    epoch reproduces the uninterrupted run: how the shipped model was trained (in three runs)."""
    cfg = TrainConfig(epochs=3, batch_size=16, width=0.25, image_size=16, val_fraction=0.25, seed=5,
                      decay_epochs=3, invert_prob=0.3)
    train(_source(), tmp_path / "whole", cfg)
    train(_source(), tmp_path / "parts", TrainConfig(**{**cfg.__dict__, "epochs": 1}))
    train(_source(), tmp_path / "parts", TrainConfig(epochs=2), resume=True)
    train(_source(), tmp_path / "parts", TrainConfig(epochs=3), resume=True)
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    parts = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)["model"]
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name


def test_resume_equals_an_uninterrupted_run_with_decoding_workers(tmp_path):
    """The same with image files read by a persistent DataLoader worker (the shipped model's case)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate((blob_images(24, 16, seed=3)[:, 0] * 255).astype(np.uint8)):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    from simdex.indexer.sources import open_source

    cfg = TrainConfig(epochs=2, batch_size=8, width=0.25, image_size=16, val_fraction=0.25, seed=2, workers=1)
    train(open_source(folder), tmp_path / "whole", cfg)
    train(open_source(folder), tmp_path / "parts", TrainConfig(**{**cfg.__dict__, "epochs": 1}))
    train(open_source(folder), tmp_path / "parts", TrainConfig(epochs=2), resume=True)
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    parts = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[name], parts[name]) for name in whole)


def _png_folder(path, n=24, size=16, seed=3):
    path.mkdir()
    for i, im in enumerate((blob_images(n, size, seed=seed)[:, 0] * 255).astype(np.uint8)):
        Image.fromarray(im).save(path / f"{i:02d}.png")
    return path


def _weights(run):
    return torch.load(run / "last.pt", weights_only=True)["model"]


def test_images_decoded_once_into_memory_are_the_decoded_images_and_resume_exactly(tmp_path):
    """--cache-gb changes where the images come from, not what they are or their order; a cached
    run resumed after an epoch ends with the weights of an uninterrupted one (the shipped model's
    recipe). Not bit-equal to a run decoding in workers: their prefetching draws the sampler's
    next permutation from the shared generator at another moment."""
    from simdex.indexer.sources import open_source

    folder = _png_folder(tmp_path / "imgs")
    cfg = TrainConfig(epochs=2, batch_size=8, width=0.25, image_size=16, val_fraction=0.25, seed=2, workers=1)
    cached_cfg = TrainConfig(**{**cfg.__dict__, "cache_gb": 1.0})
    seen = []
    batches = {}
    for name, c in (("decoded", cfg), ("cached", cached_cfg)):
        gen = torch.Generator()
        loader = _loader(open_source(folder), np.arange(18), c, True, gen,
                         lambda done, total: seen.append((done, total)))
        batches[name] = []
        for _ in range(2):  # two epochs, each shuffled from the same seed
            gen.manual_seed(7)
            batches[name].append(list(loader))
    assert seen and seen[-1] == (18, 18)  # the decoding's progress, for the cached loader only
    for a, b in zip(batches["decoded"], batches["cached"]):
        for x, y in zip(a, b):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
    train(open_source(folder), tmp_path / "whole", cached_cfg)
    train(open_source(folder), tmp_path / "parts", TrainConfig(**{**cached_cfg.__dict__, "epochs": 1}))
    train(open_source(folder), tmp_path / "parts", TrainConfig(epochs=2), resume=True)
    whole, parts = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    assert all(torch.equal(whole[name], parts[name]) for name in whole)


def test_bf16_training_resumes_bit_for_bit_and_learns(tmp_path):
    """The bf16 autocast forward (the shipped model's recipe) keeps `--resume` exact, and its
    weights differ from fp32's (the option does something) while the loss still falls."""
    cfg = TrainConfig(epochs=2, batch_size=16, width=0.25, image_size=16, val_fraction=0.25, seed=5,
                      decay_epochs=2, lr=3e-3, precision="bf16")
    whole = train(_source(), tmp_path / "whole", cfg)
    train(_source(), tmp_path / "parts", TrainConfig(**{**cfg.__dict__, "epochs": 1}))
    train(_source(), tmp_path / "parts", TrainConfig(epochs=2), resume=True)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    assert all(torch.equal(a[name], b[name]) for name in a)
    train(_source(), tmp_path / "fp32", TrainConfig(**{**cfg.__dict__, "precision": "fp32"}))
    c = _weights(tmp_path / "fp32")
    assert any(not torch.equal(a[name], c[name]) for name in a if a[name].is_floating_point())
    assert whole[-1].train_task_loss < whole[0].train_task_loss


def test_cosine_schedule_decays_to_the_floor_and_keeps_it_past_its_horizon():
    cfg = TrainConfig(lr=1e-3, decay_epochs=4)
    lrs = [learning_rate(cfg, e, s, 10) for e in range(1, 7) for s in range(10)]
    assert lrs[0] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[20] == pytest.approx(1e-3 * (LR_FLOOR + (1 - LR_FLOOR) * 0.5))  # half-way: the cosine's middle
    assert lrs[-1] == pytest.approx(1e-3 * LR_FLOOR) and lrs[40] == pytest.approx(1e-3 * LR_FLOOR)
    assert learning_rate(TrainConfig(lr=2e-3), 5, 3, 10) == 2e-3  # decay_epochs 0: the paper's constant rate


def test_polarity_augmentation_inverts_image_and_background_but_not_the_mask():
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(blob_images(8, 32, seed=3))
    mask = (x[:, 0] > 0.05).to(torch.uint8)
    still = TrainConfig(invert_prob=1.0, max_shift=0.0, max_rotation_deg=0.0, min_scale=1.0, max_scale=1.0)
    xa, ma = augment_batch(x, mask, torch.zeros(8, 1), still, gen)
    assert torch.allclose(xa, 1.0 - x, atol=1e-5) and torch.equal(ma, mask)
    half = TrainConfig(invert_prob=0.5, max_shift=0.0, max_rotation_deg=0.0, min_scale=1.0, max_scale=1.0)
    xb, _ = augment_batch(x, mask, torch.zeros(8, 1), half, torch.Generator().manual_seed(1))
    inverted = [bool(torch.allclose(xb[i], 1.0 - x[i], atol=1e-5)) for i in range(8)]
    assert 0 < sum(inverted) < 8  # some images inverted, others kept
    assert all(inv or torch.allclose(xb[i], x[i], atol=1e-5) for i, inv in enumerate(inverted))


def test_train_cli_records_the_schedule_and_polarity_in_the_model(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate((blob_images(16, 16, seed=4)[:, 0] * 255).astype(np.uint8)):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    res = CliRunner().invoke(main, ["train", str(folder), "--out", str(tmp_path / "run"), "--epochs", "2",
                                    "--width", "0.25", "--image-size", "16", "--workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    meta = load_model(tmp_path / "run" / "model.pt").meta["train"]
    assert meta["decay_epochs"] == 2 and meta["invert_prob"] == 0.3 and meta["dice_weight"] == 0.0
    res = CliRunner().invoke(main, ["train", str(folder), "--out", str(tmp_path / "dice"), "--epochs", "1",
                                    "--width", "0.25", "--image-size", "16", "--workers", "0", "--quiet",
                                    "--dice-weight", "1"])
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "dice" / "model.pt").meta["train"]["dice_weight"] == 1.0


def test_soft_dice_loss_is_zero_when_right_one_when_wrong_and_weighs_small_objects():
    mask = torch.zeros(2, 16, 16, dtype=torch.uint8)
    mask[0, 2:4, 2:4] = 1  # a 4-pixel object
    mask[1, 4:12, 4:12] = 1  # a 64-pixel one
    sure = torch.stack([1 - mask.float(), mask.float()], 1) * 20
    assert soft_dice_loss(sure, mask).item() == pytest.approx(0.0, abs=1e-3)
    assert soft_dice_loss(-sure, mask).item() == pytest.approx(1.0, abs=0.02)  # eps smooths
    # Missing the small object's 4 pixels costs cross-entropy 4 pixels' worth of 512, Dice 4 of 68
    # object pixels: the term that makes a small object's rim matter.
    miss = sure.clone()
    miss[0, :, 2:4, 2:4] = -miss[0, :, 2:4, 2:4]
    wrong_share = 4 / mask.numel()
    ce = torch.nn.functional.cross_entropy(miss, mask.long()).item()
    assert ce == pytest.approx(wrong_share * 20, rel=1e-3)  # each wrong pixel costs 20 nats here
    assert soft_dice_loss(miss, mask).item() > 3 * wrong_share
    logits = torch.zeros(2, 2, 16, 16, requires_grad=True)
    soft_dice_loss(logits, mask).backward()
    assert logits.grad[:, 1][mask == 1].lt(0).all()  # raising the object logit on object pixels lowers the loss


def test_a_resumed_run_of_an_older_model_keeps_cross_entropy_alone():
    """Runs saved before the Dice term resume as they were trained: the option's absence reads as 0."""
    assert TrainConfig.from_dict({"epochs": 3}).dice_weight == 0.0


def test_calibration_adds_the_validation_dice_best_bias_to_the_object_logit(tmp_path):
    """The last step of a run: δ on the object logit chosen by validation Dice, counted by margin
    bins; equal to thresholding every pixel's margin at −δ, written once into model.pt."""
    from simdex.indexer.checkpoint import load_model
    from simdex.indexer.train import CALIBRATION_BIASES, calibrate_foreground, dice_by_bias

    cfg = TrainConfig(epochs=1, batch_size=16, width=0.25, image_size=16, val_fraction=0.25, seed=1, lr=3e-3,
                      calibrate=False)
    train(_source(), tmp_path, cfg)
    before = load_model(tmp_path / "model.pt")
    assert "calibration" not in before.meta
    loader = _loader(_source(), np.arange(24), cfg, False, None)
    dice = dice_by_bias(before.model, loader)
    with torch.inference_mode():  # the same by brute force, pixel by pixel
        x = torch.cat([b[0] for b in loader])
        mask = torch.cat([b[1] for b in loader]) == 1
        logits, _ = before.model(x)
        margin = logits[:, 1] - logits[:, 0]
    for k in (0, len(CALIBRATION_BIASES) // 2, len(CALIBRATION_BIASES) - 1):
        pred = margin + float(CALIBRATION_BIASES[k]) > 0
        assert dice[k] == pytest.approx(2 * (pred & mask).sum().item() / (pred.sum() + mask.sum()).item())
    done = calibrate_foreground(tmp_path / "model.pt", loader)
    assert done["val_dice_after"] == pytest.approx(float(dice.max())) and done["val_dice_after"] >= done["val_dice_before"]
    after = load_model(tmp_path / "model.pt")
    shift = after.model.head.bias - before.model.head.bias
    assert shift[0].item() == 0 and shift[1].item() == pytest.approx(done["object_bias"])
    assert after.meta["calibration"] == done
    assert calibrate_foreground(tmp_path / "model.pt", loader) is None  # once
    a, b = after.model.state_dict(), before.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "head.bias")  # the features' layers untouched
