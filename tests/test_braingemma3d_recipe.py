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


# ---- notebooks 05 / 06: build, run the three stages, reload from the checkpoint's own settings ----------------
def _report_parts(seed=0):
    from brainkit.generation import load_language_model
    from brainkit.methods.braingemma3d.inflate import inflate_vision_tower

    v2d = load_model("tiny:siglip", kind="siglip_vision", seed=seed, vision_image_size=32, vision_num_hidden_layers=1)
    lm, tok = load_language_model("tiny:gemma3", seed=seed)
    return inflate_vision_tower(v2d, depth_kernel=2), lm, tok


REPORT_VOLS = torch.randn(6, 1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
REPORT_TEXTS = ["Left frontal mass with oedema.", "No abnormality.", "Right temporal enhancing lesion.",
                "No abnormality.", "Left parietal mass.", "Right frontal oedema."]


def test_stages_with_a_non_default_compressor_train_and_reload_as_notebook_06_does(tmp_path):
    import copy

    from brainkit.errors import CheckpointError
    from brainkit.profiles import resolve

    cfg = resolve("smoke", gemma_compressor="pool", gemma_num_tokens=6, gemma_lora_rank=2)
    settings = recipe.vlm_settings(cfg)
    assert settings["compressor"] == "pool" and settings["num_tokens"] == 6 and settings["lora_rank"] == 2
    tower, lm, tok = _report_parts()
    saved_lm = copy.deepcopy(lm)  # what notebook 05 saves to checkpoints/lm: the frozen base is not in a stage file
    torch.manual_seed(0)
    model = recipe.build_vlm(tower, lm, tok, cfg)
    assert type(model.compressor).__name__ == "AdaptivePoolCompressor" and model.num_tokens == 6
    pairs = list(zip(REPORT_VOLS, REPORT_TEXTS))
    collate = lambda b: (torch.stack([x for x, _ in b]), [t for _, t in b])  # noqa: E731
    train = torch.utils.data.DataLoader(pairs, batch_size=3, shuffle=True, collate_fn=collate,
                                        generator=torch.Generator().manual_seed(0))
    val = torch.utils.data.DataLoader(pairs[:3], batch_size=3, collate_fn=collate)
    check = (REPORT_VOLS[:3], REPORT_TEXTS[:3])
    rows = {}
    for stage, loss_fn in (("phase1", recipe.contrastive_loss_fn(cfg.gemma_tau)), ("phase2a", recipe.report_loss_fn),
                           ("phase2b", recipe.report_loss_fn)):
        if stage == "phase2b":
            model.add_lora(settings["lora_rank"])
        rows[stage] = recipe.run_stage(model, stage, loss_fn, steps=3, train_loader=train, val_loader=val, lr=1e-2,
                                       folder=tmp_path / stage, seed=0, settings=settings, check_batch=check)
        assert rows[stage]["steps"] == 3 and rows[stage]["reload_diff"] < 1e-5
        assert rows[stage]["loss_scrambled"] != pytest.approx(rows[stage]["loss_before"], abs=1e-4)
    assert recipe.stage_settings(tmp_path / "phase2b" / "stage.safetensors") == settings

    # notebook 06: a fresh tower of the same architecture and the saved LM, no profile needed; the NLL comes back
    tower2, _, _ = _report_parts(seed=5)
    loaded, info = recipe.load_trained(tower2, copy.deepcopy(saved_lm), tok, tmp_path)
    assert info["stage"] == "phase2b" and info["settings"] == settings
    assert type(loaded.compressor).__name__ == "AdaptivePoolCompressor" and loaded.num_tokens == 6
    with torch.no_grad():
        assert torch.allclose(loaded.report_nll(*check), model.report_nll(*check), atol=1e-5)
        # the defaults (perceiver, 32 tokens) are what 06 rebuilt before: that checkpoint cannot go into them
        default = recipe.build_vlm(tower2, copy.deepcopy(saved_lm), tok, recipe.vlm_settings(resolve("smoke")))
        default.add_lora(2)
        with pytest.raises(CheckpointError, match="another ReportVLM configuration"):
            default.load_stage(tmp_path / "phase2b" / "stage.safetensors")


def test_load_trained_names_what_is_missing(tmp_path):
    from brainkit.errors import CheckpointError

    tower, lm, tok = _report_parts()
    with pytest.raises(CheckpointError, match=r"phase2b.*not found"):
        recipe.load_trained(tower, lm, tok, tmp_path)
    m = recipe.build_vlm(tower, lm, tok, {"compressor": "pool", "num_tokens": 4})
    path = m.save_stage(tmp_path / "phase2a" / "stage.safetensors", stage="phase2a")  # no settings written
    with pytest.raises(CheckpointError, match=r"stage\.safetensors: field 'settings'"):
        recipe.stage_settings(path)
