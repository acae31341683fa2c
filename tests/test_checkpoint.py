import pickle

import pytest
import torch

from simdex.indexer.checkpoint import ModelFileError, load_model, save_model
from simdex.indexer.model import SparseUNet, UNetConfig


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    net = SparseUNet(UNetConfig(width=0.25, image_size=16))
    path = tmp_path / "model.pt"
    sha = save_model(net, path, meta={"note": "test"})
    return net, path, sha


def test_round_trip_gives_same_outputs_and_checksum(model_file):
    net, path, sha = model_file
    loaded = load_model(path)
    assert loaded.sha256 == sha and len(sha) == 64
    assert loaded.meta == {"note": "test"}
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(loaded.model(x)[0], net.eval()(x)[0])
    assert save_model(loaded.model, path.with_name("again.pt"), meta={"note": "test"}) == sha


def test_modified_weights_are_refused(model_file):
    _, path, _ = model_file
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["head.bias"] += 1.0  # keep the stored checksum, change a weight
    torch.save(blob, path)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(path)


def test_corrupt_file_is_refused(model_file):
    _, path, _ = model_file
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelFileError):
        load_model(path)


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Payload.marker),))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"header": "{}", "sha256": "", "state_dict": _Payload()}, f)
    with pytest.raises(ModelFileError, match="without executing code"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a simdex model"):
        load_model(tmp_path / "other.pt")
