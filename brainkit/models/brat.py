"""brat: multi-view vision-language pretraining of a 3D brain-MRI encoder on reports (seed D).

Introduced in ``08_brat_pretraining`` (the model, PVA and DPP, pretraining) and evaluated in
``09_brat_evaluation`` (retrieval, the ablations of the paper's Table 2, downstream tasks).

The pieces, as the paper describes them (the released code is inference only; METHODS.md §D):

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
- **Similarity** of image and report: PVA (greedy one-to-one matching, :func:`brainkit.losses.pva_similarity`),
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
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from .. import losses as L
from ..errors import ConfigError, DataError

__all__ = [
    "BratConfig", "ABLATIONS", "TABLE2_NAMES", "BratModel", "DenseNetTokens", "BACKBONES", "tokenize_reports",
    "report_sentences", "finding_labels", "init_qformer_from_bert", "truncate_bert", "embed_dataset",
    "retrieval_similarity", "collate", "config_for_ablation", "pair_records", "load_volumes", "PairDataset",
    "cache_text_states", "swap_sides", "add_flipped_text", "cache_text", "run_key", "save_pretrained", "load_pretrained", "config_from_profile", "prepare_data", "retrieval_eval", "pretrain", "loaders",
]

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

    def validate(self) -> "BratConfig":
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


# ------------------------------------------------------------------------------------------- text
def report_sentences(report: str, max_sentences: int = 20, *, where: Any = None) -> list[str]:
    """The sentences of a report (:func:`brainkit.data.reports.split_sentences`), at most
    ``max_sentences`` (the first ones; the paper keeps 20). A report without a sentence is a DataError."""
    from ..data.reports import split_sentences

    if not isinstance(report, str):
        raise DataError(where, "report", "a string", type(report).__name__)
    sents = split_sentences(report)
    if not sents:
        raise DataError(where, "report", "at least one sentence", repr(report[:60]))
    if len(sents) > max_sentences:
        log.warning("%s: %d sentences, keeping the first %d (max_sentences)", where or "report", len(sents),
                    max_sentences)
        sents = sents[:max_sentences]
    return sents


def tokenize_reports(tokenizer, reports: Sequence[str], *, max_tokens: int = 256, max_sentences: int = 20,
                     ids: Sequence[Any] | None = None) -> dict[str, torch.Tensor]:
    """Tokenise reports for brat: ``[CLS] sentence_1 ... sentence_n [SEP]``, each token tagged with its
    sentence. Returns ``input_ids`` / ``attention_mask`` / ``token_sentence`` ``(N, T)`` (sentence index,
    -1 for special and padding tokens) and ``sentence_mask`` ``(N, S)`` with ``S`` the largest sentence
    count (<= ``max_sentences``). Sentences cut off by ``max_tokens`` are dropped (mask False); a report
    that keeps no sentence is a DataError naming it (``ids`` names the items)."""
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if bos is None or eos is None:
        raise ConfigError("tokenizer: expected a start (CLS/BOS) and an end (SEP/EOS) token")
    if max_tokens < 3:
        raise ConfigError(f"max_tokens: expected >= 3, found {max_tokens}")
    rows, tags, counts = [], [], []
    for n, rep in enumerate(reports):
        where = ids[n] if ids is not None else f"report {n}"
        sents = report_sentences(rep, max_sentences, where=where)
        tok, tag = [bos], [-1]
        kept = 0
        for s_i, s in enumerate(sents):
            piece = tokenizer(s, add_special_tokens=False)["input_ids"]
            room = max_tokens - 1 - len(tok)
            if room <= 0:
                break
            piece = piece[:room]
            if not piece:
                continue
            tok += piece
            tag += [s_i] * len(piece)
            kept = s_i + 1
        if kept == 0:
            raise DataError(where, "report", "at least one sentence with a token", repr(rep[:60]))
        tok.append(eos)
        tag.append(-1)
        rows.append(tok)
        tags.append(tag)
        counts.append(kept)
    T = max(len(r) for r in rows)
    S = max(counts)
    N = len(rows)
    input_ids = torch.full((N, T), pad, dtype=torch.long)
    attn = torch.zeros(N, T, dtype=torch.long)
    token_sentence = torch.full((N, T), -1, dtype=torch.long)
    sentence_mask = torch.zeros(N, S, dtype=torch.bool)
    for i, (r, t) in enumerate(zip(rows, tags)):
        input_ids[i, : len(r)] = torch.as_tensor(r)
        attn[i, : len(r)] = 1
        token_sentence[i, : len(t)] = torch.as_tensor(t)
        present = sorted({x for x in t if x >= 0})
        sentence_mask[i, present] = True
    return {"input_ids": input_ids, "attention_mask": attn, "token_sentence": token_sentence,
            "sentence_mask": sentence_mask}


_SIDE = __import__("re").compile(r"\b(left|right)\b", __import__("re").IGNORECASE)


def swap_sides(report: str) -> str:
    """``report`` with "left" and "right" exchanged (case kept): the report of the mirrored scan. Used
    by the flip augmentation of :class:`PairDataset` (notebook 08)."""
    def sub(m):
        w = m.group(0)
        new = "right" if w.lower() == "left" else "left"
        return new.upper() if w.isupper() else new.capitalize() if w[0].isupper() else new
    return _SIDE.sub(sub, report)


def finding_labels(findings: Mapping[str, Any] | None = None, report: str | None = None) -> frozenset[str]:
    """Positive findings of one item as ``"kind:value"`` strings for P@5(F) / R@5(F): from the phantom's
    structured findings (:func:`brainkit.data.reports.entities_from_findings`) when given, else
    extracted from the report text (:func:`brainkit.data.reports.extract_findings`). "normal" is not a
    positive finding (the empty set)."""
    from ..data.reports import entities_from_findings, extract_findings

    if findings:
        ent = entities_from_findings(dict(findings))
    elif report is not None:
        ent = extract_findings(report)
    else:
        raise ConfigError("finding_labels: expected structured findings or a report")
    return frozenset(f"{k}:{v}" for k, vals in ent.items() for v in vals if v != "normal")


def collate(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-item dicts of tensors into a batch, trimming text padding to the batch's longest."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    if "attention_mask" in out:
        T = int(out["attention_mask"].sum(1).max())
        for k in ("input_ids", "attention_mask", "token_sentence", "text_states"):
            if k in out:
                out[k] = out[k][:, :T]
    if "sentence_mask" in out:
        S = int(out["sentence_mask"].any(0).nonzero().max()) + 1
        out["sentence_mask"] = out["sentence_mask"][:, :S]
    return out


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
            from .factory import load_model

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
            qcfg._attn_implementation = "eager"  # SDPA returns no cross-attention maps (NOTES.md)
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
        nce = L.info_nce(sim, self.temperature())
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


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def embed_dataset(model: BratModel, loader: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Views ``V`` ``(N, N_v, E)``, sentences ``F`` ``(N, S, E)`` with their mask, the queries'
    attention maps ``(N, N_Q, D)`` (or None) and the query states, over a whole loader (eval mode)."""
    was = model.training
    model.eval()
    Vs, Fs, Ms, As, Qs = [], [], [], [], []
    for batch in loader:
        out = model.encode_image(batch["image"])
        F, m = model.encode_text(batch)
        Vs.append(out["views"])
        Fs.append(F)
        Ms.append(m)
        if out["attention"] is not None:
            As.append(out["attention"])
            Qs.append(out["query_states"])
    model.train(was)
    S = max(f.shape[1] for f in Fs)
    Fp = torch.cat([nnf.pad(f, (0, 0, 0, S - f.shape[1])) for f in Fs])
    Mp = torch.cat([nnf.pad(m, (0, S - m.shape[1]), value=False) for m in Ms])
    return {"V": torch.cat(Vs), "F": Fp, "mask": Mp, "attention": torch.cat(As) if As else None,
            "query_states": torch.cat(Qs) if Qs else None}


@torch.no_grad()
def retrieval_similarity(model: BratModel, emb: Mapping[str, torch.Tensor], chunk_size: int = 16) -> torch.Tensor:
    """The ``(N, N)`` image x report similarity of a whole split with the model's matching."""
    rows = []
    for i in range(0, emb["V"].shape[0], chunk_size):
        rows.append(model.similarity(emb["V"][i:i + chunk_size], emb["F"], emb["mask"]))
    return torch.cat(rows)


# ------------------------------------------------------------------------------------------- data
def pair_records(brats_dir, textbrats_dir) -> list[dict[str, Any]]:
    """Join BraTS 2020 volumes with TextBraTS reports by case id: ``{"case_id", "image" (FLAIR path),
    "report", "findings", "lesion_type"}`` per case that has both. ``findings`` / ``lesion_type`` come
    from the phantom manifest when there is one (the structured ground truth), else ``{}`` / ``None``
    (real data: the finding metrics then extract findings from the report text). Used by notebooks 08-09."""
    from ..data.formats import find_brats2020, find_textbrats, load_phantom_manifest
    from ..data.reports import read_report_text

    cases = {r["case_id"]: r for r in find_brats2020(brats_dir, require_seg=False)}
    reports = find_textbrats(textbrats_dir)
    manifest = load_phantom_manifest(brats_dir) or {}
    truth = {s.get("case_id"): s for s in manifest.get("subjects", [])}
    out = []
    for cid in sorted(set(cases) & set(reports)):
        s = truth.get(cid, {})
        out.append({"case_id": cid, "patient_id": cid, "image": str(cases[cid]["flair"]),
                    "seg": str(cases[cid]["seg"]) if cases[cid].get("seg") else None,
                    "report": read_report_text(reports[cid]), "findings": s.get("findings") or {},
                    "lesion_type": s.get("lesion_type"), "laterality": s.get("laterality")})
    if not out:
        raise DataError(brats_dir, "cases", "BraTS cases with a TextBraTS report", "none in common")
    missing = sorted(set(cases) ^ set(reports))
    if missing:
        log.warning("%d cases have an image or a report but not both (e.g. %s): skipped", len(missing), missing[:3])
    return out


def load_volumes(records: Sequence[Mapping[str, Any]], transform) -> torch.Tensor:
    """Run the MONAI chain ``transform`` over ``{"image": path}`` of each record; ``(N, 1, X, Y, Z)``."""
    vols = [torch.as_tensor(transform({"image": r["image"]})["image"]).float() for r in records]
    shapes = {tuple(v.shape) for v in vols}
    if len(shapes) != 1:
        raise DataError(None, "volumes", "one shape after the transform chain", sorted(shapes))
    return torch.stack(vols)


class PairDataset(torch.utils.data.Dataset):
    """Image-report pairs held in memory as tensors (the smoke set is small): item ``i`` is a dict of
    ``image`` and the tokenised report (and cached ``text_states`` when given).

    Flip augmentation: with ``flipped_text`` (the tokenised :func:`swap_sides` reports, same widths as
    ``text``) each item is, with probability ``flip_prob``, the scan mirrored left-right (axis X of
    ``(1, X, Y, Z)``, RAS) paired with the mirrored report. The draws come from the dataset's own
    generator (seeded), so a run is reproducible; a resume mid-epoch draws different flips."""

    def __init__(self, images: torch.Tensor, text: Mapping[str, torch.Tensor],
                 flipped_text: Mapping[str, torch.Tensor] | None = None, flip_prob: float = 0.0, seed: int = 0):
        if images.shape[0] != text["input_ids"].shape[0]:
            raise DataError(None, "pairs", "as many reports as images",
                            f"{text['input_ids'].shape[0]} reports for {images.shape[0]} images")
        if not 0.0 <= float(flip_prob) <= 1.0:
            raise ConfigError(f"flip_prob: expected a probability in [0, 1], found {flip_prob!r}")
        if flip_prob > 0:
            if flipped_text is None:
                raise ConfigError("flip_prob > 0 needs flipped_text (the tokenised swap_sides reports)")
            bad = [k for k in text if k not in flipped_text or flipped_text[k].shape != text[k].shape]
            if bad:
                raise DataError(None, "flipped_text", "the same keys and shapes as text", f"differs at {bad}")
        self.images = images
        self.text = dict(text)
        self.flipped = dict(flipped_text) if flipped_text is not None else None
        self.flip_prob = float(flip_prob)
        self._g = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.flip_prob > 0 and float(torch.rand((), generator=self._g)) < self.flip_prob:
            return {"image": self.images[i].flip(1), **{k: v[i] for k, v in self.flipped.items()}}
        return {"image": self.images[i], **{k: v[i] for k, v in self.text.items()}}


@torch.no_grad()
def cache_text_states(model: BratModel, text: Mapping[str, torch.Tensor], batch_size: int = 32) -> torch.Tensor:
    """The (frozen) text encoder's token outputs for every report, ``(N, T, h)``: with
    ``train_text=False`` they never change, so training reads them instead of running BERT each step."""
    if model.config.train_text:
        raise ConfigError("cache_text_states: the text encoder is trained (train_text=True); its outputs change")
    was = model.text.training
    model.text.eval()
    outs = [model.text_states(text["input_ids"][i:i + batch_size], text["attention_mask"][i:i + batch_size])
            for i in range(0, text["input_ids"].shape[0], batch_size)]
    model.text.train(was)
    return torch.cat(outs)


# ------------------------------------------------------------------------------ notebooks 08-09 glue
def config_from_profile(cfg: Any, input_size: Sequence[int]) -> BratConfig:
    """The :class:`BratConfig` of a profile's ``brat_*`` fields for volumes of ``input_size`` (X, Y, Z)."""
    return BratConfig(
        input_size=tuple(int(s) for s in input_size), backbone=cfg.brat_backbone, feature_stage=cfg.brat_feature_stage,
        bert_source=cfg.brat_bert, qformer_layers=cfg.brat_qformer_layers or None, num_queries=cfg.brat_num_queries,
        embed_dim=cfg.brat_embed_dim, max_sentences=cfg.brat_max_sentences, max_text_tokens=cfg.brat_max_text_tokens,
        train_text=cfg.brat_train_text, diversity_weight=cfg.brat_dpp_weight, dpp_eps=cfg.brat_dpp_eps,
        dpp_normalize=cfg.brat_dpp_normalize, diversity_warmup_steps=cfg.brat_dpp_warmup_steps,
        itg_weight=cfg.brat_itg_weight, itg_max_tokens=cfg.brat_itg_max_tokens).validate()


def prepare_data(cfg: Any, data_dir, *, seed: int = 0, cache_file=None, tokenizer=None) -> dict[str, Any]:
    """Everything notebooks 08 and 09 train and evaluate on: the phantom (smoke) or the downloads
    (``brats2020`` + ``textbrats`` folders under ``data_dir``), patient-grouped 70/10/20 splits, the
    volumes through brat's MONAI chain (input ``cfg.brat_volume_size`` or ``cfg.data_brat_volume_size``),
    and the tokenised reports. ``cache_file`` (safetensors) keeps the preprocessed volumes: notebook 09
    reads notebook 08's instead of preprocessing again."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from ..data.formats import ensure_phantom
    from ..data.manifests import check_no_leak, make_splits
    from ..data.transforms import brat_transforms
    from ..profiles import resolve
    from .factory import load_tokenizer

    vol_cfg = resolve(cfg, data_brat_volume_size=cfg.brat_volume_size)
    if cfg.data_source == "phantom":
        dirs = ensure_phantom(cfg, data_dir, ["brats2020", "textbrats"], seed=seed,
                              n_jobs=int(getattr(cfg, "data_jobs", 1)))
    else:
        dirs = {"brats2020": Path(data_dir) / "brats2020", "textbrats": Path(data_dir) / "textbrats"}
    records = pair_records(dirs["brats2020"], dirs["textbrats"])
    splits = make_splits(records, group_key="patient_id", stratify_key="laterality", fractions=[0.7, 0.1, 0.2],
                         seed=seed)
    check_no_leak(splits)
    ids = {k: [r["case_id"] for r in v] for k, v in splits.items()}
    vols = None
    if cache_file is not None and Path(cache_file).is_file():
        t = load_file(str(cache_file))
        if all(k in t for k in splits) and all(t[k].shape[0] == len(v) for k, v in splits.items()) and \
                tuple(t["train"].shape[2:]) == tuple(int(x) for x in reversed(vol_cfg.data_brat_volume_size)):
            vols = {k: t[k] for k in splits}
    if vols is None:
        tf = brat_transforms(vol_cfg)
        vols = {k: load_volumes(v, tf) for k, v in splits.items()}
        if cache_file is not None:
            Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in vols.items()}, str(cache_file))
    tok = tokenizer or load_tokenizer(cfg.brat_bert)
    text = {k: tokenize_reports(tok, [r["report"] for r in v], max_tokens=cfg.brat_max_text_tokens,
                                max_sentences=cfg.brat_max_sentences, ids=ids[k]) for k, v in splits.items()}
    findings = {k: [finding_labels(r["findings"] or None, r["report"]) for r in v] for k, v in splits.items()}
    return {"dirs": dirs, "splits": splits, "volumes": vols, "text": text, "findings": findings, "tokenizer": tok,
            "input_size": tuple(vols["train"].shape[2:])}


def retrieval_eval(model: BratModel, loader, findings=None) -> dict[str, float]:
    """Retrieval metrics of a split (both directions) and the queries' attention-map cosine."""
    from ..metrics.retrieval import retrieval_metrics

    emb = embed_dataset(model, loader)
    out = retrieval_metrics(retrieval_similarity(model, emb), findings=findings)
    if emb["attention"] is not None:
        out["attn_cos"] = float(L.mean_pairwise_cosine(emb["attention"]).mean())
    return out


def add_flipped_text(data: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """Tokenise the :func:`swap_sides` version of every training report into ``data["text_flipped"]``
    (and the training reports again, jointly, so both have the same widths); in place, returns ``data``.
    Used by the flip augmentation of :func:`pretrain`."""
    if "text_flipped" in data:
        return data
    recs = data["splits"]["train"]
    reps = [r["report"] for r in recs]
    ids = [r["case_id"] for r in recs]
    both = tokenize_reports(data["tokenizer"], reps + [swap_sides(r) for r in reps], max_tokens=cfg.brat_max_text_tokens,
                            max_sentences=cfg.brat_max_sentences, ids=ids + [f"{i} (sides swapped)" for i in ids])
    n = len(reps)
    data["text"] = {**data["text"], "train": {k: v[:n] for k, v in both.items()}}
    data["text_flipped"] = {k: v[n:] for k, v in both.items()}
    return data


def cache_text(model: BratModel, data: dict[str, Any], file=None) -> dict[str, Any]:
    """Run the (frozen) text encoder of ``model`` once over every split (and ``text_flipped``) and keep
    its outputs as ``text_states`` in ``data``: every configuration built from the same BERT shares them
    (the BERT over all reports costs more than a configuration's whole training in smoke). In place.
    ``file`` (safetensors) keeps them on disk: notebook 09 reads notebook 08's (used only when every
    token id matches, so another tokenisation or report set is recomputed)."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    tag = (model.config.bert_source, model.config.text_layers)
    if model.config.train_text:
        raise ConfigError("cache_text: the text encoder is trained (train_text=True); its outputs change")
    if data.get("text_states_of") == tag and all("text_states" in t for t in data["text"].values()):
        return data
    parts = dict(data["text"])
    if "text_flipped" in data:
        parts["flipped"] = data["text_flipped"]
    states = None
    if file is not None and Path(file).is_file():
        try:
            t = load_file(str(file))
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed
            t = {}
        if all(f"{k}/states" in t and f"{k}/ids" in t and torch.equal(t[f"{k}/ids"], v["input_ids"])
               for k, v in parts.items()) and t.get("tag") is not None and \
                bytes(t["tag"].tolist()).decode() == repr(tag):
            states = {k: t[f"{k}/states"] for k in parts}
    if states is None:
        states = {k: cache_text_states(model, v) for k, v in parts.items()}
        if file is not None:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
            blob = {f"{k}/states": v.contiguous() for k, v in states.items()}
            blob.update({f"{k}/ids": v["input_ids"].contiguous() for k, v in parts.items()})
            blob["tag"] = torch.tensor(list(repr(tag).encode()), dtype=torch.uint8)
            save_file(blob, str(file))
    for k in data["text"]:
        data["text"][k] = {**data["text"][k], "text_states": states[k]}
    if "text_flipped" in data:
        data["text_flipped"] = {**data["text_flipped"], "text_states": states["flipped"]}
    data["text_states_of"] = tag
    return data


def pretrain(model: BratModel, data: Mapping[str, Any], cfg: Any, *, out_dir=None, callbacks=(), seed: int = 0,
             steps: int | None = None, select: str = "last", flip_prob: float | None = None,
             center_text: bool | None = None):
    """Pretrain one configuration with :func:`brainkit.train.fit`: ``cfg.brat_steps`` steps of
    ``cfg.brat_batch_size`` pairs, AdamW with the backbone / new layers at ``brat_lr_backbone`` and the
    BERT-initialised parts at ``brat_lr_bert``. ``select="last"`` keeps the last weights (the smoke
    default: R@5 on a validation split of a few dozen pairs is too noisy to choose an epoch by),
    ``select="val_r5"`` the epoch with the best validation R@5 (mean of both directions).

    Before training: the frozen text encoder's outputs are cached (reused from ``data`` when
    :func:`cache_text` put them there for the same BERT), the text side is centred on the training
    reports (:meth:`BratModel.set_text_center`, ``cfg.brat_center_text``) and, with ``cfg.brat_flip_prob``
    > 0, each training pair is mirrored left-right with its report's sides swapped (:func:`swap_sides`)
    with that probability. ``flip_prob`` / ``center_text`` override the profile. ``data`` gains the
    cached items. Returns the FitResult. Introduced in ``08_brat_pretraining``."""
    from ..train import fit

    if select not in ("last", "val_r5"):
        raise ConfigError(f"select: expected 'last' or 'val_r5', found {select!r}")
    flip = float(getattr(cfg, "brat_flip_prob", 0.0) if flip_prob is None else flip_prob)
    center = bool(getattr(cfg, "brat_center_text", False) if center_text is None else center_text)
    if flip > 0:
        add_flipped_text(data, cfg)
    if not model.config.train_text:
        cache_text(model, data)
    text = data["text"]
    flipped = data.get("text_flipped") if flip > 0 else None
    if model.uses_queries and model.config.itg_weight > 0:
        every = [t["input_ids"].flatten() for t in text.values()] + ([flipped["input_ids"].flatten()] if flipped else [])
        model.set_itg_vocab(torch.cat(every))
    model.set_text_center(text["train"] if center else None)
    train_ds = PairDataset(data["volumes"]["train"], text["train"], flipped, flip if flipped is not None else 0.0,
                           seed=seed)
    g = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(train_ds, batch_size=cfg.brat_batch_size, shuffle=True, drop_last=True,
                                        collate_fn=collate, generator=g)
    val = torch.utils.data.DataLoader(PairDataset(data["volumes"]["val"], text["val"]), batch_size=32,
                                      collate_fn=collate)
    bert_ids = {id(p) for n, p in model.named_parameters() if n.startswith(("qformer.", "text."))
                and "crossattention" not in n}
    fast = [p for p in model.parameters() if p.requires_grad and id(p) not in bert_ids]
    slow = [p for p in model.parameters() if p.requires_grad and id(p) in bert_ids]
    opt = torch.optim.AdamW([{"params": fast, "lr": cfg.brat_lr_backbone}, {"params": slow, "lr": cfg.brat_lr_bert}],
                            weight_decay=0.05)
    n_steps = int(steps or cfg.brat_steps)
    epochs = max(1, math.ceil(n_steps / len(train)))

    def evaluate(m, loader):
        r = retrieval_eval(m, loader)
        out = {"val_r5": 0.5 * (r["t2i_r5"] + r["i2t_r5"]), "val_t2i_r5": r["t2i_r5"]}
        if "attn_cos" in r:
            out["val_attn_cos"] = r["attn_cos"]
        return out

    return fit(model, train, loss_fn=lambda m, b: m.loss(b), optimizer=opt, epochs=epochs, val_loader=val,
               evaluate=evaluate, monitor="val_r5", mode="max", out_dir=out_dir, max_steps=n_steps,
               restore_best=select == "val_r5", callbacks=list(callbacks), log_every=5, seed=seed,
               desc=f"brat:{model.config.matching}")


def run_key(cfg: Any, config: BratConfig, *, steps: int, seed: int, select: str = "last") -> str:
    """A short hash of everything that determines one pretraining run (the profile's ``data_`` and
    ``brat_`` fields, the model configuration, steps, seed and the epoch choice): notebook 09 reuses a
    checkpoint of notebook 08 only when its key matches."""
    import hashlib
    import json
    from dataclasses import fields, is_dataclass

    prof = {f.name: getattr(cfg, f.name) for f in fields(cfg)} if is_dataclass(cfg) else dict(vars(cfg))
    prof = {k: v for k, v in prof.items() if k.startswith(("data_", "brat_")) and not k.startswith("data_jobs")}
    blob = json.dumps({"profile": prof, "config": asdict(config), "steps": int(steps), "seed": int(seed),
                       "select": select}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def save_pretrained(model: BratModel, folder, *, key: str, meta: Mapping[str, Any] | None = None):
    """Write ``model.safetensors`` (without the frozen text encoder, which is the BERT it was built
    from) and ``meta.json`` (``key`` of :func:`run_key`, the configuration, ``meta``) to ``folder``."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frozen = not model.config.train_text
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if v is not None and not (frozen and k.startswith("text."))}
    save_file(state, str(folder / "model.safetensors"))
    info = {"key": key, "config": asdict(model.config), **dict(meta or {})}
    (folder / "meta.json").write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    return folder / "model.safetensors"


def load_pretrained(model: BratModel, folder, *, key: str) -> bool:
    """Load a :func:`save_pretrained` checkpoint from ``folder`` into ``model`` if its key matches
    ``key``; return False when there is none (or another run's). A matching key with a corrupt or
    incompatible file is a :class:`~brainkit.errors.DataError` naming it."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    weights, meta = folder / "model.safetensors", folder / "meta.json"
    if not (weights.is_file() and meta.is_file()):
        return False
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(meta, "json", "a meta.json written by save_pretrained", str(exc)) from None
    if info.get("key") != key:
        return False
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise DataError(weights, "safetensors", "a checkpoint written by save_pretrained", str(exc)) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise DataError(weights, "keys", "the parameters of this configuration", str(exc).splitlines()[-1].strip()) from None
    bad = [k for k in missing if not (k.startswith("text.") and not model.config.train_text)]
    if bad or unexpected:
        raise DataError(weights, "keys", "the parameters of this configuration",
                        f"missing {bad[:3]}, unexpected {list(unexpected)[:3]}")
    return True


def loaders(data: Mapping[str, Any], model: BratModel, batch_size: int = 32,
            splits: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluation loaders of ``splits`` (default all; cached text outputs when the text encoder is frozen)."""
    out = {}
    for k, t in data["text"].items():
        if splits is not None and k not in splits:
            continue
        t = dict(t)
        if not model.config.train_text and not ("text_states" in t and data.get("text_states_of") ==
                                                (model.config.bert_source, model.config.text_layers)):
            t["text_states"] = cache_text_states(model, t)
        out[k] = torch.utils.data.DataLoader(PairDataset(data["volumes"][k], t), batch_size=batch_size,
                                             collate_fn=collate)
    return out
