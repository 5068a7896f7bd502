"""Report-generation metrics through the reference implementations.

Introduced in ``06_braingemma3d_evaluation`` (BrainGemma3D's table: BLEU-1/4, ROUGE-L, CIDEr, METEOR).

- BLEU-1, BLEU-4 and CIDEr(-D): ``pycocoevalcap`` (the COCO caption evaluation code), corpus-level
  BLEU and CIDEr-D with document frequencies from the references of the evaluated set;
- ROUGE-L: Google's ``rouge-score`` (F-measure of the longest common subsequence, stemming on),
  averaged over the reports;
- METEOR: ``pycocoevalcap``'s wrapper of the METEOR 1.5 jar, which starts Java (about 9 s); it is
  computed only with ``meteor=True`` and only when ``java`` is on the PATH.

Texts are lower-cased and split into words and punctuation by a small regular expression here
instead of the PTB tokenizer (which would start Java too). Each hypothesis has one reference.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence

from ..errors import DataError

__all__ = ["tokenize", "text_metrics", "TEXT_METRICS"]

log = logging.getLogger(__name__)

TEXT_METRICS = ("bleu1", "bleu4", "rougeL", "cider", "meteor")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text: str) -> str:
    """Lower-cased words and punctuation, separated by single spaces (what the COCO scorers expect)."""
    return " ".join(_TOKEN.findall(text.lower()))


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if isinstance(hyps, str) or isinstance(refs, str):
        raise DataError(None, "hypotheses/references", "sequences of report strings", "a single string")
    if len(hyps) != len(refs):
        raise DataError(None, "hypotheses", f"one per reference ({len(refs)})", len(hyps))
    if not refs:
        raise DataError(None, "references", "at least one report", "none")
    for i, r in enumerate(refs):
        if not isinstance(r, str) or not r.strip():
            raise DataError(None, f"references[{i}]", "a non-empty report", repr(r))
    for i, h in enumerate(hyps):
        if not isinstance(h, str):
            raise DataError(None, f"hypotheses[{i}]", "a string", type(h).__name__)


def text_metrics(hypotheses: Sequence[str], references: Sequence[str], *, meteor: bool = False) -> dict[str, float]:
    """``{"bleu1", "bleu4", "rougeL", "cider"[, "meteor"]}`` of generated reports against references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    gts = {i: [tokenize(r)] for i, r in enumerate(references)}
    # an empty hypothesis scores zero; the COCO scorers need one token
    res = {i: [tokenize(h) or "<empty>"] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rl = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]
    out = {"bleu1": float(bleu[0]), "bleu4": float(bleu[3]), "rougeL": float(sum(rl) / len(rl)),
           "cider": float(cider)}
    if meteor:
        if shutil.which("java") is None:
            log.warning("METEOR skipped: it needs Java (java not on the PATH)")
        else:
            from pycocoevalcap.meteor.meteor import Meteor

            scorer_m = Meteor()
            try:
                out["meteor"] = float(scorer_m.compute_score(gts, res)[0])
            finally:
                del scorer_m
    return out
