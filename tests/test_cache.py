"""brainkit.cache: cache keys, cache folders written whole or not at all, files published with ordinary permissions."""

import os
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from brainkit.cache import atomic_save_tensors, atomic_write_text, building_folder, fingerprint
from brainkit.data import formats


def test_fingerprint_changes_with_any_input():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    key = fingerprint(x, "tiny:siglip", 8, {"lr": 0.002})
    assert key == fingerprint(x.clone(), "tiny:siglip", 8, {"lr": 0.002})
    assert len(key) == 16 and int(key, 16) >= 0
    y = x.clone()
    y[2, 3] += 1e-3
    others = {fingerprint(y, "tiny:siglip", 8, {"lr": 0.002}),
              fingerprint(x.double(), "tiny:siglip", 8, {"lr": 0.002}),
              fingerprint(x, "tiny:clip", 8, {"lr": 0.002}),
              fingerprint(x, "tiny:siglip", 16, {"lr": 0.002}),
              fingerprint(x, "tiny:siglip", 8, {"lr": 0.001})}
    assert key not in others and len(others) == 5


def test_fingerprint_dict_order_does_not_matter():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})


def test_building_folder_publishes_on_success(tmp_path):
    target = tmp_path / "kind" / "key"
    with building_folder(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        (tmp / "weights.bin").write_text("w")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "weights.bin").read_text() == "w"
    assert sorted(p.name for p in target.parent.iterdir()) == ["key"]


def test_building_folder_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "key"
    with pytest.raises(RuntimeError, match="interrupted"):
        with building_folder(target) as tmp:
            (tmp / "half.bin").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_building_folder_replace(tmp_path):
    target = tmp_path / "key"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with building_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_atomic_save_tensors_round_trip_and_no_leftovers(tmp_path):
    path = atomic_save_tensors({"w": torch.ones(2, 3)}, tmp_path / "sub" / "stage.safetensors", {"k": "v"})
    assert torch.equal(load_file(str(path))["w"], torch.ones(2, 3))
    with pytest.raises(ValueError):
        atomic_save_tensors({"w": "not a tensor"}, path)  # safetensors refuses it mid-write
    assert torch.equal(load_file(str(path))["w"], torch.ones(2, 3))  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["stage.safetensors"]


def test_atomic_writers_give_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        written = [atomic_write_text(tmp_path / "metrics.json", "{}"),
                   atomic_save_tensors({"w": torch.ones(1)}, tmp_path / "w.safetensors"),
                   formats.save_volume(tmp_path / "t1.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))]
    finally:
        os.umask(old)
    for p in written:  # as open(..., "w") would make them, not mkstemp's owner-only 0600
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
