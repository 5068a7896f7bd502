"""BrainMRI-GPT's recipe: the CLIP model (a hub checkpoint, or the tiny stand-in pretrained contrastively on
phantom slices and cached), decoder training through :func:`brainkit.train.fit` with the validation split
choosing the checkpoint, prediction, and the pixel-level evaluation.

Introduced in ``02_clip_localisation``; the trained localiser feeds ``03_llm_explanations``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...cache import building_folder, fingerprint
from ...errors import ConfigError, DataError
from ...hub import parse_source
from .model import CLIP_MEAN, CLIP_STD, CLIPLocaliser, LocalisationLoss, check_masks

__all__ = ['make_loss_fn', 'predict', 'FeatureSet', 'evaluate_pixel_auroc', 'train_decoders', 'load_clip', 'pretrain_contrastive', 'standin_clip']

log = logging.getLogger(__name__)


def _run(model: CLIPLocaliser, batch: dict, image_key: str = "image", zero_shot: bool = False):
    """The model's output on a batch of images (``image_key``) or of cached features (``tokens``,
    ``f_c``), and the image shape ``(B, 1, S, S)`` the masks must match."""
    fn = model.zero_shot if zero_shot else model
    if "tokens" in batch:
        out = fn(tokens=batch["tokens"], f_c=batch.get("f_c"))
        return out, (out.logits.shape[0], 1, *out.logits.shape[-2:])
    images = batch[image_key]
    return fn(images.to(model.text_feats.device)), images


def make_loss_fn(loss: LocalisationLoss | None = None, image_key: str = "image", mask_key: str = "mask"):
    """``loss_fn(model, batch)`` for :func:`brainkit.train.fit`: batches are dicts with an
    ``image`` ``(B, 1|3, S, S)`` (or the cached ``tokens`` and ``f_c`` of :meth:`CLIPLocaliser.encode`)
    and a ``mask`` ``(B, S, S)``."""
    loss = LocalisationLoss() if loss is None else loss

    def loss_fn(model: CLIPLocaliser, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        out, ref = _run(model, batch, image_key)
        masks = check_masks(batch[mask_key], ref).to(out.logits.device)
        value = loss(out.logits, masks)
        return value, {"dice_focal": float(value.detach())}

    return loss_fn


@torch.no_grad()
def predict(model: CLIPLocaliser, loader, *, zero_shot: bool = False, image_key: str = "image",
            mask_key: str = "mask", label_key: str = "label",
            loss: LocalisationLoss | None = None) -> dict[str, torch.Tensor]:
    """Run ``model`` (or its zero-shot baseline) over ``loader``; returns CPU tensors ``maps``
    ``(N, S, S)``, ``masks``, ``score_cls``, ``score_max`` and ``labels`` (1 = tumour slice; taken from
    the batch, else from whether the mask has any tumour pixel). With ``loss``, also ``loss``: its mean
    over the slices, from the same forward pass."""
    was_training = model.training
    model.eval()
    keep: dict[str, list[torch.Tensor]] = {k: [] for k in ("maps", "masks", "score_cls", "score_max", "labels")}
    total, n = 0.0, 0
    for batch in loader:
        out, ref = _run(model, batch, image_key, zero_shot=zero_shot)
        keep["maps"].append(out.anomaly_map.float().cpu())
        keep["score_cls"].append(out.score_cls.float().cpu())
        keep["score_max"].append(out.score_max.float().cpu())
        if mask_key in batch:
            m = check_masks(batch[mask_key], ref)
            keep["masks"].append(m[:, 0].cpu())
            if loss is not None:
                total, n = total + float(loss(out.logits, m.to(out.logits.device))) * m.shape[0], n + m.shape[0]
        if label_key in batch:
            keep["labels"].append(torch.as_tensor(batch[label_key]).long().cpu())
        elif mask_key in batch:
            keep["labels"].append((keep["masks"][-1].flatten(1).amax(1) > 0).long())
    model.train(was_training)
    result = {k: torch.cat(v) for k, v in keep.items() if v}
    if loss is not None:
        result["loss"] = torch.tensor(total / max(n, 1), dtype=torch.float64)
    return result


class FeatureSet(torch.utils.data.Dataset):
    """Cached CLIP features with their masks and labels, one dict per slice (``tokens``, ``f_c``,
    ``mask``, ``label``): what the decoders train on once :meth:`CLIPLocaliser.encode` has run."""

    def __init__(self, features: dict[str, torch.Tensor], masks: torch.Tensor, labels: torch.Tensor | None = None):
        n = features["tokens"].shape[0]
        if features["f_c"].shape[0] != n or masks.shape[0] != n:
            raise DataError(None, "features/masks", "one feature row and one mask per slice",
                            f"{n} tokens, {features['f_c'].shape[0]} f_c, {masks.shape[0]} masks")
        self.tokens, self.f_c = features["tokens"], features["f_c"]
        self.masks = masks.float()
        self.labels = (self.masks.flatten(1).amax(1) > 0).long() if labels is None else torch.as_tensor(labels).long()

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens[i], "f_c": self.f_c[i], "mask": self.masks[i], "label": self.labels[i]}


def evaluate_pixel_auroc(loss: LocalisationLoss | None = None):
    """An ``evaluate(model, val_loader)`` for :func:`brainkit.train.fit`: validation pixel AUROC of the
    anomaly map (the monitored metric, ``val_pixel_auroc``) and, with ``loss``, the validation loss
    (``val_loss``, from the same forward pass)."""
    from ...metrics.localisation import pixel_auroc

    def evaluate(model: CLIPLocaliser, loader) -> dict[str, float]:
        pred = predict(model, loader, loss=loss)
        out = {"val_pixel_auroc": pixel_auroc(pred["maps"], pred["masks"])}
        if loss is not None:
            out["val_loss"] = float(pred["loss"])
        return out

    return evaluate


def train_decoders(model: CLIPLocaliser, train_loader, val_loader, *, epochs: int, lr: float = 0.01,
                   betas: Sequence[float] = (0.5, 0.999), out_dir: str | os.PathLike | None = None,
                   seed: int = 0, callbacks: Sequence[Any] = (), log_every: int = 10, resume: bool = False,
                   cpu: bool | None = None, loss: LocalisationLoss | None = None, desc: str = "decoders"):
    """Train the decoders (CLIP frozen) with Σ_l Focal + Dice through :func:`brainkit.train.fit`:
    Adam (the seed's lr 0.01, betas 0.5/0.999), the checkpoint chosen on **validation** pixel AUROC
    and restored at the end. Returns the :class:`~brainkit.train.FitResult`."""
    from ...train import fit

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model: no trainable parameters (the decoders are frozen?)")
    loss = LocalisationLoss() if loss is None else loss
    opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas))
    return fit(model, train_loader, loss_fn=make_loss_fn(loss), optimizer=opt, epochs=epochs, val_loader=val_loader,
               evaluate=evaluate_pixel_auroc(loss), monitor="val_pixel_auroc", mode="max", out_dir=out_dir,
               resume=resume, seed=seed, callbacks=callbacks, log_every=log_every, cpu=cpu, desc=desc)


# --------------------------------------------------------------------------------------------
# backbone: hub CLIP, tiny CLIP, and the contrastively pretrained stand-in
# --------------------------------------------------------------------------------------------
def load_clip(source: str, *, image_size: int, patch_size: int | None = None, cache_dir=None, seed: int = 0,
              **overrides: Any):
    """A ``CLIPModel`` and its tokenizer for ``source``. For ``tiny:clip`` the vision tower is built for
    ``image_size`` / ``patch_size``; for a hub id or folder, ``image_size`` must match the checkpoint's."""
    from ...hub import load_model, load_tokenizer

    src = parse_source(source)
    if src.scheme == "tiny":
        vision = {"image_size": int(image_size)}
        if patch_size is not None:
            if image_size % patch_size:
                raise ConfigError(f"patch_size: expected a divisor of image_size {image_size}, found {patch_size}")
            vision["patch_size"] = int(patch_size)
        vision.update(overrides.pop("vision_config", {}))
        clip = load_model(source, kind="clip", seed=seed, cache_dir=cache_dir, vision_config=vision, **overrides)
    else:
        clip = load_model(source, kind="clip", cache_dir=cache_dir, **overrides)
        if int(clip.config.vision_config.image_size) != int(image_size):
            raise ConfigError(f"{source}: vision image_size is {clip.config.vision_config.image_size}, expected "
                              f"{image_size} (the profile's slice size); pick the matching checkpoint")
    return clip, load_tokenizer(source, cache_dir=cache_dir)


def pretrain_contrastive(clip: nn.Module, tokenizer: Any, images: torch.Tensor, captions: Sequence[str], *,
                         steps: int, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.01,
                         seed: int = 0, val_fraction: float = 0.1, out_dir: str | os.PathLike | None = None):
    """Train ``clip`` (both towers) with CLIP's own symmetric InfoNCE loss on image–caption pairs
    (``CLIPModel(..., return_loss=True)``), through :func:`brainkit.train.fit`.

    This is the *stand-in* for OpenAI's pretraining that the smoke profile uses: no pretrained CLIP
    exists offline, and the method assumes a frozen *pretrained* one. ``images`` ``(N, 1|3, S, S)`` in
    ``[0, 1]``; returns the :class:`~brainkit.train.FitResult` (``clip`` is trained in place).
    """
    from torch.utils.data import DataLoader, TensorDataset

    from ...train import fit

    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] != len(captions):
        raise DataError(None, "images/captions", "(N, 1|3, S, S) images and N captions",
                        f"{tuple(images.shape)} images, {len(captions)} captions")
    if images.shape[0] < 4:
        raise DataError(None, "images", "at least 4 image-caption pairs", images.shape[0])
    enc = tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt")
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pix = (images.float().expand(-1, 3, -1, -1) - mean) / std
    n = pix.shape[0]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_val = max(2, int(round(n * val_fraction)))
    val_idx, tr_idx = order[:n_val], order[n_val:]
    ds = TensorDataset(pix, enc["input_ids"], enc["attention_mask"])
    tr = DataLoader(torch.utils.data.Subset(ds, tr_idx.tolist()), batch_size=batch_size, shuffle=True,
                    drop_last=len(tr_idx) > batch_size, generator=torch.Generator().manual_seed(seed))
    va = DataLoader(torch.utils.data.Subset(ds, val_idx.tolist()), batch_size=batch_size)

    def loss_fn(model, batch):
        p, ids, am = batch
        return model(input_ids=ids, attention_mask=am, pixel_values=p, return_loss=True).loss

    clip.requires_grad_(True)
    clip.train()
    steps_per_epoch = max(1, len(tr))
    epochs = max(1, -(-steps // steps_per_epoch))
    opt = torch.optim.AdamW([p for p in clip.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    result = fit(clip, tr, loss_fn=loss_fn, optimizer=opt, epochs=epochs, val_loader=va, max_steps=steps,
                 out_dir=out_dir, seed=seed, desc="CLIP stand-in pretraining")
    clip.eval()
    return result


def standin_clip(images: torch.Tensor, captions: Sequence[str], *, cache_dir: str | os.PathLike,
                 source: str = "tiny:clip", patch_size: int | None = None, steps: int = 300,
                 batch_size: int = 32, lr: float = 1e-3, seed: int = 0, **overrides: Any):
    """The smoke profile's frozen backbone: a tiny CLIP pretrained contrastively on phantom
    slice–caption pairs, cached under ``<cache_dir>/clip_standin/<fingerprint>`` (the fingerprint
    covers the data, captions and settings, so another setting trains again).

    Returns ``(clip, tokenizer, history)``; ``history`` is ``None`` when it came from the cache.
    """
    from transformers import CLIPModel

    from ...hub import load_tokenizer

    size = int(images.shape[-1])
    key = fingerprint(images, list(captions), source, patch_size, steps, batch_size, lr, seed, overrides)
    folder = Path(cache_dir).expanduser() / "clip_standin" / key
    tok = load_tokenizer(source)
    if (folder / "brainkit_standin.json").is_file():
        clip = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        log.info("stand-in CLIP loaded from %s", folder)
        return clip, tok, None
    clip, tok = load_clip(source, image_size=size, patch_size=patch_size, seed=seed, **overrides)
    result = pretrain_contrastive(clip, tok, images, captions, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    with building_folder(folder) as tmp:
        clip.save_pretrained(tmp)
        (tmp / "brainkit_standin.json").write_text(json.dumps({"source": source, "steps": steps, "lr": lr,
                                                                "best_val_loss": result.best_metric}))
    return clip.eval(), tok, result.history
