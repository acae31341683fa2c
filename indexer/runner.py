"""The bulk indexing job (`simdex index`): read → model → extract → write, resumable.

    decode (DataLoader workers) ─► SparseUNet ─► find_objects ─► object_features ─► ShardWriter ─► Catalog.commit

Each source is one job with a journal in the catalog. The job walks the source's
images in order, in batches; every `shard_images` images the shard is committed
(renamed, then journalled). A job killed at any moment loses only its uncommitted
shard, and the same call resumes at the journal's next ordinal with the same ids, so
the catalog ends with exactly one row per object. A finished job is not redone;
another source appends to the catalog.

Every image ends as ≥ 1 object row or exactly one errors row (reason `no_object` when
the segment holds no component of `min_area` pixels, else the decoder's reason).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from simdex.engine.catalog import Catalog, CatalogError, region_cell_names, region_cells
from simdex.indexer import lite
from simdex.indexer.checkpoint import LoadedModel, load_model
from simdex.indexer.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MIN_AREA, DEFAULT_REGION, DEFAULT_SHARD_IMAGES
from simdex.indexer.extract import OBJECT_MODES, REGION_MODES, find_objects, object_features
from simdex.indexer.shards import ShardWriter, metadata_schema, object_schema
from simdex.indexer.sources import (
    FileSource,
    IdxSource,
    ImageReadError,
    ImageSource,
    border_background,
    fit_to_size,
    open_source,
)

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class IndexOptions:
    """How a source is indexed. `objects` and `min_area` are fixed per job, `region` per catalog."""

    objects: str | None = None  # largest | all; None: the job's (when resuming) or 'largest'
    min_area: int | None = None  # smallest object kept, in pixels of the model's input; None: job's or 4
    region: str | None = None  # one of REGION_MODES; None: the catalog's, or DEFAULT_REGION for a new one
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None  # local: decode processes (0: in this process); ray: model actors; None: auto
    shard_images: int = DEFAULT_SHARD_IMAGES  # images per committed shard (the unit of resume)
    limit: int | None = None  # index only the first `limit` images of the source (a rerun continues)
    engine: str = "local"  # local (this process) | ray (Ray Data and model actors: indexer.ray_runner)
    address: str | None = None  # ray: the cluster to join ('auto', HOST:PORT); None starts a local one
    # images (a seeded sample) also indexed as two augmented views each, for a self-supervised Ω
    # (indexer.views); None: views.AUTO_VIEWS when the source has no labels, else none
    views: int | None = None

    def check(self) -> None:
        if self.objects not in (None, *OBJECT_MODES):
            raise ValueError(f"objects must be one of {', '.join(OBJECT_MODES)}, got {self.objects!r}")
        if self.region not in (None, *REGION_MODES):
            raise ValueError(f"region must be one of {', '.join(REGION_MODES)}, got {self.region!r}")
        for name in ("min_area", "batch_size", "shard_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "ray" and self.workers == 0:
            raise ValueError("workers must be at least 1 with engine ray (the number of model actors)")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.views is not None and self.views < 0:
            raise ValueError(f"views must be >= 0, got {self.views}")


@dataclass
class IndexProgress:
    """Passed to the progress callback after every batch (counts are of this run)."""

    images_done: int
    images_total: int
    objects: int
    errors: int
    elapsed_s: float


@dataclass
class IndexResult:
    job_id: str
    source: str
    catalog: Path
    images: int = 0  # images processed by this run
    objects: int = 0  # object rows written by this run
    errors: Counter = field(default_factory=Counter)  # reason -> images skipped by this run
    already_indexed: int = 0  # images of the source committed by earlier runs
    source_images: int = 0  # images in the source
    elapsed_s: float = 0.0
    catalog_objects: int = 0  # object rows in the whole catalog afterwards
    resumed: bool = False
    options: IndexOptions | None = None  # the options after defaults were resolved
    views: int = 0  # images written as augmented views by this run (indexer.views)

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0


def model_info(loaded: LoadedModel, region: str) -> dict:
    """What the catalog records about the features' origin (see `Catalog.create`)."""
    model = loaded.model
    return {
        "sha256": loaded.sha256,
        "config": model.config.to_dict(),
        "phi": features_phi(model.phi, region),
        "num_features": model.num_features * region_cells(region),
        "region": region,
        "model_path": str(loaded.path),
        # a torchvision backbone (Appendix B): its name and the SHA-256 of the user's weights file
        **{k: loaded.meta[k] for k in ("backbone", "weights_sha256") if k in loaded.meta},
    }


def features_phi(phi, region: str) -> list[dict]:
    """φ as the stored vector lays it out: the model's layers, and with `gridG` one entry per
    layer and cell (`C11@01` = row 0, column 1), C channels each, in the order extraction writes."""
    out, offset = [], 0
    for layer in phi:
        for cell in region_cell_names(region):
            name = f"{layer.name}@{cell}" if cell else layer.name
            out.append({"name": name, "channels": layer.channels, "stride": layer.stride, "offset": offset})
            offset += layer.channels
    return out


def job_id_for(source: ImageSource) -> str:
    """A stable name for a source's job: its resolved path (or spec) hashed, with a readable stem."""
    spec = str(source.spec)
    key = str(Path(spec).resolve()) if os.path.exists(spec) else spec
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(spec).name or spec)[:40] or "source"
    return f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# ----------------------------------------------------------------------------- decoding


class _DecodedBatches(torch.utils.data.Dataset):
    """Item k: batch k of images [start, end), decoded and fitted to the model's canvas.

    Never raises for one image: failures come back as (ordinal, reason, detail).
    """

    def __init__(self, source: ImageSource, start: int, end: int, batch_size: int, channels: int, size: int):
        self.source, self.start, self.end = source, start, end
        self.batch_size, self.channels, self.size = batch_size, channels, size

    def __len__(self) -> int:
        return math.ceil((self.end - self.start) / self.batch_size)

    def __getitem__(self, k: int) -> dict:
        first = self.start + k * self.batch_size
        ordinals = range(first, min(self.end, first + self.batch_size))
        if isinstance(self.source, IdxSource) and max(self.source.images.shape[1:]) <= self.size:
            return self._idx_block(first, len(ordinals))
        canvases, placed, ok, errors = [], [], [], []
        for i in ordinals:
            try:
                image, shown = self.source.read_for(i, self.channels, self.size)  # (C, H', W'), (H, W)
                if image.ndim != 3 or min(image.shape[1:]) < 1:
                    raise ImageReadError("decode_error", f"decoded to shape {image.shape}")
                canvas, scale, top, left = fit_to_size(image, self.size, original_hw=shown)
            except ImageReadError as exc:
                errors.append((i, exc.reason, exc.detail))
                continue
            except Exception as exc:  # a broken image must never stop the job
                errors.append((i, "decode_error", f"{type(exc).__name__}: {exc}"))
                continue
            canvases.append(canvas)
            placed.append((shown[0], shown[1], scale, top, left))
            ok.append(i)
        c, s = self.channels, self.size
        return {
            "first": first,
            "count": len(ordinals),
            "ordinals": np.asarray(ok, dtype=np.int64),
            "canvases": np.stack(canvases) if canvases else np.zeros((0, c, s, s), np.float32),  # (n, C, S, S)
            "placement": np.asarray(placed, dtype=np.float64).reshape(-1, 5),  # h, w, scale, top, left
            "errors": errors,
        }


    def _idx_block(self, first: int, count: int) -> dict:
        """The same as reading and fitting each image, for a block of same-size in-memory images."""
        images = self.source.images[first:first + count].astype(np.float32)[:, None] / 255.0  # (n, 1, H, W)
        if self.channels == 3:
            images = np.repeat(images, 3, axis=1)
        n, c, h, w = images.shape
        background = border_background(images)  # (n, C)
        top, left = (self.size - h) // 2, (self.size - w) // 2
        canvases = np.empty((n, c, self.size, self.size), np.float32)
        canvases[...] = background[:, :, None, None]
        canvases[:, :, top:top + h, left:left + w] = images
        placement = np.tile(np.array([h, w, 1.0, top, left], np.float64), (n, 1))
        return {"first": first, "count": n, "ordinals": np.arange(first, first + n, dtype=np.int64),
                "canvases": canvases, "placement": placement, "errors": []}


def _foreground(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits → (B, H, W) bool: the argmax is not class 0 (background)."""
    if logits.shape[1] == 2:  # the same as argmax != 0 (ties go to class 0), several times faster
        return logits[:, 1] > logits[:, 0]
    return logits.argmax(dim=1) != 0


def _to_model_layout(batch: dict) -> dict:
    """A decoded batch's canvases as the forward pass takes them: a channels_last (NHWC) tensor. Run
    in the decode worker (the DataLoader's per-item collate), so the copy to NHWC is made there and
    the batch reaches the model's process through shared memory instead of pickled through a pipe."""
    batch["canvases"] = torch.from_numpy(batch["canvases"]).contiguous(memory_format=torch.channels_last)
    return batch


def _to_image_boxes(bbox: np.ndarray, placement: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canvas boxes (M, 4) → boxes in the original image's pixels, rounded outward and clipped;
    canvas areas → original-pixel areas (÷ scale²)."""
    h, w, scale, top, left = (placement[:, k] for k in range(5))
    x0 = np.floor((bbox[:, 0] - left) / scale)
    y0 = np.floor((bbox[:, 1] - top) / scale)
    x1 = np.ceil((bbox[:, 2] - left) / scale)
    y1 = np.ceil((bbox[:, 3] - top) / scale)
    x0, y0 = np.clip(x0, 0, w), np.clip(y0, 0, h)
    x1, y1 = np.maximum(np.clip(x1, 0, w), x0), np.maximum(np.clip(y1, 0, h), y0)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.int32)
    return boxes, np.round(area / scale**2).astype(np.int64)


# ----------------------------------------------------------------------------- the job


def index_source(
    source: str | os.PathLike | ImageSource,
    catalog: str | os.PathLike,
    model: str | os.PathLike | LoadedModel | None = None,
    options: IndexOptions | None = None,
    progress: Callable[[IndexProgress], None] | None = None,
) -> IndexResult:
    """Index every image of `source` into the catalog folder `catalog` (created if needed).

    Args:
        source: a spec for `open_source` (folder, .csv/.parquet list, IDX file, 'fashion-mnist')
            or an opened ImageSource.
        catalog: the catalog folder.
        model: a model file, a LoadedModel, or None for the shipped default.
        options: IndexOptions (objects, min_area, region, batch_size, workers, shard_images, limit).
        progress: called with an IndexProgress after every batch.
    Returns:
        IndexResult with this run's counts (a finished job's rerun processes 0 images).
    Raises:
        SourceError, ModelFileError, CatalogError (other model or region than the catalog's,
        source changed since the job started, another job holds the catalog), ValueError.

    Example:
        >>> index_source("photos/", "cat/", "model.pt", IndexOptions(objects="all"))  # doctest: +SKIP
    """
    options = replace(options or IndexOptions())
    options.check()
    if options.engine == "ray":
        from simdex.indexer.ray_runner import require_ray

        require_ray()  # a one-line error before anything is opened or created
    src = source if isinstance(source, ImageSource) else open_source(source)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    net = inference_net(loaded.model)
    lite.export(loaded.model, loaded.sha256)  # so that `simdex query --image` need not import torch
    cat, info = _catalog_for(catalog, loaded, options)
    if options.workers is None and options.engine == "local":  # in-memory sources decode faster than a worker could ship them
        options.workers = 0 if isinstance(src, IdxSource) else min(4, max(1, (os.cpu_count() or 2) - 1))
    job_id = job_id_for(src)
    _job_defaults(options, cat.journal(job_id))
    meta = metadata_schema(src.records, src.metadata_columns)
    schema = object_schema(info["num_features"], meta)
    spec = {"source": str(src.spec), "num_images": len(src), "source_sha256": source_digest(src),
            "objects": options.objects, "min_area": options.min_area, "model_sha256": loaded.sha256}
    result = IndexResult(job_id=job_id, source=str(src.spec), catalog=cat.root, source_images=len(src),
                         options=options)
    t0 = time.perf_counter()
    with cat.lock():
        journal = cat.begin_job(job_id, spec)
        _check_same_job(journal, spec, cat, src)
        start = journal["next_ordinal"]
        end = len(src) if options.limit is None else min(len(src), options.limit)
        result.already_indexed, result.resumed = start, 0 < start < len(src)
        if start >= end:
            log.info("nothing to do: images [0, %d) of %s are already in %s", start, src.spec, cat.root)
        else:
            log.info("indexing images [%d, %d) of %s into %s (job %s)", start, end, src.spec, cat.root, job_id)
            committer = _Committer(cat, job_id, schema, meta, src.records, start, end, options, result, progress, t0)
            if options.engine == "ray":
                from simdex.indexer.ray_runner import run_on_ray

                run_on_ray(src, loaded, options, committer)
            else:
                _run(src, net, options, committer)
        if cat.journal(job_id)["next_ordinal"] >= end:  # the images are indexed: their views next
            result.views = _views(src, cat, job_id, net, options, end)
    result.elapsed_s = time.perf_counter() - t0
    result.catalog_objects = cat.num_objects
    return result


def _catalog_for(root, loaded: LoadedModel, options: IndexOptions) -> tuple[Catalog, dict]:
    """The catalog at `root` (created if new) and the model's info; options.region defaults to the
    catalog's (bbox for a new one, full for a backbone). CatalogError if the model or region does not match it."""
    existing = _open_existing(root)
    options.region = _region_for(options.region, existing, loaded)
    info = model_info(loaded, options.region)
    cat = existing if existing is not None else Catalog.create(root, info)
    cat.check_compatible(info)
    return cat, info


def _job_defaults(options: IndexOptions, earlier: dict | None) -> None:
    """objects and min_area are fixed per job: a resumed job keeps its own, a new one the defaults."""
    if options.objects is None:
        options.objects = earlier["objects"] if earlier else "largest"
    if options.min_area is None:
        options.min_area = earlier["min_area"] if earlier else DEFAULT_MIN_AREA


def _region_for(region: str | None, existing: Catalog | None, loaded: LoadedModel) -> str:
    """The region mode: the one asked for, else the catalog's, else DEFAULT_REGION (`full` for a
    backbone, which finds no object: its object is the whole image, so `bbox` and `mask` would mislead).

    `mask+grid2` is the default because it keeps the background out of the object's features and
    its layout in: on the scenes benchmark (items on varied backgrounds) `mask` ranks an item's other
    copies first 3-4x as often as `bbox` (benchmarks/results/bench_scenes.md), and the mask's 2×2
    cells beside it lift Fashion-MNIST's mAP from 0.402 to 0.467 and the scenes' class P@10 from
    0.145 to 0.189 at an equal instance mAP (benchmarks/results/bench_scenes_mg2.md,
    eval_fmnist12k_mask+grid2.json), for 5× the raw features. `--region mask` keeps one fifth."""
    backbone = loaded.meta.get("backbone")
    if backbone and region in ("bbox", "mask", "mask+grid2"):
        raise ValueError(f"a {backbone} backbone does not segment objects: use --region full (global average "
                         f"pooling of each map, the default) or grid2/grid4")
    if region is not None:
        return region
    if existing is not None:
        return existing.region
    return "full" if backbone else DEFAULT_REGION


def _open_existing(root) -> Catalog | None:
    try:
        return Catalog.open(root)
    except CatalogError:
        if Path(root, "catalog.json").exists():
            raise
        return None


def source_digest(src: ImageSource) -> str:
    """SHA-256 of the source's list: each record's path and, for a local file, its size; the
    journal keeps the one its job began with, so a resume notices renamed, added, removed or
    rewritten files (one stat per file)."""
    h = hashlib.sha256()
    local = isinstance(src, FileSource)
    for rec in src.records:
        size = ""
        if local and "://" not in rec.source:
            try:
                size = str(os.stat(rec.source).st_size)
            except OSError:
                size = "-"
        h.update(f"{rec.source}\t{size}\n".encode())
    return h.hexdigest()


def _first_renamed(cat: Catalog, job_id: str, src: ImageSource) -> str | None:
    """'image #k was A, is now B' for the first committed image whose path differs, if any."""
    for k, was in sorted(cat.job_sources(job_id).items()):
        now = src.records[k].source if k < len(src) else None
        if now != was:
            return f"image #{k} was {was}, is now {now or 'gone'}"
    return None


def _check_same_job(journal: dict, spec: dict, cat: Catalog, src: ImageSource) -> None:
    for key, flag in (("objects", "--objects"), ("min_area", "--min-area")):
        if journal[key] != spec[key]:
            raise CatalogError(
                f"{journal['source']} was indexed into {cat.root} with {flag} {journal[key]}; "
                f"rerun with {flag} {journal[key]} to resume it, or index into a new catalog folder"
            )
    if journal["num_images"] != spec["num_images"]:
        raise CatalogError(
            f"{journal['source']} held {journal['num_images']} images when it was indexed into {cat.root}, "
            f"now {spec['num_images']}: the source changed. Put new images in a new folder or list "
            f"(indexing it appends), or index into a new catalog folder"
        )
    if journal.get("source_sha256", spec["source_sha256"]) != spec["source_sha256"]:  # absent: an older journal
        what = _first_renamed(cat, journal["job_id"], src) or "its list of paths and sizes differs from the job's"
        raise CatalogError(
            f"{journal['source']} changed since its job began in {cat.root} ({what}): resuming would index "
            f"duplicates and miss images. Put the files back as they were to resume, or index it into a new "
            f"catalog folder"
        )


def _run(src, net, options, committer: _Committer) -> None:
    """The local engine: DataLoader processes decode, this process runs the model and commits."""
    cfg = net.config
    dataset = _DecodedBatches(src, committer.start, committer.end, options.batch_size, cfg.in_channels,
                              cfg.image_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=options.workers, collate_fn=_to_model_layout,
        persistent_workers=False, prefetch_factor=4 if options.workers else None,
    )
    batches = iter(loader)  # forks the decode workers
    if options.workers:
        threading.Thread(target=_warm_imports, name="simdex-warm-imports", daemon=True).start()
    for batch in batches:
        committer.add(batch["first"], batch["count"], batch_objects(net, batch, options))


def _warm_imports() -> None:
    """Import what the first batch's extraction and shard need (scipy.ndimage for the components,
    0.4 s; pandas, which pyarrow imports on its first conversion of a list, 0.26 s) while the decode
    workers make that batch, instead of after it. Started after the workers are forked, never before."""
    import pyarrow as pa
    import scipy.ndimage  # noqa: F401

    pa.array(["warm"])


def _views(src: ImageSource, cat: Catalog, job_id: str, net, options: IndexOptions, end: int) -> int:
    """The job's augmented views (`indexer.views`), written once, after its last shard."""
    from simdex.indexer.views import AUTO_VIEWS, index_views

    if cat.views_path(job_id).exists():  # written once per job; before counting the source's labels
        return 0
    count = options.views
    if count is None:
        count = 0 if any(r.label is not None for r in src.records[:end]) else AUTO_VIEWS
    if count <= 0:
        return 0
    log.info("indexing %d sampled images again as augmented views (self-supervised Ω)", min(count, end))
    return index_views(src, cat, job_id, net, options, count, end)


@dataclass
class BatchObjects:
    """What the model made of one decoded batch: its object rows (in image, component order) and
    one error row per image that gave no object (`no_object`) or could not be decoded."""

    ordinals: np.ndarray  # int64 (M,) the image of each object
    component: np.ndarray  # int64 (M,)
    boxes: np.ndarray  # int32 (M, 4) x0, y0, x1, y1 in the original image's pixels
    areas: np.ndarray  # int64 (M,)
    features: np.ndarray  # float32 (M, N)
    errors: list[tuple[int, str, str]]  # (ordinal, reason, detail), sorted by ordinal


def inference_net(net, device: str = "cpu"):
    """The model as the index job runs it: eval mode, on `device`, weights in channels_last (NHWC:
    oneDNN's convolutions run 1.3-1.6x faster on the CPU than in NCHW; features equal to 1e-5)."""
    return net.eval().to(device, memory_format=torch.channels_last)


def batch_objects(net, batch: dict, options: IndexOptions, device: str = "cpu") -> BatchObjects:
    """Segment one batch of `_DecodedBatches` with the model and extract its objects' features
    (the map step, the same for every engine)."""
    # NHWC, as the engines lay out the weights (`inference_net`)
    x = batch["canvases"]  # (n, C, S, S)
    x = (x if isinstance(x, torch.Tensor) else torch.from_numpy(x)).contiguous(memory_format=torch.channels_last)
    outputs = None
    if len(x):  # else every image of the batch failed to decode
        with torch.inference_mode():
            logits, acts = net(x.to(device))  # (n, K, S, S), φ's maps
            if device != "cpu":
                logits, acts = logits.cpu(), [a.cpu() for a in acts]
        outputs = (logits, acts)
    return objects_of(batch, outputs, options, net.num_features)


def objects_of(batch: dict, outputs: tuple | None, options: IndexOptions, num_features: int) -> BatchObjects:
    """The second half of `batch_objects`: a batch's objects and features from the model's outputs
    (logits, φ's maps) on the CPU, or None when no image of the batch decoded."""
    feats = np.zeros((0, num_features * region_cells(options.region)), np.float32)
    ordinals = component = np.zeros(0, np.int64)
    boxes, areas = np.zeros((0, 4), np.int32), np.zeros(0, np.int64)
    if outputs is not None:
        logits, acts = outputs
        with torch.inference_mode():
            objs = find_objects(_foreground(logits), options.objects, options.min_area)
            feats = object_features(acts, objs, options.region).numpy()  # (M, N)
        img_of = objs.image_index.numpy()
        boxes, areas = _to_image_boxes(objs.bbox.numpy(), batch["placement"][img_of], objs.area.numpy())
        ordinals, component = batch["ordinals"][img_of], objs.component.numpy()
    no_object = np.setdiff1d(batch["ordinals"], ordinals)
    errs = [(int(i), "no_object", "the predicted segment holds no component of at least "
             f"{options.min_area} pixels") for i in no_object] + batch["errors"]
    return BatchObjects(ordinals, component, boxes, areas, feats, sorted(errs))


class _Committer:
    """Takes the batches of a job's ordinal range [start, end) in order and commits a shard every
    `shard_images` images (the reduce step, the same for every engine: ids are dense in commit order,
    so any engine that hands it the same batches in the same order writes the same catalog)."""

    def __init__(self, cat, job_id, schema, meta, records, start, end, options, result, progress, t0):
        self.cat, self.job_id, self.schema, self.meta, self.records = cat, job_id, schema, meta, records
        self.start, self.end, self.options, self.result = start, end, options, result
        self.progress, self.t0 = progress, t0
        self.next_ordinal = start
        self.shard = _ShardState(cat, schema, start, cat.counters())

    def add(self, first: int, count: int, objs: BatchObjects) -> None:
        if first != self.next_ordinal:
            raise CatalogError(f"job {self.job_id}: batch at ordinal {first} where {self.next_ordinal} was due; "
                               "nothing after the last committed shard was kept, rerun to resume")
        result, shard = self.result, self.shard
        shard.add(self.records, self.meta, objs.ordinals, objs.component, objs.boxes, objs.areas, objs.features)
        shard.add_errors(self.records, objs.errors)
        shard.images += count
        self.next_ordinal = first + count
        result.images += count
        result.objects += len(objs.features)
        result.errors.update(reason for _, reason, _ in objs.errors)
        if shard.images >= self.options.shard_images or self.next_ordinal >= self.end:
            shard.commit(self.job_id, self.next_ordinal)
            self.shard = _ShardState(self.cat, self.schema, self.next_ordinal, self.cat.counters())
        if self.progress is not None:
            self.progress(IndexProgress(self.next_ordinal - self.start, self.end - self.start, result.objects,
                                        sum(result.errors.values()), time.perf_counter() - self.t0))


class _ShardState:
    """The shard being written: its writer, first ordinal and the ids it hands out."""

    def __init__(self, cat: Catalog, schema, ordinal_start: int, counters: dict):
        self.cat = cat
        self.writer = ShardWriter(cat, schema)
        self.ordinal_start = ordinal_start
        self.first_object_id = counters["object_id"]
        self.first_image_id = counters["image_id"]
        self.images = 0

    def image_ids(self, ordinals: np.ndarray) -> np.ndarray:
        return self.first_image_id + (ordinals - self.ordinal_start)

    def add(self, records, meta, ordinals, component, boxes, areas, feats) -> None:
        n = len(ordinals)
        if n == 0:
            return
        recs = [records[i] for i in ordinals.tolist()]
        first = self.first_object_id + self.writer.rows
        columns = {
            "object_id": np.arange(first, first + n, dtype=np.int64),
            "image_id": self.image_ids(ordinals),
            "source": [r.source for r in recs],
            "ordinal": ordinals,
            "component": component.astype(np.int32),
            "label": [r.label for r in recs],
            "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
            "area": areas,
        }
        for key, name, _ in meta:
            columns[name] = [r.metadata.get(key) for r in recs]
        self.writer.add_objects(columns, feats)

    def add_errors(self, records, errs: list[tuple[int, str, str]]) -> None:
        self.writer.add_errors([
            {"image_id": int(self.image_ids(np.int64(i))), "source": records[i].source, "ordinal": i,
             "label": records[i].label, "reason": reason, "detail": detail}
            for i, reason, detail in errs
        ])

    def commit(self, job_id: str, next_ordinal: int) -> None:
        shard_tmp, errors_tmp = self.writer.close()
        self.cat.commit(job_id, shard_tmp=shard_tmp, errors_tmp=errors_tmp, ordinal_start=self.ordinal_start,
                        next_ordinal=next_ordinal, first_object_id=self.first_object_id, rows=self.writer.rows,
                        first_image_id=self.first_image_id, images=next_ordinal - self.ordinal_start,
                        error_rows=self.writer.error_rows)
        log.debug("committed ordinals [%d, %d) of job %s: %d objects, %d errors", self.ordinal_start,
                  next_ordinal, job_id, self.writer.rows, self.writer.error_rows)
