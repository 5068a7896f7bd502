"""brainkit.methods.brainmri_gpt: the frozen-CLIP patch decoder of BrainMRI-GPT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainkit.errors import ConfigError, DataError
from brainkit.methods import brainmri_gpt as cl
from brainkit.metrics.localisation import pixel_auroc

SIZE = 32


def blobs(n: int, size: int = SIZE, seed: int = 0, p_tumour: float = 0.6):
    """Grey discs ('brains') with a brighter disc ('tumour') in about ``p_tumour`` of the slices."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    c = size / 2
    imgs, masks = [], []
    for _ in range(n):
        brain = ((xx - c) ** 2 + (yy - c) ** 2) <= (0.42 * size) ** 2
        img = brain.float() * (0.35 + 0.1 * torch.rand(size, size, generator=g))
        m = torch.zeros(size, size)
        if torch.rand(1, generator=g) < p_tumour:
            r = size * (0.08 + 0.08 * torch.rand(1, generator=g))
            cx, cy = (c + (torch.rand(2, generator=g) - 0.5) * 0.5 * size).tolist()
            m = ((((xx - cx) ** 2 + (yy - cy) ** 2) <= r ** 2) & brain).float()
        imgs.append((img + 0.45 * m).clamp(0, 1))
        masks.append(m)
    masks = torch.stack(masks)
    return torch.stack(imgs)[:, None], masks, (masks.flatten(1).amax(1) > 0).long()


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    clip, tok = cl.load_clip("tiny:clip", image_size=SIZE, patch_size=8, seed=0,
                             vision_config={"num_hidden_layers": 4}, text_config={"num_hidden_layers": 2})
    return clip, tok


@pytest.fixture()
def model(backbone):
    clip, tok = backbone
    torch.manual_seed(1)
    return cl.CLIPLocaliser(clip, cl.text_features(clip, tok))


def literal_maps(model: cl.CLIPLocaliser, images: torch.Tensor) -> torch.Tensor:
    """The readable version: every patch of every layer, one at a time."""
    tokens, _ = model.clip_features(images)
    g, s = model.grid, model.image_size
    maps = torch.zeros(images.shape[0], len(model.layers), s, s)
    for b in range(images.shape[0]):
        for li, decoder in enumerate(model.decoders):
            grid = torch.zeros(2, g, g)
            for p in range(g * g):
                f = decoder(tokens[li][b, p])  # one patch token -> joint space
                f = f / f.norm()
                sims = torch.stack([model.temperature * (f @ model.text_feats[k]) for k in (0, 1)])
                grid[:, p // g, p % g] = sims  # row-major patch order, as the ViT flattens it
            up = F.interpolate(grid[None], size=(s, s), mode="bilinear", align_corners=False)[0]
            maps[b, li] = torch.softmax(up, dim=0)[1]  # abnormal channel of the two-class softmax
    return maps


def test_literal_per_patch_version_agrees(model):
    x, _, _ = blobs(2)
    with torch.no_grad():
        fast = model(x).layer_maps
    assert torch.allclose(fast, literal_maps(model, x), atol=1e-5)


def test_output_shapes_and_scores(model):
    x, _, _ = blobs(3)
    out = model(x)
    assert model.layers == (1, 2, 3, 4)  # spread over the tiny depth like 6/12/18/24 over 24
    assert out.logits.shape == (3, 4, SIZE, SIZE)
    assert torch.allclose(out.anomaly_map, out.layer_maps.mean(1))
    assert torch.allclose(out.score_max, out.anomaly_map.flatten(1).max(1).values)
    _, f_c = model.clip_features(x)
    manual = torch.softmax(model.temperature * f_c @ model.text_feats.T, -1)[:, 1]
    assert torch.allclose(out.score_cls, manual)
    assert ((out.layer_maps >= 0) & (out.layer_maps <= 1)).all()


def test_text_features_are_a_normalised_prompt_average(backbone):
    clip, tok = backbone
    normal = cl.prompt_ensemble("normal")
    abnormal = cl.prompt_ensemble("abnormal")
    assert len(normal) == 20 and len(abnormal) == 20 and not set(normal) & set(abnormal)
    tf = cl.text_features(clip, tok)
    assert torch.allclose(tf.norm(dim=-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        each = [clip.get_text_features(**tok([p], return_tensors="pt")).pooler_output[0] for p in normal[:3]]
    each = [e / e.norm() for e in each]
    mean = torch.stack(each).mean(0)
    assert torch.allclose(cl.encode_prompts(clip, tok, normal[:3]), mean / mean.norm(), atol=1e-5)


def test_one_channel_slices_equal_repeated_rgb(model):
    x, _, _ = blobs(2)
    with torch.no_grad():
        a, b, c = model(x).anomaly_map, model(x.repeat(1, 3, 1, 1)).anomaly_map, model(x[:, 0]).anomaly_map
    assert torch.allclose(a, b) and torch.allclose(a, c)


@pytest.mark.parametrize("shape,field", [((2, 1, 48, 48), r"shape\[-2:\]"), ((2, 2, SIZE, SIZE), "channels"),
                                         ((2, 4, SIZE, SIZE), "channels"), ((SIZE, SIZE), "images.shape")])
def test_bad_image_shapes(model, shape, field):
    with pytest.raises(DataError, match=field):
        model(torch.rand(*shape))


def test_mask_must_match_the_image(model):
    x, m, _ = blobs(2)
    loss_fn = cl.make_loss_fn()
    with pytest.raises(DataError, match="masks.shape"):
        loss_fn(model, {"image": x, "mask": m[:, :16, :16]})
    with pytest.raises(DataError, match="masks.shape"):
        loss_fn(model, {"image": x, "mask": m[:1]})
    with pytest.raises(DataError, match="binary"):
        loss_fn(model, {"image": x, "mask": m * 0.5 + 0.25})


def test_all_normal_batch_gives_a_finite_loss_with_gradients(model):
    x, m, _ = blobs(4, p_tumour=0.0)
    assert m.sum() == 0
    loss, logs = cl.make_loss_fn()(model, {"image": x, "mask": m})
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in model.decoders.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert "dice_focal" in logs


@pytest.mark.parametrize("lambda_dice", [1.0, 0.0, 0.5])
def test_loss_over_all_layers_at_once_equals_monai_dice_focal_per_layer(model, lambda_dice):
    from monai.losses import DiceFocalLoss

    x, m, _ = blobs(4)
    logits = model(x).logits.detach().requires_grad_(True)
    ours = cl.LocalisationLoss(lambda_dice=lambda_dice)(logits, m)
    ref_loss = DiceFocalLoss(sigmoid=True, batch=True, gamma=2.0, lambda_dice=lambda_dice, lambda_focal=1.0)
    ref = sum(ref_loss(logits[:, i:i + 1], m[:, None].float()) for i in range(logits.shape[1]))
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)
    g_ours, = torch.autograd.grad(ours, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    assert torch.allclose(g_ours, g_ref, rtol=1e-5, atol=1e-9)


def test_bad_loss_weights():
    with pytest.raises(ConfigError, match="lambda_dice"):
        cl.LocalisationLoss(lambda_dice=-1.0)


def test_batched_decoders_equal_one_decoder_per_layer(model):
    # the layers' decoders run as one baddbmm; the per-layer path (any projection) must give the same logits
    x, _, _ = blobs(3)
    with torch.no_grad():
        tokens = model._decoder_inputs(model.encode(x)["tokens"])
        fast = model._maps(tokens, list(model.decoders))
        slow = model._maps(tokens, [lambda z, d=d: d(z) for d in model.decoders])  # not PatchDecoders: looped
    assert fast.shape == slow.shape == (3, len(model.layers), SIZE, SIZE)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(fast[:, 0], fast[:, 1])  # the layers really have their own decoders


def test_validation_loss_in_one_pass_equals_the_per_batch_loss(model):
    x, m, _ = blobs(6)
    batches = [{"image": x[:4], "mask": m[:4]}, {"image": x[4:], "mask": m[4:]}]
    loss = cl.LocalisationLoss(lambda_dice=1.0)
    got = cl.evaluate_pixel_auroc(loss)(model, batches)
    loss_fn = cl.make_loss_fn(loss)
    with torch.no_grad():
        want = sum(float(loss_fn(model, b)[0]) * len(b["mask"]) for b in batches) / 6
    assert got["val_loss"] == pytest.approx(want, rel=1e-6)
    assert 0.0 <= got["val_pixel_auroc"] <= 1.0


def test_empty_prompt_list(backbone):
    clip, tok = backbone
    with pytest.raises(ConfigError, match="non-empty"):
        cl.text_features(clip, tok, normal=[])
    with pytest.raises(ConfigError, match="non-empty"):
        cl.encode_prompts(clip, tok, ["a healthy brain", ""])
    with pytest.raises(ConfigError):
        cl.prompt_ensemble("abnormal", templates=())


@pytest.mark.parametrize("layers,msg", [((2, 5), "beyond"), ((0,), "beyond"), ((), "empty"), ((2, 2), "distinct")])
def test_bad_layer_indices(backbone, layers, msg):
    clip, tok = backbone
    with pytest.raises(ConfigError, match=msg):
        cl.CLIPLocaliser(clip, torch.randn(2, clip.config.projection_dim), layers=layers)


def test_text_feature_shape_checked(backbone):
    clip, _ = backbone
    with pytest.raises(ConfigError, match="text_feats"):
        cl.CLIPLocaliser(clip, torch.randn(3, clip.config.projection_dim))


def test_clip_frozen_only_decoders_train(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("decoders.") for n in trainable)
    before = {n: p.clone() for n, p in model.clip.named_parameters()}
    dec_before = [p.clone() for p in model.decoders.parameters()]
    x, m, _ = blobs(4, seed=3)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not model.clip.training
    loss, _ = cl.make_loss_fn()(model, {"image": x, "mask": m})
    loss.backward()
    opt.step()
    assert all(torch.equal(before[n], p) for n, p in model.clip.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(dec_before, model.decoders.parameters()))


def test_zero_shot_ignores_the_decoders(model):
    x, _, _ = blobs(2)
    a = model.zero_shot(x).anomaly_map
    with torch.no_grad():
        for p in model.decoders.parameters():
            p.add_(1.0)
    assert torch.allclose(a, model.zero_shot(x).anomaly_map)


def test_training_with_fit_learns_the_blobs(backbone, tmp_path):
    from torch.utils.data import DataLoader

    from brainkit.train import fit, load_weights

    clip, tok = backbone
    torch.manual_seed(0)
    model = cl.CLIPLocaliser(clip, cl.text_features(clip, tok))
    rows = lambda x, m, y: [dict(image=a, mask=b, label=c) for a, b, c in zip(x, m, y)]  # noqa: E731
    tr = DataLoader(rows(*blobs(96, seed=1)), batch_size=16, shuffle=True)
    va = DataLoader(rows(*blobs(24, seed=2)), batch_size=24)
    te = DataLoader(rows(*blobs(32, seed=3)), batch_size=32)
    zero = cl.predict(model, te, zero_shot=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.5, 0.999))
    res = fit(model, tr, loss_fn=cl.make_loss_fn(), optimizer=opt, epochs=3, val_loader=va, out_dir=tmp_path)
    pred = cl.predict(model, te)
    assert pred["maps"].shape == (32, SIZE, SIZE) and pred["labels"].shape == (32,)
    trained_auc = pixel_auroc(pred["maps"], pred["masks"])
    assert trained_auc > 0.9
    assert trained_auc > pixel_auroc(zero["maps"], zero["masks"]) + 0.05
    # the best checkpoint holds the decoders and the text features, not the frozen CLIP
    fresh = cl.CLIPLocaliser(clip, torch.randn(2, clip.config.projection_dim))
    load_weights(fresh, tmp_path / "best.safetensors")
    assert torch.allclose(fresh.text_feats, model.text_feats)
    with torch.no_grad():
        assert torch.allclose(fresh(pred_x := next(iter(te))["image"]).anomaly_map, model(pred_x).anomaly_map)
    assert res.best_epoch >= 1


def test_contrastive_standin_trains_and_is_cached(tmp_path):
    x, m, y = blobs(24, seed=5)
    captions = ["an axial brain MRI slice with a tumour" if t else "an axial MRI slice of a healthy brain"
                for t in y.tolist()]
    kw = dict(cache_dir=tmp_path, patch_size=8, steps=6, batch_size=8, lr=1e-3, seed=0,
              vision_config={"num_hidden_layers": 2}, text_config={"num_hidden_layers": 1})
    clip, tok, hist = cl.standin_clip(x, captions, **kw)
    assert hist is not None and len(hist["steps"]) >= 1
    assert not any(p.requires_grad for p in cl.CLIPLocaliser(clip, cl.text_features(clip, tok)).clip.parameters())
    clip2, _, hist2 = cl.standin_clip(x, captions, **kw)
    assert hist2 is None  # from the cache
    for (n, p), (_, q) in zip(clip.state_dict().items(), clip2.state_dict().items()):
        assert torch.equal(p, q), n
    with pytest.raises(DataError):
        cl.pretrain_contrastive(clip, tok, x, captions[:-1], steps=1)


def test_hub_backbone_image_size_must_match(tmp_path, backbone):
    clip, _ = backbone
    clip.save_pretrained(tmp_path / "c")
    with pytest.raises(ConfigError, match="image_size"):
        cl.load_clip(str(tmp_path / "c"), image_size=SIZE * 2)


def test_cached_features_give_the_same_maps(model):
    x, m, y = blobs(3)
    feats = model.encode(x, batch_size=2)
    assert feats["tokens"].shape == (3, len(model.layers), model.grid ** 2, model.clip.config.vision_config.hidden_size)
    with torch.no_grad():
        a, b = model(x), model(tokens=feats["tokens"], f_c=feats["f_c"])
        za, zb = model.zero_shot(x), model.zero_shot(tokens=feats["tokens"], f_c=feats["f_c"])
    assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.score_cls, b.score_cls, atol=1e-6)
    assert torch.allclose(za.anomaly_map, zb.anomaly_map, atol=1e-6)
    ds = cl.FeatureSet(feats, m, y)
    loss, _ = cl.make_loss_fn()(model, torch.utils.data.default_collate([ds[i] for i in range(3)]))
    assert torch.isfinite(loss)


def test_bad_cached_features(model):
    x, m, _ = blobs(2)
    feats = model.encode(x)
    with pytest.raises(DataError, match="tokens.shape"):
        model(tokens=feats["tokens"][:, :2], f_c=feats["f_c"])
    with pytest.raises(DataError, match="f_c.shape"):
        model(tokens=feats["tokens"], f_c=None)
    with pytest.raises(ConfigError):
        model()
    with pytest.raises(DataError, match="one feature row"):
        cl.FeatureSet(feats, m[:1])


def test_train_decoders_selects_on_validation(backbone, tmp_path):
    from torch.utils.data import DataLoader

    clip, tok = backbone
    torch.manual_seed(0)
    model = cl.CLIPLocaliser(clip, cl.text_features(clip, tok))
    sets = {}
    for name, (n, seed) in {"train": (64, 1), "val": (24, 2)}.items():
        x, m, y = blobs(n, seed=seed)
        sets[name] = cl.FeatureSet(model.encode(x), m, y)
    res = cl.train_decoders(model, DataLoader(sets["train"], batch_size=16, shuffle=True),
                            DataLoader(sets["val"], batch_size=24), epochs=3, out_dir=tmp_path, cpu=True)
    aucs = [e["val_pixel_auroc"] for e in res.history["epochs"]]
    assert res.best_metric == max(aucs) and res.best_epoch == aucs.index(max(aucs)) + 1
    assert "val_loss" in res.history["epochs"][0]
    pred = cl.predict(model, DataLoader(sets["val"], batch_size=24))
    assert pixel_auroc(pred["maps"], pred["masks"]) == pytest.approx(res.best_metric, abs=1e-6)
