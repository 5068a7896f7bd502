"""The smoke profile's stand-in for a pretrained 2D SigLIP: a tiny SigLIP trained on phantom slices.

Introduced in ``04_inflating_encoders``; ``05_braingemma3d_training`` and ``06_braingemma3d_evaluation``
inflate the same (cached) tower.

BrainGemma3D inflates MedSigLIP, a 2D encoder that has *learned* to see medical images. No pretrained
SigLIP exists offline, and a random ViT learns almost nothing about a small lesion in a few CPU minutes, so
the smoke profile first teaches the tiny ``SiglipVisionModel`` on axial slices of the training volumes. It is
a stand-in for MedSigLIP's pretraining, named as such in the notebooks, not a reproduction of it.

The supervision, per slice, is what a radiologist's report says of that slice, made spatial:

- a per-token lesion loss: each patch token says whether at least ``token_fraction`` of its pixels are lesion
  (binary cross-entropy with ``pos_weight``, lesion tokens being rare);
- the slice's lesion side (none / left / right, from the lesion's centroid column) read by a position-aware
  head: a small projection of every token, flattened in grid order, then a linear layer. A mean of the tokens
  cannot tell left from right; this head can.

Slices are drawn class-balanced; each is mirrored left-right with probability 1/2 and its side label swapped
(column 0 is the patient's left, see :mod:`brainkit.methods.braingemma3d.data`). Near-empty end slices are dropped,
and so are tumour slices whose lesion cross-section is smaller than ``min_lesion_pixels`` (too small to
label a side). The trained tower is cached under ``<cache_dir>/siglip_standin/<fingerprint>`` with
``save_pretrained`` (the fingerprint covers the slices and every setting, so another setting trains again).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from ...cache import building_folder, fingerprint
from ...errors import DataError

__all__ = ["slice_set", "SliceHeads", "pretrain_slices", "standin_siglip"]

log = logging.getLogger(__name__)


def slice_set(volumes: torch.Tensor, labels: torch.Tensor, index: Any, *, end_fraction: float = 0.125,
              min_lesion_pixels: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Axial slices of ``volumes[index]`` for stand-in pretraining.

    ``volumes`` / ``labels``: ``(N, 1, D, H, W)`` (the cohort of :func:`~brainkit.methods.braingemma3d.data.load_cohort`).
    Returns ``(images (M, 1, H, W), side (M,) in {0 none, 1 left, 2 right}, lesion (M, H, W) bool)``. The first
    and last ``end_fraction`` of the slices are dropped, and tumour slices whose lesion has fewer than
    ``min_lesion_pixels`` pixels; a slice with fewer than 4 lesion pixels counts as "none" only in a healthy
    subject (elsewhere it is dropped too: an unlabelled edge of a tumour is not a normal slice).
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1 or labels.shape != volumes.shape:
        raise DataError(None, "volumes/labels", "two (N, 1, D, H, W) tensors of the same shape",
                        f"{tuple(volumes.shape)} and {tuple(labels.shape)}")
    idx = torch.as_tensor(index, dtype=torch.long)
    d, h, w = volumes.shape[2:]
    cut = int(d * end_fraction)
    keep_d = slice(cut, d - cut)
    x = volumes[idx, 0, keep_d].reshape(-1, 1, h, w).float()
    les = (labels[idx, 0, keep_d] > 0).reshape(-1, h, w)
    n = les.flatten(1).sum(1)
    col = (les.float() * torch.arange(w, dtype=torch.float32)).flatten(1).sum(1) / n.clamp(min=1)
    side = torch.where(n < 4, 0, torch.where(col < w / 2, 1, 2))
    healthy = (labels[idx] > 0).flatten(1).sum(1).eq(0).repeat_interleave(d - 2 * cut)
    keep = (healthy & (n == 0)) | (n >= min_lesion_pixels)
    if not bool(keep.any()):
        raise DataError(None, "volumes", "slices with a lesion or healthy subjects", "none left after filtering")
    return x[keep], side[keep], les[keep]


class SliceHeads(nn.Module):
    """The stand-in's two training heads on the tower's patch tokens ``(B, N, dim)``: a per-token lesion logit
    ``(B, N)`` and a position-aware side classifier ``(B, 3)`` (a ``k``-dim projection of every token,
    flattened in grid order, then a linear layer). Cached beside the tower: notebook 04 applies the side head
    to every depth slab of the inflated tower's tokens, the 2D classifier read in 3D before any 3D training."""

    def __init__(self, dim: int, num_tokens: int, k: int = 4):
        super().__init__()
        self.token = nn.Linear(dim, 1)
        self.proj = nn.Linear(dim, k)
        self.side = nn.Linear(num_tokens * k, 3)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.token(tokens)[..., 0], self.side(self.proj(tokens).flatten(1))


class _Pretrainer(nn.Module):
    def __init__(self, tower: nn.Module, heads: SliceHeads):
        super().__init__()
        self.tower, self.heads = tower, heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.tower(pixel_values=x.expand(-1, 3, -1, -1)).last_hidden_state)


def pretrain_slices(tower: nn.Module, images: torch.Tensor, side: torch.Tensor, lesion: torch.Tensor, *,
                    steps: int, batch_size: int = 32, lr: float = 2e-3, weight_decay: float = 0.01,
                    token_fraction: float = 0.1, pos_weight: float = 5.0, seed: int = 0,
                    val_fraction: float = 0.1, heads: SliceHeads | None = None):
    """Train a 2D ``SiglipVisionModel`` ``tower`` in place on slices (:func:`slice_set`) with the per-token
    lesion loss plus the side loss, through :func:`brainkit.train.fit` (AdamW, one-cycle schedule). The
    validation metric is the side classifier's balanced recall (``val_side_recall``). ``heads``: the
    :class:`SliceHeads` to train with the tower (new ones when ``None``; pass your own to keep them). Returns
    the :class:`~brainkit.train.FitResult`."""
    from torch.utils.data import DataLoader, Subset, TensorDataset, WeightedRandomSampler

    from ...train import fit

    if images.shape[0] < 8:
        raise DataError(None, "images", "at least 8 slices", images.shape[0])
    patch = int(tower.config.patch_size)
    grid = images.shape[-1] // patch
    if heads is None:
        heads = SliceHeads(int(tower.config.hidden_size), grid * grid)
    elif heads.side.in_features != grid * grid * heads.proj.out_features:
        raise DataError(None, "heads", f"SliceHeads for a {grid}x{grid} token grid",
                        f"a side head of {heads.side.in_features} inputs")
    model = _Pretrainer(tower, heads)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=g)
    n_val = max(8, int(round(images.shape[0] * val_fraction)))
    va_idx, tr_idx = order[:n_val], order[n_val:]
    ds = TensorDataset(images, side, lesion)
    weights = (1.0 / torch.bincount(side[tr_idx], minlength=3).clamp(min=1).float())[side[tr_idx]]
    sampler = WeightedRandomSampler(weights.double(), num_samples=steps * batch_size, replacement=True,
                                    generator=torch.Generator().manual_seed(seed))
    tr = DataLoader(Subset(ds, tr_idx.tolist()), batch_size=batch_size, sampler=sampler)
    va = DataLoader(Subset(ds, va_idx.tolist()), batch_size=256)
    flip_gen = torch.Generator().manual_seed(seed + 1)
    pw = torch.tensor(float(pos_weight))

    def loss_fn(m, batch):
        x, y, les = batch
        f = torch.rand(x.shape[0], generator=flip_gen) < 0.5
        x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        les = torch.where(f.view(-1, 1, 1), les.flip(-1), les)
        y = torch.where(f & (y > 0), 3 - y, y)
        target = (nnf.avg_pool2d(les[:, None].float(), patch).flatten(1) > token_fraction).float()
        tok, logits = m(x)
        side_loss = nnf.cross_entropy(logits, y)
        token_loss = nnf.binary_cross_entropy_with_logits(tok, target, pos_weight=pw.to(tok.device))
        return side_loss + token_loss, {"side_loss": side_loss.item(), "token_loss": token_loss.item()}

    @torch.no_grad()
    def evaluate(m, loader):
        pred, true = [], []
        for x, y, _ in loader:
            pred.append(m(x)[1].argmax(1))
            true.append(y)
        p, t = torch.cat(pred), torch.cat(true)
        recall = [float((p[t == k] == k).float().mean()) for k in range(3) if bool((t == k).any())]
        return {"val_side_recall": sum(recall) / len(recall)}

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    result = fit(model, tr, loss_fn=loss_fn, optimizer=opt, epochs=1, val_loader=va, evaluate=evaluate,
                 monitor="val_side_recall", mode="max", scheduler=sched, max_steps=steps, seed=seed,
                 restore_best=False, log_every=50, desc="SigLIP stand-in pretraining")
    tower.eval()
    return result


_HEADS_FILE = "slice_heads.safetensors"


def standin_siglip(volumes: torch.Tensor, labels: torch.Tensor, train_index: Any, *,
                   cache_dir: str | os.PathLike, source: str = "tiny:siglip", patch_size: int = 8,
                   steps: int = 2000, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                   with_heads: bool = False):
    """The stand-in pretrained 2D tower: :func:`pretrain_slices` on the training volumes' slices, cached.

    Returns ``(tower, history)``: a 2D ``SiglipVisionModel`` in eval mode, and the fit history (``None`` when
    it came from the cache); with ``with_heads=True``, ``(tower, heads, history)`` where ``heads`` are the
    trained :class:`SliceHeads`. ``steps=0`` returns the random tower (and random heads), uncached. A cache
    entry written before the heads were kept is trained again.
    """
    from safetensors.torch import load_file, save_file
    from transformers import SiglipVisionModel

    from ...hub import load_model

    image_size = int(volumes.shape[-1])

    def new_heads(tower):  # seeded, without touching the global random state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SliceHeads(int(tower.config.hidden_size), (image_size // int(tower.config.patch_size)) ** 2)

    def out(tower, heads, history):
        return (tower, heads.eval(), history) if with_heads else (tower, history)

    if steps <= 0:
        tower = load_model(source, kind="siglip_vision", seed=seed, vision_patch_size=patch_size,
                           vision_image_size=image_size).eval()
        return out(tower, new_heads(tower), None)
    x, side, les = slice_set(volumes, labels, train_index)
    key = fingerprint(x, side, les, source, patch_size, steps, batch_size, lr, seed)
    folder = Path(cache_dir).expanduser() / "siglip_standin" / key
    if (folder / "brainkit_standin.json").is_file() and (folder / _HEADS_FILE).is_file():
        log.info("stand-in SigLIP loaded from %s", folder)
        tower = SiglipVisionModel.from_pretrained(folder, local_files_only=True).eval()
        heads = new_heads(tower)
        heads.load_state_dict(load_file(str(folder / _HEADS_FILE)))
        return out(tower, heads, None)
    tower = load_model(source, kind="siglip_vision", seed=seed, vision_patch_size=patch_size,
                       vision_image_size=image_size)
    heads = new_heads(tower)
    result = pretrain_slices(tower, x, side, les, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                             heads=heads)
    with building_folder(folder) as tmp:
        tower.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(tmp / _HEADS_FILE))
        (tmp / "brainkit_standin.json").write_text(json.dumps({"source": source, "steps": steps, "lr": lr,
                                                                "val_side_recall": result.history["epochs"][-1]
                                                                .get("val_side_recall")}))
    return out(tower.eval(), heads, result.history)
