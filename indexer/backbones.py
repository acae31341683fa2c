"""Torchvision classifier backbones as feature extractors (the paper's Appendix B).

A ResNet has no segmentation head, so its "object" is the whole image: φ is the output of
each stage (`layer1`…`layer4`) or of each residual block (`layer1.0`, …), and a feature is
the global average of one channel over the full map (region `full`; `grid2`/`grid4` pool
the same maps over a grid of the whole image). `BackboneNet` has the U-Net's interface
(`config`, `phi`, `num_features`, forward → (logits, φ's maps)): its logits call every pixel
foreground, so the index job, queries by image, similarity maps and the permutation-invariant
rerank all run unchanged, and the catalog has the same format.

Weights come from a file the user has (`torch.save(model.state_dict(), FILE)`, e.g. a
torchvision checkpoint downloaded elsewhere), read with `torch.load(weights_only=True)`, so
the file cannot run code. The catalog records the backbone, its options and the SHA-256 of
the weights file; a query by image re-loads the same file and refuses any other. With no
file, simdex can ask torchvision to download the published ImageNet weights
(`download=True`), which needs a network.

Example:
    >>> loaded = load_backbone("resnet18", "resnet18.pth")            # doctest: +SKIP
    >>> index_source("photos/", "cat/", loaded)                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from simdex.indexer.checkpoint import LoadedModel, ModelFileError
from simdex.indexer.model import LayerSpec

# Output channels of each stage and blocks per stage; the stride of stage s is 4·2^s.
BACKBONES = {
    "resnet18": {"channels": (64, 128, 256, 512), "blocks": (2, 2, 2, 2)},
    "resnet50": {"channels": (256, 512, 1024, 2048), "blocks": (3, 4, 6, 3)},
}
PHI_MODES = ("stages", "blocks")
DIVISOR = 32  # five halvings from the input to layer4
DEFAULT_IMAGE_SIZE = 224
# torchvision's classifiers expect inputs normalised with ImageNet's statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ModelFileError):
    """A backbone that cannot be set up: unknown name, weights file missing, unsafe or of another network."""


@dataclass(frozen=True)
class BackboneConfig:
    """A torchvision backbone as simdex uses it; saved in the catalog so a query rebuilds the same one.

    Args:
        arch: 'resnet18' or 'resnet50'.
        phi: 'stages' (one layer of φ per stage) or 'blocks' (one per residual block).
        image_size: the square canvas every image is fitted to (divisible by 32).
    """

    arch: str = "resnet18"
    phi: str = "stages"
    image_size: int = DEFAULT_IMAGE_SIZE
    in_channels: int = 3
    num_classes: int = 2

    def __post_init__(self) -> None:
        if self.arch not in BACKBONES:
            raise BackboneError(f"unknown backbone {self.arch!r}; known: {', '.join(BACKBONES)}")
        if self.phi not in PHI_MODES:
            raise BackboneError(f"backbone layers must be one of {', '.join(PHI_MODES)}, got {self.phi!r}")
        if self.image_size < DIVISOR or self.image_size % DIVISOR:
            raise BackboneError(f"a backbone's image size must be a multiple of {DIVISOR}, got {self.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BackboneConfig:
        return cls(**{k: d[k] for k in ("arch", "phi", "image_size") if k in d})


def is_backbone(config: dict) -> bool:
    """Whether a catalog's recorded model config is a torchvision backbone (not the U-Net)."""
    return config.get("arch") in BACKBONES


def backbone_phi(config: BackboneConfig) -> list[LayerSpec]:
    """The layers of φ in feature order: per stage `layerS`, or per block `layerS.B`."""
    spec = BACKBONES[config.arch]
    out, offset = [], 0
    for s, (ch, blocks) in enumerate(zip(spec["channels"], spec["blocks"], strict=True), start=1):
        names = [f"layer{s}"] if config.phi == "stages" else [f"layer{s}.{b}" for b in range(blocks)]
        for name in names:
            out.append(LayerSpec(name, ch, 2 ** (s + 1), offset))
            offset += ch
    return out


class BackboneNet(nn.Module):
    """A torchvision ResNet returning (logits, φ's maps) like `SparseUNet`.

    The logits (B, 2, H, W) call every pixel foreground (class 1), so the whole image is the
    one object; φ's maps are the stage (or block) outputs, (B, C_l, H/stride, W/stride).

    Example:
        >>> net = BackboneNet(BackboneConfig("resnet18", image_size=64))
        >>> logits, acts = net(torch.rand(2, 3, 64, 64))
        >>> [tuple(a.shape[1:]) for a in acts]
        [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        import torchvision

        self.config = config
        self.net = getattr(torchvision.models, config.arch)(weights=None)
        self.phi = backbone_phi(config)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_features(self) -> int:
        return sum(s.channels for s in self.phi)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, 3, H, W) in [0, 1]. Returns all-foreground logits (B, 2, H, W) and φ's maps."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (B, 3, H, W), got {tuple(x.shape)}")
        n = self.net
        h = n.maxpool(n.relu(n.bn1(n.conv1((x - self.mean) / self.std))))  # (B, 64, H/4, W/4)
        acts: list[torch.Tensor] = []
        for stage in (n.layer1, n.layer2, n.layer3, n.layer4):
            for block in stage:
                h = block(h)
                if self.config.phi == "blocks":
                    acts.append(h)
            if self.config.phi == "stages":
                acts.append(h)
        logits = x.new_zeros((x.shape[0], 2, x.shape[2], x.shape[3]))
        logits[:, 1] = 1.0  # every pixel is foreground: the object is the whole image
        return logits, acts


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_sha256(config: BackboneConfig, weights_sha256: str) -> str:
    """What the catalog compares: the backbone's options and its weights (another φ mode is another model)."""
    return hashlib.sha256(json.dumps({"backbone": config.to_dict(), "weights": weights_sha256},
                                     sort_keys=True).encode()).hexdigest()


def _state_dict_of(blob, path: Path) -> dict:
    """A state dict, also when saved wrapped as {'state_dict': …} or {'model': …}."""
    if isinstance(blob, dict):
        for key in ("state_dict", "model"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
        if blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
            return blob
    raise BackboneError(f"{path} holds no state dict of tensors: save one with "
                        f"torch.save(model.state_dict(), '{path.name}')")


def _mismatch(config: BackboneConfig, path: Path, model: nn.Module, state: dict) -> str | None:
    """One line naming how `state` differs from the backbone's parameters, or None if it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensors of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                     f"{tuple(own[k].shape)} in {config.arch})")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return f"{path} does not hold {config.arch} weights: {'; '.join(parts)}"


def download_weights(arch: str) -> Path:
    """Ask torchvision to download the published ImageNet weights of `arch`; their path in torch's cache.

    Raises BackboneError when there is no network (the usual case where simdex runs offline)."""
    import torchvision

    if arch not in BACKBONES:
        raise BackboneError(f"unknown backbone {arch!r}; known: {', '.join(BACKBONES)}")
    weights = torchvision.models.get_weight(f"{torchvision.models.get_model_weights(arch).__name__}.DEFAULT")
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not target.is_file():
        try:
            torch.hub.download_url_to_file(weights.url, str(target), progress=False)
        except Exception as exc:  # URLError, socket errors: no network here
            raise BackboneError(f"cannot download {arch}'s weights from {weights.url} ({type(exc).__name__}: "
                                f"{exc}); download the file on a machine with a network and pass --weights FILE") from None
    return target


def load_backbone(arch: str, weights: str | os.PathLike | None, phi: str = "stages",
                  image_size: int = DEFAULT_IMAGE_SIZE) -> LoadedModel:
    """A torchvision backbone with the user's weights, ready for `index_source`.

    Args:
        arch: 'resnet18' or 'resnet50'.
        weights: a file holding the network's state dict (read with weights_only=True).
        phi: 'stages' or 'blocks' (see `backbone_phi`).
        image_size: the canvas images are fitted to (a multiple of 32; 224 is what ImageNet
            weights were trained at).
    Returns:
        LoadedModel whose sha256 covers the options and the weights file, and whose meta
        records `backbone` and `weights_sha256` (the catalog keeps both).
    Raises:
        BackboneError: unknown backbone, no file given, a missing or unsafe file, or weights of
            another network.
    """
    config = BackboneConfig(arch=arch, phi=phi, image_size=image_size)
    if weights is None:
        raise BackboneError(f"--backbone {arch} needs --weights FILE: no download is possible offline; save "
                            f"torchvision's {arch} state dict on a machine with a network (torch.save(model."
                            f"state_dict(), FILE)) and pass that file, or pass --download-weights where there is one")
    path = Path(weights)
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code, RuntimeError/EOFError for garbage
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise BackboneError(f"{path} is not a weights file that loads without executing code "
                            f"({type(exc).__name__}: {first[:200]})") from None
    state = _state_dict_of(blob, path)
    model = BackboneNet(config)
    problem = _mismatch(config, path, model.net, state)
    if problem:
        raise BackboneError(problem)
    model.net.load_state_dict(state)
    model.eval()
    weights_sha = file_sha256(path)
    return LoadedModel(model=model, sha256=model_sha256(config, weights_sha), path=path.resolve(),
                       meta={"backbone": arch, "weights_sha256": weights_sha})


def load_catalog_backbone(config: dict, weights: str | os.PathLike | None) -> LoadedModel:
    """The backbone a catalog recorded (`config` as `BackboneConfig.to_dict` wrote it) with its weights file."""
    cfg = BackboneConfig.from_dict(config)
    return load_backbone(cfg.arch, weights, cfg.phi, cfg.image_size)
