"""The SigLIP stand-in of notebooks 04-06: slice labels, training, caching, errors."""

import pytest
import torch

from brainkit.errors import DataError
from brainkit.hub import load_model
from brainkit.methods.braingemma3d import standin


def _cohort(n=6, d=8, s=32):
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(n, 1, d, s, s, generator=g)
    lab = torch.zeros(n, 1, d, s, s, dtype=torch.uint8)
    lab[0, 0, 2:6, 10:18, 2:10] = 2  # left (low columns)
    lab[1, 0, 2:6, 10:18, 22:30] = 1  # right
    lab[2, 0, 3, 10:12, 22:24] = 1  # a 4-pixel edge in one slice only: too small to label a side
    return vol, lab


def test_slice_labels_follow_the_lesion_column_and_healthy_subjects_give_none():
    vol, lab = _cohort()
    x, side, les = standin.slice_set(vol, lab, [0, 1, 3], end_fraction=0.125, min_lesion_pixels=40)
    # subject 0: slices 2-5 left (64 px each), 1-6 kept -> slices 1 and 6 of a tumour subject are dropped
    assert x.shape[1:] == (1, 32, 32) and les.shape == (x.shape[0], 32, 32)
    assert side.tolist().count(1) == 4 and side.tolist().count(2) == 4
    assert side.tolist().count(0) == 6  # subject 3 is healthy: all 6 inner slices
    assert bool(les[side == 0].sum() == 0)
    with pytest.raises(DataError, match="none left"):  # a tumour subject's unlabelled edges are not "none"
        standin.slice_set(vol, lab, [2])


def test_slice_set_rejects_mismatched_tensors():
    vol, lab = _cohort()
    with pytest.raises(DataError, match="volumes/labels"):
        standin.slice_set(vol, lab[:, :, :4], [0])


def test_standin_trains_caches_and_reloads(tmp_path):
    vol, lab = _cohort(n=8)
    lab[4:6] = lab[0:2]
    kw = dict(cache_dir=tmp_path, patch_size=8, steps=6, batch_size=8, lr=1e-3, seed=0)
    t1, hist = standin.standin_siglip(vol, lab, list(range(8)), **kw)
    assert hist is not None and len(hist["epochs"]) == 1 and "val_side_recall" in hist["epochs"][-1]
    t2, hist2 = standin.standin_siglip(vol, lab, list(range(8)), **kw)
    assert hist2 is None  # from the cache
    for (n, a), (_, b) in zip(t1.state_dict().items(), t2.state_dict().items()):
        assert torch.equal(a, b), n
    rand, none = standin.standin_siglip(vol, lab, list(range(8)), **{**kw, "steps": 0})
    assert none is None
    assert not torch.equal(rand.embeddings.patch_embedding.weight, t1.embeddings.patch_embedding.weight)
    assert len(list((tmp_path / "siglip_standin").iterdir())) == 1  # steps=0 is not cached


def test_standin_keeps_its_heads_and_rebuilds_an_entry_without_them(tmp_path):
    vol, lab = _cohort(n=8)
    lab[4:6] = lab[0:2]
    kw = dict(cache_dir=tmp_path, patch_size=8, steps=6, batch_size=8, lr=1e-3, seed=0)
    _, untrained, none = standin.standin_siglip(vol, lab, list(range(8)), with_heads=True, **{**kw, "steps": 0})
    assert none is None and untrained.side.in_features == 16 * 4  # 32-px slices, 8-px patches: a 4x4 grid, k = 4
    tower, heads, hist = standin.standin_siglip(vol, lab, list(range(8)), with_heads=True, **kw)
    assert hist is not None and isinstance(heads, standin.SliceHeads) and not heads.training
    assert not torch.equal(heads.side.weight, untrained.side.weight)  # the same seeded start, then trained
    _, again, hist2 = standin.standin_siglip(vol, lab, list(range(8)), with_heads=True, **kw)
    assert hist2 is None
    for (n, a), (_, b) in zip(heads.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    folder = next((tmp_path / "siglip_standin").iterdir())
    (folder / "slice_heads.safetensors").unlink()  # an entry from before the heads were kept
    _, _, hist3 = standin.standin_siglip(vol, lab, list(range(8)), with_heads=True, **kw)
    assert hist3 is not None and (folder / "slice_heads.safetensors").is_file()


def test_pretrain_slices_refuses_heads_of_another_grid():
    vol, lab = _cohort(n=8)
    x, side, les = standin.slice_set(vol, lab, list(range(8)))
    tower = load_model("tiny:siglip", kind="siglip_vision", seed=0, vision_patch_size=8, vision_image_size=x.shape[-1])
    with pytest.raises(DataError, match="heads"):
        standin.pretrain_slices(tower, x, side, les, steps=2, heads=standin.SliceHeads(64, 64))
