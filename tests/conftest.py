"""Shared test set-up: notebook runs go last (unit tests fail fast first), no network."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("notebooks") is not None)


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
    """One data folder for all notebook runs of a session (the phantom is generated once)."""
    return tmp_path_factory.mktemp("brainkit-data")
