"""The Ray engine (`--engine ray`) on a local Ray cluster that this module starts (2 CPUs):
the same catalog as the local engine, exactly one row per object when a model actor is killed
or the driver stops part way, and a build whose passes run as Ray tasks.

The cluster is started once per test session (~3 s); every job here is a few seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from click.testing import CliRunner
from synth_catalog import append_objects, class_objects, new_catalog
from test_index import assert_same_catalog, random_idx_images, write_idx

from simdex.cli.main import main as cli_main
from simdex.engine.build import BuildConfig, build
from simdex.engine.build_files import BuildFiles
from simdex.engine.catalog import Catalog
from simdex.engine.ray_build import balanced_groups
from simdex.indexer.checkpoint import save_model
from simdex.indexer.runner import IndexOptions, index_source
from synth import controlled_model


@pytest.fixture(scope="session")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(controlled_model(), path)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    images, labels = random_idx_images(120, seed=3)
    return write_idx(tmp_path_factory.mktemp("src"), images, labels)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, source, model_file) -> Path:
    """The single-process catalog every Ray catalog must equal."""
    path = tmp_path_factory.mktemp("ref") / "cat"
    index_source(source, path, model_file, OPTIONS())
    return path


def OPTIONS(**kw) -> IndexOptions:
    return IndexOptions(objects="all", shard_images=12, batch_size=4, **kw)


def assert_one_row_per_object(cat_dir: Path) -> None:
    rows = Catalog.open(cat_dir).read_objects(["object_id", "ordinal", "component"]).to_pylist()
    assert [r["object_id"] for r in rows] == list(range(len(rows)))
    keys = [(r["ordinal"], r["component"]) for r in rows]
    assert len(set(keys)) == len(keys)


def test_ray_index_equals_single_process(tmp_path, ray_cluster, source, model_file, reference):
    result = index_source(source, tmp_path / "cat", model_file, OPTIONS(engine="ray", workers=2))
    assert result.images == 120 and result.options.workers == 2
    assert_same_catalog(reference, tmp_path / "cat")  # same rows, ids, shards' content and errors
    ref, got = Catalog.open(reference), Catalog.open(tmp_path / "cat")
    np.testing.assert_allclose(np.concatenate([f for _, f in got.iter_features()]),
                               np.concatenate([f for _, f in ref.iter_features()]), atol=1e-5)
    assert [c["ordinals"] for j in got.journals() for c in j["commits"]] == \
        [c["ordinals"] for j in ref.journals() for c in j["commits"]]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: the local Ray cluster this test session started)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _model_actor_pids() -> list[int]:
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"_ChunkIndexer" in cmdline:
            pids.append(pid)
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor's process in /proc")
def test_killed_model_actor_loses_and_duplicates_nothing(tmp_path, ray_cluster, source, model_file, reference):
    killed = []

    def kill_an_actor(progress):  # after the first chunk: SIGKILL a model actor while chunks are in flight
        if not killed:
            pids = _model_actor_pids()
            assert pids, "no model actor process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    result = index_source(source, tmp_path / "cat", model_file, OPTIONS(engine="ray", workers=2),
                          progress=kill_an_actor)
    assert killed and result.images == 120
    assert_same_catalog(reference, tmp_path / "cat")
    assert_one_row_per_object(tmp_path / "cat")


class _DriverStops(Exception):
    pass


def test_driver_stopped_then_rerun_resumes_with_the_same_ids(tmp_path, ray_cluster, source, model_file, reference):
    def stop_after_two_shards(progress):
        if progress.images_done >= 28:  # 2 shards of 12 committed, the third half written
            raise _DriverStops

    with pytest.raises(_DriverStops):
        index_source(source, tmp_path / "cat", model_file, OPTIONS(engine="ray", workers=2),
                     progress=stop_after_two_shards)
    assert Catalog.open(tmp_path / "cat").journals()[0]["next_ordinal"] == 24
    # the same command again (from the CLI) resumes at the journal's next ordinal
    out = CliRunner().invoke(cli_main, ["index", str(source), "--catalog", str(tmp_path / "cat"), "--model",
                                        str(model_file), "--objects", "all", "--batch-size", "4",
                                        "--engine", "ray", "--workers", "1"])
    assert out.exit_code == 0, out.output
    assert "Resumed at image 24 of 120" in out.output and "Indexed 96 images" in out.output
    assert_same_catalog(reference, tmp_path / "cat")
    assert_one_row_per_object(tmp_path / "cat")


def test_cli_engine_errors_are_one_line(tmp_path, source, model_file, monkeypatch):
    runner = CliRunner()
    out = runner.invoke(cli_main, ["index", str(source), "--catalog", str(tmp_path / "c2"), "--address", "auto"])
    assert out.exit_code == 2 and "--engine ray" in out.output

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    out = runner.invoke(cli_main, ["index", str(source), "--catalog", str(tmp_path / "c3"), "--model",
                                   str(model_file), "--engine", "ray"])
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == ["Error: --engine ray needs Ray Data, which is not installed: "
                                               "pip install 'simdex[ray]'"]
    assert not (tmp_path / "c3").exists()


# ------------------------------------------------------------------------------------------ build --engine ray

BUILD_LAYERS = [("C11", 8, 1), ("C12", 8, 1), ("C21", 16, 2)]
BUILD_CLASSES = ["boot", "sandal", "bag", "shirt"]


def _twin_catalogs(tmp_path: Path, shards: int = 6, rows: int = 150) -> tuple[Catalog, Catalog]:
    """Two copies of one seeded catalog of `shards` shards (no build yet): one for each engine."""
    cat = new_catalog(tmp_path / "local", BUILD_LAYERS)
    x, labels = class_objects(shards * rows, seed=5, classes=BUILD_CLASSES, num_features=32, dead=(3, 20))
    for k in range(shards):
        append_objects(cat, x[k * rows : (k + 1) * rows], labels[k * rows : (k + 1) * rows], f"job{k}",
                       split="train" if k % 3 else "test")
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    return Catalog.open(tmp_path / "local"), Catalog.open(tmp_path / "ray")


def assert_same_build(local: Path, got: Path) -> None:
    a, b = BuildFiles(local), BuildFiles(got)
    pa_, pb = a.read_pruning(), b.read_pruning()
    np.testing.assert_array_equal(pb.active, pa_.active)
    np.testing.assert_array_equal(pb.kept, pa_.kept)  # the same kept features
    np.testing.assert_allclose(pb.mean, pa_.mean, rtol=1e-12)
    np.testing.assert_allclose(pb.std, pa_.std, rtol=1e-12)
    np.testing.assert_array_equal(b.object_ids(), a.object_ids())
    np.testing.assert_allclose(b.z(), a.z(), atol=1e-6)  # the same z-scores
    np.testing.assert_array_equal(b.codes(), a.codes())
    np.testing.assert_allclose(b.read_omega(), a.read_omega(), atol=1e-6)  # the same Ω
    other_a, other_b = a.read_other_omegas(), b.read_other_omegas()
    assert sorted(other_b) == sorted(other_a)
    for name in other_a:
        np.testing.assert_allclose(other_b[name], other_a[name], atol=1e-6)
    (sa, covered_a), (sb, covered_b) = a.read_stats(), b.read_stats()
    assert covered_b == covered_a and sb.count == sa.count
    np.testing.assert_allclose(sb.gram, sa.gram, rtol=1e-12)  # float64 sums merged across tasks
    np.testing.assert_allclose(sb.sumsq, sa.sumsq, rtol=1e-12)
    np.testing.assert_array_equal(sb.min, sa.min)
    np.testing.assert_array_equal(sb.max, sa.max)
    ia, ib = a.read_info(), b.read_info()
    for key in ("objects", "active", "kept", "retained", "table_iii", "shards"):
        assert ib[key] == ia[key], key
    assert ib["omega"]["estimator"] == ia["omega"]["estimator"]


def test_ray_build_equals_local_build_then_an_appended_shard(tmp_path, ray_cluster):
    local, on_ray = _twin_catalogs(tmp_path)
    config = dict(omega="clusters", recall_queries=10)
    ref = build(local, BuildConfig(**config))
    got = build(on_ray, BuildConfig(**config, engine="ray"))
    assert got.info["engine"]["name"] == "ray" and got.info["engine"]["workers"] == 2
    assert got.info["engine"]["tasks"] == {"statistics": 6, "normalise": 6}  # one per shard: 6 < 4 × 2 workers
    assert ref.info["engine"] == {"name": "local"}
    assert_same_build(ref.path, got.path)

    # one more shard: the Ray build reuses the statistics of the six, one task reads the new one
    x, labels = class_objects(90, seed=6, classes=BUILD_CLASSES, num_features=32, dead=(3, 20))
    for cat in (local, on_ray):
        append_objects(cat, x, labels, "more")
    ref = build(Catalog.open(local.root), BuildConfig(**config))
    got = build(Catalog.open(on_ray.root), BuildConfig(**config, engine="ray", workers=1))
    assert got.info["shards_reused_for_statistics"] == ref.info["shards_reused_for_statistics"] == 6
    assert got.info["engine"]["tasks"]["statistics"] == 1
    assert_same_build(ref.path, got.path)


def test_build_cli_engine_ray_and_its_errors(tmp_path, ray_cluster, monkeypatch):
    local, on_ray = _twin_catalogs(tmp_path, shards=3, rows=60)
    runner = CliRunner()
    out = runner.invoke(cli_main, ["build", "--catalog", str(on_ray.root), "--engine", "ray", "--workers", "2",
                                   "--omega", "uniform"])
    assert out.exit_code == 0, out.output
    assert "on Ray (2 workers, 3 + 3 tasks)" in out.output
    assert_same_build(build(local, BuildConfig(omega="uniform")).path, Catalog.open(on_ray.root).current_build_dir())

    out = runner.invoke(cli_main, ["build", "--catalog", str(local.root), "--workers", "2"])
    assert out.exit_code == 2 and "--engine ray" in out.output

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    before = Catalog.open(local.root).current_build_dir()
    out = runner.invoke(cli_main, ["build", "--catalog", str(local.root), "--engine", "ray"])
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == ["Error: --engine ray needs Ray, which is not installed: "
                                               "pip install 'simdex[ray]'"]
    assert Catalog.open(local.root).current_build_dir() == before


@pytest.mark.parametrize("rows, n_groups, want", [
    ([10, 10, 10, 10], 2, [(0, 2), (2, 4)]),
    ([10, 10, 10], 8, [(0, 1), (1, 2), (2, 3)]),
    ([100, 1, 1, 1], 2, [(0, 1), (1, 4)]),
    ([0, 0, 5], 2, [(0, 3)]),
    ([], 4, []),
])
def test_balanced_groups_cover_every_shard_once_in_order(rows, n_groups, want):
    groups = balanced_groups(rows, n_groups)
    assert groups == want
    assert [i for a, b in groups for i in range(a, b)] == list(range(len(rows)))
