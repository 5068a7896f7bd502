"""Radiology reports: writing them from structured findings, and reading findings back out of text.

Introduced in ``01_data_prep``; the report metrics of later notebooks reuse it.

- :func:`write_report` turns BrainPhantom findings (see :func:`brainkit.data.phantoms.generate_subject`)
  into a radiology-style report of several sentences. Wording, synonyms, sentence order, hedging and
  the way measurements are written vary with the random generator, so a model cannot learn a single
  template; healthy controls get one of a family of normal-study reports.
- :func:`split_sentences` splits a report into sentences (abbreviations and decimals kept whole).
- :func:`clean_report` removes references to prior scans and words of temporal change, as brat's
  pipeline did before training ("compared with the prior study", "new", "increased", "now", ...).
- :func:`scrub_phi` replaces dates, names after titles, record numbers, phone numbers and e-mail
  addresses with placeholders.
- :func:`extract_findings` is a small rule-based extractor (keyword dictionaries plus NegEx-style
  negation scopes): laterality, anatomy (the lobe vocabulary of :data:`brainkit.data.anatomy.LOBES`)
  and pathology entities. The clinical F1 of BrainGemma3D's notebook and the finding-based
  retrieval metrics of brat's notebook compare these sets. :func:`entities_from_findings` gives the
  same sets straight from structured findings (the ground truth of a phantom).

Conventions of the entity sets:

- ``laterality`` is a subset of ``{"left", "right", "bilateral"}``; "bilateral" comes with both sides
  and both sides imply "bilateral", so ``{"left", "right", "bilateral"}`` is the only two-sided value.
  A side named only as the direction of a midline shift ("shift to the right") is not a laterality.
- ``anatomy`` is a subset of :data:`ANATOMY` (``"deep"`` = insula, basal ganglia, thalamus).
- ``pathology`` is a subset of :data:`PATHOLOGY`: ``"tumour"`` for any mass or lesion, the type
  (``"glioma"``, ``"meningioma"``, ``"metastasis"``, ``"pituitary"``) when named, ``"enhancement"``, ``"oedema"``,
  ``"necrosis"``, ``"mass effect"``, ``"midline shift"``; ``"normal"`` alone for a normal study.
  Hedged mentions ("likely", "suspicious for", "cannot be excluded") count as present; negated ones
  ("no", "without", "is not seen") do not.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import DataError
from .anatomy import LOBES

__all__ = [
    "ANATOMY",
    "PATHOLOGY",
    "LATERALITY",
    "write_report",
    "textbrats_report",
    "normal_report",
    "split_sentences",
    "clean_report",
    "scrub_phi",
    "extract_findings",
    "entities_from_findings",
    "read_report_text",
    "swap_sides",
]

#: Anatomy vocabulary of :func:`extract_findings` (the lobe names of the phantom's lobe map).
ANATOMY = tuple(LOBES)
#: Pathology vocabulary of :func:`extract_findings`.
PATHOLOGY = ("tumour", "glioma", "meningioma", "metastasis", "pituitary", "enhancement", "oedema", "necrosis",
             "mass effect", "midline shift", "normal")
#: Laterality vocabulary of :func:`extract_findings`.
LATERALITY = ("left", "right", "bilateral")

#: Midline shifts at least this large (mm) are written as a shift (the same threshold as the phantom).
_SHIFT_MM = 2.0


# --------------------------------------------------------------------------------------------
# writing


def _c(rng: np.random.Generator, options):
    """One of ``options``, drawn with ``rng``."""
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _cm(v: float) -> str:
    return f"{float(v):.1f}"


def _measure(rng, dims: list[float], largest: float) -> str:
    """A measurement phrase in one of several styles (cm, mm, 2 or 3 axes, greatest dimension)."""
    dims = [float(d) for d in dims] or [float(largest)]
    while len(dims) < 3:
        dims.append(dims[-1])
    a, b, c = dims[:3]
    style = int(rng.integers(6))
    if style == 0:
        return f"measuring {_cm(a)} x {_cm(b)} x {_cm(c)} cm"
    if style == 1:
        return f"measuring {a * 10:.0f} x {b * 10:.0f} x {c * 10:.0f} mm"
    if style == 2:
        return f"measuring up to {_cm(a)} cm"
    if style == 3:
        return f"approximately {_cm(a)} cm in greatest dimension"
    if style == 4:
        return f"of about {_cm(a)} x {_cm(b)} cm in the axial plane"
    return f"measuring approximately {a * 10:.0f} mm in maximal diameter"


def _lobe_phrase(rng, lobe: str, side: str, location: str, *, article: bool = True) -> str:
    """Where one lesion sits, e.g. "the left frontal lobe", "the right side of the pons"."""
    the = "the " if article else ""
    if lobe in ("frontal", "parietal", "temporal", "occipital"):
        return _c(rng, [f"{the}{side} {lobe} lobe", f"{the}{lobe} lobe of the {side} hemisphere",
                        f"{the}{side} {lobe} lobe", f"{the}{side} {lobe} region"])
    if lobe == "deep":
        if location == "insula":
            return _c(rng, [f"{the}{side} insula", f"{the}{side} insular cortex", f"{the}{side} insular region"])
        if location == "thalamus":
            return _c(rng, [f"{the}{side} thalamus", f"{the}{side} thalamic region"])
        return _c(rng, [f"{the}{side} basal ganglia", f"{the}{side} lentiform nucleus region",
                        f"{the}{side} basal ganglia region"])
    if lobe == "cerebellum":
        return _c(rng, [f"{the}{side} cerebellar hemisphere", f"{the}{side} cerebellum",
                        f"{the}{side} half of the cerebellum"])
    if lobe == "brainstem":
        part = location if location in ("midbrain", "pons", "medulla") else "brainstem"
        return _c(rng, [f"{the}{side} side of the {part}", f"{the}{side} aspect of the {part}",
                        f"{the}{side} {part}"])
    return f"{the}{side} {lobe}"


def _extension_phrase(rng, lobes: list[str]) -> str:
    """", extending into the parietal lobe" for the secondary lobes of one lesion."""
    if not lobes:
        return ""
    names = []
    for lb in lobes:
        if lb in ("frontal", "parietal", "temporal", "occipital"):
            names.append(f"the {lb} lobe")
        elif lb == "deep":
            names.append(_c(rng, ["the basal ganglia", "the deep grey nuclei", "the insular region"]))
        elif lb == "cerebellum":
            names.append("the cerebellum")
        else:
            names.append("the brainstem")
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return _c(rng, [f", extending into {joined}", f" with extension into {joined}", f", also involving {joined}",
                    f" and extending into {joined}"])


def _meningioma_where(rng, les: dict[str, Any]) -> str:
    side, lobe, loc = les["hemisphere"], les["lobe"], les.get("location", "convexity")
    if loc == "parafalcine":
        return _c(rng, [f"along the falx on the {side}, adjacent to the medial {lobe} lobe",
                        f"in a {side} parafalcine position, abutting the {lobe} lobe"])
    if loc == "tentorial":
        return _c(rng, [f"along the {side} tentorium, abutting the cerebellum",
                        f"based on the {side} tentorium cerebelli, indenting the cerebellar hemisphere"])
    target = f"{lobe} lobe" if lobe in ("frontal", "parietal", "temporal", "occipital") else (
        "cerebellar hemisphere" if lobe == "cerebellum" else lobe)
    return _c(rng, [f"over the {side} {target} convexity", f"along the convexity of the {side} {target}",
                    f"on the dura over the {side} {target}"])


_ENH = {
    "ring": ["demonstrates irregular peripheral rim enhancement", "shows ring enhancement",
             "enhances peripherally in a ring-like fashion", "has a thick enhancing rim"],
    "heterogeneous": ["enhances heterogeneously", "shows heterogeneous, irregular enhancement",
                      "demonstrates patchy heterogeneous contrast enhancement", "enhances avidly but unevenly"],
    "homogeneous": ["enhances avidly and homogeneously", "shows intense homogeneous enhancement",
                    "demonstrates uniform contrast enhancement"],
    "nodular": ["shows solid nodular enhancement", "enhances in a nodular pattern",
                "demonstrates nodular contrast enhancement"],
}
_OEDEMA = {
    "mild": ["mild surrounding vasogenic oedema", "a thin rim of perilesional oedema",
             "minor surrounding T2/FLAIR hyperintensity in keeping with oedema", "mild perilesional edema"],
    "moderate": ["moderate surrounding vasogenic oedema", "moderate perilesional oedema",
                 "a moderate amount of surrounding vasogenic edema",
                 "surrounding FLAIR hyperintensity compatible with moderate oedema"],
    "marked": ["extensive surrounding vasogenic oedema", "marked perilesional oedema tracking through the white matter",
               "extensive vasogenic edema", "a large area of surrounding T2/FLAIR hyperintensity in keeping with oedema"],
}
_MASS = {
    "mild": ["mild local mass effect with effacement of the adjacent sulci", "slight mass effect on the adjacent sulci",
             "mild sulcal effacement"],
    "moderate": ["moderate mass effect with compression of the ipsilateral lateral ventricle",
                 "moderate mass effect, effacing the adjacent sulci and the ipsilateral ventricle",
                 "moderate local mass effect"],
    "marked": ["marked mass effect with effacement of the ipsilateral lateral ventricle",
               "severe mass effect with compression of the ventricular system", "considerable mass effect"],
}
_TYPE_HEDGE = {
    "glioma": ["most consistent with a high-grade glioma", "in keeping with a primary glial neoplasm",
               "suspicious for a high-grade glioma", "likely representing a glioma",
               "compatible with an infiltrative glial tumour", "favoured to represent a glioma"],
    "glioma_necrotic": ["most consistent with glioblastoma", "in keeping with a high-grade glioma",
                        "highly suspicious for glioblastoma", "likely a necrotic high-grade glial tumour"],
    "meningioma": ["consistent with a meningioma", "most likely a meningioma", "typical of a meningioma",
                   "in keeping with a dural-based meningioma"],
    "metastasis": ["in keeping with metastases", "suspicious for metastatic disease",
                   "most likely metastatic deposits", "compatible with cerebral metastases"],
    "metastasis_one": ["suspicious for a solitary metastasis", "likely a metastatic deposit",
                       "in keeping with a solitary metastasis"],
    "glioma_lgg": ["most consistent with a low-grade glioma", "in keeping with a diffuse low-grade glial tumour",
                   "likely representing a low-grade glioma", "compatible with a diffuse astrocytoma"],
    "pituitary": ["consistent with a pituitary macroadenoma", "most likely a pituitary adenoma",
                  "typical of a pituitary macroadenoma", "in keeping with a pituitary adenoma"],
}
_NOUN = {
    "glioma": ["an intra-axial mass", "an infiltrative intra-axial mass", "a heterogeneous mass",
               "an expansile intra-axial lesion", "a space-occupying lesion"],
    "meningioma": ["an extra-axial, dural-based mass", "a well-circumscribed extra-axial lesion",
                   "a broad-based extra-axial mass", "a dural-based lesion"],
}


def _shift_phrase(rng, mm: float, direction: str | None) -> str:
    d = direction or "right"
    return _c(rng, [f"{mm:.0f} mm of midline shift to the {d}", f"midline shift of {mm:.0f} mm towards the {d}",
                    f"{d}ward midline shift of approximately {mm:.0f} mm", f"subfalcine shift of {mm:.0f} mm to the {d}"])


def _wmh_sentence(rng, grade: str) -> str | None:
    if grade == "none":
        return _c(rng, [None, None, "No significant white matter signal abnormality."])
    if grade == "mild":
        return _c(rng, ["A few scattered foci of FLAIR hyperintensity in the periventricular and deep white matter, "
                        "likely small vessel ischaemic change.",
                        "Minor nonspecific white matter hyperintensities, likely microangiopathic.", None])
    if grade == "moderate":
        return _c(rng, ["Moderate periventricular and deep white matter hyperintensities, most in keeping with "
                        "chronic small vessel disease.",
                        "Confluent periventricular FLAIR hyperintensities, likely microangiopathic in origin."])
    return _c(rng, ["Extensive confluent white matter hyperintensities, in keeping with marked chronic small vessel "
                    "ischaemic change.",
                    "Marked periventricular and deep white matter FLAIR hyperintensity consistent with small vessel "
                    "disease."])


_NORMAL_GROUPS = [
    ["No intracranial mass or space-occupying lesion.", "There is no evidence of an intracranial mass.",
     "No focal lesion is identified.", "No mass lesion is seen."],
    ["No abnormal enhancement.", "No pathological contrast enhancement is seen.",
     "There is no abnormal parenchymal or meningeal enhancement."],
    ["The ventricles and sulci are normal in size and configuration.",
     "Ventricular size and sulcal pattern are appropriate for age.", "The ventricular system is not dilated."],
    ["Grey-white matter differentiation is preserved.", "The grey-white matter interface is preserved.",
     "Normal grey and white matter signal."],
    ["The posterior fossa structures are unremarkable.", "The cerebellum and brainstem are normal in appearance.",
     "Normal appearance of the posterior fossa."],
    ["No midline shift.", "The midline structures are central.", "No mass effect or midline shift."],
    ["No extra-axial collection.", "No acute intracranial haemorrhage.", "No extra-axial fluid collection is seen."],
    ["The major intracranial flow voids are preserved.", "Normal intracranial vascular flow voids."],
]
_NORMAL_IMPRESSION = ["Normal MRI of the brain.", "No intracranial mass.", "Unremarkable study of the brain.",
                      "No MRI evidence of a brain tumour.", "No focal intracranial abnormality.",
                      "Normal study."]


def normal_report(rng: np.random.Generator, wmh: str = "none") -> str:
    """One of the family of normal-study reports: 3-6 statements in random order, a WMH remark, an impression."""
    k = int(rng.integers(3, 7))
    groups = rng.permutation(len(_NORMAL_GROUPS))[:k]
    sents = [_c(rng, _NORMAL_GROUPS[g]) for g in groups]
    w = _wmh_sentence(rng, wmh)
    if w:
        sents.insert(int(rng.integers(len(sents) + 1)), w)
    imp = _c(rng, _NORMAL_IMPRESSION)
    if rng.random() < 0.5:
        sents.append(_c(rng, ["Impression: ", "IMPRESSION: ", "Conclusion: "]) + imp)
    else:
        sents.insert(0, imp)
    return " ".join(sents)


def write_report(findings: dict[str, Any], rng: np.random.Generator, style: str = "clinical") -> str:
    """A radiology-style report written from phantom ``findings`` (schema of ``generate_subject``).

    Deterministic given ``rng``'s state. Every finding that :func:`entities_from_findings` lists is
    stated (possibly hedged) and every absent one is either negated or not mentioned, so
    ``extract_findings(write_report(f, rng)) == entities_from_findings(f)`` (tested on phantom sets).
    ``style``: ``"clinical"`` (varied free text: sentence order, synonyms, an impression) or
    ``"textbrats"`` (the four sentences of a TextBraTS report, in its fixed order: the lesion, the
    oedema, the necrosis, the ventricular compression; :func:`textbrats_report`). Healthy controls
    get a normal-study report in either style.
    """
    if style not in ("clinical", "textbrats"):
        raise DataError(None, "style", "clinical or textbrats", style)
    if findings.get("normal", True) or not findings.get("lesions"):
        return normal_report(rng, findings.get("wmh", "none"))
    if style == "textbrats":
        return textbrats_report(findings, rng)
    if findings["lesion_type"] == "pituitary":
        return _pituitary_report(findings, rng)
    kind = findings["lesion_type"]
    lesions = findings["lesions"]
    main = lesions[0]
    n = len(lesions)
    where_main = (_meningioma_where(rng, main) if kind == "meningioma" else
                  "in " + _lobe_phrase(rng, main["lobe"], main["hemisphere"], main.get("location", "")))
    ext = _extension_phrase(rng, [lb for lb in main.get("lobes", [])[1:]])
    size = _measure(rng, main.get("dimensions_cm", []), main.get("diameter_cm", findings["largest_diameter_cm"]))
    pattern = findings.get("enhancement_pattern", "none")

    sentences: list[str] = []
    # 1. the lesion(s): where, how large
    if kind == "metastasis" and n > 1:
        places = []
        for les in lesions:
            ph = _lobe_phrase(rng, les["lobe"], les["hemisphere"], les.get("location", ""))
            extra = _extension_phrase(rng, les.get("lobes", [])[1:]).replace(", extending", " extending")
            places.append(f"{ph}{extra.lstrip(',')}" if extra else ph)
        listing = ", ".join(places[:-1]) + " and " + places[-1]
        num = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}.get(n, str(n))
        adj = "ring-enhancing" if pattern == "ring" else ("enhancing" if findings.get("enhancement") else "")
        noun = f"{num} {adj} lesions".replace("  ", " ")
        sentences.append(_c(rng, [f"There are {noun} in {listing}.", f"{_cap(noun)} are identified in {listing}.",
                                  f"Multiple lesions ({num}) are seen, located in {listing}."]))
        sentences.append(_c(rng, [f"The largest is {size.replace('measuring ', '')}.",
                                  f"The largest lesion is {size}.".replace("is measuring", "measures"),
                                  f"The dominant lesion is {size}.".replace("is measuring", "measures")]))
    else:
        noun = (_c(rng, _NOUN[kind]) if kind in _NOUN else
                _c(rng, ["a solitary lesion", "a single intra-axial lesion", "a rounded mass"]))
        sentences.append(_c(rng, [
            f"There is {noun} {where_main}{ext}, {size}.",
            f"{_cap(noun)} is seen {where_main}{ext}, {size}.",
            f"{_cap(where_main)}{ext} there is {noun} {size}.",
            f"{_cap(noun)} {size} is located {where_main}{ext}.",
        ]))

    # 2. characteristics, order shuffled
    chars: list[str] = []
    subj = "The lesions" if n > 1 else _c(rng, ["The lesion", "The mass", "It"])
    plural = n > 1
    if findings.get("enhancement") and pattern in _ENH:
        verb = _c(rng, _ENH[pattern])
        if plural:
            verb = (verb.replace("demonstrates", "demonstrate").replace("shows", "show").replace("enhances", "enhance")
                    .replace("has a", "have a"))
        chars.append(f"{subj} {verb}.")
    elif not findings.get("enhancement"):
        chars.append(_c(rng, ["No appreciable contrast enhancement is seen.", f"{subj} does not enhance.".replace(
            "lesions does", "lesions do"), "There is no enhancing component."]))
    if findings.get("necrosis"):
        chars.append(_c(rng, ["There is central necrosis.", "A central necrotic component is present.",
                              f"{subj} contain{'' if plural else 's'} areas of necrosis.",
                              "Internal necrotic change is noted."]))
    elif kind == "glioma" or rng.random() < 0.4:
        chars.append(_c(rng, ["No central necrosis.", "There is no necrotic component.",
                              "No internal necrosis is identified."]))
    extent = findings.get("oedema_extent", "none")
    if findings.get("oedema") and extent in _OEDEMA:
        ph = _c(rng, _OEDEMA[extent])
        chars.append(_c(rng, [f"There is {ph}.", f"{_cap(ph)} is present.", f"{_cap(ph)} surrounds the lesion{'s' if plural else ''}."]))
    elif not findings.get("oedema"):
        chars.append(_c(rng, ["No significant surrounding oedema.", "There is no perilesional oedema.",
                              "Surrounding vasogenic oedema is not seen."]))
    shift = float(findings.get("midline_shift_mm", 0.0))
    grade = findings.get("mass_effect_grade", "none")
    if findings.get("mass_effect"):
        me = _c(rng, _MASS.get(grade, _MASS["mild"]))
        if shift >= _SHIFT_MM:
            sp = _shift_phrase(rng, shift, findings.get("midline_shift_direction"))
            chars.append(_c(rng, [f"There is {me} and {sp}.", f"{_cap(me)}, with {sp}.", f"{_cap(me)}. There is {sp}."]))
        else:
            chars.append(_c(rng, [f"There is {me}, without midline shift.", f"{_cap(me)}; no midline shift.",
                                  f"There is {me}."]))
    else:
        chars.append(_c(rng, ["No significant mass effect or midline shift.", "There is no mass effect.",
                              "No mass effect is seen and the midline is central."]))
    order = rng.permutation(len(chars))
    sentences.extend(chars[i] for i in order)

    # 3. background: distractors, normal statements
    w = _wmh_sentence(rng, findings.get("wmh", "none"))
    if w:
        sentences.append(w)
    if rng.random() < 0.5:
        sentences.append(_c(rng, ["No acute intracranial haemorrhage.", "No extra-axial collection.",
                                  "The major intracranial flow voids are preserved.",
                                  "The remaining brain parenchyma is unremarkable."]))

    # 4. type, hedged: in the impression, or woven into the first sentence
    key = kind
    if kind == "glioma" and findings.get("necrosis"):
        key = "glioma_necrotic"
    elif kind == "glioma" and findings.get("grade") == "lgg":
        key = "glioma_lgg"
    if kind == "metastasis" and n == 1:
        key = "metastasis_one"
    hedge = _c(rng, _TYPE_HEDGE[key])
    side_txt = findings["hemisphere"]
    if kind == "metastasis" and n > 1:
        summary = f"{'Bilateral' if side_txt == 'bilateral' else _cap(side_txt)} enhancing lesions"
        if not findings.get("enhancement"):
            summary = f"{'Bilateral' if side_txt == 'bilateral' else _cap(side_txt)} lesions"
    else:
        summary = _cap(_lobe_phrase(rng, main["lobe"], main["hemisphere"], main.get("location", ""), article=False))
        summary += _c(rng, [" mass", " lesion"])
    if rng.random() < 0.75:
        sentences.append(_c(rng, ["Impression: ", "IMPRESSION: ", "Conclusion: ", ""]) + f"{summary}, {hedge}.")
    else:
        sentences[0] = sentences[0][:-1] + f", {hedge}."
    return " ".join(sentences)


def _pituitary_report(findings: dict[str, Any], rng: np.random.Generator) -> str:
    """A pituitary adenoma: sellar (and suprasellar) mass, its enhancement, the optic chiasm."""
    main = findings["lesions"][0]
    size = _measure(rng, main.get("dimensions_cm", []), main.get("diameter_cm", findings["largest_diameter_cm"]))
    supra = "suprasellar" in main.get("location", "")
    where = _c(rng, ["a sellar mass with suprasellar extension", "a sellar and suprasellar mass",
                     "an expansile sellar mass extending into the suprasellar cistern"]) if supra else \
        _c(rng, ["a sellar mass", "a mass within the pituitary fossa", "an intrasellar mass"])
    hedge = _c(rng, _TYPE_HEDGE["pituitary"])
    sents = [_c(rng, [f"There is {where}, {size}, {hedge}.", f"{_cap(where)} is seen, {size}, {hedge}."])]
    sents.append(_c(rng, ["It enhances avidly and homogeneously.", "The mass shows intense homogeneous enhancement.",
                          "It demonstrates uniform contrast enhancement."]))
    if findings.get("mass_effect"):
        sents.append(_c(rng, ["It elevates and compresses the optic chiasm.",
                              "There is mass effect on the optic chiasm, which is displaced upwards.",
                              "The optic chiasm is compressed from below."]))
    else:
        sents.append(_c(rng, ["No mass effect on the optic chiasm.", "The optic chiasm is not compressed.",
                              "No compression of the optic apparatus."]))
    sents.append(_c(rng, ["No surrounding oedema.", "There is no parenchymal oedema."]))
    if rng.random() < 0.5:
        sents.append(_c(rng, ["The brain parenchyma is otherwise unremarkable.", "No acute intracranial haemorrhage."]))
    return " ".join(sents)


def _side_lobes(rng, findings: dict[str, Any]) -> str:
    """Where a TextBraTS-style lesion sits: side, lobes, and the other hemisphere when it crosses."""
    main = findings["lesions"][0]
    side, lobes = main["hemisphere"], findings.get("lobes") or [main["lobe"]]
    cortical = [lb for lb in lobes if lb in ("frontal", "parietal", "temporal", "occipital")]
    if main["lobe"] in ("frontal", "parietal", "temporal", "occipital") and len(cortical) > 1:
        names = " and ".join([", ".join(cortical[:-1]), cortical[-1]]) if len(cortical) > 2 else " and ".join(cortical)
        place = f"the {side} {names} lobes"
        rest = [lb for lb in lobes if lb not in cortical]
    else:
        place = _lobe_phrase(rng, main["lobe"], side, main.get("location", ""))
        rest = lobes[1:]
    ext = _extension_phrase(rng, rest)
    if findings.get("hemisphere") == "bilateral":
        other = "left" if side == "right" else "right"
        ext += _c(rng, [f", crossing the midline into the {other} hemisphere",
                        f" and extending across the corpus callosum into the {other} hemisphere",
                        f", with involvement of the {other} hemisphere across the midline"])
    return place + ext


def textbrats_report(findings: dict[str, Any], rng: np.random.Generator) -> str:
    """A TextBraTS-style report: four sentences in TextBraTS's fixed order.

    TextBraTS (one report per BraTS 2020 case, about 97 words, four sentences in 357 of 369) always
    describes the lesion (where, its signal and enhancement), then the oedema, then the necrosis,
    then the ventricles (compressed or "not observed"). The wording here is the phantom's own; only
    the order and the content of each sentence follow TextBraTS.
    """
    kind = findings["lesion_type"]
    main = findings["lesions"][0]
    where = _side_lobes(rng, findings)
    size = _measure(rng, main.get("dimensions_cm", []), main.get("diameter_cm", findings["largest_diameter_cm"]))
    if kind == "glioma":
        key = "glioma_necrotic" if findings.get("necrosis") else \
            "glioma_lgg" if findings.get("grade") == "lgg" else "glioma"
    else:
        key = kind if kind in _TYPE_HEDGE else "glioma"
    hedge = _c(rng, _TYPE_HEDGE[key])
    pattern = findings.get("enhancement_pattern", "none")
    if findings.get("enhancement"):
        enh = _c(rng, {"ring": ["it shows irregular rim enhancement on T1CE", "its wall enhances in a ring on T1CE"],
                       "homogeneous": ["it enhances homogeneously on T1CE"]}.get(
            pattern, ["it shows heterogeneous enhancement on T1CE", "it enhances patchily on T1CE"]))
    else:
        enh = _c(rng, ["it shows no contrast enhancement on T1CE", "no enhancement is seen on T1CE"])
    t2 = _c(rng, ["high signal on T2 and FLAIR", "mixed high signal on T2 and FLAIR",
                  "heterogeneous T2 and FLAIR hyperintensity"])
    s1 = _c(rng, [f"A mass is located in {where}, {size}, with {t2}, {hedge}; {enh}.",
                  f"The lesion lies in {where}, {size}, with {t2}, {hedge}; {enh}."])
    extent = findings.get("oedema_extent", "none")
    if findings.get("oedema") and extent in _OEDEMA:
        amount = {"mild": "A thin rim of", "moderate": "Moderate", "marked": "Extensive"}[extent]
        s2 = _c(rng, [f"{amount} peritumoral oedema surrounds the lesion in the {main['hemisphere']} hemisphere, "
                      "bright on FLAIR and tracking along the white matter.",
                      f"{amount} vasogenic oedema is seen around the mass, hyperintense on FLAIR."])
    else:
        s2 = _c(rng, ["No significant peritumoral oedema is seen.", "Surrounding oedema is not observed."])
    if findings.get("necrosis"):
        rim = " within the enhancing rim" if findings.get("enhancement") else ""
        s3 = _c(rng, [f"A central necrotic area is present{rim}, dark on T1CE and bright on T2.",
                      f"Necrosis is seen in the centre of the lesion{rim}, with low T1CE signal."])
    else:
        s3 = _c(rng, ["No necrotic component is identified.", "Necrosis is not observed."])
    shift = float(findings.get("midline_shift_mm", 0.0))
    if findings.get("mass_effect"):
        grade = findings.get("mass_effect_grade", "mild")
        how = {"mild": "Mild", "moderate": "Moderate", "marked": "Marked"}.get(grade, "Mild")
        s4 = f"{how} compression of the adjacent lateral ventricle is observed"
        if shift >= _SHIFT_MM:
            s4 += ", with " + _shift_phrase(rng, shift, findings.get("midline_shift_direction"))
        s4 += "."
    else:
        s4 = _c(rng, ["Ventricular compression is not observed.", "The ventricles are not compressed."])
    return " ".join([s1, s2, s3, s4])


# --------------------------------------------------------------------------------------------
# sentences


_ABBREV = re.compile(r"(?:\b(?:Dr|Mr|Mrs|Ms|Prof|approx|vs|e\.g|i\.e|cf|St|Fig|No|Nr|resp|ca)\.|\b[A-Z]\.)$",
                     re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences.

    Splits after ``.``, ``!`` or ``?`` followed by white space, and at line breaks; keeps decimals
    ("3.2 cm"), common abbreviations ("Dr.", "e.g.", "approx.") and initials whole; drops empty
    pieces and bare section headers ("FINDINGS:").
    """
    if not isinstance(text, str):
        raise DataError(None, "report", "a string", type(text).__name__)
    out: list[str] = []
    for line in re.split(r"[\r\n]+", text):
        pieces = re.split(r"(?<=[.!?])\s+", line.strip())
        buf = ""
        for p in pieces:
            if not p:
                continue
            buf = f"{buf} {p}" if buf else p
            if _ABBREV.search(buf):
                continue
            out.append(buf)
            buf = ""
        if buf:
            out.append(buf)
    return [s.strip() for s in out if s.strip() and not re.fullmatch(r"[A-Za-z ]{1,30}:", s.strip())]


# --------------------------------------------------------------------------------------------
# cleaning (prior scans, temporal words) and PHI


_PRIOR_NOUN = r"(?:stud(?:y|ies)|exam(?:ination)?s?|scans?|mri|mrs|ct|imaging|images?|comparison)"
_DATE = (r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}|"
         r"\d{1,2}(?:st|nd|rd|th)?\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?,?\s+\d{4}|"
         r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4})")
_COMPARISON_CLAUSES = [
    # "Compared with the prior MRI of 2019-01-01, ..." / "..., compared to the previous study"
    rf",?\s*\b(?:as )?(?:compared (?:to|with)|in comparison (?:to|with)|relative to|when compared (?:to|with))\s+"
    rf"(?:the\s+)?(?:most recent\s+|prior\s+|previous\s+|preceding\s+|earlier\s+|last\s+)*(?:{_PRIOR_NOUN})"
    rf"(?:\s+(?:of|from|dated|on)\s+(?:{_DATE}|[^,.;]+?))?(?=[,.;]|$)",
    rf",?\s*\b(?:on|from|since|than (?:on )?|as on|as seen on)\s+(?:the\s+)?(?:prior|previous|preceding|earlier|last)\s+"
    rf"(?:{_PRIOR_NOUN})(?:\s+(?:of|from|dated|on)\s+(?:{_DATE}))?",
    rf",?\s*\bsince\s+(?:{_DATE}|the last (?:{_PRIOR_NOUN}))",
    r",?\s*\b(?:than|as compared to|compared to) before\b",
    r"\s+from\s+\d+(?:\.\d+)?(?:\s*x\s*\d+(?:\.\d+)?)*\s*(?:cm|mm)\b",  # "now measures 7.5 cm from 6.7 cm"
    r"\b(?:slight(?:ly)?|mild(?:ly)?|significant(?:ly)?|marked(?:ly)?|minimal(?:ly)?|further)?\s*"
    r"(?:increase|decrease|enlargement|reduction|progression|regression|improvement)\s+(?:in|of)\s+(?:the\s+)?(?:size of\s+)?",
]
_PRIOR_SENTENCE = re.compile(
    rf"^\W*(?:no\s+(?:significant\s+|substantial\s+)?(?:interval\s+)?change\b[^.]*|"
    rf"(?:overall\s+)?(?:unchanged|stable)(?:\s+(?:appearance|examination|exam|study|findings))?"
    rf"(?:\s+(?:since|from|compared)[^.]*)?|comparisons?\s*:[^.]*|(?:prior|previous)\s+(?:{_PRIOR_NOUN})\s*:[^.]*|"
    rf"compared (?:to|with) [^,.]*)\.?$",
    re.IGNORECASE)
_TEMPORAL_WORDS = re.compile(
    r"\b(?:again|newly|new|now|stable|unchanged|interval|intervally|persistent(?:ly)?|persisting|re-?demonstrated|"
    r"re-?demonstrates|increas(?:ed|ing)|decreas(?:ed|ing)|enlarging|progressive|progressing|progressed|"
    r"improv(?:ed|ing)|worsen(?:ed|ing)|previously|still|no longer|(?:more|less)(?!\s+likely)|slightly|"
    r"redemonstration of)\b",
    re.IGNORECASE)


def clean_report(text: str) -> str:
    """Remove references to prior scans and words of temporal change (brat's report clean-up).

    Sentences that only compare with a prior scan ("No significant interval change.") are dropped;
    comparison clauses ("compared with the prior MRI of 2019-03-02", "from 6.7 x 4.7 cm") and temporal
    words ("new", "now", "again", "stable", "increased", "previously", "more", "less", ...) are deleted
    from the others, and sentences left without content are dropped. The findings themselves stay.
    """
    kept: list[str] = []
    for s in split_sentences(text):
        if _PRIOR_SENTENCE.match(s):
            continue
        t = s
        for pat in _COMPARISON_CLAUSES:
            t = re.sub(pat, "", t, flags=re.IGNORECASE)
        t = _TEMPORAL_WORDS.sub("", t)
        t = re.sub(r"\s+", " ", t)
        t = re.sub(r"\s+([,.;:])", r"\1", t)
        t = re.sub(r"([,;])\s*(?=[,.;])", "", t)
        t = re.sub(r"^[\s,;:]+", "", t).strip()
        if len(re.findall(r"[A-Za-z]{2,}", t)) < 2:
            continue
        if not re.search(r"[.!?]$", t):
            t += "."
        kept.append(_cap(t))
    return " ".join(kept)


_TITLES = r"(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Prof|Professor)"


def scrub_phi(text: str) -> str:
    """Replace protected health information by placeholders.

    E-mail addresses -> ``[EMAIL]``, dates (ISO, numeric, written months) -> ``[DATE]``, phone numbers
    -> ``[PHONE]``, record / accession / patient numbers and other runs of >= 6 digits -> ``[ID]``,
    names after a title ("Dr. Jane Smith", "Mrs O'Neil") -> title + ``[NAME]``. Measurements such as
    "3.2 x 2.1 cm" or "5 mm" are left alone.
    """
    if not isinstance(text, str):
        raise DataError(None, "report", "a string", type(text).__name__)
    t = re.sub(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", "[EMAIL]", text)
    t = re.sub(_DATE, "[DATE]", t, flags=re.IGNORECASE)
    t = re.sub(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}(?![\w.])",
               "[PHONE]", t)
    t = re.sub(r"\b(?:MRN|medical record(?: number| no\.?)?|record(?: number| no\.?)?|accession(?: number| no\.?)?|"
               r"patient id|hospital number|NHS number|ID|case)\s*(?:#|:|no\.?|number)?\s*[:#]?\s*[A-Z]{0,3}\d[\d-]{3,}",
               lambda m: re.sub(r"[A-Z]{0,3}\d[\d-]{3,}$", "[ID]", m.group(0)), t, flags=re.IGNORECASE)
    t = re.sub(r"(?<![\w.])\d{6,}(?![\w.])", "[ID]", t)
    t = re.sub(rf"\b({_TITLES})(\.?\s+)(?:[A-Z][a-zA-Z'\-]+|[A-Z]\.)(?:\s+(?:[A-Z][a-zA-Z'\-]+|[A-Z]\.))*",
               r"\1\2[NAME]", t)
    return t


def read_report_text(path) -> str:
    """Read a report file as UTF-8 text; an empty or non-UTF-8 file is a :class:`DataError` naming it."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise DataError(p, "report", "an existing text file", "no such file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(p, "report", "UTF-8 text", f"undecodable byte at offset {exc.start}") from None
    if not text.strip():
        raise DataError(p, "report", "a non-empty report", "an empty file")
    return text


# --------------------------------------------------------------------------------------------
# findings extraction


_PATTERNS_PATH = {
    "tumour": r"\bmass(?:es)?\b(?![- ]effect)|\btumou?rs?\b|\bneoplas\w*|\blesions?\b|\bgliom\w*|\bglioblastom\w*|"
              r"\bmeningiom\w*|\bmetasta\w*|\bdeposits?\b|space[- ]occupying|\bGBM\b|\bastrocytom\w*|\bnodules?\b|"
              r"\b(?:macro|micro)?adenom\w*",
    "glioma": r"\bgliom\w*|\bglioblastom\w*|\bglial\b|\bastrocytom\w*|\boligodendrogliom\w*|\bGBM\b",
    "meningioma": r"\bmeningiom\w*",
    "metastasis": r"\bmetasta\w*",
    "pituitary": r"\bpituitary\b|\b(?:macro|micro)?adenom\w*",
    "enhancement": r"(?<!non)(?<!non-)(?<!non )\benhanc\w*|contrast uptake|\bavid(?:ly)?\b",
    "oedema": r"\bo?edema\w*|\bo?edematous\b|\bvasogenic\b|(?:perilesional|peritumou?ral|surrounding)\s+"
              r"(?:t2/flair\s+|flair\s+|t2\s+)?(?:signal|hyperintensit\w*)",
    "necrosis": r"\bnecros[ie]s\b|\bnecrotic\b|central (?:non-?enhancing|fluid|cystic)",
    "mass effect": r"\bmass[- ]effect\b|\bsulcal effacement\b|\beffac\w*|\bcompress\w*",
    "midline shift": r"\bmidline shift\w*|\bshift of the midline\b|\bsubfalcine (?:shift|herniation)\b|"
                     r"\bmidline displacement\b|\b(?:left|right)ward (?:midline )?shift\b",
}
_PATTERNS_ANAT = {
    "frontal": r"front(?:al|o)(?!\s+horns?)",
    "parietal": r"pariet(?:al|o)",
    "temporal": r"tempor(?:al|o)(?!\s+horns?)",
    "occipital": r"occipit(?:al|o)(?!\s+horns?)",
    "deep": r"\binsula\w*|\bthalam\w*|\bbasal ganglia\b|\blentiform\b|\bputam\w*|\bcaudate\b|\bglobus pallidus\b|"
            r"\binternal capsule\b|\bdeep gr[ae]y\b",
    "cerebellum": r"\bcerebell\w*|\bvermis\b",
    "brainstem": r"\bbrain ?stem\b|\bpons\b|\bpontine\b|\bmidbrain\b|\bmesencephal\w*|\bmedulla\b|\bhemipons\b",
}
_SIDE = re.compile(r"\b(left|right)(?:-sided)?\b|\b(bilateral(?:ly)?|both (?:cerebral )?hemispheres)\b",
                   re.IGNORECASE)
_SHIFT_SIDE = re.compile(
    r"(?:midline shift|shift of the midline|subfalcine (?:shift|herniation)|midline displacement|shift|deviat\w*|"
    r"displac\w*|herniation)[^.;,]*?\b(?:to|towards?)\s+the\s+(?:left|right)\b|\b(?:left|right)ward\b",
    re.IGNORECASE)
_PSEUDO_NEG = re.compile(
    r"\bcannot be (?:excluded|ruled out)|\bcan ?not (?:exclude|rule out)|\bnot (?:be )?(?:excluded|ruled out)|"
    r"\bno (?:significant )?change\b|\bnot only\b", re.IGNORECASE)
_PRE_NEG = re.compile(r"\b(?:no|without|absence of|absent|negative for|free of|neither|nor|not)\b", re.IGNORECASE)
_POST_NEG = re.compile(r"\b(?:is|are|was|were)\s+(?:not\s+(?:seen|identified|present|demonstrated|evident|visible|"
                       r"appreciated|observed)|absent)\b|\bunlikely\b|\bexcluded\b|\bruled out\b",
                       re.IGNORECASE)
_NORMAL_WORDS = re.compile(r"\b(?:normal|unremarkable|preserved|intact|symmetric\w*|central|appropriate|"
                           r"within normal limits|not dilated)\b", re.IGNORECASE)
_CLAUSE_SPLIT = re.compile(r";|\bbut\b|\bhowever\b|\balthough\b|\bwhereas\b|\bexcept\b", re.IGNORECASE)
_LESION_ENTITIES = ("tumour", "glioma", "meningioma", "metastasis", "pituitary", "enhancement", "oedema", "necrosis",
                    "mass effect", "midline shift")


def _spans(pattern: str, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(pattern, text, re.IGNORECASE)]


def _negated_mask(clause: str) -> np.ndarray:
    """Per character of ``clause``: True where a negation scope covers it (NegEx-style, one clause)."""
    neg = np.zeros(len(clause) + 1, bool)
    post = [m.span() for m in _POST_NEG.finditer(clause)]
    for m in _PRE_NEG.finditer(clause):
        if not any(a <= m.start() < b for a, b in post):  # the "not" of "is not seen" looks backwards only
            neg[m.start():] = True
    for _a, b in post:
        neg[:b] = True
    return neg


def extract_findings(text: str) -> dict[str, set[str]]:
    """Laterality, anatomy and pathology entity sets from a report (see the module docstring).

    Rule-based: the text is split into sentences (:func:`split_sentences`) and clauses (``;``, "but",
    "however", ...); within a clause a negation trigger ("no", "without", "absence of") negates what
    follows, and "is not seen", "does not", "unlikely" negate what precedes; hedges such as "cannot be
    excluded" are read as positive. Sides and anatomy come from clauses that are neither negated nor
    statements of normality; a side that is only the direction of a midline shift is ignored. A report
    with no positive lesion entity is ``{"normal"}`` in pathology.
    """
    if not isinstance(text, str):
        raise DataError(None, "report", "a string", type(text).__name__)
    lat: set[str] = set()
    anat: set[str] = set()
    path: set[str] = set()
    for sent in split_sentences(text):
        sent = re.sub(r"^\s*(?:impression|conclusion|findings|summary|opinion)\s*:\s*", "", sent, flags=re.IGNORECASE)
        sent = _PSEUDO_NEG.sub("possible", sent)
        for clause in _CLAUSE_SPLIT.split(sent):
            if not clause.strip():
                continue
            neg = _negated_mask(clause)
            positive = set()
            for name, pat in _PATTERNS_PATH.items():
                for a, _b in _spans(pat, clause):
                    if not neg[a]:
                        positive.add(name)
            path |= positive
            if not positive and _NORMAL_WORDS.search(clause):
                continue  # "the cerebellum and brainstem are unremarkable"
            bare = _SHIFT_SIDE.sub(lambda m: " " * len(m.group(0)), clause)
            for name, pat in _PATTERNS_ANAT.items():
                if any(not neg[a] for a, _b in _spans(pat, bare)):
                    anat.add(name)
            for m in _SIDE.finditer(bare):
                if neg[m.start()]:
                    continue
                if m.group(1):
                    lat.add(m.group(1).lower())
                else:
                    lat.add("bilateral")
    if not path:
        path = {"normal"}
    if "bilateral" in lat or {"left", "right"} <= lat:
        lat |= {"left", "right", "bilateral"}
    return {"laterality": lat, "anatomy": anat, "pathology": path}


def entities_from_findings(findings: dict[str, Any]) -> dict[str, set[str]]:
    """The entity sets of :func:`extract_findings` straight from phantom findings (the ground truth)."""
    if findings.get("normal", True) or not findings.get("lesions"):
        return {"laterality": set(), "anatomy": set(), "pathology": {"normal"}}
    side = findings.get("hemisphere")
    lat = {"left", "right", "bilateral"} if side == "bilateral" else {side} if side else set()
    anat = set(findings.get("lobes", []))
    path = {"tumour"}
    if findings.get("lesion_type"):
        path.add(findings["lesion_type"])
    for key, name in (("enhancement", "enhancement"), ("oedema", "oedema"), ("necrosis", "necrosis"),
                      ("mass_effect", "mass effect")):
        if findings.get(key):
            path.add(name)
    if float(findings.get("midline_shift_mm", 0.0)) >= _SHIFT_MM and findings.get("mass_effect"):
        path.add("midline shift")
    return {"laterality": lat, "anatomy": anat, "pathology": path}


_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_sides(report: str) -> str:
    """``report`` with the whole words "left" and "right" exchanged, case kept (``Left`` -> ``Right``, ``LEFT`` ->
    ``RIGHT``): the report of the left-right mirrored scan, for flip augmentation (BrainGemma3D, brat) and the
    mirror test of notebook 06."""
    def sub(m: re.Match) -> str:
        w = m.group(0)
        new = "right" if w.lower() == "left" else "left"
        return new.upper() if w.isupper() else new.capitalize() if w[0].isupper() else new
    return _SIDE_WORD.sub(sub, report)
