"""The demo job: index Fashion-MNIST with the shipped model, build, query, report.

Each step reuses what an earlier run made: the index job of a finished catalog does
nothing, and the build is redone only when the catalog's shards changed since.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simdex.engine.build import BuildConfig, build
from simdex.engine.catalog import Catalog, CatalogError
from simdex.engine.searcher import Searcher
from simdex.evaluate import EvalConfig, evaluate
from simdex.indexer.checkpoint import DEFAULT_MODEL_PATH
from simdex.indexer.runner import IndexOptions, IndexProgress, index_source
from simdex.indexer.sources import open_source
from simdex.report import Example, write_report

log = logging.getLogger(__name__)

TRAPEZOID_CLASS = "Ankle boot"


@dataclass
class DemoResult:
    report: Path
    catalog: Path
    timings_s: dict = field(default_factory=dict)
    indexed_images: int = 0
    built: bool = False
    evaluation: dict | None = None


def _build_is_current(catalog: Catalog) -> bool:
    try:
        current = catalog.current_build()
    except CatalogError:  # a damaged build: build again
        return False
    if current is None:
        return False
    return current.read_info().get("shards") == [p.name for p in catalog.shard_paths()]


def pick_examples(catalog: Catalog) -> tuple[list[tuple[str, int]], list[int]]:
    """One test-split query per class (the first of each, in catalog order), and two test ankle boots."""
    t = catalog.read_objects(["object_id", "label", "split"])
    ids = t.column("object_id").to_numpy()
    labels = np.array(t.column("label").to_pylist(), dtype=object)
    split = np.array(t.column("split").to_pylist(), dtype=object)
    per_class: dict[str, int] = {}
    for i in np.flatnonzero(split == "test"):
        per_class.setdefault(labels[i], int(ids[i]))
    boots = [int(i) for i in ids[(split == "test") & (labels == TRAPEZOID_CLASS)][:2]]
    return sorted(per_class.items(), key=lambda kv: kv[1]), boots


def run_examples(searcher: Searcher, catalog: Catalog) -> list[Example]:
    """The report's queries against the training split: one Gaussian query per class, and two
    test ankle boots as one trapezoid query (eq. 3)."""
    per_class, boots = pick_examples(catalog)
    examples = []
    where, columns = "split = 'train'", ["label", "source", "split"]
    for label, oid in per_class:
        table = searcher.search(ids=[oid], membership="gaussian", where=where, columns=columns)
        examples.append(Example(f"{label} (object {oid})", [oid], "gaussian", table))
    if len(boots) == 2:
        table = searcher.search(ids=boots, membership="trapezoid", where=where, columns=columns)
        examples.append(Example(f"two {TRAPEZOID_CLASS.lower()}s as one query (objects {boots[0]}, {boots[1]})",
                                boots, "trapezoid (eq. 3)", table))
    return examples


def _model_training(model_path: Path) -> tuple[Path, list[dict] | None]:
    """The training curves picture and metrics rows saved beside a model file (None when absent)."""
    curves = model_path.with_name(model_path.stem + "_curves.png")
    metrics = model_path.with_name(model_path.stem + "_metrics.csv")
    if not metrics.is_file():
        return curves, None
    with metrics.open(newline="") as f:
        return curves, list(csv.DictReader(f))


def run_demo(catalog_dir: str | Path = "catalogs/fmnist", report_dir: str | Path = "report",
             eval_queries: int = 500, source: str = "fashion-mnist", model: str | Path | None = None,
             index_progress: Callable[[IndexProgress], None] | None = None,
             stage: Callable[[str], None] | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> DemoResult:
    """Run the whole demo; returns where the report is and how long each step took.

    `model` None is the shipped default model (whose training curves go into the report).

    Raises SourceError when Fashion-MNIST is not installed (the message says how to get it).
    """
    say = stage or (lambda text: None)
    catalog_dir, report_dir = Path(catalog_dir), Path(report_dir)
    result = DemoResult(report=report_dir / "index.html", catalog=catalog_dir)
    t0 = time.perf_counter()
    src = open_source(source)
    say(f"indexing {len(src):,} images of {source} into {catalog_dir} (a finished catalog is reused)")
    res = index_source(src, catalog_dir, model, IndexOptions(), index_progress)
    result.indexed_images = res.images
    result.timings_s["index"] = time.perf_counter() - t0

    t = time.perf_counter()
    catalog = Catalog.open(catalog_dir)
    if not _build_is_current(catalog):
        say("building: pruning, z-scores, Ω from the training split's labels (eq. 5), candidate index")
        build(catalog, BuildConfig(), progress=progress)
        result.built = True
    else:
        say("build is up to date: reused")
    result.timings_s["build"] = time.perf_counter() - t

    t = time.perf_counter()
    searcher = Searcher.open(catalog_dir)
    examples = run_examples(searcher, catalog)
    result.timings_s["queries"] = time.perf_counter() - t
    say(f"ran {len(examples)} example queries")

    t = time.perf_counter()
    if eval_queries:
        say(f"evaluating retrieval on {eval_queries} test queries against the training split")
        result.evaluation = evaluate(catalog_dir, EvalConfig(num_queries=eval_queries), progress)
    result.timings_s["evaluation"] = time.perf_counter() - t

    curves, rows = _model_training(Path(model) if model is not None else DEFAULT_MODEL_PATH)
    result.report = write_report(report_dir, searcher, examples, curves, rows, result.evaluation)
    result.timings_s["total"] = time.perf_counter() - t0
    return result

