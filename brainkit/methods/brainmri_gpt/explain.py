"""From a localisation map to words: structured findings, the red overlay, three prompt styles,
generation and automatic scoring. BrainMRI-GPT's language step.

Introduced in ``03_llm_explanations``.

- :func:`findings_from_map` turns a predicted map into structured findings: hemisphere, lobe (from
  a lobe map you pass in), area in mm², centroid, number of regions;
- :func:`overlay` paints the predicted tumour red on the slice (the image the seed shows the LLM);
- :func:`zero_shot_prompt`, :func:`instruction_prompt`, :func:`chain_of_thought_prompt` build the
  seed's three prompt styles: the raw slice and a question; the overlay with "red marks the
  tumour"; the overlay with a request to reason step by step;
- :func:`generate` sends a prompt to a causal LM (text only: the image is dropped and the findings
  carry the localisation) or to a vision-language model's processor (image + text);
- :func:`score_answer` checks an answer's laterality and lobe against the ground truth, and
  :func:`score_table` summarises them per prompt style.

Image convention: 2D arrays are ``(H, W)`` with the patient's left-right along the columns. Where
the patient's left appears is ``patient_left_at``: ``"right"`` is the radiological convention
(figshare / Kaggle slices), ``"left"`` the neurological one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError

__all__ = ["Findings", "findings_from_map", "overlay", "Prompt", "STYLES", "zero_shot_prompt",
           "instruction_prompt", "chain_of_thought_prompt", "build_prompt", "generate", "parse_location",
           "score_answer", "score_table", "LOBES"]

log = logging.getLogger(__name__)

#: The prompt styles of the seed, in the order the notebook shows them.
STYLES = ("zero_shot", "instruction", "chain_of_thought")
#: Lobe / region words the scorer recognises in an answer.
LOBES = ("frontal", "parietal", "temporal", "occipital", "insular", "limbic", "cerebellar", "brainstem")
_SIDES = ("left", "right")


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------
# findings
# --------------------------------------------------------------------------------------------
@dataclass
class Findings:
    """Structured findings of one slice (from a predicted map, or the ground truth).

    ``hemisphere`` is ``"left"``, ``"right"``, ``"bilateral"`` or ``None`` (no tumour); ``centroid``
    is ``(row, column)`` in pixels; ``extra`` holds anything else (slice position, tumour type ...).
    """

    tumour: bool
    hemisphere: str | None = None
    lobe: str | None = None
    area_mm2: float = 0.0
    centroid: tuple[float, float] | None = None
    n_regions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        """One sentence for a prompt, e.g. ``"A lesion of 412 mm² in the left frontal lobe ..."``."""
        if not self.tumour:
            return "No tumour region was detected on this slice."
        where = {"bilateral": "in both hemispheres"}.get(self.hemisphere or "", f"in the {self.hemisphere} hemisphere")
        if self.lobe:
            where = (f"in the {self.hemisphere} {self.lobe} lobe" if self.hemisphere in _SIDES
                     else f"{where}, {self.lobe} lobe")
        text = f"A lesion of {self.area_mm2:.0f} mm² {where}"
        if self.centroid is not None:
            text += f" (centroid at row {self.centroid[0]:.0f}, column {self.centroid[1]:.0f})"
        if self.n_regions > 1:
            text += f", in {self.n_regions} separate regions"
        return text + "."


def _side_of(cols: np.ndarray, midline: float, patient_left_at: str) -> np.ndarray:
    """For each column index, True where it lies in the patient's left hemisphere."""
    image_right = cols > midline
    return image_right if patient_left_at == "right" else ~image_right


def findings_from_map(prob_map: Any, *, threshold: float = 0.5, pixel_spacing_mm: float | Sequence[float] = 1.0,
                      lobe_map: Any = None, lobe_names: Mapping[int, str] | None = None,
                      brain_mask: Any = None, midline: float | None = None, patient_left_at: str = "right",
                      min_region_px: int = 4, bilateral_fraction: float = 0.3,
                      extra: Mapping[str, Any] | None = None) -> Findings:
    """Structured findings from a predicted map ``(H, W)`` (probabilities, or a binary mask).

    - pixels with ``map >= threshold`` are tumour; connected regions smaller than ``min_region_px``
      are dropped as noise (regions from ``skimage.measure.label``);
    - ``area_mm2`` = pixel count × the pixel area from ``pixel_spacing_mm`` (one value or (row, col));
    - ``hemisphere``: the side of the midline holding most tumour pixels, ``"bilateral"`` when the
      smaller side holds at least ``bilateral_fraction`` of them. The midline is ``midline`` (a column
      index), else the centre of ``brain_mask``'s columns, else the image centre;
    - ``lobe``: the most frequent non-zero label of ``lobe_map`` under the tumour, named by
      ``lobe_names`` (``None`` without a lobe map).
    """
    from skimage.measure import label

    m = _np(prob_map)
    if m.ndim != 2 or m.size == 0:
        raise DataError(None, "prob_map.shape", "(H, W)", m.shape)
    if not np.all(np.isfinite(m)):
        raise DataError(None, "prob_map", "finite values", "NaN or inf")
    if patient_left_at not in ("right", "left"):
        raise ConfigError(f"patient_left_at: expected 'right' (radiological) or 'left', found {patient_left_at!r}")
    sp = np.broadcast_to(np.asarray(pixel_spacing_mm, dtype=float), (2,))
    if np.any(sp <= 0):
        raise ConfigError(f"pixel_spacing_mm: expected positive values, found {pixel_spacing_mm!r}")
    for name, arr in (("lobe_map", lobe_map), ("brain_mask", brain_mask)):
        if arr is not None and _np(arr).shape != m.shape:
            raise DataError(None, f"{name}.shape", f"{m.shape} (the map's shape)", _np(arr).shape)
    pred = m >= threshold
    if min_region_px > 1 and pred.any():
        lab = label(pred)
        keep = np.bincount(lab.ravel()) >= min_region_px
        keep[0] = False
        pred = keep[lab]
    ex = dict(extra or {})
    if not pred.any():
        return Findings(tumour=False, extra=ex)
    rows, cols = np.nonzero(pred)
    if midline is None:
        if brain_mask is not None and _np(brain_mask).any():
            bc = np.nonzero(_np(brain_mask))[1]
            midline = (bc.min() + bc.max()) / 2.0
        else:
            midline = (m.shape[1] - 1) / 2.0
    left = _side_of(cols, float(midline), patient_left_at)
    frac_left = float(left.mean())
    minority = min(frac_left, 1 - frac_left)
    hemisphere = "bilateral" if minority >= bilateral_fraction else ("left" if frac_left > 0.5 else "right")
    lobe = None
    if lobe_map is not None:
        labels = _np(lobe_map).astype(np.int64)[pred]
        labels = labels[labels > 0]
        if labels.size:
            k = int(np.bincount(labels).argmax())
            lobe = (lobe_names or {}).get(k, str(k))
    return Findings(tumour=True, hemisphere=hemisphere, lobe=lobe, area_mm2=float(pred.sum() * sp[0] * sp[1]),
                    centroid=(float(rows.mean()), float(cols.mean())), n_regions=int(label(pred).max()), extra=ex)


def overlay(image: Any, prob_map: Any, *, threshold: float | None = 0.5, alpha: float = 0.5,
            color: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """The slice in grey with the predicted tumour painted ``color`` (red): ``(H, W, 3)`` ``uint8``.

    With a ``threshold`` the pixels ``map >= threshold`` are blended with weight ``alpha``; with
    ``threshold=None`` every pixel is blended with weight ``alpha · map`` (a soft heat map).
    """
    img = _np(image).astype(np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.mean(0)
    pm = _np(prob_map).astype(np.float64)
    if img.ndim != 2 or pm.shape != img.shape:
        raise DataError(None, "image/prob_map", "two (H, W) arrays of one shape", f"{img.shape} vs {pm.shape}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha: expected a number in [0, 1], found {alpha!r}")
    lo, hi = np.nanmin(img), np.nanmax(img)
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    w = alpha * (pm >= threshold) if threshold is not None else alpha * np.clip(pm, 0, 1)
    rgb = (1 - w[..., None]) * rgb + w[..., None] * np.asarray(color, dtype=np.float64)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
@dataclass
class Prompt:
    """One prompt: its ``style``, the ``text`` and the ``image`` shown with it (raw slice or overlay)."""

    style: str
    text: str
    image: np.ndarray | None = None

    def messages(self, with_image: bool = True, system: str | None = None) -> list[dict[str, Any]]:
        """Chat messages; with an image, the user turn is ``[{"type": "image"}, {"type": "text"}]``
        (the content format of transformers' multimodal chat templates)."""
        msgs: list[dict[str, Any]] = []
        if system:
            msgs.append({"role": "system", "content": system})
        if with_image and self.image is not None:
            from PIL import Image

            content = [{"type": "image", "image": Image.fromarray(_as_rgb_uint8(self.image))},
                       {"type": "text", "text": self.text}]
            msgs.append({"role": "user", "content": content})
        else:
            msgs.append({"role": "user", "content": self.text})
        return msgs


def _as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros(a.shape, np.uint8) if hi <= lo else np.rint((a - lo) / (hi - lo) * 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return a


_INTRO = "This is an axial brain MRI slice."
_ASK = "Is there a brain tumour? If there is, in which hemisphere (left or right) and which lobe is it?"
_ANSWER_FORMAT = "End with one line of the form 'Location: <left|right> <lobe> lobe', or 'Location: none'."


def zero_shot_prompt(image: Any = None) -> Prompt:
    """Zero-shot: the raw slice and the question, nothing else (the seed's weakest style)."""
    return Prompt("zero_shot", f"{_INTRO} {_ASK} {_ANSWER_FORMAT}", None if image is None else _np(image))


def instruction_prompt(overlay_image: Any = None, findings: Findings | None = None) -> Prompt:
    """Instruction: the overlay, the statement that red marks the tumour, and (for a model that
    cannot see the image) the localisation results as text."""
    text = (f"{_INTRO} A localisation model has marked the tumour in red. The red region is the tumour. "
            "Using the marked region, state the tumour's hemisphere and lobe.")
    if findings is not None:
        text += f" Localisation results: {findings.to_text()}"
    return Prompt("instruction", f"{text} {_ANSWER_FORMAT}", None if overlay_image is None else _np(overlay_image))


def chain_of_thought_prompt(overlay_image: Any = None, findings: Findings | None = None) -> Prompt:
    """Chain of thought: the overlay and a request to reason step by step before the answer."""
    text = (f"{_INTRO} The red region marks the tumour found by a localisation model.")
    if findings is not None:
        text += f" Localisation results: {findings.to_text()}"
    text += (" Think step by step: 1) say on which side of the midline the red region lies; 2) say which "
             "lobe it overlaps; 3) describe its size. Then give the tumour's location and details. "
             + _ANSWER_FORMAT)
    return Prompt("chain_of_thought", text, None if overlay_image is None else _np(overlay_image))


def build_prompt(style: str, *, image: Any = None, overlay_image: Any = None,
                 findings: Findings | None = None) -> Prompt:
    """The prompt of ``style`` (one of :data:`STYLES`): zero-shot gets the raw ``image`` and no findings."""
    if style == "zero_shot":
        return zero_shot_prompt(image)
    if style == "instruction":
        return instruction_prompt(overlay_image, findings)
    if style == "chain_of_thought":
        return chain_of_thought_prompt(overlay_image, findings)
    raise ConfigError(f"prompt style {style!r}: expected one of {', '.join(STYLES)}")


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
def generate(model: Any, tokenizer: Any, prompt: Prompt | str, *, max_new_tokens: int = 64,
             system: str | None = None, do_sample: bool = False, **generate_kwargs: Any) -> str:
    """The model's answer to ``prompt`` (the new text only), greedy by default so runs repeat.

    - a processor with an image processor (a vision-language model) gets the image and the text
      through its chat template;
    - a tokenizer with a chat template gets the text as a user turn; otherwise the plain text
      followed by ``"\\nAnswer:"`` (tiny models).
    """
    import torch

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens: expected a positive int, found {max_new_tokens!r}")
    if isinstance(prompt, str):
        prompt = Prompt("custom", prompt)
    device = next(model.parameters()).device
    vision = hasattr(tokenizer, "image_processor") and prompt.image is not None
    text_tok = getattr(tokenizer, "tokenizer", tokenizer)
    if vision:
        enc = tokenizer.apply_chat_template(prompt.messages(True, system), add_generation_prompt=True,
                                            tokenize=True, return_dict=True, return_tensors="pt")
    elif getattr(text_tok, "chat_template", None):
        if prompt.image is not None:
            log.debug("text-only model: the prompt's image is not shown to it")
        enc = text_tok.apply_chat_template(prompt.messages(False, system), add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")
    else:
        text = (f"{system}\n" if system else "") + prompt.text + "\nAnswer:"
        enc = text_tok(text, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items() if hasattr(v, "to")}
    pad = text_tok.pad_token_id if text_tok.pad_token_id is not None else text_tok.eos_token_id
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad,
                             **generate_kwargs)
    new = out[0, enc["input_ids"].shape[1]:]
    return text_tok.decode(new, skip_special_tokens=True).strip()


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z]+")
_NONE = re.compile(r"\b(no (brain )?tumou?r|none|normal|healthy|no lesion|not present)\b")


def parse_location(answer: str, lobes: Iterable[str] = LOBES) -> dict[str, Any]:
    """The sides, lobes and a 'none' statement mentioned in ``answer``. When the answer has a line
    ``Location: ...`` (the format every prompt asks for), only the last such line counts."""
    text = (answer or "").lower()
    marks = [m.end() for m in re.finditer(r"location\s*:", text)]
    if marks:
        text = text[marks[-1]:].split("\n")[0]
    words = set(_WORD.findall(text))
    sides = {s for s in _SIDES if s in words}
    if "bilateral" in words or ("both" in words and "hemispheres" in words):
        sides = {"left", "right"}
    lobe_set = {lb for lb in lobes if lb in words}
    return {"sides": sides, "lobes": lobe_set, "none": bool(_NONE.search(text)) and not sides,
            "used_location_line": bool(marks)}


def _truth(truth: Findings | Mapping[str, Any]) -> tuple[str | None, str | None]:
    if isinstance(truth, Findings):
        return (truth.hemisphere if truth.tumour else None), (truth.lobe if truth.tumour else None)
    if not isinstance(truth, Mapping):
        raise ConfigError(f"truth: expected Findings or a mapping with 'hemisphere' and 'lobe', found {truth!r}")
    hemi = truth.get("hemisphere", truth.get("laterality", truth.get("side")))
    lobe = truth.get("lobe")
    return (str(hemi).lower() if hemi else None), (str(lobe).lower() if lobe else None)


def score_answer(answer: str, truth: Findings | Mapping[str, Any]) -> dict[str, Any]:
    """Is the answer's laterality right, is its lobe right?

    Laterality is correct when the sides the answer names are exactly the true side (both for a
    bilateral tumour); for a slice without a tumour, when it names no side and says there is none.
    The lobe is correct when the true lobe is named and no other lobe is (no tumour: no lobe named).
    """
    hemi, lobe = _truth(truth)
    lobes = set(LOBES) | ({lobe} if lobe else set())
    said = parse_location(answer, lobes)
    if hemi is None:
        lat_ok = not said["sides"] and said["none"]
        lobe_ok = not said["lobes"] and said["none"]
    else:
        want = {"left", "right"} if hemi == "bilateral" else {hemi}
        lat_ok = said["sides"] == want
        lobe_ok = (lobe is None) or said["lobes"] == {lobe}
    return {"laterality_said": "+".join(sorted(said["sides"])) or None,
            "lobe_said": "+".join(sorted(said["lobes"])) or None,
            "laterality_correct": bool(lat_ok), "lobe_correct": bool(lobe_ok)}


def score_table(rows: Iterable[Mapping[str, Any]]):
    """Per prompt style: the number of answers and the fraction with correct laterality and lobe.
    ``rows`` carry ``style``, ``laterality_correct`` and ``lobe_correct`` (a pandas DataFrame is returned)."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    need = {"style", "laterality_correct", "lobe_correct"}
    if df.empty or not need <= set(df.columns):
        raise DataError(None, "rows", f"records with {', '.join(sorted(need))}",
                        sorted(df.columns) if not df.empty else "no rows")
    table = df.groupby("style", sort=False).agg(n=("style", "size"),
                                                laterality_accuracy=("laterality_correct", "mean"),
                                                lobe_accuracy=("lobe_correct", "mean"))
    order = [s for s in STYLES if s in table.index] + [s for s in table.index if s not in STYLES]
    return table.loc[order]
