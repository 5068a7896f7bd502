"""brainkit.methods.braingemma3d.recipe: notebook 04's laterality fine-tune returns its best validated checkpoint
and is reproducible under its seed."""

from types import SimpleNamespace

import pytest
import torch

from brainkit.hub import load_model
from brainkit.methods.braingemma3d import recipe, standin
from brainkit.methods.braingemma3d.model import SlabSideProbe

STEPS, SHAPE = 8, (8, 16, 16)


@pytest.fixture(scope="module")
def setting():
    g = torch.Generator().manual_seed(0)
    volumes = torch.randn(24, 1, *SHAPE, generator=g)
    targets = torch.randint(3, (24,), generator=g)  # 0 none, 1 left, 2 right
    m2d = load_model("tiny:siglip", kind="siglip_vision", seed=0, vision_patch_size=8, vision_image_size=16)
    cfg = SimpleNamespace(gemma_depth_kernel=4, gemma_depth_stride=4, gemma_pos="interpolate",
                          gemma_probe_steps=STEPS, gemma_probe_batch=4, gemma_probe_lr=1e-2)
    grid = recipe.inflated_tower(m2d, "centre", cfg).grid(SHAPE)
    torch.manual_seed(0)
    heads = standin.SliceHeads(m2d.config.hidden_size, grid[1] * grid[2])
    idx = {"train": list(range(16)), "val": list(range(16, 24))}
    return m2d, heads, dict(cfg=cfg, volumes=volumes, targets=targets, idx=idx, grid=grid, seed=3, eval_every=2)


def _run(setting, steps=STEPS, **over):
    m2d, heads, kw = setting
    cfg = SimpleNamespace(**{**vars(kw["cfg"]), "gemma_probe_steps": steps})
    return recipe.finetune_side_probe(m2d, "centre", heads, **{**kw, "cfg": cfg, **over})


def _state(tower, probe):
    return {**{f"tower.{k}": v for k, v in tower.state_dict().items()},
            **{f"probe.{k}": v for k, v in probe.state_dict().items()}}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_returns_the_best_validated_checkpoint(setting):
    _, _, kw = setting
    tower, probe, curve, val_curve, best_step = _run(setting)
    assert isinstance(probe, SlabSideProbe) and len(curve) == STEPS and tower.training and probe.training
    assert [s for s, _ in val_curve] == [0, 2, 4, 6, 8]  # step 0, every eval_every steps, the last step
    accs = [a for _, a in val_curve]
    assert best_step == val_curve[accs.index(max(accs))][0]  # the best, the earliest among ties
    assert 0 < best_step < STEPS and accs.count(max(accs)) > 1  # this seed: a middle step, tied later
    assert recipe.side_accuracy(tower, probe, kw["volumes"], kw["targets"], kw["idx"]["val"]) == max(accs)
    best = _state(tower, probe)
    stopped = _run(setting, steps=best_step)  # the same run stopped at the best step ...
    assert _equal(best, _state(stopped[0], stopped[1]))  # ... ends with the returned weights
    last = _run(setting, eval_every=STEPS)  # validated at 0 and at the end only: the last step's weights
    assert last[4] == STEPS and not _equal(best, _state(last[0], last[1]))


def test_same_seed_same_weights(setting):
    first, second = _run(setting), _run(setting)
    assert first[2] == second[2] and first[3] == second[3] and first[4] == second[4]
    assert _equal(_state(first[0], first[1]), _state(second[0], second[1]))
    other = _run(setting, seed=4)
    assert other[2] != first[2]  # the seed drives initialisation and batches
