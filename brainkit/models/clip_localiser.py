"""BrainMRI-GPT's localiser: a frozen CLIP, per-layer patch decoders and prompt-ensembled text.

Introduced in ``02_clip_localisation``. The idea, in the seed's notation:

- text: ``F_t ∈ R^{2×C}`` — the normal and abnormal prompt sets, each prompt's embedding
  L2-normalised, averaged over the set and re-normalised (:func:`text_features`);
- image: the patch tokens of hidden layers ``l ∈ {6, 12, 18, 24}`` of CLIP's ViT (CLS dropped), each
  mapped by its own decoder ``D_l = Linear → LeakyReLU → Linear`` into the joint space;
- per layer: ``M_l = softmax(τ · up(D_l(z_l) F_tᵀ))[abnormal]`` where ``up`` is bilinear upsampling of
  the patch grid to the image; the layer maps are averaged into the anomaly map;
- image score: ``softmax(τ F_c F_tᵀ)[abnormal]`` with ``F_c`` CLIP's projected CLS embedding
  (``score_cls``), or the maximum of the anomaly map (``score_max``);
- loss: Σ_l Focal + Dice on the abnormal channel (MONAI :class:`~monai.losses.DiceFocalLoss`).

Two logits ``τ s_n, τ s_a`` through a softmax give ``sigmoid(τ (s_a − s_n))``, so the package keeps the
single abnormal *logit* ``τ (s_a − s_n)`` per pixel: the map is its sigmoid, and MONAI's losses take it
with ``sigmoid=True``. Upsampling is linear, so upsampling the two similarities and then taking the
softmax is the same as upsampling their difference.

CLIP stays frozen (and in eval mode); only the decoders train. Images enter as ``(B, 1|3, S, S)``
tensors in ``[0, 1]`` (one channel is repeated to RGB) and are normalised with CLIP's mean and std here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import building_folder, fingerprint
from ..errors import ConfigError, DataError
from .factory import parse_source, spread_layers

__all__ = [
    "NORMAL_STATES", "ABNORMAL_STATES", "PROMPT_TEMPLATES", "prompt_ensemble", "encode_prompts",
    "text_features", "PatchDecoder", "LocaliserOutput", "CLIPLocaliser", "LocalisationLoss", "make_loss_fn",
    "check_masks", "predict", "pretrain_contrastive", "standin_clip", "load_clip", "FeatureSet",
    "evaluate_pixel_auroc", "train_decoders",
]

log = logging.getLogger(__name__)

#: OpenAI CLIP's image normalisation (the same numbers the CLIP image processors carry).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Prompt ensemble: 5 states × 4 templates = 20 prompts per class, as in the seed.
NORMAL_STATES = ("a healthy brain", "a normal brain", "a brain without a tumour", "a brain with no lesion",
                 "unremarkable brain tissue")
ABNORMAL_STATES = ("a brain tumour", "a brain with a tumour", "an abnormal brain with a lesion",
                   "a brain with a mass", "a tumour in the brain tissue")
PROMPT_TEMPLATES = ("a brain MRI slice of {}.", "an axial MRI scan showing {}.",
                    "a T1-weighted contrast-enhanced MRI of {}.", "a medical image of {}.")


def prompt_ensemble(kind: str, templates: Sequence[str] = PROMPT_TEMPLATES,
                    states: Sequence[str] | None = None) -> list[str]:
    """The prompts of one class (``"normal"`` or ``"abnormal"``): every template filled with every state."""
    if kind not in ("normal", "abnormal"):
        raise ConfigError(f"prompt kind: expected 'normal' or 'abnormal', found {kind!r}")
    if states is None:
        states = NORMAL_STATES if kind == "normal" else ABNORMAL_STATES
    prompts = [t.format(s) for t in templates for s in states]
    if not prompts:
        raise ConfigError(f"{kind} prompts: expected at least one template and one state, found none")
    return prompts


@torch.no_grad()
def encode_prompts(clip: nn.Module, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    """One class's text feature ``(C,)``: each prompt embedded by CLIP's text tower and projection,
    L2-normalised, averaged over the prompts and re-normalised."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ConfigError(f"prompts: expected a non-empty list of strings, found {prompts!r}")
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError(f"prompts: expected non-empty strings, found {list(prompts)!r}")
    device = next(clip.parameters()).device
    feats = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i:i + batch_size]), padding=True, truncation=True, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        pooled = clip.text_model(**enc).pooler_output
        feats.append(F.normalize(clip.text_projection(pooled), dim=-1))
    return F.normalize(torch.cat(feats).mean(0), dim=-1)


def text_features(clip: nn.Module, tokenizer: Any, normal: Sequence[str] | None = None,
                  abnormal: Sequence[str] | None = None) -> torch.Tensor:
    """``F_t ∈ R^{2×C}``: row 0 the normal, row 1 the abnormal prompt ensemble (defaults:
    :func:`prompt_ensemble`). An empty list raises :class:`ConfigError`."""
    normal = prompt_ensemble("normal") if normal is None else normal
    abnormal = prompt_ensemble("abnormal") if abnormal is None else abnormal
    return torch.stack([encode_prompts(clip, tokenizer, normal), encode_prompts(clip, tokenizer, abnormal)])


class PatchDecoder(nn.Module):
    """``Linear(d_vision → hidden) → LeakyReLU → Linear(hidden → C)``: one layer's patch tokens into
    the joint space (seed: 1024 → 768 → 768 for ViT-L/14)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, negative_slope: float = 0.01):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LeakyReLU(negative_slope),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class LocaliserOutput:
    """What :class:`CLIPLocaliser` returns for a batch of ``B`` images of side ``S`` with ``L`` layers.

    - ``logits``: ``(B, L, S, S)`` abnormal logit per layer, ``τ (s_a − s_n)`` upsampled;
    - ``layer_maps``: ``(B, L, S, S)`` their sigmoids (= the two-class softmax);
    - ``anomaly_map``: ``(B, S, S)`` the mean of the layer maps;
    - ``score_cls``: ``(B,)`` ``softmax(τ F_c F_tᵀ)[abnormal]``; ``score_max``: ``(B,)`` max of the map.
    """

    logits: torch.Tensor
    layer_maps: torch.Tensor
    anomaly_map: torch.Tensor
    score_cls: torch.Tensor
    score_max: torch.Tensor


class CLIPLocaliser(nn.Module):
    """A frozen transformers ``CLIPModel`` with one trainable :class:`PatchDecoder` per hidden layer.

    - ``clip``: a ``CLIPModel`` (any size; its vision tower's ``image_size`` fixes the input side);
    - ``text_feats``: ``(2, C)`` from :func:`text_features` (kept as a buffer, saved with the decoders);
    - ``layers``: hidden-layer indices in ``1..depth`` (``None`` → four spread over the depth by
      :func:`~brainkit.models.factory.spread_layers`: 6/12/18/24 for ViT-L/14);
    - ``temperature``: τ of the softmax (100, CLIP's logit scale);
    - ``patch_norm``: pass patch tokens through CLIP's frozen ``post_layernorm`` first (as for the CLS
      token), which puts every layer on a common scale.
    """

    def __init__(self, clip: nn.Module, text_feats: torch.Tensor, layers: Sequence[int] | None = None, *,
                 decoder_hidden: int | None = None, temperature: float = 100.0, patch_norm: bool = True,
                 negative_slope: float = 0.01):
        super().__init__()
        vcfg = clip.config.vision_config
        depth = int(vcfg.num_hidden_layers)
        layers = spread_layers(depth, min(4, depth)) if layers is None else tuple(int(x) for x in layers)
        if len(layers) == 0:
            raise ConfigError("layers: expected at least one hidden-layer index, found an empty list")
        bad = [x for x in layers if not 1 <= x <= depth]
        if bad:
            raise ConfigError(f"layers: index {bad[0]} is beyond the vision tower's depth; expected values in "
                              f"1..{depth} ({type(clip).__name__} has {depth} blocks), found {list(layers)}")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"layers: expected distinct indices, found {list(layers)}")
        joint = int(clip.config.projection_dim)
        if text_feats.shape != (2, joint):
            raise ConfigError(f"text_feats: expected shape (2, {joint}) (normal, abnormal), "
                              f"found {tuple(text_feats.shape)}")
        if temperature <= 0:
            raise ConfigError(f"temperature: expected a positive number, found {temperature}")
        self.clip = clip
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.layers = layers
        self.temperature = float(temperature)
        self.patch_norm = bool(patch_norm)
        self.image_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.num_channels = int(vcfg.num_channels)
        hidden = joint if decoder_hidden is None else int(decoder_hidden)
        self.decoders = nn.ModuleList(
            PatchDecoder(int(vcfg.hidden_size), hidden, joint, negative_slope) for _ in layers)
        self.register_buffer("text_feats", F.normalize(text_feats.detach().float(), dim=-1).clone())
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    # CLIP stays in eval mode whatever the caller asks: it is frozen.
    def train(self, mode: bool = True) -> CLIPLocaliser:
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check ``images`` ``(B, 1|3, S, S)`` (or ``(B, S, S)``) in ``[0, 1]`` and CLIP-normalise them."""
        if not isinstance(images, torch.Tensor):
            raise DataError(None, "images", "a torch.Tensor (B, 1|3, H, W)", type(images).__name__)
        if images.ndim == 3:
            images = images.unsqueeze(1)
        s = self.image_size
        if images.ndim != 4 or images.shape[0] == 0:
            raise DataError(None, "images.shape", f"(B, 1|3, {s}, {s})", tuple(images.shape))
        if images.shape[1] not in (1, 3):
            raise DataError(None, "images.shape[1] (channels)",
                            "1 (grey, repeated to RGB) or 3", images.shape[1])
        if tuple(images.shape[-2:]) != (s, s):
            raise DataError(None, "images.shape[-2:]", f"({s}, {s}): the CLIP vision tower's image_size "
                            f"(resize the slices, or pick a CLIP built for this size)", tuple(images.shape[-2:]))
        images = images.to(self.pixel_mean.device, torch.float32)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
        """The frozen part, computed once: ``tokens`` ``(B, L, N, D)``, the raw hidden states of the
        selected layers (CLS dropped), and ``f_c`` ``(B, C)``, the projected, normalised CLS embedding.

        CLIP never changes, so a notebook encodes every slice once and trains the decoders on these
        features (``model(tokens=..., f_c=...)`` gives the same maps as ``model(images)``)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive int, found {batch_size!r}")
        images = self.prepare(images)  # checks the whole set once
        toks, fcs = [], []
        for i in range(0, images.shape[0], batch_size):
            out = self.clip.vision_model(pixel_values=images[i:i + batch_size], output_hidden_states=True)
            toks.append(torch.stack([out.hidden_states[layer][:, 1:, :] for layer in self.layers], 1))
            fcs.append(F.normalize(self.clip.visual_projection(out.pooler_output), dim=-1))
        return {"tokens": torch.cat(toks), "f_c": torch.cat(fcs)}

    def _check_features(self, tokens: torch.Tensor, f_c: torch.Tensor | None) -> None:
        vcfg = self.clip.config.vision_config
        want = (len(self.layers), self.grid * self.grid, int(vcfg.hidden_size))
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 4 or tuple(tokens.shape[1:]) != want:
            raise DataError(None, "tokens.shape", f"(B, {want[0]}, {want[1]}, {want[2]}) from CLIPLocaliser.encode "
                            f"with these layers", tuple(getattr(tokens, "shape", ())))
        if f_c is None or tuple(f_c.shape) != (tokens.shape[0], self.text_feats.shape[1]):
            raise DataError(None, "f_c.shape", f"({tokens.shape[0]}, {self.text_feats.shape[1]})",
                            None if f_c is None else tuple(f_c.shape))

    def _features(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                  f_c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens is None:
            if images is None:
                raise ConfigError("pass images, or tokens and f_c from CLIPLocaliser.encode")
            return tuple(self.encode(images, batch_size=max(1, images.shape[0])).values())  # type: ignore[return-value]
        self._check_features(tokens, f_c)
        dev = self.text_feats.device
        return tokens.to(dev, torch.float32), f_c.to(dev, torch.float32)  # type: ignore[union-attr]

    def clip_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per selected layer the patch tokens ``(B, N, D)`` the decoders see (CLS dropped, optionally
        post-layernormed), and the projected, normalised CLS embedding ``F_c`` ``(B, C)``."""
        tokens, f_c = self._features(images, None, None)
        return self._decoder_inputs(tokens), f_c

    def _decoder_inputs(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        vm = self.clip.vision_model
        return [vm.post_layernorm(tokens[:, i]) if self.patch_norm else tokens[:, i] for i in range(tokens.shape[1])]

    def _maps(self, tokens: list[torch.Tensor], project: list[nn.Module]) -> torch.Tensor:
        b = tokens[0].shape[0]
        g = self.grid
        logits = []
        for z, proj in zip(tokens, project):
            f = F.normalize(proj(z), dim=-1)  # (B, N, C)
            sim = self.temperature * f @ self.text_feats.T  # (B, N, 2)
            d = (sim[..., 1] - sim[..., 0]).reshape(b, 1, g, g)
            logits.append(F.interpolate(d, size=(self.image_size, self.image_size), mode="bilinear",
                                        align_corners=False))
        return torch.cat(logits, dim=1)

    def _output(self, logits: torch.Tensor, f_c: torch.Tensor) -> LocaliserOutput:
        layer_maps = torch.sigmoid(logits)
        anomaly = layer_maps.mean(1)
        cls = torch.softmax(self.temperature * f_c @ self.text_feats.T, dim=-1)[:, 1]
        return LocaliserOutput(logits=logits, layer_maps=layer_maps, anomaly_map=anomaly, score_cls=cls,
                               score_max=anomaly.flatten(1).amax(1))

    def forward(self, images: torch.Tensor | None = None, *, tokens: torch.Tensor | None = None,
                f_c: torch.Tensor | None = None) -> LocaliserOutput:
        """Maps and scores of the trained decoders (see :class:`LocaliserOutput`), from ``images`` or
        from features that :meth:`encode` computed before (``tokens``, ``f_c``)."""
        tokens, f_c = self._features(images, tokens, f_c)
        return self._output(self._maps(self._decoder_inputs(tokens), list(self.decoders)), f_c)

    @torch.no_grad()
    def zero_shot(self, images: torch.Tensor | None = None, *, tokens: torch.Tensor | None = None,
                  f_c: torch.Tensor | None = None) -> LocaliserOutput:
        """The baseline without decoders: every layer's patch tokens go through CLIP's own
        ``post_layernorm`` and ``visual_projection`` (raw CLIP similarity), nothing trained."""
        tokens, f_c = self._features(images, tokens, f_c)
        vm = self.clip.vision_model
        layer_tokens = [vm.post_layernorm(tokens[:, i]) for i in range(tokens.shape[1])]
        proj = [self.clip.visual_projection] * len(layer_tokens)
        return self._output(self._maps(layer_tokens, proj), f_c)


# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------
def check_masks(masks: torch.Tensor, images: torch.Tensor | tuple[int, ...]) -> torch.Tensor:
    """``masks`` as a float ``(B, 1, H, W)`` tensor of 0/1 matching ``images`` ``(B, C, H, W)`` (a tensor
    or its shape); a shape or value mismatch raises :class:`DataError`."""
    if not isinstance(images, torch.Tensor):
        images = torch.empty(tuple(images), device="meta")
    if not isinstance(masks, torch.Tensor):
        raise DataError(None, "masks", "a torch.Tensor (B, H, W)", type(masks).__name__)
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    want = (images.shape[0], 1, *images.shape[-2:])
    if masks.ndim != 4 or tuple(masks.shape) != want:
        raise DataError(None, "masks.shape", f"{(want[0], *want[2:])} to match the images "
                        f"{tuple(images.shape)}", tuple(masks.shape))
    m = masks.float()
    if not torch.all((m == 0) | (m == 1)):
        raise DataError(None, "masks", "binary values 0/1", sorted(torch.unique(m).tolist())[:6])
    return m


class LocalisationLoss(nn.Module):
    """Σ over layers of Focal + Dice on the abnormal channel (MONAI ``DiceFocalLoss``, sigmoid on the logit).

    Dice is computed over the whole batch (``batch=True``), so slices without a tumour inside a
    mixed batch are fine. An all-normal batch is allowed: its Dice term only pushes the maps
    towards zero (no NaN), and the focal term works as usual.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_focal: float = 1.0, gamma: float = 2.0):
        super().__init__()
        from monai.losses import DiceFocalLoss

        self.loss = DiceFocalLoss(sigmoid=True, batch=True, gamma=gamma, lambda_dice=lambda_dice,
                                  lambda_focal=lambda_focal)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4:
            raise DataError(None, "logits.shape", "(B, L, H, W)", tuple(logits.shape))
        if masks.ndim == 3:
            masks = masks.unsqueeze(1)
        if tuple(masks.shape) != (logits.shape[0], 1, *logits.shape[-2:]):
            raise DataError(None, "masks.shape", f"{(logits.shape[0], *logits.shape[-2:])}", tuple(masks.shape))
        masks = masks.to(logits.dtype)
        return sum(self.loss(logits[:, i:i + 1], masks) for i in range(logits.shape[1]))


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
            mask_key: str = "mask", label_key: str = "label") -> dict[str, torch.Tensor]:
    """Run ``model`` (or its zero-shot baseline) over ``loader``; returns CPU tensors ``maps``
    ``(N, S, S)``, ``masks``, ``score_cls``, ``score_max`` and ``labels`` (1 = tumour slice; taken from
    the batch, else from whether the mask has any tumour pixel)."""
    was_training = model.training
    model.eval()
    keep: dict[str, list[torch.Tensor]] = {k: [] for k in ("maps", "masks", "score_cls", "score_max", "labels")}
    for batch in loader:
        out, ref = _run(model, batch, image_key, zero_shot=zero_shot)
        keep["maps"].append(out.anomaly_map.float().cpu())
        keep["score_cls"].append(out.score_cls.float().cpu())
        keep["score_max"].append(out.score_max.float().cpu())
        if mask_key in batch:
            m = check_masks(batch[mask_key], ref)[:, 0].cpu()
            keep["masks"].append(m)
        if label_key in batch:
            keep["labels"].append(torch.as_tensor(batch[label_key]).long().cpu())
        elif mask_key in batch:
            keep["labels"].append((keep["masks"][-1].flatten(1).amax(1) > 0).long())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in keep.items() if v}


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


def evaluate_pixel_auroc(loss_fn=None):
    """An ``evaluate(model, val_loader)`` for :func:`brainkit.train.fit`: validation pixel AUROC of the
    anomaly map (the monitored metric, ``val_pixel_auroc``) and, with ``loss_fn``, the validation loss."""
    from ..metrics.localisation import pixel_auroc

    def evaluate(model: CLIPLocaliser, loader) -> dict[str, float]:
        pred = predict(model, loader)
        out = {"val_pixel_auroc": pixel_auroc(pred["maps"], pred["masks"])}
        if loss_fn is not None:
            total, n = 0.0, 0
            for batch in loader:
                value, _ = loss_fn(model, batch)
                k = int(batch["mask"].shape[0])
                total, n = total + float(value) * k, n + k
            out["val_loss"] = total / max(n, 1)
        return out

    return evaluate


def train_decoders(model: CLIPLocaliser, train_loader, val_loader, *, epochs: int, lr: float = 0.01,
                   betas: Sequence[float] = (0.5, 0.999), out_dir: str | os.PathLike | None = None,
                   seed: int = 0, callbacks: Sequence[Any] = (), log_every: int = 10, resume: bool = False,
                   cpu: bool | None = None, loss: LocalisationLoss | None = None, desc: str = "decoders"):
    """Train the decoders (CLIP frozen) with Σ_l Focal + Dice through :func:`brainkit.train.fit`:
    Adam (the seed's lr 0.01, betas 0.5/0.999), the checkpoint chosen on **validation** pixel AUROC
    and restored at the end. Returns the :class:`~brainkit.train.FitResult`."""
    from ..train import fit

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model: no trainable parameters (the decoders are frozen?)")
    loss_fn = make_loss_fn(loss)
    opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas))
    return fit(model, train_loader, loss_fn=loss_fn, optimizer=opt, epochs=epochs, val_loader=val_loader,
               evaluate=evaluate_pixel_auroc(loss_fn), monitor="val_pixel_auroc", mode="max", out_dir=out_dir,
               resume=resume, seed=seed, callbacks=callbacks, log_every=log_every, cpu=cpu, desc=desc)


# --------------------------------------------------------------------------------------------
# backbone: hub CLIP, tiny CLIP, and the contrastively pretrained stand-in
# --------------------------------------------------------------------------------------------
def load_clip(source: str, *, image_size: int, patch_size: int | None = None, cache_dir=None, seed: int = 0,
              **overrides: Any):
    """A ``CLIPModel`` and its tokenizer for ``source``. For ``tiny:clip`` the vision tower is built for
    ``image_size`` / ``patch_size``; for a hub id or folder, ``image_size`` must match the checkpoint's."""
    from .factory import load_model, load_tokenizer

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

    from ..train import fit

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

    from .factory import load_tokenizer

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
