"""brainkit.methods.braingemma3d.inflate: a 2D vision tower inflated to 3D keeps what the 2D model computes."""

import pytest
import torch
import transformers

from brainkit.errors import ConfigError, DataError
from brainkit.hub import load_model
from brainkit.methods.braingemma3d.inflate import inflate_patch_kernel, inflate_vision_tower, token_grid


@pytest.fixture(scope="module")
def siglip():
    torch.manual_seed(0)
    return load_model("tiny:siglip", kind="siglip_vision", seed=0, vision_image_size=32).eval()


def _grey(h=32, w=32, seed=1):
    return torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(seed))


def _features_2d(model, img):
    return model(pixel_values=img.expand(-1, 3, -1, -1)).last_hidden_state


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mean_init_identical_slices_give_the_2d_features_exactly(siglip, depth):
    img = _grey()
    tower = inflate_vision_tower(siglip, depth_kernel=depth, init="mean").eval()
    vol = img[:, :, None].expand(-1, -1, 2 * depth, -1, -1).contiguous()  # (1, 1, D, H, W)
    with torch.no_grad():
        emb2d = siglip.embeddings(img.expand(-1, 3, -1, -1))
        emb3d = tower.embeddings(vol)
        out2d = _features_2d(siglip, img)
        out3d = tower(vol)
    n = emb2d.shape[1]
    assert emb3d.shape == (1, 2 * n, emb2d.shape[2])
    for d in range(2):
        torch.testing.assert_close(emb3d[:, d * n:(d + 1) * n], emb2d, atol=1e-5, rtol=1e-5)
        # identical keys repeated at every depth leave attention unchanged: the whole tower agrees
        torch.testing.assert_close(out3d[:, d * n:(d + 1) * n], out2d, atol=1e-4, rtol=1e-4)


def test_centre_init_reads_only_the_centre_slice(siglip):
    img = _grey(seed=2)
    tower = inflate_vision_tower(siglip, depth_kernel=3, init="centre").eval()
    vol = torch.randn(1, 1, 3, 32, 32) * 5  # other slices are noise ...
    vol[:, :, 1] = img  # ... the centre slice holds the image
    with torch.no_grad():
        torch.testing.assert_close(tower.embeddings(vol), siglip.embeddings(img.expand(-1, 3, -1, -1)),
                                   atol=1e-5, rtol=1e-5)
    # and the mean init would not: it averages the noise in
    mean = inflate_vision_tower(siglip, depth_kernel=3, init="mean").eval()
    with torch.no_grad():
        assert (mean.embeddings(vol) - siglip.embeddings(img.expand(-1, 3, -1, -1))).abs().max() > 0.1


def test_kernel_inits_and_rgb_folding():
    w = torch.randn(5, 3, 4, 4)
    c = inflate_patch_kernel(w, 3, "centre")
    assert c.shape == (5, 1, 3, 4, 4)
    torch.testing.assert_close(c[:, :, 1], w.sum(1, keepdim=True))
    assert c[:, :, 0].abs().max() == 0 and c[:, :, 2].abs().max() == 0
    m = inflate_patch_kernel(w, 4, "mean", rgb="mean")
    torch.testing.assert_close(m.sum(2), w.mean(1, keepdim=True))
    with pytest.raises(ConfigError, match="init"):
        inflate_patch_kernel(w, 2, "middle")
    with pytest.raises(ConfigError, match="depth"):
        inflate_patch_kernel(w, 0)


@pytest.mark.parametrize("pos", ["interpolate", "fixed"])
@pytest.mark.parametrize("shape", [(7, 37, 45), (2, 8, 8), (5, 64, 24)])
def test_odd_sizes_give_the_expected_token_grid(siglip, shape, pos):
    tower = inflate_vision_tower(siglip, depth_kernel=2, pos=pos)
    grid = token_grid(shape, (2, 8, 8), (2, 8, 8))
    assert grid == tower.grid(shape)
    with torch.no_grad():
        out = tower(torch.randn(2, 1, *shape))
    assert out.shape == (2, grid[0] * grid[1] * grid[2], siglip.config.hidden_size)
    assert tower.num_tokens(shape) == out.shape[1]
    assert torch.isfinite(out).all()


def test_overlapping_depth_stride(siglip):
    tower = inflate_vision_tower(siglip, depth_kernel=2, depth_stride=1)
    assert tower.grid((6, 32, 32)) == (5, 4, 4)


def test_fixed_positions_discard_the_pretrained_embedding(siglip):
    tower = inflate_vision_tower(siglip, pos="fixed")
    names = [n for n, _ in tower.named_parameters()]
    assert not any("position_embedding" in n for n in names)


def test_interpolated_positions_match_the_2d_grid_at_the_pretrained_size(siglip):
    tower = inflate_vision_tower(siglip, depth_kernel=2)
    pe = tower.embeddings.position((3, 4, 4))
    pe2d = siglip.embeddings.position_embedding.weight
    for d in range(3):
        torch.testing.assert_close(pe[d * 16:(d + 1) * 16], pe2d)


def test_clip_tower_inflates_with_its_class_token():
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    clip = transformers.CLIPVisionModel(cfg).eval()
    tower = inflate_vision_tower(clip, depth_kernel=1, init="mean").eval()
    img = _grey()
    with torch.no_grad():
        e2 = clip.embeddings(img.expand(-1, 3, -1, -1))
        e3 = tower.embeddings(img[:, :, None])
    torch.testing.assert_close(e3, e2, atol=1e-5, rtol=1e-5)
    assert tower.num_tokens((1, 32, 32)) == 17


def test_bad_volumes_raise_clear_errors(siglip):
    tower = inflate_vision_tower(siglip)
    with pytest.raises(DataError, match="at least one patch"):
        tower(torch.randn(1, 1, 4, 6, 32))
    with pytest.raises(DataError, match="at least one patch.*along D"):
        tower(torch.randn(1, 1, 1, 32, 32))
    with pytest.raises(DataError, match="5D tensor"):
        tower(torch.randn(32, 32))
    bad = torch.randn(1, 1, 4, 32, 32)
    bad[0, 0, 1, 2, 3] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        tower(bad)
    with pytest.raises(DataError, match="channel"):
        tower(torch.randn(1, 3, 4, 32, 32))


def test_not_a_vision_tower():
    with pytest.raises(ConfigError, match="patch_embedding"):
        inflate_vision_tower(torch.nn.Linear(2, 2))
