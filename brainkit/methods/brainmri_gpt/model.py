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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, DataError
from ...hub import spread_layers

__all__ = [
    "NORMAL_STATES", "ABNORMAL_STATES", "PROMPT_TEMPLATES", "prompt_ensemble", "encode_prompts",
    "text_features", "PatchDecoder", "LocaliserOutput", "CLIPLocaliser", "LocalisationLoss", "check_masks",
    "CLIP_MEAN", "CLIP_STD",
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

    @property
    def shape_key(self) -> tuple:
        """What must agree for decoders to run batched: the widths and the LeakyReLU slope."""
        return (tuple(self.net[0].weight.shape), tuple(self.net[2].weight.shape), self.net[1].negative_slope)


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
      :func:`~brainkit.hub.spread_layers`: 6/12/18/24 for ViT-L/14);
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
        """The abnormal logit ``τ (s_a − s_n)`` of every layer, upsampled: ``(B, L, S, S)``. The trained
        decoders run as one batched matrix product over the layers (the same sums as one
        ``PatchDecoder`` call per layer, equal to rounding), other projections one layer at a time."""
        b, g = tokens[0].shape[0], self.grid
        if all(isinstance(p, PatchDecoder) for p in project) and len({p.shape_key for p in project}) == 1:
            z = torch.stack(tokens).flatten(1, 2)  # (L, B*N, D)
            first, act, second = zip(*(p.net for p in project))
            h = torch.baddbmm(torch.stack([m.bias for m in first])[:, None], z,
                              torch.stack([m.weight for m in first]).transpose(1, 2))
            h = F.leaky_relu(h, act[0].negative_slope)
            f = torch.baddbmm(torch.stack([m.bias for m in second])[:, None], h,
                              torch.stack([m.weight for m in second]).transpose(1, 2))
            sim = self.temperature * F.normalize(f, dim=-1) @ self.text_feats.T  # (L, B*N, 2)
            d = (sim[..., 1] - sim[..., 0]).reshape(len(project), b, g, g).transpose(0, 1)
        else:
            rows = []
            for z, proj in zip(tokens, project):
                f = F.normalize(proj(z), dim=-1)  # (B, N, C)
                sim = self.temperature * f @ self.text_feats.T  # (B, N, 2)
                rows.append((sim[..., 1] - sim[..., 0]).reshape(b, 1, g, g))
            d = torch.cat(rows, dim=1)
        return F.interpolate(d.contiguous(), size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)

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
    """Σ over layers of Focal + Dice on the abnormal channel (MONAI's ``FocalLoss`` and ``DiceLoss``, the
    terms of ``DiceFocalLoss``, sigmoid on the logit), all layers in one call: the layers are channels,
    each with its own mean Focal and its own Dice.

    Dice is computed over the whole batch (``batch=True``), so slices without a tumour inside a
    mixed batch are fine. An all-normal batch is allowed: its Dice term only pushes the maps
    towards zero (no NaN), and the focal term works as usual. With ``lambda_dice = 0`` Dice is not
    computed at all.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_focal: float = 1.0, gamma: float = 2.0):
        super().__init__()
        from monai.losses import DiceLoss, FocalLoss

        if lambda_dice < 0 or lambda_focal < 0:
            raise ConfigError(f"lambda_dice, lambda_focal: expected values >= 0, found {lambda_dice}, {lambda_focal}")
        self.lambda_dice, self.lambda_focal = float(lambda_dice), float(lambda_focal)
        self.focal = FocalLoss(gamma=gamma, reduction="none")
        self.dice = DiceLoss(sigmoid=True, batch=True, reduction="none")

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4:
            raise DataError(None, "logits.shape", "(B, L, H, W)", tuple(logits.shape))
        if masks.ndim == 3:
            masks = masks.unsqueeze(1)
        if tuple(masks.shape) != (logits.shape[0], 1, *logits.shape[-2:]):
            raise DataError(None, "masks.shape", f"{(logits.shape[0], *logits.shape[-2:])}", tuple(masks.shape))
        target = masks.to(logits.dtype).expand(-1, logits.shape[1], -1, -1)
        per_layer = self.lambda_focal * self.focal(logits, target).mean(dim=(0, 2, 3))
        if self.lambda_dice:
            per_layer = per_layer + self.lambda_dice * self.dice(logits, target).reshape(-1)
        return per_layer.sum()


