"""`simdex labels` (engine.labels): Park's label similarity on synthetic classes whose answer is
known, the streaming statistics against a direct computation, and Student's t tail."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from synth_catalog import append_objects, new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.labels import (
    LabelError,
    label_similarity,
    label_statistics,
    significance_vectors,
    t_log_sf,
    welch_one_sided,
)

LAYERS = [("C11", 8), ("C12", 8), ("C21", 8)]
N = 24
# channels each class excites (+2 over a baseline of 1): footwear shares 0-5, boot and
# sneaker also share 12; shirts share 17-18. Channel 23 is large and noisy (10 ± 4) for every
# class and larger still (30 ± 4) for boots and bags: it dominates the prototypes' cosine (which
# ranks Bag first for boots), while the tests weigh it as one channel among the boot's ten.
EXCITES = {"Ankle boot": [0, 1, 2, 3, 4, 5, 6, 7, 12], "Sneaker": [0, 1, 2, 3, 4, 5, 8, 9, 12],
           "Sandal": [0, 1, 2, 3, 4, 5, 10, 11], "Bag": [13, 14, 15, 16], "Shirt": [17, 18, 19],
           "T-shirt": [17, 18, 20]}
BIG = {"Ankle boot": 30.0, "Bag": 30.0}


def make_objects(per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    xs, labels = [], []
    for name, channels in EXCITES.items():
        centre = np.ones(N)
        centre[channels] += 2.0
        centre[21] = 0.0  # a dead channel: never tested
        centre[23] = BIG.get(name, 10.0)
        x = centre + rng.normal(0, 0.5, (per_class, N))
        x[:, 23] = centre[23] + rng.normal(0, 4.0, per_class)
        x[:, 21] = 0.0
        xs.append(np.maximum(x, 0))
        labels += [name] * per_class
    order = rng.permutation(len(labels))
    return np.concatenate(xs)[order].astype(np.float32), [labels[i] for i in order]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cat = new_catalog(tmp_path_factory.mktemp("labels") / "cat", LAYERS)
    x, labels = make_objects(60, seed=3)
    append_objects(cat, x[:200], labels[:200], "a", split="train")
    append_objects(cat, x[200:], labels[200:], "b", split="test")
    return cat


def direct_welch(x: np.ndarray, labels: np.ndarray, label: str) -> np.ndarray:
    a, b = x[labels == label].astype(np.float64), x[labels != label].astype(np.float64)
    se = a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(se > 0, (a.mean(0) - b.mean(0)) / np.sqrt(se), 0.0)


def test_ankle_boot_ranks_sneaker_then_sandal_while_prototypes_pick_bag(catalog):
    result = label_similarity(catalog, "Ankle boot")
    rows = result.table.to_pylist()
    assert [r["label"] for r in rows[:2]] == ["Sneaker", "Sandal"]
    assert [r["welch_rank"] for r in rows] == [1, 2, 3, 4, 5]
    by_label = {r["label"]: r for r in rows}
    # the boot's significant channels: its own nine and channel 23 (larger than the rest's mean)
    assert result.significant_channels == 10 and result.tested_channels == N - 1
    assert by_label["Sneaker"]["shared_channels"] == 7 and by_label["Sandal"]["shared_channels"] == 6
    assert by_label["Bag"]["shared_channels"] == 1 and by_label["Shirt"]["shared_channels"] == 0
    assert by_label["Shirt"]["welch_similarity"] == 0.0
    # the plain prototype cosine is dominated by the large channel 23: Bag first, the footwear last
    assert by_label["Bag"]["prototype_rank"] == 1
    assert {by_label["Sneaker"]["prototype_rank"], by_label["Sandal"]["prototype_rank"]} == {4, 5}
    assert sum(r["objects"] for r in rows) + result.objects == 360
    # the shirts find each other
    shirt = label_similarity(catalog, "Shirt").table.to_pylist()
    assert shirt[0]["label"] == "T-shirt" and shirt[0]["shared_channels"] == 2


def test_streaming_statistics_and_welch_equal_a_direct_computation(catalog):
    parts = list(catalog.iter_features())
    x = np.concatenate([p[1] for p in parts])
    labels = np.array(catalog.read_objects(["label"]).column("label").to_pylist())
    small = label_statistics(catalog, batch_rows=7)
    big = label_statistics(catalog, batch_rows=4096)
    np.testing.assert_allclose(small.sums, big.sums, rtol=1e-12)
    np.testing.assert_allclose(small.sumsq, big.sumsq, rtol=1e-12)
    assert small.labels == sorted(EXCITES)
    tests = welch_one_sided(small)
    for i, name in enumerate(small.labels):
        np.testing.assert_allclose(small.prototypes()[i], x[labels == name].mean(0), rtol=1e-5)
        np.testing.assert_allclose(tests.t[i], direct_welch(x, labels, name), rtol=1e-6, atol=1e-9)
    assert not tests.tested[:, 21].any()
    # significance: exactly the positive t whose one-sided p clears alpha / tested channels
    s = significance_vectors(tests, alpha=0.01)
    threshold = math.log10(0.01 / (N - 1))
    want = (tests.t > 0) & (tests.log10_p < threshold) & tests.tested
    np.testing.assert_array_equal(s > 0, want)


def test_split_tombstones_and_errors(tmp_path, catalog):
    train = label_statistics(catalog, split="train")
    assert train.counts.sum() == 200 and train.rows == "split = train"
    result = label_similarity(catalog, "Ankle boot", split="train")
    assert [r["label"] for r in result.table.to_pylist()[:2]] == ["Sneaker", "Sandal"]
    with pytest.raises(LabelError, match="no object has split = 'valid'; values: test, train"):
        label_statistics(catalog, split="valid")
    with pytest.raises(LabelError, match=r"no label 'Boot'.*labels: Ankle boot \(60\), Bag \(60\)"):
        label_similarity(catalog, "Boot")
    with pytest.raises(LabelError, match="no column 'colour'"):
        label_statistics(catalog, column="colour")
    other = new_catalog(tmp_path / "other", LAYERS)
    x, labels = make_objects(10, seed=4)
    ids = append_objects(other, x, labels, "a", split=None)
    with pytest.raises(LabelError, match="no 'split' column"):
        label_statistics(other, split="train")
    other.add_deleted(ids[np.array(labels) == "Bag"][:4])
    assert dict(zip(*[label_statistics(other).labels, label_statistics(other).counts]))["Bag"] == 6


def test_student_t_tail_against_closed_forms():
    t = np.array([-3.0, -0.5, 0.0, 0.5, 1.0, 3.0, 10.0, 1e3, 1e5])
    cauchy = 0.5 - np.arctan(t) / np.pi  # df = 1
    np.testing.assert_allclose(np.exp(t_log_sf(t, np.ones_like(t))), cauchy, rtol=1e-9)
    root = np.sqrt(t**2 + 2)
    df2 = np.where(t >= 0, 1 / (root * (root + np.abs(t))), 1 - 1 / (root * (root + np.abs(t))))  # df = 2
    np.testing.assert_allclose(np.exp(t_log_sf(t, np.full_like(t, 2.0))), df2, rtol=1e-9)
    # deep in the tail, exact in log space while p is a float64 (df = 2: p ≈ 1/(2t²)); beyond, −inf
    assert t_log_sf(np.array([1e150]), np.array([2.0]))[0] == pytest.approx(-2 * math.log(1e150) - math.log(2), rel=1e-9)
    assert t_log_sf(np.array([1e200]), np.array([2.0]))[0] == -np.inf
    # huge df: the normal tail
    assert math.exp(t_log_sf(np.array([3.0]), np.array([1e7]))[0]) == pytest.approx(
        0.5 * math.erfc(3 / math.sqrt(2)), rel=1e-4)


def test_cli(catalog):
    runner = CliRunner()
    out = runner.invoke(cli_main, ["labels", "--catalog", str(catalog.root), "--similar-to", "Ankle boot"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "'Ankle boot': 60 objects" in lines[0] and "10 of 23 channels" in lines[0]
    assert lines[2].split()[:2] == ["rank", "label"]
    assert lines[3].split()[:2] == ["1", "Sneaker"] and lines[4].split()[:2] == ["2", "Sandal"]
    out = runner.invoke(cli_main, ["labels", "-c", str(catalog.root), "--similar-to", "Shirt", "--format", "json"])
    first = json.loads(out.output.splitlines()[0])
    assert first["similar_to"] == "Shirt" and first["label"] == "T-shirt" and first["welch_rank"] == 1
    for args in (["--similar-to", "Boot"], ["--similar-to", "Bag", "--split", "valid"],
                 ["--similar-to", "Bag", "--column", "colour"]):
        out = runner.invoke(cli_main, ["labels", "-c", str(catalog.root), *args])
        assert out.exit_code == 1 and out.output.startswith("Error: ") and "Traceback" not in out.output, args
