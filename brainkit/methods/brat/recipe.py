"""brat's recipe: the profile's settings to a :class:`~.model.BratConfig`, pretraining through
:func:`brainkit.train.fit` (brat and every Table 2 ablation with the same budget), embedding a split,
retrieval evaluation, saving and loading a pretrained run.

Introduced in ``08_brat_pretraining``; used again by ``09_brat_evaluation``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as nnf

from ...cache import atomic_save_tensors, atomic_write_text
from ...errors import ConfigError, DataError
from . import losses as L
from .data import PairDataset, add_flipped_text, cache_text, collate
from .model import BratConfig, BratModel

__all__ = ['embed_dataset', 'retrieval_similarity', 'config_from_profile', 'retrieval_eval', 'pretrain', 'run_key', 'save_pretrained', 'load_pretrained']

log = logging.getLogger(__name__)

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


def retrieval_eval(model: BratModel, loader, findings=None) -> dict[str, float]:
    """Retrieval metrics of a split (both directions) and the queries' attention-map cosine."""
    from ...metrics.retrieval import retrieval_metrics

    emb = embed_dataset(model, loader)
    out = retrieval_metrics(retrieval_similarity(model, emb), findings=findings)
    if emb["attention"] is not None:
        out["attn_cos"] = float(L.mean_pairwise_cosine(emb["attention"]).mean())
    return out


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
    from ...train import fit

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


    folder = Path(folder)
    frozen = not model.config.train_text
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if v is not None and not (frozen and k.startswith("text."))}
    atomic_save_tensors(state, folder / "model.safetensors")
    info = {"key": key, "config": asdict(model.config), **dict(meta or {})}
    atomic_write_text(folder / "meta.json", json.dumps(info, indent=1, default=str))  # written last
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
