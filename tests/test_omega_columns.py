"""Ω per label column (`BuildConfig.omega_columns`, `simdex query --omega instance`) and learned Ω's
sample for fine labels (an item's few copies)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from synth_catalog import new_catalog

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, BuildError, build
from simdex.engine.omega_learned import LearnedOmegaConfig, learn_omega, sample_labelled_rows
from simdex.engine.searcher import Searcher, SearchError
from simdex.evaluate import EvalConfig, evaluate
from simdex.indexer.shards import ShardWriter, object_schema

N, ITEMS, COPIES = 24, 120, 4
CLASS_FEATURES, ITEM_FEATURES = range(4, 8), range(8, 14)


def items_and_copies(seed: int = 0):
    """Objects that are copies of items: the class (item % 3) shows in features 4–7, the item itself
    in features 8–13, every feature has noise. Returns x (n, N), class and item of each row."""
    rng = np.random.default_rng(seed)
    class_centre = rng.normal(0, 2.0, (3, N))
    item_centre = rng.normal(0, 2.0, (ITEMS, N))
    item = np.repeat(np.arange(ITEMS), COPIES)
    cls = item % 3
    x = rng.normal(0, 1.0, (len(item), N)) + 2.0
    x[:, list(CLASS_FEATURES)] += class_centre[cls][:, list(CLASS_FEATURES)]
    x[:, list(ITEM_FEATURES)] += item_centre[item][:, list(ITEM_FEATURES)] + 0.2 * rng.normal(size=(len(item), 6))
    return np.maximum(x, 0).astype(np.float32), cls, item


@pytest.fixture
def item_catalog(tmp_path):
    cat = new_catalog(tmp_path / "items", [("C11", 12, 1), ("C21", 12, 2)])
    x, cls, item = items_and_copies()
    n = len(x)
    schema = object_schema(N, [("split", "split", pa.string()), ("instance", "instance", pa.string())])
    with cat.lock():
        cat.begin_job("items", {"source": "items", "num_images": n})
        w = ShardWriter(cat, schema)
        ids = np.arange(n)
        # the last 30 items are held out: their first copy is a query, the others the gallery
        held = item >= ITEMS - 30
        first = np.r_[True, item[1:] != item[:-1]]
        split = np.where(held, np.where(first, "query", "gallery"), "train")
        w.add_objects({"object_id": ids, "image_id": ids, "source": [f"items/{i}.png" for i in ids], "ordinal": ids,
                       "component": np.zeros(n, np.int32), "label": [f"class{c}" for c in cls],
                       "instance": [f"item{i}" for i in item], "split": split,
                       "x0": np.zeros(n, np.int32), "y0": np.zeros(n, np.int32), "x1": np.full(n, 8, np.int32),
                       "y1": np.full(n, 8, np.int32), "area": np.full(n, 64)}, x)
        shard_tmp, errors_tmp = w.close()
        cat.commit("items", shard_tmp=shard_tmp, errors_tmp=errors_tmp, ordinal_start=0, next_ordinal=n,
                   first_object_id=0, rows=n, first_image_id=0, images=n, error_rows=0)
    return cat


def test_fine_labels_are_sampled_as_whole_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(1000), 3).astype(object)  # 1,000 items of 3 copies
    rows = np.arange(len(labels))
    picked, drawn = sample_labelled_rows(rows, labels, 300, rng)
    assert drawn == "classes" and 300 <= len(picked) < 300 + 16
    _, counts = np.unique(labels[picked].astype(int), return_counts=True)
    assert counts.min() == 3  # every sampled row has its item's other copies beside it
    broad = (rows % 4).astype(object)  # 4 classes: a uniform sample already gives partners
    picked, drawn = sample_labelled_rows(rows, broad, 300, np.random.default_rng(0))
    assert drawn == "uniform" and len(picked) == 300 and len(np.unique(picked)) == 300
    assert sample_labelled_rows(rows[:50], labels[:50], 300, rng)[1] == "all"


def test_learned_omega_for_items_weights_the_item_features():
    x, cls, item = items_and_copies()
    z = (x - x.mean(0)) / x.std(0)
    fit = learn_omega(z, item.astype(object), config=LearnedOmegaConfig(sample_rows=200))
    assert fit.record["sample_drawn"] == "classes"
    assert fit.omega[list(ITEM_FEATURES)].sum() > 0.5  # 6 of 24 features carry the item
    assert fit.validation["learned"]["map"] > fit.validation["uniform"]["map"]


def test_build_fits_an_omega_per_label_column_and_queries_pick_it(item_catalog):
    result = build(item_catalog, BuildConfig())
    record = result.info["omega"]
    assert record["classes_from"] == "label" and record["columns"]["instance"]["estimator"]
    s = Searcher.open(item_catalog.root)
    assert set(s.omega_columns()) == {"label", "instance"}
    w_inst, w_label = s.omega_named("instance"), s.omega_named("label")
    np.testing.assert_array_equal(w_label, s.omega)
    np.testing.assert_array_equal(s.omega_named("@instance"), w_inst)
    assert w_inst.sum() == pytest.approx(1.0, abs=1e-5)
    item_share = lambda w: w[np.isin(s.kept, list(ITEM_FEATURES))].sum()  # noqa: E731
    assert item_share(w_inst) > item_share(w_label)
    with pytest.raises(SearchError, match="one per label column: instance, label"):
        s.omega_named("colour")

    # the instance Ω ranks an item's other copies first more often than the class Ω
    meta = s.metadata(s.object_ids, ["instance"]).column("instance").to_pylist()
    hits = {}
    for name in ("label", "instance"):
        found = 0
        for q in range(0, len(meta), COPIES * 7):
            top = s.search(ids=[int(s.object_ids[q])], k=COPIES, omega=name, exact=True, columns=[])
            found += sum(meta[int(i)] == meta[q] for i in top.column("object_id").to_pylist()[1:])
        hits[name] = found
    assert hits["instance"] > hits["label"]

    ev = evaluate(item_catalog.root, EvalConfig(num_queries=0, query_split="query", gallery_split="gallery",
                                                label_column="instance", methods=["fuzzy P, build's Ω"]))
    assert ev["build_omega"].endswith("for instance")
    ev_label = evaluate(item_catalog.root, EvalConfig(num_queries=0, query_split="query", gallery_split="gallery",
                                                      label_column="label", methods=["fuzzy P, build's Ω"]))
    assert ev_label["build_omega"] == record["estimator"]


def test_omega_columns_option_and_cli(item_catalog):
    runner = CliRunner()
    root = str(item_catalog.root)
    out = runner.invoke(cli_main, ["build", "--catalog", root, "--omega-columns", "none"])
    assert out.exit_code == 0, out.output
    assert "Ω for" not in out.output
    assert Searcher.open(root).omega_columns() == {"label": Searcher.open(root).info["omega"]["estimator"]}
    out = runner.invoke(cli_main, ["query", "--catalog", root, "0", "--omega", "instance"])
    assert out.exit_code == 1 and "no 'instance' Ω" in out.output and "Traceback" not in out.output

    out = runner.invoke(cli_main, ["build", "--catalog", root, "--clusters-from", "instance"])
    assert out.exit_code == 0, out.output
    assert "Ω for label (`simdex query --omega label`)" in out.output
    out = runner.invoke(cli_main, ["query", "--catalog", root, "0", "--omega", "label", "-k", "3", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.splitlines()[0])["object_id"] == 0
    with pytest.raises(BuildError, match="--omega-columns colour: no such column"):
        build(item_catalog, BuildConfig(omega_columns=("colour",)))


def test_service_lists_label_columns_omega_by_name(item_catalog):
    """`simdex serve`'s info (the page's Ω menu) names the instance Ω `instance`, not its stored key."""
    from simdex.serve.service import _omega_names

    build(item_catalog, BuildConfig())
    names = _omega_names(Searcher.open(item_catalog.root))
    assert "instance" in names and "label" in names and not any(n.startswith("@") for n in names)
    assert {"uniform", "svd"} <= set(names)


def test_build_reports_the_progress_of_each_learned_omega_fit(item_catalog):
    """Fitting learned Ω takes minutes on a large build: each fit is a progress stage of its own, from
    0 to its total (the steps and one validation per τ tried), and `simdex build` draws it."""
    seen: dict[str, list[tuple[int, int]]] = {}
    build(item_catalog, BuildConfig(), progress=lambda stage, done, total: seen.setdefault(stage, []).append((done, total)))
    for stage, tried in (("learned Ω (label)", 3), ("learned Ω (instance)", 1)):  # τ searched for the build's Ω
        calls = seen[stage]
        total = calls[0][1]
        assert total == tried * (LearnedOmegaConfig().steps + 1)
        assert calls[0][0] == 0 and calls[-1] == (total, total)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    out = CliRunner().invoke(cli_main, ["build", "--catalog", str(item_catalog.root)])
    assert out.exit_code == 0, out.output
    assert "learned Ω (label)" in out.output and "step/s" in out.output
