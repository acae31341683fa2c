"""The demo job: index Fashion-MNIST and the scenes benchmark with the shipped model,
build, query, evaluate, report.

Two catalogs, one report each (the Fashion-MNIST report links to the scenes report):

- Fashion-MNIST: the first `fmnist_train` training and `fmnist_test` test images; one
  test query per class against the training split, and two test ankle boots as one
  trapezoid query; evaluation with class labels.
- scenes (`indexer.scenes`, written into data/scenes-demo at a demo size if missing):
  the first copy of each held-out item per class as a query against every other scene,
  ranked with the Ω the build fitted to the training split's items (`--omega instance`:
  the task is finding the same item); evaluation with instance labels (an item's other
  copies, in other poses and backgrounds).

Each step reuses what an earlier run made: the index job of a finished catalog does
nothing, and the build is redone only when the catalog's shards changed since (or it lacks
the Ω the queries use).
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
from simdex.engine.build_files import label_column_omegas
from simdex.engine.catalog import Catalog, CatalogError
from simdex.engine.searcher import Searcher
from simdex.evaluate import EvalConfig, evaluate
from simdex.indexer.checkpoint import DEFAULT_MODEL_PATH
from simdex.indexer.runner import IndexOptions, IndexProgress, index_source
from simdex.indexer.scenes import ScenesConfig, write_scenes
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


def _build_is_current(catalog: Catalog, omega: str | None = None) -> bool:
    """The current build covers every shard (and has the label column's Ω `omega` the demo queries with)."""
    try:
        current = catalog.current_build()
    except CatalogError:  # a damaged build: build again
        return False
    if current is None:
        return False
    info = current.read_info()
    if omega and omega not in label_column_omegas(info.get("omega", {})):
        return False
    return info.get("shards") == [p.name for p in catalog.shard_paths()]


@dataclass
class DemoSpec:
    """One catalog of the demo: what to index, which queries to show, how to evaluate."""

    title: str
    sources: list[tuple[str, int | None]]  # (source spec, first N images or None for all)
    query_split: str = "test"  # the example queries: the first object of each label in this split
    gallery_where: str = "split = 'train'"  # what they are ranked against
    gallery_text: str = "the training split"
    trapezoid: bool = True  # two test ankle boots as one query (eq. 3)
    eval_query_split: str = "test"
    eval_gallery_split: str = "train"
    eval_label_column: str = "label"
    query_omega: str | None = None  # the label column whose Ω the example queries use (None: the build's)


def fmnist_spec(source: str = "fashion-mnist", train_images: int | None = None,
                test_images: int | None = None) -> DemoSpec:
    """Fashion-MNIST: `source` whole, or the first images of each split of the installed data set."""
    if train_images is None and test_images is None:
        sources = [(source, None)]
    else:
        sources = [("fashion-mnist:train", train_images), ("fashion-mnist:test", test_images)]
    return DemoSpec("simdex report: Fashion-MNIST", sources)


def scenes_spec(folder: str | Path) -> DemoSpec:
    """The scenes in `folder`: each held-out item's query copy against every other scene."""
    folder = Path(folder)
    return DemoSpec("simdex report: scenes (items on colour backgrounds, any pose)",
                    [(str(folder / "train.csv"), None), (str(folder / "test.csv"), None)],
                    query_split="query", gallery_where="split <> 'query'",
                    gallery_text="every other scene (the item's other copies and the training scenes)",
                    trapezoid=False, eval_query_split="query", eval_gallery_split="gallery",
                    eval_label_column="instance", query_omega="instance")  # the task: the same item


DEMO_SCENES = ScenesConfig(train_items=1500, train_copies=4, plain_fmnist=0, test_items=200, test_copies=4)


def ensure_demo_scenes(folder: str | Path, config: ScenesConfig = DEMO_SCENES,
                       progress: Callable[[str, int, int], None] | None = None) -> Path:
    """The demo's scenes in `folder`, written (≈ 1 minute) unless both lists are there."""
    folder = Path(folder)
    if not ((folder / "train.csv").is_file() and (folder / "test.csv").is_file()):
        write_scenes(folder, config, progress=progress)
    return folder


def pick_examples(catalog: Catalog, query_split: str = "test") -> tuple[list[tuple[str, int]], list[int]]:
    """One query per label from `query_split` (the first of each, in catalog order), and two ankle boots."""
    t = catalog.read_objects(["object_id", "label", "split"])
    ids = t.column("object_id").to_numpy()
    labels = np.array(t.column("label").to_pylist(), dtype=object)
    split = np.array(t.column("split").to_pylist(), dtype=object)
    per_class: dict[str, int] = {}
    for i in np.flatnonzero(split == query_split):
        per_class.setdefault(labels[i], int(ids[i]))
    boots = [int(i) for i in ids[(split == query_split) & (labels == TRAPEZOID_CLASS)][:2]]
    return sorted(per_class.items(), key=lambda kv: kv[1]), boots


def run_examples(searcher: Searcher, catalog: Catalog, spec: DemoSpec | None = None) -> list[Example]:
    """The report's queries: one Gaussian query per label of the spec's query split against its
    gallery, and (Fashion-MNIST) two test ankle boots as one trapezoid query (eq. 3)."""
    spec = spec or fmnist_spec()
    per_class, boots = pick_examples(catalog, spec.query_split)
    examples = []
    where, columns, omega = spec.gallery_where, ["label", "source", "split"], spec.query_omega
    for label, oid in per_class:
        table = searcher.search(ids=[oid], membership="gaussian", where=where, columns=columns, omega=omega)
        examples.append(Example(f"{label} (object {oid})", [oid], "gaussian", table))
    if spec.trapezoid and len(boots) == 2:
        table = searcher.search(ids=boots, membership="trapezoid", where=where, columns=columns, omega=omega)
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
             progress: Callable[[str, int, int], None] | None = None,
             spec: DemoSpec | None = None, links: list[dict] | None = None) -> DemoResult:
    """Run the demo on one catalog; returns where the report is and how long each step took.

    `spec` says what to index and query (default: all of `source`, Fashion-MNIST's way);
    `model` None is the shipped default model (whose training curves go into the report).

    Raises SourceError when Fashion-MNIST is not installed (the message says how to get it).
    """
    say = stage or (lambda text: None)
    spec = spec or fmnist_spec(source)
    catalog_dir, report_dir = Path(catalog_dir), Path(report_dir)
    result = DemoResult(report=report_dir / "index.html", catalog=catalog_dir)
    t0 = time.perf_counter()
    for spec_source, limit in spec.sources:
        src = open_source(spec_source)
        count = len(src) if limit is None else min(limit, len(src))
        say(f"indexing {count:,} images of {spec_source} into {catalog_dir} (a finished catalog is reused)")
        res = index_source(src, catalog_dir, model, IndexOptions(limit=limit), index_progress)
        result.indexed_images += res.images
    result.timings_s["index"] = time.perf_counter() - t0

    t = time.perf_counter()
    catalog = Catalog.open(catalog_dir)
    if not _build_is_current(catalog, spec.query_omega):
        say("building: pruning, z-scores, Ω from the label column of the training split"
            + (f" and one from its {spec.query_omega} column" if spec.query_omega else "") + ", candidate index")
        build(catalog, BuildConfig(), progress=progress)
        result.built = True
    else:
        say("build is up to date: reused")
    result.timings_s["build"] = time.perf_counter() - t

    t = time.perf_counter()
    searcher = Searcher.open(catalog_dir)
    examples = run_examples(searcher, catalog, spec)
    result.timings_s["queries"] = time.perf_counter() - t
    say(f"ran {len(examples)} example queries")

    t = time.perf_counter()
    if eval_queries:
        say(f"evaluating retrieval on {eval_queries} {spec.eval_query_split} queries against the "
            f"{spec.eval_gallery_split} split ({spec.eval_label_column} labels)")
        cfg = EvalConfig(num_queries=eval_queries, query_split=spec.eval_query_split,
                         gallery_split=spec.eval_gallery_split, label_column=spec.eval_label_column)
        result.evaluation = {**evaluate(catalog_dir, cfg, progress), "label_column": spec.eval_label_column}
    result.timings_s["evaluation"] = time.perf_counter() - t

    curves, rows = _model_training(Path(model) if model is not None else DEFAULT_MODEL_PATH)
    result.report = write_report(report_dir, searcher, examples, curves, rows, result.evaluation, title=spec.title,
                                 gallery_text=spec.gallery_text, links=links, omega=spec.query_omega)
    result.timings_s["total"] = time.perf_counter() - t0
    return result


def run_demos(catalogs: str | Path = "catalogs", report_dir: str | Path = "report", eval_queries: int = 500,
              fmnist_train: int | None = 10_000, fmnist_test: int | None = 2_000, scenes: bool = True,
              scenes_dir: str | Path = "data/scenes-demo", scenes_config: ScenesConfig = DEMO_SCENES,
              model: str | Path | None = None,
              index_progress: Callable[[IndexProgress], None] | None = None,
              stage: Callable[[str], None] | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> list[DemoResult]:
    """The main job of the README: the Fashion-MNIST demo into `catalogs/fmnist` and
    `report/index.html`, then the scenes demo into `catalogs/scenes` and `report/scenes/`."""
    catalogs, report_dir = Path(catalogs), Path(report_dir)
    say = stage or (lambda text: None)
    results = [run_demo(catalogs / "fmnist", report_dir, eval_queries, model=model, index_progress=index_progress,
                        stage=stage, progress=progress, spec=fmnist_spec(train_images=fmnist_train,
                                                                         test_images=fmnist_test),
                        links=[{"href": "scenes/index.html", "text": "the scenes report"}] if scenes else None)]
    if scenes:
        folder = Path(scenes_dir)
        if not (folder / "test.csv").is_file():
            say(f"writing the demo's scenes into {folder}")
        ensure_demo_scenes(folder, scenes_config, progress=progress)
        results.append(run_demo(catalogs / "scenes", report_dir / "scenes", eval_queries, model=model,
                                index_progress=index_progress, stage=stage, progress=progress,
                                spec=scenes_spec(folder),
                                links=[{"href": "../index.html", "text": "the Fashion-MNIST report"}]))
    return results
