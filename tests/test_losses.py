"""brainkit.losses: PVA (literal vs vectorised vs optimal), ColBERT, DPP, repulsion, InfoNCE, ITG."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from brainkit.errors import ConfigError
from brainkit.losses import info_nce
from brainkit.methods.brat.losses import (
    LearnableTemperature,
    attention_entropy,
    colbert_similarity,
    dpp_kernel,
    dpp_loss,
    itg_loss,
    linear_warmup,
    mean_pairwise_cosine,
    multiview_similarity,
    pairwise_repulsion_loss,
    pva_literal,
    pva_optimal_similarity,
    pva_similarity,
    pva_similarity_literal,
)


def _toy():
    """Views e0, e1 and two sentences whose cosines with them are [[0.6, 0.5], [0.5, 0.0]]."""
    V = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    F = torch.tensor([[0.6, 0.5, math.sqrt(1 - 0.61)], [0.5, 0.0, math.sqrt(0.75)]], dtype=torch.float64)
    return V, F


# --------------------------------------------------------------------------------------------- PVA
def test_pva_literal_toy_greedy_differs_from_optimal():
    V, F = _toy()
    sim, matched = pva_literal(V, F)
    # greedy: (v0, f0)=0.6 first, then only (v1, f1)=0.0 is left
    assert matched == [(0, 0), (1, 1)]
    assert sim == pytest.approx(0.3)
    # Hungarian: (v0, f1) + (v1, f0) = 0.5 + 0.5
    opt = pva_optimal_similarity(V[None], F[None])
    assert float(opt) == pytest.approx(0.5)
    # ColBERT: best view per sentence, views reused: (0.6 + 0.5) / 2
    assert float(colbert_similarity(V[None], F[None])) == pytest.approx(0.55)
    assert float(pva_similarity(V[None], F[None])) == pytest.approx(0.3)


@pytest.mark.parametrize("B_img,B_rep,Nq,S,d", [(4, 5, 6, 3, 8), (3, 3, 4, 9, 5), (5, 4, 7, 7, 16), (2, 6, 1, 4, 3)])
def test_pva_vectorised_equals_literal(B_img, B_rep, Nq, S, d):
    g = torch.Generator().manual_seed(B_img * 100 + S)
    V = torch.randn(B_img, Nq, d, generator=g, dtype=torch.float64)
    F = torch.randn(B_rep, S, d, generator=g, dtype=torch.float64)
    mask = torch.rand(B_rep, S, generator=g) < 0.7
    mask[:, 0] = True  # every report keeps at least one sentence
    mask[-1] = True
    sim_l, matches_l = pva_similarity_literal(V, F, mask)
    sim_v, matches_v = pva_similarity(V, F, mask, return_matches=True)
    assert sim_v.shape == (B_img, B_rep)
    assert torch.allclose(sim_v, sim_l, atol=1e-12, rtol=0)
    for i in range(B_img):
        for j in range(B_rep):
            got = [tuple(p) for p in matches_v[i, j].tolist() if p[0] >= 0]
            assert got == matches_l[i][j]
            assert len(got) == min(Nq, int(mask[j].sum()))


def test_pva_vectorised_equals_literal_float32_batch():
    g = torch.Generator().manual_seed(7)
    V, F = torch.randn(8, 32, 64, generator=g), torch.randn(8, 20, 64, generator=g)
    sim_l, matches_l = pva_similarity_literal(V, F)
    sim_v, matches_v = pva_similarity(V, F, return_matches=True)
    assert torch.allclose(sim_v.double(), sim_l, atol=1e-6)
    assert all([tuple(p) for p in matches_v[i, j].tolist()] == matches_l[i][j] for i in range(8) for j in range(8))


def test_pva_ties_take_lowest_flat_index():
    V = torch.ones(3, 1, 2)  # all cosines equal to 1
    F = torch.ones(2, 4, 2)
    _, m = pva_similarity(V, F, return_matches=True)
    assert m[0, 0].tolist() == [[0, 0]]
    s, lit = pva_literal(V[0], F[0])
    assert lit == [(0, 0)] and s == pytest.approx(1.0)


def test_pva_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(3)
    V, F = torch.randn(7, 5, 6, generator=g), torch.randn(6, 4, 6, generator=g)
    torch.testing.assert_close(pva_similarity(V, F, chunk_size=3), pva_similarity(V, F), rtol=0, atol=1e-6)


def test_pva_padding_is_ignored():
    g = torch.Generator().manual_seed(4)
    V = torch.randn(3, 5, 8, generator=g)
    F = torch.randn(3, 4, 8, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    F_noisy = F.clone()
    F_noisy[~mask] = 1000 * torch.randn(int((~mask).sum()), 8, generator=g)
    a = pva_similarity(V, F, mask)
    b = pva_similarity(V, F_noisy, mask)
    assert torch.equal(a, b)
    # report 0 alone, unpadded
    assert torch.allclose(a[:, 0], pva_similarity(V, F[:1, :2])[:, 0])


def test_pva_more_sentences_than_queries_matches_min():
    g = torch.Generator().manual_seed(5)
    V, F = torch.randn(2, 3, 8, generator=g), torch.randn(2, 7, 8, generator=g)
    _, m = pva_similarity(V, F, return_matches=True)
    assert m.shape == (2, 2, 3, 2)
    assert (m >= 0).all()
    sim, lit = pva_literal(V[0], F[0])
    assert len(lit) == 3
    assert len({q for q, _ in lit}) == 3 and len({s for _, s in lit}) == 3


def test_pva_gradient_flows_through_matched_cosines():
    g = torch.Generator().manual_seed(6)
    V = torch.randn(3, 4, 8, generator=g, requires_grad=True)
    F = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    pva_similarity(V, F).sum().backward()
    assert V.grad is not None and V.grad.abs().sum() > 0
    assert F.grad is not None and F.grad.abs().sum() > 0


def test_optimal_at_least_greedy_and_equals_brute_force():
    g = torch.Generator().manual_seed(8)
    V = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    F = torch.randn(4, 4, 5, generator=g, dtype=torch.float64)
    greedy = pva_similarity(V, F)
    opt = pva_optimal_similarity(V, F)
    assert (opt >= greedy - 1e-12).all()
    cos = nnf.normalize(V[0], dim=-1) @ nnf.normalize(F[1], dim=-1).T  # 3 views x 4 sentences
    best = max(sum(cos[q, s] for q, s in zip(range(3), perm)) / 3 for perm in itertools.permutations(range(4), 3))
    assert float(opt[0, 1]) == pytest.approx(float(best))


def test_colbert_by_hand_and_dispatch():
    g = torch.Generator().manual_seed(9)
    V, F = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    cb = colbert_similarity(V, F, mask)
    cos = nnf.normalize(V[1], dim=-1) @ nnf.normalize(F[0], dim=-1).T
    assert float(cb[1, 0]) == pytest.approx(float(cos[:, :3].max(0).values.mean()), abs=1e-6)
    assert torch.equal(multiview_similarity(V, F, mask, method="colbert"), cb)
    assert torch.equal(multiview_similarity(V, F, mask, method="pva"), pva_similarity(V, F, mask))
    with pytest.raises(ConfigError, match="method"):
        multiview_similarity(V, F, mask, method="max")


def test_pva_bad_inputs():
    V, F = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ConfigError, match=r"no(ne)?.*report|reports \[1\]"):
        pva_similarity(V, F, mask)
    with pytest.raises(ConfigError, match="sentence"):
        colbert_similarity(V, F, mask)
    bad = V.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        pva_similarity(bad, F)
    with pytest.raises(ConfigError, match="NaN"):
        pva_literal(bad[0], F[0])
    with pytest.raises(ConfigError, match="embedding size"):
        pva_similarity(V, torch.randn(2, 5, 6))
    with pytest.raises(ConfigError, match="sentence_mask"):
        pva_similarity(V, F, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="shape"):
        pva_similarity(V[0], F)


# --------------------------------------------------------------------------------------------- DPP
def _collapsed(nq=8, d=16):
    return torch.full((nq, d), 1.0 / d, dtype=torch.float64)


def _orthogonal(nq=8, d=16):
    C = torch.zeros(nq, d, dtype=torch.float64)
    per = d // nq
    for i in range(nq):
        C[i, i * per:(i + 1) * per] = 1.0 / per
    return C


def test_entropy_and_kernel():
    C = _collapsed()
    assert torch.allclose(attention_entropy(C), torch.full((8,), math.log(16), dtype=torch.float64))
    one_hot = torch.zeros(3, 5)
    one_hot[:, 2] = 1
    assert torch.allclose(attention_entropy(one_hot), torch.zeros(3))  # 0 log 0 = 0
    L = dpp_kernel(_orthogonal())
    assert torch.allclose(L, L.T)
    assert torch.allclose(L, torch.diag(torch.diag(L)))  # disjoint maps: no off-diagonal similarity
    assert torch.linalg.eigvalsh(dpp_kernel(torch.rand(6, 10).softmax(-1))).min() > -1e-6


def test_dpp_collapsed_much_larger_than_orthogonal():
    eps = 1e-4
    collapsed = float(dpp_loss(_collapsed(), eps=eps))
    orthogonal = float(dpp_loss(_orthogonal(), eps=eps))
    assert collapsed > orthogonal + 50
    # collapsed: rank-one L with eigenvalue N_q h^2 / D, the other N_q - 1 eigenvalues are eps
    lam = 8 * math.log(16) ** 2 / 16
    assert collapsed == pytest.approx(-(math.log(lam + eps) + 7 * math.log(eps)), rel=1e-9)
    # orthogonal: diagonal L with h_i^2 |c_i|^2 = log(2)^2 / 2
    assert orthogonal == pytest.approx(-8 * math.log(math.log(2) ** 2 / 2 + eps), rel=1e-9)


def test_dpp_batched_heads_and_reduction():
    C = torch.stack([_collapsed(), _orthogonal()])
    per = dpp_loss(C, reduction="none")
    assert per.shape == (2,) and per[0] > per[1]
    assert float(dpp_loss(C)) == pytest.approx(float(per.mean()))
    assert float(dpp_loss(C, reduction="sum")) == pytest.approx(float(per.sum()))
    assert float(dpp_loss(C, normalize=True)) == pytest.approx(float(per.mean()) / 8)
    heads = C[:, None].expand(2, 4, 8, 16)
    assert torch.allclose(dpp_loss(heads, reduction="none"), per)


def test_dpp_gradient_spreads_collapsed_queries():
    g = torch.Generator().manual_seed(0)
    logits = (0.01 * torch.randn(8, 16, generator=g)).requires_grad_(True)
    before = float(mean_pairwise_cosine(logits.detach().softmax(-1)))
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        dpp_loss(logits.softmax(-1), eps=1e-2).backward()
        opt.step()
    after = float(mean_pairwise_cosine(logits.detach().softmax(-1)))
    assert before > 0.99
    assert after < 0.5 * before


def test_dpp_singular_kernel_and_bad_input():
    # a singular kernel is finite with eps > 0, and refused with eps <= 0
    assert math.isfinite(float(dpp_loss(_collapsed(), eps=1e-8)))
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="eps"):
            dpp_loss(_collapsed(), eps=eps)
    nan = _collapsed()
    nan[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        dpp_loss(nan)
    with pytest.raises(ConfigError, match=">= 0"):
        dpp_loss(-_collapsed())
    with pytest.raises(ConfigError, match="shape"):
        dpp_loss(torch.rand(5))
    with pytest.raises(ConfigError, match="reduction"):
        dpp_loss(_collapsed(), reduction="max")


def test_pairwise_repulsion_and_cosine():
    assert float(pairwise_repulsion_loss(_collapsed())) == pytest.approx(1.0)
    assert float(pairwise_repulsion_loss(_orthogonal())) == pytest.approx(0.0)
    X = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert float(mean_pairwise_cosine(X)) == pytest.approx(-1.0)
    with pytest.raises(ConfigError, match="N >= 2"):
        mean_pairwise_cosine(torch.rand(1, 4))


def test_linear_warmup():
    assert linear_warmup(0, 2.0, 10) == 0.0
    assert linear_warmup(5, 2.0, 10) == pytest.approx(1.0)
    assert linear_warmup(50, 2.0, 10) == 2.0
    assert linear_warmup(3, 0.5, 0) == 0.5
    with pytest.raises(ConfigError):
        linear_warmup(3, 0.5, -1)


# ----------------------------------------------------------------------------------------- InfoNCE
def test_info_nce_values():
    B = 4
    assert float(info_nce(torch.zeros(B, B), 10.0)) == pytest.approx(math.log(B))
    assert float(info_nce(torch.eye(B), 100.0)) < 1e-6
    sim = torch.randn(B, B, generator=torch.Generator().manual_seed(0))
    t = torch.arange(B)
    expected = 0.5 * (nnf.cross_entropy(5 * sim, t) + nnf.cross_entropy(5 * sim.T, t))
    assert float(info_nce(sim, 5.0)) == pytest.approx(float(expected))
    # not symmetric in general: the transposed matrix gives the same (symmetric) loss
    assert float(info_nce(sim.T, 5.0)) == pytest.approx(float(expected))


def test_learnable_temperature_gets_gradient():
    temp = LearnableTemperature(0.07)
    assert float(temp().detach()) == pytest.approx(1 / 0.07)
    sim = torch.randn(3, 3)
    info_nce(sim, temp()).backward()
    assert temp.log_scale.grad is not None
    with torch.no_grad():
        temp.log_scale.fill_(10.0)
    assert float(temp().detach()) == 100.0


def test_info_nce_bad_input():
    with pytest.raises(ConfigError, match="at least 2"):
        info_nce(torch.ones(1, 1), 10.0)
    with pytest.raises(ConfigError, match="square"):
        info_nce(torch.ones(2, 3), 10.0)
    bad = torch.zeros(3, 3)
    bad[1, 2] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        info_nce(bad, 10.0)
    with pytest.raises(ConfigError, match="scale"):
        info_nce(torch.zeros(3, 3), -1.0)


# --------------------------------------------------------------------------------------------- ITG
def test_itg_loss_is_shifted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, :2] = -100
    expected = nnf.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert float(itg_loss(logits, labels, label_smoothing=0.0)) == pytest.approx(float(expected))
    unshifted = nnf.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert float(itg_loss(logits, labels, label_smoothing=0.0, shift=False)) == pytest.approx(float(unshifted))
    assert float(itg_loss(logits, labels)) != pytest.approx(float(expected))  # BLIP-2's smoothing 0.1


def test_itg_bad_input():
    with pytest.raises(ConfigError, match="target token"):
        itg_loss(torch.randn(1, 4, 3), torch.full((1, 4), -100))
    with pytest.raises(ConfigError, match="logits, labels"):
        itg_loss(torch.randn(1, 4, 3), torch.zeros(1, 5, dtype=torch.long))


def test_numpy_inputs_accepted():
    V = np.random.default_rng(0).normal(size=(2, 3, 4))
    F = np.random.default_rng(1).normal(size=(2, 3, 4))
    assert pva_similarity(V, F).shape == (2, 2)
