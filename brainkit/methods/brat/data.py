"""brat's data: (volume, report) pairs from the BraTS 2020 + TextBraTS layouts, reports split into sentences
and tokenised, the left-right flip with sides swapped, finding labels for the P@5(F) / R@5(F) metrics, loaders.

Introduced in ``08_brat_pretraining``; used again by ``09_brat_evaluation``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ...cache import atomic_save_tensors
from ...data.reports import swap_sides  # handed on: the flip augmentation's reports
from ...errors import ConfigError, DataError

if TYPE_CHECKING:
    from .model import BratModel

__all__ = ['report_sentences', 'tokenize_reports', 'swap_sides', 'finding_labels', 'collate', 'pair_records', 'load_volumes', 'PairDataset', 'cache_text_states', 'prepare_data', 'add_flipped_text', 'cache_text', 'loaders']

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- text
def report_sentences(report: str, max_sentences: int = 20, *, where: Any = None) -> list[str]:
    """The sentences of a report (:func:`brainkit.data.reports.split_sentences`), at most
    ``max_sentences`` (the first ones; the paper keeps 20). A report without a sentence is a DataError."""
    from ...data.reports import split_sentences

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


def finding_labels(findings: Mapping[str, Any] | None = None, report: str | None = None) -> frozenset[str]:
    """Positive findings of one item as ``"kind:value"`` strings for P@5(F) / R@5(F): from the phantom's
    structured findings (:func:`brainkit.data.reports.entities_from_findings`) when given, else
    extracted from the report text (:func:`brainkit.data.reports.extract_findings`). "normal" is not a
    positive finding (the empty set)."""
    from ...data.reports import entities_from_findings, extract_findings

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


# ------------------------------------------------------------------------------------------- data
def pair_records(brats_dir, textbrats_dir) -> list[dict[str, Any]]:
    """Join BraTS 2020 volumes with TextBraTS reports by case id: ``{"case_id", "image" (FLAIR path),
    "report", "findings", "lesion_type"}`` per case that has both. ``findings`` / ``lesion_type`` come
    from the phantom manifest when there is one (the structured ground truth), else ``{}`` / ``None``
    (real data: the finding metrics then extract findings from the report text). Used by notebooks 08-09."""
    from ...data.formats import find_brats2020, find_textbrats, load_phantom_manifest
    from ...data.reports import read_report_text

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


def prepare_data(cfg: Any, data_dir, *, seed: int = 0, cache_file=None, tokenizer=None) -> dict[str, Any]:
    """Everything notebooks 08 and 09 train and evaluate on: the phantom (smoke) or the downloads
    (``brats2020`` + ``textbrats`` folders under ``data_dir``), patient-grouped 70/10/20 splits, the
    volumes through brat's MONAI chain (input ``cfg.brat_volume_size`` or ``cfg.data_brat_volume_size``),
    and the tokenised reports. ``cache_file`` (safetensors) keeps the preprocessed volumes: notebook 09
    reads notebook 08's instead of preprocessing again. With ``cfg.brat_flip_prob`` > 0 the side-swapped
    training reports are tokenised too (:func:`add_flipped_text`)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from ...data.layouts import ensure_phantom
    from ...data.manifests import check_no_leak, make_splits
    from ...data.transforms import brat_transforms
    from ...hub import load_tokenizer
    # the profile with brat's own input size (None: the shared data_brat_volume_size)
    vol_cfg = cfg if cfg.brat_volume_size is None else replace(cfg, data_brat_volume_size=tuple(cfg.brat_volume_size))
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
            atomic_save_tensors({k: v.contiguous() for k, v in vols.items()}, cache_file)
    tok = tokenizer or load_tokenizer(cfg.brat_bert)
    text = {k: tokenize_reports(tok, [r["report"] for r in v], max_tokens=cfg.brat_max_text_tokens,
                                max_sentences=cfg.brat_max_sentences, ids=ids[k]) for k, v in splits.items()}
    findings = {k: [finding_labels(r["findings"] or None, r["report"]) for r in v] for k, v in splits.items()}
    data = {"dirs": dirs, "splits": splits, "volumes": vols, "text": text, "findings": findings, "tokenizer": tok,
            "input_size": tuple(vols["train"].shape[2:])}
    if float(getattr(cfg, "brat_flip_prob", 0.0)) > 0:  # the flip augmentation's reports, so that cache_text sees
        add_flipped_text(data, cfg)                      # every report the training will read
    return data


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

    from safetensors.torch import load_file

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
            blob = {f"{k}/states": v.contiguous() for k, v in states.items()}
            blob.update({f"{k}/ids": v["input_ids"].contiguous() for k, v in parts.items()})
            blob["tag"] = torch.tensor(list(repr(tag).encode()), dtype=torch.uint8)
            atomic_save_tensors(blob, file)
    for k in data["text"]:
        data["text"][k] = {**data["text"][k], "text_states": states[k]}
    if "text_flipped" in data:
        data["text_flipped"] = {**data["text_flipped"], "text_states": states["flipped"]}
    data["text_states_of"] = tag
    return data


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
