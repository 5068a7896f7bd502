"""MedVisionLlama: a 3D ViT segmenter whose tokens pass one frozen pretrained LLM layer.

Introduced in ``07_medvisionllama_segmentation``. The released README's pipeline::

    3D volume -> patch embedding (MONAI) -> ViT encoder (MONAI transformer blocks)
              -> mapper d_vit -> d_llm -> frozen LLM decoder layer -> mapper d_llm -> d_vit, + residual
              -> ViT decoder -> mask logits

with ``z = x + M_out(LLM(M_in(x)))`` for the token matrix ``x`` (N tokens x d_vit). Options:

- ``llm_position``: ``"after"`` the encoder (the README's drawing, default), ``"before"`` it (the released
  code: the LLM block right after the patch embedding), or ``"none"`` (the ViT baseline);
- ``mapper``: ``"lora"`` (released: a frozen random ``Linear`` plus a trainable rank-``lora_rank`` LoRA,
  here through peft) or ``"linear"`` (a plain trainable ``Linear``);
- the LLM layer: any decoder layer of a transformers causal LM (Llama, Gemma 3, BioGPT, ...) or a
  BERT-family encoder layer, taken with :meth:`FrozenLLMLayer.from_model`; its hidden size is read from the
  model's config and sizes the mappers. The released code calls Llama's last layer without rotary position
  embeddings and without a mask; here ``rope=True`` (default) passes the model's own rotary embeddings of
  the token index, and the attention is bidirectional (``causal=False``) through an explicit additive mask,
  so the behaviour does not depend on the attention implementation (a standalone
  ``LlamaDecoderLayer`` called without them is neither rotary nor bidirectional);
- ``decoder``: ``"linear"`` (released: one Linear per token folding it back into its patch of voxels) or
  ``"conv"`` (a light decoder on the token grid: one transposed 3D convolution stage per entry of
  ``decoder_channels``, each doubling the resolution, then trilinear upsampling of the logits). With
  8^3 patches the linear fold-back plateaued near Dice 0.49 on the phantoms (measured in notebook 07's development), so the smoke
  profile uses the conv decoder; both are the same encoder + LLM block, only the last stage differs;
- ``input_skip=1`` (conv decoder): an intensity gate, the decoder predicts a gain and a bias per voxel of its
  last grid and the logits are ``gain * x + bias`` at full resolution (a skip from the input, as in UNETR).

Variants of the README (:data:`VARIANTS`): ``vit`` (baseline, no LLM layer), ``vit_depth`` (deeper, more
heads), ``vit_mlp`` (wider MLP), ``medvisionllama`` (Llama layer) and ``bert`` (BioBERT / ClinicalBERT /
BioGPT: the same block with a BERT-family layer; its hidden size comes from the config).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError

__all__ = ["MVLConfig", "VARIANTS", "variant_config", "FrozenLLMLayer", "DimensionMapper", "LLMBlock",
           "MedVisionLlama", "token_activation_maps",
           "count_parameters"]

log = logging.getLogger(__name__)

_POSITIONS = ("after", "before", "none")
_MAPPERS = ("lora", "linear")
_DECODERS = ("conv", "linear")


def _triple(v: int | Sequence[int], name: str) -> tuple[int, int, int]:
    t = (int(v),) * 3 if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 3 or any(x < 1 for x in t):
        raise ConfigError(f"{name}: expected one positive int or three, found {v!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class MVLConfig:
    """Architecture of :class:`MedVisionLlama` (the notebook fills it from the profile's ``mvl_`` fields).

    ``img_size`` is the spatial size of the network input (the training patch, RAS (X, Y, Z)); larger
    volumes go through :func:`sliding_window_predict`. ``patch_size`` must divide it.
    ``llm_hidden_size``: None reads it from the LLM layer; set it to assert the size the mappers expect.
    ``mapper_seed``: the seed of the LoRA mappers' frozen random bases.
    ``input_skip``: conv decoder only; 1 = an intensity gate, a skip from the input at full resolution: the
    decoder's last stage predicts a gain ``a`` and a bias ``b`` per voxel of its (coarser) grid, upsampled
    trilinearly, and the logits are ``a * x + b`` for the input intensities ``x`` (a threshold that varies with
    the context the ViT saw); 0 = none (logits from the token grid, upsampled).
    """

    in_channels: int = 1
    out_channels: int = 1
    img_size: tuple[int, int, int] = (64, 64, 48)
    patch_size: tuple[int, int, int] = (8, 8, 8)
    hidden_size: int = 96
    mlp_dim: int = 192
    num_layers: int = 4
    num_heads: int = 4
    dropout: float = 0.0
    llm_position: str = "after"
    mapper: str = "lora"
    lora_rank: int = 4
    llm_hidden_size: int | None = None
    mapper_seed: int = 0
    decoder: str = "conv"
    decoder_channels: tuple[int, ...] = (32, 16)
    input_skip: int = 0

    def check(self) -> MVLConfig:
        """Validate and normalise; raises :class:`ConfigError` naming the field."""
        img = _triple(self.img_size, "img_size")
        patch = _triple(self.patch_size, "patch_size")
        bad = [f"{i} % {p}" for i, p in zip(img, patch) if i % p]
        if bad:
            raise ConfigError(f"patch_size: expected a patch size that divides img_size {img} on every axis, "
                              f"found patch_size {patch} ({', '.join(bad)} != 0)")
        if self.llm_position not in _POSITIONS:
            raise ConfigError(f"llm_position: expected one of {', '.join(_POSITIONS)}, found {self.llm_position!r}")
        if self.mapper not in _MAPPERS:
            raise ConfigError(f"mapper: expected one of {', '.join(_MAPPERS)}, found {self.mapper!r}")
        if self.decoder not in _DECODERS:
            raise ConfigError(f"decoder: expected one of {', '.join(_DECODERS)}, found {self.decoder!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size: expected a multiple of num_heads={self.num_heads}, "
                              f"found {self.hidden_size}")
        if self.decoder == "conv":
            for p in patch:
                if p & (p - 1):
                    raise ConfigError(f"patch_size: the conv decoder upsamples by 2 per stage and needs powers "
                                      f"of two, found {patch} (use decoder='linear')")
        if self.input_skip < 0 or (self.input_skip and self.decoder != "conv"):
            raise ConfigError(f"input_skip: expected 0, or a positive width with decoder='conv', found "
                              f"{self.input_skip} with decoder={self.decoder!r}")
        if self.lora_rank < 1:
            raise ConfigError(f"lora_rank: expected >= 1, found {self.lora_rank}")
        return replace(self, img_size=img, patch_size=patch, decoder_channels=tuple(self.decoder_channels))

    @property
    def grid(self) -> tuple[int, int, int]:
        """The token grid: ``img_size // patch_size`` per axis."""
        c = self.check()
        return tuple(i // p for i, p in zip(c.img_size, c.patch_size))  # type: ignore[return-value]


#: The README's variants as changes of a base configuration, and whether they carry an LLM layer.
VARIANTS: dict[str, dict[str, Any]] = {
    "vit": {"llm_position": "none"},
    "vit_depth": {"llm_position": "none", "depth_factor": 2, "heads_factor": 2},
    "vit_mlp": {"llm_position": "none", "mlp_factor": 4},
    "medvisionllama": {},
    "bert": {},
}


def variant_config(name: str, base: MVLConfig) -> MVLConfig:
    """The configuration of variant ``name`` (see :data:`VARIANTS`) derived from ``base``.

    ``vit_depth`` doubles the layers and heads, ``vit_mlp`` quadruples the MLP width, ``vit`` drops the
    LLM layer; ``medvisionllama`` and ``bert`` keep ``base`` and differ only in the layer passed in.
    """
    if name not in VARIANTS:
        raise ConfigError(f"variant: expected one of {', '.join(VARIANTS)}, found {name!r}")
    v = VARIANTS[name]
    cfg = base
    if v.get("llm_position") == "none":
        cfg = replace(cfg, llm_position="none")
    elif base.llm_position == "none":
        cfg = replace(cfg, llm_position="after")
    if "depth_factor" in v:
        cfg = replace(cfg, num_layers=base.num_layers * v["depth_factor"], num_heads=base.num_heads * v["heads_factor"])
    if "mlp_factor" in v:
        cfg = replace(cfg, mlp_dim=base.mlp_dim * v["mlp_factor"])
    return cfg.check()


# --------------------------------------------------------------------------------------------
# the frozen LLM layer
# --------------------------------------------------------------------------------------------
def _decoder_layers(model: nn.Module, n_layers: int | None) -> nn.ModuleList:
    """The ModuleList of transformer layers of a transformers model (``model.layers``,
    ``encoder.layer``, ``biogpt.layers``, ...): the first ModuleList whose length is the config's
    ``num_hidden_layers``."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and (n_layers is None or len(mod) == n_layers):
            if name.endswith(("layers", "layer", ".h", "blocks")):
                return mod
    raise ConfigError(f"{type(model).__name__}: expected a model with a list of {n_layers} transformer layers "
                      "(model.layers / encoder.layer); none found")


def _rotary(model: nn.Module) -> nn.Module | None:
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb"):
            return mod
    return None


class FrozenLLMLayer(nn.Module):
    """One frozen layer of a pretrained language model, callable on a token matrix ``(B, N, d_llm)``.

    Build it with :meth:`from_model`. ``rope``: pass the model's rotary position embeddings of the
    token index (Llama / Gemma style layers); ``causal``: a causal mask instead of full attention.
    The mask is an explicit additive ``(1, 1, N, N)`` tensor, so eager and SDPA attention agree.
    Every parameter has ``requires_grad=False``; gradients still flow *through* the layer to the mappers.
    """

    def __init__(self, layer: nn.Module, hidden_size: int, *, rotary: nn.Module | None = None,
                 layer_type: str | None = None, causal: bool = False, source: str = "", index: int = -1):
        super().__init__()
        self.layer = layer
        self.rotary = rotary
        self.hidden_size = int(hidden_size)
        self.layer_type = layer_type
        self.causal = bool(causal)
        self.source, self.index = source, index
        for p in self.parameters():
            p.requires_grad_(False)
        sig = inspect.signature(layer.forward).parameters
        self._takes_pos = "position_embeddings" in sig
        self._rotary_takes_type = rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters

    @classmethod
    def from_model(cls, model: nn.Module, layer_index: int = -1, *, rope: bool = True, causal: bool = False,
                   attn_implementation: str = "sdpa", source: str = "") -> FrozenLLMLayer:
        """Take layer ``layer_index`` (default: the last, as released) of a transformers ``model``.

        ``attn_implementation`` is set explicitly on the layer's config (``"sdpa"`` or ``"eager"``).
        The rest of the model can be dropped afterwards: only the layer (and its rotary embedding) is kept.
        """
        config = getattr(model, "config", None)
        if config is None:
            raise ConfigError(f"{type(model).__name__}: expected a transformers model with a .config")
        tcfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        n = getattr(tcfg, "num_hidden_layers", None)
        layers = _decoder_layers(model, n)
        if not -len(layers) <= layer_index < len(layers):
            raise ConfigError(f"layer_index: expected an index in [-{len(layers)}, {len(layers) - 1}] for "
                              f"{type(model).__name__} with {len(layers)} layers, found {layer_index}")
        idx = layer_index % len(layers)
        layer = layers[idx]
        if attn_implementation not in ("sdpa", "eager"):
            raise ConfigError(f"attn_implementation: expected 'sdpa' or 'eager', found {attn_implementation!r}")
        for mod in layer.modules():  # the attention reads the implementation from its config
            c = getattr(mod, "config", None)
            if c is not None and hasattr(c, "_attn_implementation"):
                c._attn_implementation = attn_implementation
        tcfg._attn_implementation = attn_implementation
        layer_types = getattr(tcfg, "layer_types", None)
        hidden = getattr(tcfg, "hidden_size", None) or getattr(tcfg, "d_model", None)
        if hidden is None:
            raise ConfigError(f"{type(model).__name__}: config has no hidden_size")
        rotary = _rotary(model) if rope else None
        return cls(layer, hidden, rotary=rotary, layer_type=layer_types[idx] if layer_types else None,
                   causal=causal, source=source or getattr(config, "_name_or_path", ""), index=idx)

    def train(self, mode: bool = True) -> FrozenLLMLayer:
        # frozen means frozen: dropout of the pretrained layer stays off
        super().train(False)
        return self

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 3 or h.shape[-1] != self.hidden_size:
            raise ConfigError(f"LLM layer {self.source or ''} (index {self.index}): expected tokens (B, N, "
                              f"{self.hidden_size}), found {tuple(h.shape)}")
        b, n, _ = h.shape
        mask = torch.zeros(1, 1, n, n, dtype=h.dtype, device=h.device)
        if self.causal:
            mask = mask.masked_fill(torch.ones(n, n, dtype=torch.bool, device=h.device).triu(1),
                                    torch.finfo(h.dtype).min)
        mask = mask.expand(b, 1, n, n)
        kwargs: dict[str, Any] = {"attention_mask": mask}
        if self._takes_pos:
            pos = torch.arange(n, device=h.device)[None].expand(b, n)
            kwargs["position_ids"] = pos
            if self.rotary is not None:
                extra = {"layer_type": self.layer_type} if self._rotary_takes_type and self.layer_type else {}
                kwargs["position_embeddings"] = self.rotary(h, pos, **extra)
            else:  # no RoPE (the released code): rotation by angle 0 = identity
                hd = getattr(getattr(self.layer, "self_attn", None), "head_dim", None) or 1
                kwargs["position_embeddings"] = (torch.ones(b, n, hd, dtype=h.dtype, device=h.device),
                                                 torch.zeros(b, n, hd, dtype=h.dtype, device=h.device))
        out = self.layer(h, **kwargs)
        return out[0] if isinstance(out, tuple) else out


class DimensionMapper(nn.Module):
    """``d_in -> d_out``: ``"linear"`` (trainable) or ``"lora"`` (a frozen random Linear + a trainable
    rank-``rank`` LoRA through peft, as released; LoRA's B starts at zero, so at initialisation the
    mapper is the frozen random projection). The frozen base is drawn from its own ``seed``, so a
    checkpoint, which holds trainable weights only, reloads into the same function."""

    def __init__(self, d_in: int, d_out: int, kind: str = "lora", rank: int = 4, seed: int = 0):
        super().__init__()
        if kind not in _MAPPERS:
            raise ConfigError(f"mapper: expected one of {', '.join(_MAPPERS)}, found {kind!r}")
        self.kind, self.d_in, self.d_out = kind, d_in, d_out
        if kind == "lora":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.proj = nn.Linear(d_in, d_out)
        else:
            self.proj = nn.Linear(d_in, d_out)
        if kind == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["proj"]), self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LLMBlock(nn.Module):
    """``x + M_out(LLM(M_in(x)))``: the frozen layer between two dimension mappers, with a residual."""

    def __init__(self, d_vit: int, llm: FrozenLLMLayer, mapper: str = "lora", rank: int = 4,
                 llm_hidden_size: int | None = None, seed: int = 0):
        super().__init__()
        if llm_hidden_size is not None and int(llm_hidden_size) != llm.hidden_size:
            raise ConfigError(f"llm_hidden_size: the mappers expect {llm_hidden_size} but the LLM layer "
                              f"{llm.source or ''} (index {llm.index}) has hidden size {llm.hidden_size}; "
                              "leave llm_hidden_size=None to read it from the model's config")
        self.map_in = DimensionMapper(d_vit, llm.hidden_size, mapper, rank, seed)
        self.llm = llm
        self.map_out = DimensionMapper(llm.hidden_size, d_vit, mapper, rank, seed + 1)

    def forward(self, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        z = x + self.map_out(self.llm(self.map_in(x)))
        if record is not None:
            record["before_llm"], record["after_llm"] = x.detach(), z.detach()
        return z


# --------------------------------------------------------------------------------------------
# the segmenter
# --------------------------------------------------------------------------------------------
class MedVisionLlama(nn.Module):
    """The 3D ViT segmenter with an optional frozen LLM block (see the module docstring).

    ``MedVisionLlama(cfg, llm)``: ``cfg`` an :class:`MVLConfig`, ``llm`` a :class:`FrozenLLMLayer`
    (required unless ``cfg.llm_position == "none"``). ``forward(x)`` takes ``(B, C, *cfg.img_size)`` and
    returns mask logits ``(B, out_channels, *cfg.img_size)``; ``forward(x, record=d)`` also fills ``d``
    with the token matrices before and after the LLM block (``before_llm``, ``after_llm``) and the
    encoder output (``encoder``), for activation maps.
    """

    def __init__(self, cfg: MVLConfig, llm: FrozenLLMLayer | None = None):
        super().__init__()
        from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock

        cfg = cfg.check()
        self.cfg = cfg
        if cfg.llm_position != "none" and llm is None:
            raise ConfigError(f"llm_position={cfg.llm_position!r} needs an LLM layer (FrozenLLMLayer.from_model); "
                              "pass llm_position='none' for the ViT baseline")
        if cfg.llm_position == "none" and llm is not None:
            raise ConfigError("llm_position='none' (ViT baseline) was given an LLM layer: set llm_position "
                              "to 'after' or 'before'")
        self.grid = cfg.grid
        self.patch_embed = PatchEmbeddingBlock(in_channels=cfg.in_channels, img_size=cfg.img_size,
                                               patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
                                               num_heads=cfg.num_heads, proj_type="conv", pos_embed_type="learnable",
                                               dropout_rate=cfg.dropout, spatial_dims=3)
        self.blocks = nn.ModuleList([TransformerBlock(cfg.hidden_size, cfg.mlp_dim, cfg.num_heads, cfg.dropout,
                                                      qkv_bias=True) for _ in range(cfg.num_layers)])
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.llm_block = LLMBlock(cfg.hidden_size, llm, cfg.mapper, cfg.lora_rank, cfg.llm_hidden_size,
                                  cfg.mapper_seed) \
            if llm is not None else None
        self.skip: nn.Module | None = None
        if cfg.decoder == "linear":
            self.head = nn.Linear(cfg.hidden_size, cfg.out_channels * math.prod(cfg.patch_size))
        else:
            self.head = self._conv_decoder(cfg)
            if cfg.input_skip:
                from monai.networks.blocks import Convolution

                n_up = max(int(math.log2(p)) for p in cfg.patch_size)
                used = list(cfg.decoder_channels)[:n_up]
                c = used[-1] if used else cfg.hidden_size
                # gain and bias maps at the last learned stage: out*in gains + out biases
                self.skip = Convolution(3, c, cfg.out_channels * (cfg.in_channels + 1), kernel_size=1, conv_only=True)

    @staticmethod
    def _conv_decoder(cfg: MVLConfig) -> nn.Module:
        """Transposed-conv stages (x2 each, ``decoder_channels``; a 3x3x3 convolution after the first) on the
        token grid, then a 1x1 conv to
        logits and trilinear upsampling for the factor the learned stages leave (cheap on a CPU: no
        convolution runs at the full voxel grid)."""
        from monai.networks.blocks import Convolution

        factors = list(cfg.patch_size)
        n_up = max(int(math.log2(p)) for p in factors)
        chans = list(cfg.decoder_channels)[:n_up]
        layers: list[nn.Module] = []
        c_in = cfg.hidden_size
        for c in chans:
            stride = []
            for i, f in enumerate(factors):
                stride.append(2 if f > 1 else 1)
                factors[i] = max(1, f // 2)
            layers.append(Convolution(3, c_in, c, strides=stride, kernel_size=stride, is_transposed=True,
                                      padding=0, output_padding=0, act="LEAKYRELU", norm="INSTANCE",
                                      adn_ordering="NA"))
            if not layers[:-1]:  # one 3x3x3 refinement at the coarsest stage only (CPU cost)
                layers.append(Convolution(3, c, c, kernel_size=3, act="LEAKYRELU", norm="INSTANCE",
                                          adn_ordering="NA"))
            c_in = c
        if cfg.input_skip:  # the intensity gate upsamples its own maps
            return nn.Sequential(*layers)
        layers.append(Convolution(3, c_in, cfg.out_channels, kernel_size=1, conv_only=True))
        if any(f > 1 for f in factors):
            layers.append(nn.Upsample(scale_factor=tuple(float(f) for f in factors), mode="trilinear",
                                      align_corners=False))
        return nn.Sequential(*layers)

    def tokens_to_grid(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, N, d)`` tokens -> ``(B, d, gx, gy, gz)`` (the patch embedding's raster order)."""
        b, n, d = t.shape
        return t.transpose(1, 2).reshape(b, d, *self.grid)

    def forward(self, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        cfg = self.cfg
        if x.ndim != 5 or x.shape[1] != cfg.in_channels or tuple(x.shape[2:]) != cfg.img_size:
            raise ConfigError(f"MedVisionLlama input: expected (B, {cfg.in_channels}, {', '.join(map(str, cfg.img_size))}),"
                              f" found {tuple(x.shape)}; larger volumes go through sliding_window_predict")
        t = self.patch_embed(x)
        if self.llm_block is not None and cfg.llm_position == "before":
            t = self.llm_block(t, record)
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        if record is not None:
            record["encoder"] = t.detach()
        if self.llm_block is not None and cfg.llm_position == "after":
            t = self.llm_block(t, record)
        if cfg.decoder == "linear":
            b = t.shape[0]
            px, py, pz = cfg.patch_size
            gx, gy, gz = self.grid
            y = self.head(t).reshape(b, gx, gy, gz, cfg.out_channels, px, py, pz)
            return y.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, cfg.out_channels, *cfg.img_size)
        y = self.head(self.tokens_to_grid(t))
        if self.skip is not None:  # intensity gate: logits_o = sum_c a_oc * x_c + b_o, a and b upsampled
            ab = nn.functional.interpolate(self.skip(y), size=cfg.img_size, mode="trilinear", align_corners=False)
            o, c = cfg.out_channels, cfg.in_channels
            a, b = ab[:, : o * c].unflatten(1, (o, c)), ab[:, o * c:]
            y = (a * x[:, None]).sum(2) + b
        return y


def token_activation_maps(model: MedVisionLlama, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token activation maps: the L2 norm of every token, on the token grid ``(B, gx, gy, gz)``, at
    ``encoder`` (the ViT's output) and, with an LLM block, ``before_llm`` / ``after_llm`` and their
    difference ``llm_delta`` (what the frozen layer added through the mappers)."""
    record: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        model(x, record=record)
    out = {}
    for k, t in record.items():
        out[k] = model.tokens_to_grid(t).norm(dim=1)
    if "before_llm" in record:
        out["llm_delta"] = model.tokens_to_grid(record["after_llm"] - record["before_llm"]).norm(dim=1)
    return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"trainable", "frozen"}`` parameter counts."""
    tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fr = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": tr, "frozen": fr}
