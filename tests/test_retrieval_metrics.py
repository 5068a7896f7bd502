"""brainkit.metrics.retrieval on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainkit.errors import ConfigError
from brainkit.metrics.retrieval import finding_metrics, finding_sets, ranks, recall_at_k, retrieval_metrics

SIM = np.array([
    [0.9, 0.1, 0.2],
    [0.5, 0.4, 0.4],
    [0.3, 0.8, 0.7],
])


def test_ranks_by_hand_pessimistic_ties():
    # row 1: the true 0.4 ties with another 0.4 and loses to 0.5 -> rank 3 (pessimistic)
    assert ranks(SIM).tolist() == [1, 3, 2]
    assert ranks(SIM.T).tolist() == [1, 2, 1]
    assert ranks(np.ones((4, 4))).tolist() == [4, 4, 4, 4]


def test_retrieval_metrics_both_directions():
    m = retrieval_metrics(SIM, ks=(1, 2, 5))
    assert m["i2t_r1"] == pytest.approx(1 / 3)
    assert m["i2t_r2"] == pytest.approx(2 / 3)
    assert m["i2t_r5"] == 1.0
    assert m["i2t_median_rank"] == 2.0
    assert m["i2t_mean_rank"] == pytest.approx(2.0)
    assert m["t2i_r1"] == pytest.approx(2 / 3)
    assert m["t2i_median_rank"] == 1.0
    assert m["t2i_mean_rank"] == pytest.approx(4 / 3)
    assert m["chance_r1"] == pytest.approx(1 / 3) and m["chance_r5"] == 1.0
    assert "i2t_p5_f" not in m


def test_retrieval_metrics_torch_input_and_perfect_model():
    m = retrieval_metrics(torch.eye(12) + 0.01 * torch.rand(12, 12))
    assert m["i2t_r1"] == 1.0 and m["t2i_r1"] == 1.0
    assert m["i2t_median_rank"] == 1.0 and m["t2i_mean_rank"] == 1.0
    m = retrieval_metrics(np.zeros((12, 12)))  # a constant model earns nothing
    assert m["i2t_r10"] == 0.0 and m["t2i_mean_rank"] == 12.0


def test_recall_at_k_bad_k():
    with pytest.raises(ConfigError, match="k"):
        recall_at_k(np.array([1, 2]), 0)


# items 0..5 and their positive findings
FINDINGS = [{"a"}, {"a", "b"}, {"b"}, set(), {"c"}, {"a"}]
TOP2 = [(1, 4), (1, 0), (3, 4), (3, 5), (0, 4), (0, 2)]


def _sim_with_top2():
    sim = np.zeros((6, 6))
    for q, (first, second) in enumerate(TOP2):
        sim[q, first] = 0.9
        sim[q, second] = 0.8
    return sim


def test_finding_metrics_by_hand():
    sim = _sim_with_top2()
    # per query P@2(F): .5, 1, 0, [excluded], .5, .5 ; R@2(F): 0, 1, 0, [excluded], 1, 1
    fm = finding_metrics(sim, FINDINGS, k=2)
    assert fm["n_queries"] == 5
    assert fm["p_f"] == pytest.approx(2.5 / 5)
    assert fm["r_f"] == pytest.approx(3 / 5)
    # the finding-free query 3 counted: P = 0, and R = 1 (item 3 itself has exactly no finding)
    fm = finding_metrics(sim, FINDINGS, k=2, positives_only=False)
    assert fm["n_queries"] == 6
    assert fm["p_f"] == pytest.approx(2.5 / 6)
    assert fm["r_f"] == pytest.approx(4 / 6)


def test_finding_formats_agree():
    names = ["a", "b", "c"]
    matrix = np.array([[n in f for n in names] for f in FINDINGS])
    dicts = [{n: (n in f) for n in names} for f in FINDINGS]
    sim = _sim_with_top2()
    ref = finding_metrics(sim, FINDINGS, k=2)
    assert finding_metrics(sim, matrix, k=2) == ref
    assert finding_metrics(sim, torch.as_tensor(matrix), k=2) == ref
    assert finding_metrics(sim, dicts, k=2) == ref
    assert finding_sets(dicts)[1] == frozenset({"a", "b"})


def test_finding_keys_in_retrieval_metrics():
    m = retrieval_metrics(_sim_with_top2(), findings=FINDINGS, finding_k=2)
    assert m["i2t_p2_f"] == pytest.approx(0.5)
    assert m["i2t_r2_f"] == pytest.approx(0.6)
    assert "t2i_p2_f" in m
    m = retrieval_metrics(np.eye(3), findings=[set(), set(), set()])
    assert "i2t_p5_f" not in m  # no query with a positive finding
    nan = finding_metrics(np.eye(3), [set(), set(), set()])
    assert nan["n_queries"] == 0 and math.isnan(nan["p_f"])


def test_bad_inputs():
    with pytest.raises(ConfigError, match="square"):
        retrieval_metrics(np.zeros((3, 4)))
    bad = np.eye(3)
    bad[0, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        retrieval_metrics(bad)
    with pytest.raises(ConfigError, match="one entry per item"):
        finding_metrics(np.eye(3), [{"a"}, {"b"}])
    with pytest.raises(ConfigError, match="findings"):
        finding_metrics(np.eye(2), "ab")
    with pytest.raises(ConfigError, match=r"findings\[1\]"):
        finding_metrics(np.eye(2), [{"a"}, 3])
