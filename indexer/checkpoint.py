"""Model files that load without executing code, with a checksum the catalog records.

A model file is a `torch.save` of plain data only: a JSON string (the format tag, the
model config, φ, training metadata) and the state dict. It is read back with
`torch.load(weights_only=True)`, which refuses pickled code. The SHA-256 of the
canonical content (the JSON and every tensor's name, dtype, shape and bytes) is
stored in the file and checked on load, so a modified file is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from simdex.engine.errors import SimdexError
from simdex.indexer.model import SparseUNet, UNetConfig, build_model

FORMAT = "simdex-model/1"
DEFAULT_MODEL_PATH = Path(__file__).parent / "models" / "default.pt"


class ModelFileError(SimdexError):
    """A model file that is missing, not a simdex model, tampered with or unsafe."""


@dataclass
class LoadedModel:
    model: SparseUNet
    sha256: str
    path: Path
    meta: dict = field(default_factory=dict)


def _digest(header: str, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header.encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(model: SparseUNet, path: str | os.PathLike, meta: dict | None = None) -> str:
    """Write `model` atomically (temp file + rename) and return its SHA-256.

    Args:
        model: the network; its config is saved with it.
        path: destination file (conventionally `.pt`).
        meta: JSON-serialisable extras (training options, metrics).
    """
    path = Path(path)
    header = json.dumps(
        {
            "format": FORMAT,
            "config": model.config.to_dict(),
            "phi": [vars(s) for s in model.phi],
            "meta": meta or {},
        },
        sort_keys=True,
    )
    # NCHW whatever layout the run trained in (channels_last), so the file and its digest do not depend on it
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    sha = _digest(header, state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"header": header, "sha256": sha, "state_dict": state}, tmp)
    os.replace(tmp, path)
    return sha


def load_model(path: str | os.PathLike | None = None) -> LoadedModel:
    """Load a model file safely; `None` loads the default model shipped with simdex.

    Raises:
        ModelFileError: missing file, pickled code, not a simdex model, or checksum mismatch.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    if not path.is_file():
        hint = " (the shipped default model is missing: reinstall simdex or train one with `simdex train`)" \
            if path == DEFAULT_MODEL_PATH else ""
        raise ModelFileError(f"model file not found: {path}{hint}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code, RuntimeError/EOFError for garbage
        raise ModelFileError(
            f"{path} is not a safe simdex model file: it cannot be loaded without executing code "
            f"or is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(blob, dict) or not {"header", "sha256", "state_dict"} <= set(blob):
        raise ModelFileError(f"{path} is not a simdex model file (written by `simdex train`)")
    header, state = blob["header"], blob["state_dict"]
    try:
        info = json.loads(header)
    except (TypeError, ValueError):
        raise ModelFileError(f"{path}: unreadable model header") from None
    if not isinstance(info, dict):
        raise ModelFileError(f"{path}: unreadable model header (not a JSON object)")
    if info.get("format") != FORMAT:
        raise ModelFileError(f"{path}: unsupported model format {info.get('format')!r}, expected {FORMAT}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelFileError(f"{path}: its state_dict is not a mapping of names to tensors")
    sha = _digest(header, state)
    if sha != blob["sha256"]:
        raise ModelFileError(f"{path}: checksum mismatch, the file was modified after it was saved")
    config = _config_of(info, path)
    _check_shapes(config, state, path)  # before any weight is allocated
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not match the saved config: {exc}") from None
    model.eval()
    return LoadedModel(model=model, sha256=sha, path=path, meta=info.get("meta", {}))


# bounds of a model header: what `simdex train` can write, with room (width 16 is ~7 GB of weights)
_CONFIG_FIELDS = {  # name: (types, check, what it must be)
    "width": ((int, float), lambda v: 0 < v <= 16, "a number in (0, 16]"),
    "in_channels": ((int,), lambda v: v in (1, 3), "1 or 3"),
    "num_classes": ((int,), lambda v: 2 <= v <= 1000, "an integer in [2, 1000]"),
    "image_size": ((int,), lambda v: 8 <= v <= 4096 and v % 8 == 0, "a multiple of 8 in [8, 4096]"),
    "arch": ((str,), lambda v: v == "unet", "'unet'"),
}


def _config_of(info: dict, path: Path) -> UNetConfig:
    """The header's model config, every field of the right type and within bounds (ModelFileError)."""
    config = info.get("config")
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: the model header has no config (not a file written by `simdex train`)")
    for name, (types, ok, what) in _CONFIG_FIELDS.items():
        if name not in config:
            continue
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, types) or not ok(value):
            raise ModelFileError(f"{path}: model header field config.{name} is {value!r:.40}, it must be {what}")
    if not isinstance(info.get("meta", {}), dict):
        raise ModelFileError(f"{path}: model header field meta is not a JSON object")
    return UNetConfig.from_dict(config)


def _check_shapes(config: UNetConfig, state: dict[str, torch.Tensor], path: Path) -> None:
    """The state dict has exactly the tensors, of exactly the shapes, that `config` builds; the
    network is built on the meta device to know them (no memory is allocated)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got == expected:
        return
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = [k for k in expected if k in got and got[k] != expected[k]]
    what = (f"{wrong[0]} is {list(got[wrong[0]])}, the config gives {list(expected[wrong[0]])}" if wrong
            else f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}")
    raise ModelFileError(f"{path}: weights do not match the saved config (width {config.width}): {what}")
