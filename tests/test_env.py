import random
from pathlib import Path

import numpy as np
import pytest
import torch

from brainkit import env
from brainkit.errors import ConfigError, DataError


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_is_reproducible():
    env.seed_everything(3)
    a = draws()
    env.seed_everything(3)
    assert draws() == a
    env.seed_everything(4)
    assert draws() != a


def test_bad_seed():
    with pytest.raises(ConfigError):
        env.seed_everything(-1)


def test_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.delenv("BRAINKIT_DATA", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert env.resolve_data_dir(None) == tmp_path / "xdg" / "brainkit" / "data"
    assert env.resolve_data_dir(str(tmp_path / "param")) == tmp_path / "param"
    monkeypatch.setenv("BRAINKIT_DATA", str(tmp_path / "envvar"))
    assert env.resolve_data_dir(str(tmp_path / "param")) == tmp_path / "envvar"


def test_colab_paths(monkeypatch):
    monkeypatch.delenv("BRAINKIT_DATA", raising=False)
    monkeypatch.delenv("BRAINKIT_CACHE", raising=False)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release")
    assert env.in_colab()
    assert env.resolve_data_dir("") == Path("/content/brainkit/data")
    assert env.resolve_cache_dir() == Path("/content/brainkit/cache")


def test_setup_prints_and_creates_output(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BRAINKIT_DATA", raising=False)
    e = env.setup(5, profile="smoke", data_dir=str(tmp_path / "d"), output_dir=tmp_path / "out")
    out = capsys.readouterr().out
    assert e.device.type == "cpu" and e.seed == 5 and e.profile.name == "smoke"
    assert e.output_dir.is_dir() and e.data_dir == tmp_path / "d"
    for word in ("smoke", "cpu", "torch", "transformers", "monai"):
        assert word in out


def test_device_errors():
    with pytest.raises(ConfigError):
        env.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            env.pick_device("cuda")


def test_real_data_profile_needs_existing_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("BRAINKIT_DATA", raising=False)
    with pytest.raises(DataError) as err:
        env.setup(0, profile="colab", data_dir=tmp_path / "nowhere", verbose=False)
    assert "nowhere" in str(err.value) and "colab" in str(err.value)
    (tmp_path / "here").mkdir()
    assert env.setup(0, profile="colab", data_dir=tmp_path / "here", verbose=False).data_dir == tmp_path / "here"
