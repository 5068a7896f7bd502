"""brat: multi-view vision-language pretraining of a 3D brain-MRI encoder on reports (seed D).

Introduced in ``08_brat_pretraining`` (the model, PVA and DPP, pretraining) and evaluated in
``09_brat_evaluation`` (retrieval, the ablations of the paper's Table 2, downstream tasks).

The pieces, as the paper describes them (the released code is inference only):

- **Image side** ``E_I``: MONAI ``DenseNet121(spatial_dims=3, in_channels=1)``; its ``.features`` up
  to ``feature_stage`` give a grid of feature vectors, flattened into image tokens (``D`` tokens of
  ``C`` channels). ``.features`` downsamples 32x, so at 64x64x32 only 4 tokens remain: stopping at
  ``denseblock3`` (16x) or ``denseblock2`` (8x) keeps more. The tokens get a LayerNorm and a learnable
  position embedding (our choice: the paper does not say; without it the queries cannot tell left from
  right). A Q-Former (transformers' ``Blip2QFormerModel``, eager attention so that it returns its
  cross-attention maps) with ``N_Q`` learnable queries cross-attends to them every
  ``cross_attention_frequency`` layers; it is initialised from a BERT (self-attention, both
  feed-forward branches, the embedding LayerNorm), its cross-attention layers start random, as in
  BLIP-2. A linear projection maps each query output to the joint space: ``V = [v_1 .. v_NQ]``.
- **Text side** ``E_R``: a BERT over the whole report (``max_text_tokens``); the report is split into
  sentences (:func:`brainkit.data.reports.split_sentences`, at most ``max_sentences``) and each
  sentence embedding is the mean of its tokens' output embeddings, then projected: ``F = [f_1 .. f_NS]``.
- **Similarity** of image and report: PVA (greedy one-to-one matching, :func:`brainkit.methods.brat.losses.pva_similarity`),
  or the ablations' ColBERT / max / optimal matching; **losses**: symmetric InfoNCE with a learnable
  temperature, the DPP quality-diversity loss of the cross-attention maps (or pairwise repulsion),
  and BLIP-2's image-grounded text generation (ITG) through the same Q-Former: report tokens attend
  to the queries and, causally, to earlier tokens; the queries never see the text, so the query
  outputs of that pass are exactly the multi-view embeddings (tested).

:data:`ABLATIONS` holds the paper's Table 2 rows as :class:`BratConfig` overrides of one model.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, DataError
from ...losses import info_nce
from . import losses as L

__all__ = ['BACKBONES', 'BratConfig', 'ABLATIONS', 'TABLE2_NAMES', 'config_for_ablation', 'DenseNetTokens', 'truncate_bert', 'init_qformer_from_bert', 'BratModel']

log = logging.getLogger(__name__)

#: DenseNet configurations of MONAI's ``DenseNet`` class. ``densenet121`` is MONAI's ``DenseNet121``;
#: ``densenet-tiny`` is the same class with a small width and depth for the 2-core smoke profile.
BACKBONES: dict[str, dict[str, Any]] = {
    "densenet121": dict(init_features=64, growth_rate=32, block_config=(6, 12, 24, 16)),
    "densenet-tiny": dict(init_features=16, growth_rate=8, block_config=(2, 4, 6, 4)),
}


_STAGES = ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2", "transition2",
           "denseblock3", "transition3", "denseblock4", "norm5")


_MATCHING = ("pva", "optimal", "colbert")


_DIVERSITY = ("none", "dpp", "repulsion")


@dataclass(frozen=True)
class BratConfig:
    """One brat configuration; the Table 2 ablations are overrides of it (:data:`ABLATIONS`)."""

    input_size: tuple[int, int, int] = (64, 64, 32)  # image grid (X, Y, Z) the backbone sees
    backbone: str = "densenet121"  # a key of BACKBONES
    feature_stage: str = "denseblock3"  # last child of DenseNet.features kept (norm5 = all, 32x)
    bert_source: str = "offline:minilm-l6"  # the BERT both encoders start from
    qformer_layers: int | None = None  # first n BERT layers in the Q-Former (None = all)
    text_layers: int | None = None  # first n BERT layers in the text encoder (None = all)
    cross_attention_frequency: int = 2
    num_queries: int = 32
    embed_dim: int = 256
    max_sentences: int = 20
    max_text_tokens: int = 256
    train_text: bool = True  # False: frozen text encoder (its outputs can be cached)
    image_views: str = "queries"  # queries (Q-Former) | pooled (one vector: the CLIP ablation)
    text_views: str = "sentences"  # sentences | report (one vector: CLIP / Q-Former ablations)
    matching: str = "pva"  # pva | optimal | colbert (with one text vector colbert = max over views)
    diversity: str = "dpp"  # none | dpp | repulsion
    diversity_weight: float = 1.0
    diversity_warmup_steps: int = 0
    dpp_eps: float = 1e-4
    dpp_normalize: bool = False  # divide -log det by N_Q
    itg_weight: float = 1.0  # 0 switches the ITG loss off
    itg_max_tokens: int = 64
    init_tau: float = 0.07
    dropout: float | None = None  # override the BERT dropout of the Q-Former (None = keep)

    def validate(self) -> BratConfig:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"brat backbone: expected one of {', '.join(BACKBONES)}, found {self.backbone!r}")
        if self.feature_stage not in _STAGES:
            raise ConfigError(f"brat feature_stage: expected one of {', '.join(_STAGES)}, found {self.feature_stage!r}")
        if self.image_views not in ("queries", "pooled"):
            raise ConfigError(f"brat image_views: expected 'queries' or 'pooled', found {self.image_views!r}")
        if self.text_views not in ("sentences", "report"):
            raise ConfigError(f"brat text_views: expected 'sentences' or 'report', found {self.text_views!r}")
        if self.matching not in _MATCHING:
            raise ConfigError(f"brat matching: expected one of {', '.join(_MATCHING)}, found {self.matching!r}")
        if self.diversity not in _DIVERSITY:
            raise ConfigError(f"brat diversity: expected one of {', '.join(_DIVERSITY)}, found {self.diversity!r}")
        if self.image_views == "pooled" and self.diversity == "dpp":
            raise ConfigError("brat diversity='dpp' needs image_views='queries' (it acts on the cross-attention maps)")
        for name in ("num_queries", "embed_dim", "max_sentences", "max_text_tokens", "cross_attention_frequency"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"brat {name}: expected a positive integer, found {getattr(self, name)!r}")
        if len(tuple(self.input_size)) != 3:
            raise ConfigError(f"brat input_size: expected 3 sizes (X, Y, Z), found {self.input_size!r}")
        return self


#: The rows of the paper's Table 2 as overrides of :class:`BratConfig` (same model, same budget).
ABLATIONS: dict[str, dict[str, Any]] = {
    "clip": dict(image_views="pooled", text_views="report", matching="colbert", diversity="none", itg_weight=0.0),
    "qformer": dict(text_views="report", matching="colbert", diversity="none"),
    "colbert": dict(matching="colbert"),
    "brat_wo_qd": dict(diversity="none"),
    "brat_pr": dict(diversity="repulsion"),
    "qformer_qd": dict(text_views="report", matching="colbert", diversity="dpp"),
    "brat": {},
}


#: Names of the rows in the paper's Table 2.
TABLE2_NAMES = {"clip": "CLIP", "qformer": "QFormer", "colbert": "Colbert", "brat_wo_qd": "brat w/o QD",
                "brat_pr": "brat w/ PR", "qformer_qd": "QFormer w/ QD", "brat": "brat"}


def config_for_ablation(base: BratConfig, name: str) -> BratConfig:
    """``base`` with the overrides of ablation ``name`` (a key of :data:`ABLATIONS`)."""
    if name not in ABLATIONS:
        raise ConfigError(f"ablation: expected one of {', '.join(ABLATIONS)}, found {name!r}")
    over = dict(ABLATIONS[name])
    if over.get("diversity") == "repulsion" and base.diversity == "dpp":
        over.setdefault("diversity_weight", base.diversity_weight)
    return replace(base, **over).validate()


# ----------------------------------------------------------------------------------------- backbone
class DenseNetTokens(nn.Module):
    """MONAI DenseNet ``.features`` cut after ``stage``: a volume ``(B, 1, X, Y, Z)`` -> a feature grid
    ``(B, C, x, y, z)``. ``out_channels`` and ``grid`` (for ``input_size``) are measured by a dry run.
    Notebook 09 reuses it (pretrained or random) as the classification backbone."""

    def __init__(self, backbone: str = "densenet121", stage: str = "denseblock3", in_channels: int = 1,
                 input_size: Sequence[int] = (64, 64, 32)):
        super().__init__()
        from monai.networks.nets import DenseNet, DenseNet121

        if backbone not in BACKBONES:
            raise ConfigError(f"backbone: expected one of {', '.join(BACKBONES)}, found {backbone!r}")
        if backbone == "densenet121":
            net = DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=1)
        else:
            net = DenseNet(spatial_dims=3, in_channels=in_channels, out_channels=1, **BACKBONES[backbone])
        children = list(net.features.named_children())
        names = [n for n, _ in children]
        if stage not in names:
            raise ConfigError(f"feature_stage: expected one of {', '.join(names)}, found {stage!r}")
        self.features = nn.Sequential(OrderedDict(children[: names.index(stage) + 1]))
        self.stage = stage
        with torch.no_grad():
            was = self.training
            self.eval()
            try:
                out = self.features(torch.zeros(1, in_channels, *[int(s) for s in input_size]))
            except RuntimeError as exc:
                raise ConfigError(f"input_size {tuple(input_size)}: too small for {backbone} up to {stage}, which "
                                  f"leaves no feature grid ({exc})") from None
            self.train(was)
        if min(out.shape[2:]) < 1:
            raise ConfigError(f"input_size {tuple(input_size)}: the DenseNet leaves no feature grid at {stage}")
        self.out_channels = int(out.shape[1])
        self.grid = tuple(int(s) for s in out.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --------------------------------------------------------------------------------------------- BERT
def truncate_bert(bert: nn.Module, n_layers: int | None) -> nn.Module:
    """A copy of ``bert`` keeping its first ``n_layers`` layers (``None`` = all)."""
    out = copy.deepcopy(bert)
    if n_layers is not None:
        total = len(out.encoder.layer)
        if not 1 <= n_layers <= total:
            raise ConfigError(f"layers: expected 1..{total} (the BERT has {total}), found {n_layers}")
        out.encoder.layer = nn.ModuleList(list(out.encoder.layer)[:n_layers])
        out.config.num_hidden_layers = n_layers
    return out


def init_qformer_from_bert(qformer: nn.Module, bert: nn.Module) -> dict[str, int]:
    """Copy a BERT's weights into a ``Blip2QFormerModel`` as BLIP-2 does: self-attention and the
    feed-forward of each layer (into both the text branch and the query branch), the embedding
    LayerNorm; cross-attention stays random. Returns ``{"copied": n, "random": m}`` tensor counts."""
    sd = bert.state_dict()
    own = qformer.state_dict()
    new: dict[str, torch.Tensor] = {}
    rename = {"attention.self.": "attention.attention.", "attention.output.": "attention.output.",
              "intermediate.": "intermediate.", "output.": "output."}
    for k, v in sd.items():
        if k.startswith("embeddings.LayerNorm."):
            new["layernorm." + k.split(".")[-1]] = v
            continue
        if not k.startswith("encoder.layer."):
            continue
        parts = k.split(".")
        idx, rest = parts[2], ".".join(parts[3:])
        for a, b in rename.items():
            if rest.startswith(a):
                tail = b + rest[len(a):]
                new[f"encoder.layer.{idx}.{tail}"] = v
                if a in ("intermediate.", "output."):
                    q = tail.replace("intermediate.", "intermediate_query.", 1) if a == "intermediate." else \
                        tail.replace("output.", "output_query.", 1)
                    new[f"encoder.layer.{idx}.{q}"] = v
                break
    copied = {k: v for k, v in new.items() if k in own and own[k].shape == v.shape}
    qformer.load_state_dict(copied, strict=False)
    return {"copied": len(copied), "random": len(own) - len(copied)}


# ------------------------------------------------------------------------------------------ model
class BratModel(nn.Module):
    """brat (and its Table 2 ablations): see the module docstring. Introduced in ``08_brat_pretraining``.

    ``bert`` (a transformers ``BertModel``) may be passed to avoid loading ``config.bert_source`` again
    (the ablations of notebook 09 share one load); it is copied, never modified.
    """

    def __init__(self, config: BratConfig, *, bert: nn.Module | None = None, cache_dir=None):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        self.config = config.validate()
        if bert is None:
            from ...hub import load_model

            bert = load_model(config.bert_source, kind="bert", cache_dir=cache_dir)
        bc = bert.config
        h = int(bc.hidden_size)
        self.backbone = DenseNetTokens(config.backbone, config.feature_stage, 1, config.input_size)
        C = self.backbone.out_channels
        n_tokens = int(np.prod(self.backbone.grid))
        self.token_norm = nn.LayerNorm(C)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, C))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.text = truncate_bert(bert, config.text_layers)
        self.text.train()
        if not config.train_text:
            for p in self.text.parameters():
                p.requires_grad_(False)
        self.hidden_size = h
        self.uses_queries = config.image_views == "queries"
        if self.uses_queries:
            n_layers = config.qformer_layers or int(bc.num_hidden_layers)
            qcfg = Blip2QFormerConfig(
                vocab_size=bc.vocab_size, hidden_size=h, num_hidden_layers=n_layers,
                num_attention_heads=bc.num_attention_heads, intermediate_size=bc.intermediate_size,
                hidden_act=bc.hidden_act,
                hidden_dropout_prob=bc.hidden_dropout_prob if config.dropout is None else config.dropout,
                attention_probs_dropout_prob=(bc.attention_probs_dropout_prob if config.dropout is None
                                              else config.dropout),
                max_position_embeddings=bc.max_position_embeddings, layer_norm_eps=bc.layer_norm_eps,
                pad_token_id=bc.pad_token_id, cross_attention_frequency=config.cross_attention_frequency,
                encoder_hidden_size=C, use_qformer_text_input=True)
            qcfg._attn_implementation = "eager"  # SDPA returns no cross-attention maps (transformers)
            self.qformer = Blip2QFormerModel(qcfg)
            self.qformer_init = init_qformer_from_bert(self.qformer, bert)
            self.query_tokens = nn.Parameter(torch.zeros(1, config.num_queries, h))
            nn.init.normal_(self.query_tokens, std=float(getattr(bc, "initializer_range", 0.02)))
            self.vision_proj = nn.Linear(h, config.embed_dim)
            if config.itg_weight > 0:
                self.itg_transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=bc.layer_norm_eps))
                self.itg_bias = nn.Parameter(torch.zeros(bc.vocab_size))
        else:
            self.vision_proj = nn.Linear(C, config.embed_dim)
        self.text_proj = nn.Linear(h, config.embed_dim)
        self.temperature = L.LearnableTemperature(config.init_tau)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("itg_vocab", None, persistent=False)
        # Mean pooled text embedding of the training reports, subtracted before ``text_proj`` (zeros = none).
        self.register_buffer("text_center", torch.zeros(h))

    @torch.no_grad()
    def set_text_center(self, text: Mapping[str, torch.Tensor] | None, batch_size: int = 64) -> None:
        """Centre the text side: store the mean pooled (sentence or report) embedding of ``text`` (a
        tokenised split, with cached ``text_states`` or not), subtracted before the projection. A frozen
        BERT puts every phantom report in a narrow cone (pairwise cosines near 1); removing the shared
        direction lets the projection start from the differences. ``None`` switches it off."""
        if text is None:
            self.text_center.zero_()
            return
        total, count = torch.zeros_like(self.text_center, dtype=torch.float64), 0
        was = self.training
        self.eval()
        for i in range(0, text["input_ids"].shape[0], batch_size):
            b = {k: v[i:i + batch_size] for k, v in text.items()}
            states = b.get("text_states")
            if states is None:
                states = self.text_states(b["input_ids"], b["attention_mask"])
            pooled, mask = self.pool_sentences(states, b["token_sentence"], b["sentence_mask"])
            total += pooled[mask].double().sum(0)
            count += int(mask.sum())
        self.train(was)
        if count == 0:
            raise DataError(None, "text", "at least one sentence to centre on", "none")
        self.text_center.copy_((total / count).to(self.text_center.dtype))

    def set_itg_vocab(self, token_ids: Iterable[int] | torch.Tensor | None) -> None:
        """Restrict the ITG softmax to ``token_ids`` (e.g. every token of the training reports, plus the
        special ones); ``None`` restores the full vocabulary. Targets outside it are a ConfigError. The
        smoke profile uses it: the phantom reports use a few hundred of BERT's 30,522 word pieces, and the
        full-vocabulary logits were most of a CPU step."""
        if token_ids is None:
            self.itg_vocab = None
            return
        ids = torch.as_tensor(sorted({int(t) for t in torch.as_tensor(list(token_ids) if not
                                                                       isinstance(token_ids, torch.Tensor)
                                                                       else token_ids).flatten().tolist()}),
                              dtype=torch.long)
        V = self.text.embeddings.word_embeddings.weight.shape[0]
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= V:
            raise ConfigError(f"set_itg_vocab: expected token ids in [0, {V}), found {ids.numel()} ids "
                              f"in [{int(ids.min()) if ids.numel() else '-'}, {int(ids.max()) if ids.numel() else '-'}]")
        self.itg_vocab = ids.to(self.steps_seen.device)

    def _itg_logits(self, text_states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W = self.text.embeddings.word_embeddings.weight
        h = self.itg_transform(text_states)
        if self.itg_vocab is None:
            return h @ W.T + self.itg_bias, labels
        vocab = self.itg_vocab
        lut = torch.full((W.shape[0],), -1, dtype=torch.long, device=labels.device)
        lut[vocab] = torch.arange(vocab.numel(), device=labels.device)
        mapped = torch.where(labels >= 0, lut[labels.clamp_min(0)], labels)
        if bool(((labels >= 0) & (mapped < 0)).any()):
            raise ConfigError("ITG: a target token is outside the restricted vocabulary (set_itg_vocab): "
                              "build it from every report the model trains on")
        return h @ W[vocab].T + self.itg_bias[vocab], mapped

    # -- image -----------------------------------------------------------------------------------
    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """DenseNet feature grid -> tokens ``(B, D, C)`` (LayerNorm + position embedding)."""
        if image.dim() != 5 or image.shape[1] != 1:
            raise ConfigError(f"image: expected shape (B, 1, X, Y, Z), found {tuple(image.shape)}")
        if tuple(image.shape[2:]) != tuple(self.config.input_size):
            raise ConfigError(f"image: expected the grid {tuple(self.config.input_size)} the model was built for, "
                              f"found {tuple(image.shape[2:])}")
        fmap = self.backbone(image)
        tok = fmap.flatten(2).transpose(1, 2)
        return self.token_norm(tok) + self.pos_embed

    def _qformer(self, tokens: torch.Tensor, text_ids: torch.Tensor | None = None,
                 text_mask: torch.Tensor | None = None):
        B, NQ = tokens.shape[0], self.config.num_queries
        q = self.query_tokens.expand(B, -1, -1)
        mask = None
        if text_ids is not None:
            emb = self.text.embeddings
            T = text_ids.shape[1]
            pos = emb.position_ids[:, :T] if hasattr(emb, "position_ids") else torch.arange(T, device=text_ids.device)[None]
            t = emb.word_embeddings(text_ids) + emb.position_embeddings(pos)
            if getattr(emb, "token_type_embeddings", None) is not None:
                t = t + emb.token_type_embeddings.weight[0]
            q = torch.cat([q, t.to(q.dtype)], dim=1)
            Ltot = NQ + T
            allowed = torch.zeros(B, Ltot, Ltot, dtype=torch.bool, device=q.device)
            allowed[:, :NQ, :NQ] = True  # queries see queries only
            allowed[:, NQ:, :NQ] = True  # text sees every query ...
            causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
            allowed[:, NQ:, NQ:] = causal[None] & text_mask.bool()[:, None, :]  # ... and earlier real tokens
            mask = torch.zeros(B, 1, Ltot, Ltot, dtype=q.dtype, device=q.device)
            mask.masked_fill_(~allowed[:, None], torch.finfo(q.dtype).min)
        out = self.qformer(query_embeds=q, query_length=NQ, attention_mask=mask, encoder_hidden_states=tokens,
                           output_attentions=True)
        cross = [a for a in (out.cross_attentions or ()) if a is not None]
        if not cross:
            raise ConfigError("Q-Former returned no cross-attention maps: it must run with eager attention")
        attn = torch.stack([a.mean(1) for a in cross], 0).mean(0)  # (B, N_Q, D): heads, then layers averaged
        return out.last_hidden_state, attn

    def encode_image(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"views": (B, N_v, E), "attention": (B, N_Q, D) | None, "query_states": ...}``; ``N_v`` is
        ``N_Q`` (queries) or 1 (pooled)."""
        tokens = self.image_tokens(image)
        if not self.uses_queries:
            return {"views": self.vision_proj(tokens.mean(1, keepdim=True)), "attention": None,
                    "query_states": None, "tokens": tokens}
        states, attn = self._qformer(tokens)
        return {"views": self.vision_proj(states), "attention": attn, "query_states": states, "tokens": tokens}

    # -- text ------------------------------------------------------------------------------------
    def text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's token outputs ``(B, T, h)``."""
        return self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pool_sentences(self, states: torch.Tensor, token_sentence: torch.Tensor,
                       sentence_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sentence embedding = mean of its tokens' embeddings: ``(B, S, h)`` and the mask ``(B, S)``;
        with ``text_views="report"`` one vector, the mean of all report tokens: ``(B, 1, h)``."""
        if self.config.text_views == "report":
            w = (token_sentence >= 0).to(states.dtype)
            pooled = (states * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
            return pooled[:, None], torch.ones(states.shape[0], 1, dtype=torch.bool, device=states.device)
        S = sentence_mask.shape[1]
        onehot = (token_sentence[..., None] == torch.arange(S, device=states.device)).to(states.dtype)  # (B,T,S)
        sums = torch.einsum("bts,bth->bsh", onehot, states)
        counts = onehot.sum(1)[..., None]
        return sums / counts.clamp_min(1), sentence_mask.bool() & (counts[..., 0] > 0)

    def encode_text(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected sentence embeddings ``F`` ``(B, S, E)`` and their mask. Uses ``batch["text_states"]``
        (cached outputs of a frozen text encoder) when present."""
        states = batch.get("text_states")
        if states is None:
            states = self.text_states(batch["input_ids"], batch["attention_mask"])
        pooled, mask = self.pool_sentences(states, batch["token_sentence"], batch["sentence_mask"])
        return self.text_proj(pooled - self.text_center), mask

    # -- similarity and losses ---------------------------------------------------------------------
    def similarity(self, V: torch.Tensor, F: torch.Tensor, mask: torch.Tensor, *, chunk_size: int | None = None):
        """Image x report similarities ``(B_img, B_rep)`` with the configured matching."""
        m = self.config.matching
        if m == "pva":
            return L.pva_similarity(V, F, mask, chunk_size=chunk_size)
        return L.multiview_similarity(V, F, mask, method=m)

    def diversity_weight(self) -> float:
        return L.linear_warmup(int(self.steps_seen), self.config.diversity_weight, self.config.diversity_warmup_steps)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """brat's loss (equation 9): ``(L_I|R + L_R|I)/2 + w_div L_div + w_itg L_ITG``; returns the loss and
        its parts for logging. Counts training steps (for the diversity warm-up)."""
        cfg = self.config
        image = batch["image"]
        if image.shape[0] < 2:
            raise ConfigError(f"batch: expected at least 2 image-report pairs for InfoNCE, found {image.shape[0]}")
        tokens = self.image_tokens(image)
        logs: dict[str, float] = {}
        itg = None
        attn = None
        if self.uses_queries:
            use_itg = cfg.itg_weight > 0 and self.training
            if use_itg:
                T = min(cfg.itg_max_tokens, batch["input_ids"].shape[1])
                ids, am = batch["input_ids"][:, :T], batch["attention_mask"][:, :T]
                states, attn = self._qformer(tokens, ids, am)
                qs, ts = states[:, : cfg.num_queries], states[:, cfg.num_queries:]
                logits, labels = self._itg_logits(ts, ids.masked_fill(am == 0, -100))
                itg = L.itg_loss(logits, labels)
            else:
                qs, attn = self._qformer(tokens)
            V = self.vision_proj(qs)
        else:
            V = self.vision_proj(tokens.mean(1, keepdim=True))
        F, mask = self.encode_text(batch)
        sim = self.similarity(V, F, mask)
        nce = info_nce(sim, self.temperature())
        total = nce
        logs["nce"] = float(nce.detach())
        w = self.diversity_weight()
        if cfg.diversity == "dpp":
            div = L.dpp_loss(attn, eps=cfg.dpp_eps, normalize=cfg.dpp_normalize)
            total = total + w * div
            logs["dpp"] = float(div.detach())
        elif cfg.diversity == "repulsion":
            div = L.pairwise_repulsion_loss(V)
            total = total + w * div
            logs["repulsion"] = float(div.detach())
        if itg is not None:
            total = total + cfg.itg_weight * itg
            logs["itg"] = float(itg.detach())
        if attn is not None:
            logs["attn_cos"] = float(L.mean_pairwise_cosine(attn.detach()).mean())
        logs["tau"] = float(1.0 / self.temperature().detach())
        if self.training:
            self.steps_seen += 1
        return total, logs

    def forward(self, batch: Mapping[str, torch.Tensor]):
        return self.loss(batch)
