"""Losses of brat: Pairwise View Alignment (PVA), the DPP quality-diversity loss, ITG (symmetric InfoNCE is
shared: :func:`brainkit.losses.info_nce`).

Introduced in ``08_brat_pretraining`` (PVA and DPP step by step on a toy matrix, then pretraining) and
used again by ``09_brat_evaluation`` (retrieval with the same similarities). The released brat code is
inference only, so everything here follows the paper (seed D, Algorithm 1 and equations 1-9).

Conventions
-----------
- ``V``: multi-view image embeddings, ``(B_img, N_q, d)`` (the Q-Former's query outputs after the
  vision projection); ``F``: sentence embeddings, ``(B_rep, S, d)``, padded to ``S`` sentences, with a
  boolean ``sentence_mask`` ``(B_rep, S)`` that is ``True`` for real sentences. Both are L2-normalised
  here (Algorithm 1 takes normalised inputs), so the similarities are cosines.
- Similarity matrices are ``(B_img, B_rep)``: entry ``[i, j]`` compares image ``i`` with report ``j``;
  matching pairs sit on the diagonal.

PVA (Algorithm 1)
-----------------
Compute all view-sentence cosines, repeatedly take the highest remaining pair and delete its row and
column, and average the matched cosines (equation 6). Exactly ``min(N_q, S_j)`` pairs are matched for a
report with ``S_j`` sentences: with more sentences than queries, the ``S_j - N_q`` sentences whose best
remaining partner came last stay unmatched (they do not enter the similarity). Ties are broken in
favour of the lowest flat index ``q * S + s`` in both implementations, so the literal and the
vectorised versions pick identical pairs. The greedy choice is not the optimal one-to-one matching:
:func:`pva_optimal_similarity` solves the assignment problem exactly with
``scipy.optimize.linear_sum_assignment``; greedy matching is a 1/2-approximation of the maximum-weight
matching (for non-negative weights) and in practice differs only on a few pairs. The matching itself
carries no gradient; the matched cosines do.

DPP (equations 1-5)
-------------------
``h_i`` = Shannon entropy of query ``i``'s cross-attention map ``c_i`` over the image tokens,
``L_ij = h_i c_i^T c_j h_j`` and ``L_DPP = -log det(L + eps I)``. When the queries collapse (all maps
alike) ``L`` is near rank one and the loss is about ``-(N_q - 1) log eps``: large. Its gradient grows
as the maps approach collapse (the log-det's gradient is ``-(L + eps I)^{-1}``, whose norm is ``1/eps``
on the null space of ``L``), so with ``eps = 1e-4`` at initialisation the DPP term can swamp the
contrastive loss. The knobs: the loss ``weight`` (and :func:`linear_warmup` to ramp it in), a larger
``eps``, and ``normalize=True`` (divide by ``N_q``: the mean log-eigenvalue instead of the sum).
Notebook 08 shows which it uses. :func:`pairwise_repulsion_loss` is the simpler alternative of the
paper's ablation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from ...errors import ConfigError
from ...losses import as_tensor as _as_tensor
from ...losses import check_finite as _check_finite

__all__ = [
    "pva_literal",
    "pva_similarity_literal",
    "pva_similarity",
    "pva_optimal_similarity",
    "colbert_similarity",
    "multiview_similarity",
    "attention_entropy",
    "dpp_kernel",
    "dpp_loss",
    "mean_pairwise_cosine",
    "pairwise_repulsion_loss",
    "linear_warmup",
    "LearnableTemperature",
    "itg_loss",
]


def _check_views_sentences(V, F, sentence_mask):
    V = _as_tensor(V, "V (image views)")
    F = _as_tensor(F, "F (report sentences)")
    if V.dim() != 3:
        raise ConfigError(f"V (image views): expected shape (B_img, N_q, d), found {tuple(V.shape)}")
    if F.dim() != 3:
        raise ConfigError(f"F (report sentences): expected shape (B_rep, S, d), found {tuple(F.shape)}")
    if V.shape[-1] != F.shape[-1]:
        raise ConfigError(
            f"V, F: expected the same embedding size d, found {V.shape[-1]} (views) and {F.shape[-1]} (sentences)"
        )
    if V.shape[1] == 0 or F.shape[1] == 0 or V.shape[0] == 0 or F.shape[0] == 0:
        raise ConfigError(f"V, F: expected non-empty tensors, found {tuple(V.shape)} and {tuple(F.shape)}")
    _check_finite(V, "V (image views)")
    _check_finite(F, "F (report sentences)")
    B_rep, S = F.shape[:2]
    if sentence_mask is None:
        mask = torch.ones(B_rep, S, dtype=torch.bool, device=F.device)
    else:
        mask = torch.as_tensor(sentence_mask, device=F.device)
        if mask.shape != (B_rep, S):
            raise ConfigError(f"sentence_mask: expected shape {(B_rep, S)}, found {tuple(mask.shape)}")
        mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(
            f"sentence_mask: expected at least one sentence per report, found reports {empty[:10]} "
            "with none (drop empty reports before computing report similarities)"
        )
    common = torch.promote_types(V.dtype, F.dtype)
    V = nnf.normalize(V.to(common), dim=-1)
    F = nnf.normalize(F.to(common), dim=-1)
    return V, F, mask


def _cosines_gemm(V: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """All view-sentence cosines as one GEMM, in the layout ``(B_img, N_q, B_rep, S)`` (no copy)."""
    (Bi, Nq, d), (Br, S) = V.shape, F.shape[:2]
    return (V.reshape(Bi * Nq, d) @ F.reshape(Br * S, d).T).view(Bi, Nq, Br, S)


def _cosines(V: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """All view-sentence cosines, ``(B_img, B_rep, N_q, S)`` (a permuted view of :func:`_cosines_gemm`)."""
    return _cosines_gemm(V, F).permute(0, 2, 1, 3)


# ------------------------------------------------------------------------------------------- PVA
def pva_literal(V, F) -> tuple[float, list[tuple[int, int]]]:
    """Algorithm 1 of brat, written as the paper reads, for ONE image and ONE report.

    ``V``: ``(N_q, d)`` views, ``F``: ``(S, d)`` sentences (normalised here). Returns the image-report
    similarity (mean of the matched cosines, equation 6) and the matched pairs ``[(view, sentence), ...]``
    in the order they were taken. Plain Python lists on purpose: it is the readable reference that
    notebook 08 shows and that :func:`pva_similarity` is tested against; it is slow.
    """
    V = _as_tensor(V, "V (image views)")
    F = _as_tensor(F, "F (report sentences)")
    if V.dim() != 2 or F.dim() != 2 or V.shape[-1] != F.shape[-1] or V.shape[0] == 0 or F.shape[0] == 0:
        raise ConfigError(
            f"pva_literal: expected V (N_q, d) and F (S, d) with N_q, S >= 1, found {tuple(V.shape)} and {tuple(F.shape)}"
        )
    _check_finite(V, "V (image views)")
    _check_finite(F, "F (report sentences)")
    V = nnf.normalize(V, dim=-1)
    F = nnf.normalize(F, dim=-1)
    # 1: similarities between all views and all sentences
    S_vf = (V @ F.T).tolist()
    # 2: all pairs, sorted by descending similarity (ties: lowest view, then lowest sentence index)
    pairs = [(S_vf[i][j], i, j) for i in range(len(S_vf)) for j in range(len(S_vf[0]))]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    # 3: no pair matched yet
    matched: list[tuple[int, int]] = []
    # 4-8: take the top pair, then remove every pair that shares its view or its sentence
    while pairs:
        _, s_v, s_f = pairs[0]
        matched.append((s_v, s_f))
        pairs = [p for p in pairs if p[1] != s_v and p[2] != s_f]
    similarity = sum(S_vf[i][j] for i, j in matched) / len(matched)
    return similarity, matched


def pva_similarity_literal(V, F, sentence_mask=None) -> tuple[torch.Tensor, list[list[list[tuple[int, int]]]]]:
    """:func:`pva_literal` over every image x report pair of a batch (slow reference).

    Returns the ``(B_img, B_rep)`` similarity matrix (no gradient) and ``matches[i][j]``, the pairs of
    image ``i`` and report ``j``. Padded sentences (``sentence_mask`` False) are dropped first.
    """
    V, F, mask = _check_views_sentences(V, F, sentence_mask)
    sim = torch.zeros(V.shape[0], F.shape[0], dtype=torch.float64)
    matches = []
    for i in range(V.shape[0]):
        row = []
        for j in range(F.shape[0]):
            keep = mask[j].nonzero().flatten()
            s, m = pva_literal(V[i].detach().cpu(), F[j, keep].detach().cpu())
            # map sentence positions back to the padded index
            row.append([(q, int(keep[s_])) for q, s_ in m])
            sim[i, j] = s
        matches.append(row)
    return sim, matches


def _real_sentences(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``j * S + s`` of the real sentences ``(R,)`` (in the order of ``mask.nonzero()``) and,
    ``(B_rep, S)``, each sentence's row among them (``-1`` for padding)."""
    real = mask.reshape(-1).nonzero().squeeze(1)
    row_of = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    row_of.view(-1)[real] = torch.arange(real.numel(), device=mask.device)
    return real, row_of


@torch.no_grad()
def _greedy_matches(cos: torch.Tensor, mask: torch.Tensor,
                    real: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy matching (Algorithm 1) of every image-report pair at once.

    ``cos``: ``(R, B_img, N_q)``, the cosines between the ``R`` real sentences of the batch (in the order
    of ``mask.nonzero()``, i.e. of :func:`_real_sentences`, whose first output ``real`` may be passed)
    and every view; ``mask``: real sentences ``(B_rep, S)``. Returns the views ``q`` and sentences ``s``
    taken, ``(B_img * B_rep, K)`` (pair ``p = i * B_rep + j``) in the order taken, and their validity
    (``K = min(N_q, max_j S_j)``; a pair with fewer real sentences has invalid trailing steps, where
    ``q = s = -1``).

    Each step takes the global maximum of every pair's remaining matrix, all pairs at once: the maximum
    of every view over the live sentences (one ``amax`` over the sentence axis of a ``(B_rep, S, B_img,
    N_q)`` buffer, vectorised over the pairs), then the first view holding the largest one and the first
    sentence of that view holding it. Ties therefore go to the lowest view, then the lowest sentence --
    the lowest flat index, as in :func:`pva_literal`. Deleting a view or a sentence writes ``-inf``
    through precomputed index tensors (no ``nonzero`` and no host sync inside the loop). The reports are
    sorted by decreasing length first, so that the pairs still matching at step ``k`` (those with
    ``min(N_q, S_j) > k``) are a prefix of the buffer and the finished ones cost nothing.
    """
    R, Bi, Nq = cos.shape
    Br, S = mask.shape
    P = Bi * Br
    dev, dt = cos.device, cos.dtype
    neg_inf = float("-inf")
    lengths = mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)  # rank -> report
    rank = torch.empty_like(order)
    rank[order] = torch.arange(Br, device=dev)  # report -> rank
    steps = lengths[order].clamp(max=Nq).tolist()  # host sync (before the loop): rank r takes steps[r]
    K = steps[0]
    active, n_rep = [], Br  # active[k]: reports still matching at step k (steps is non-increasing)
    for k in range(K):
        while steps[n_rep - 1] <= k:
            n_rep -= 1
        active.append(n_rep)
    # buf[r, s, i, q]: cosine of sentence s of the report of rank r with view q of image i; -inf = padding
    buf = torch.empty(Br, S, Bi, Nq, dtype=dt, device=dev)
    sorted_sentences = (rank[:, None] * S + torch.arange(S, device=dev)).view(-1)  # (j, s) -> row of buf
    if real is None:
        real = _real_sentences(mask)[0]
    buf.view(Br * S, Bi * Nq).index_copy_(0, sorted_sentences[real], cos.detach().reshape(R, Bi * Nq))
    if R < Br * S:
        padded = (~mask).view(-1).nonzero().squeeze(1)
        buf.view(Br * S, Bi * Nq).index_fill_(0, sorted_sentences[padded], neg_inf)
    flat = buf.view(-1)
    sent_rows = buf.view(Br * S * Bi, Nq)  # row (r, s, i): sentence s of pair (r, i), over the views
    row_bias = torch.zeros(Br * Bi, Nq, dtype=dt, device=dev)  # -inf once pair r * B_img + i takes a view
    pr = torch.arange(Br * Bi, device=dev)
    sent0 = torch.div(pr, Bi, rounding_mode="floor") * (S * Bi) + pr % Bi  # row of (r, s=0, i) in sent_rows
    view_col = (sent0[:, None] + torch.arange(S, device=dev) * Bi) * Nq  # flat index of buf[r, s, i, 0]
    bias_row = pr * Nq
    qs = torch.full((K, Br * Bi), -1, dtype=torch.long, device=dev)
    ss = torch.full((K, Br * Bi), -1, dtype=torch.long, device=dev)
    row_max = torch.empty(Br, Bi, Nq, dtype=dt, device=dev)
    for k in range(K):
        nr = active[k]
        n = nr * Bi
        rm = torch.amax(buf[:nr], dim=1, out=row_max[:nr]).view(n, Nq)
        rm.add_(row_bias[:n])  # best live sentence of every live view
        q = torch.argmax(rm, dim=1, out=qs[k, :n])  # first (lowest) view holding the pair's maximum
        col = flat.index_select(0, (view_col[:n] + q[:, None]).view(-1)).view(n, S)
        s = torch.argmax(col, dim=1, out=ss[k, :n])  # first (lowest) sentence of that view holding it
        if k + 1 == K:
            break
        row_bias.view(-1).index_fill_(0, bias_row[:n] + q, neg_inf)  # delete the view ...
        sent_rows.index_fill_(0, torch.add(sent0[:n], s, alpha=Bi), neg_inf)  # ... and the sentence
    # back from (step, rank, image) to pair p = i * B_rep + j
    qs = qs.view(K, Br, Bi).index_select(1, rank).permute(2, 1, 0).reshape(P, K).contiguous()
    ss = ss.view(K, Br, Bi).index_select(1, rank).permute(2, 1, 0).reshape(P, K).contiguous()
    return qs, ss, qs >= 0


def pva_similarity(V, F, sentence_mask=None, *, return_matches: bool = False, chunk_size: int | None = None):
    """Vectorised PVA (Algorithm 1) between every image and every report of a batch.

    ``V`` ``(B_img, N_q, d)``, ``F`` ``(B_rep, S, d)``, ``sentence_mask`` ``(B_rep, S)`` (True = real
    sentence; ``None`` = all real). Returns the ``(B_img, B_rep)`` similarity matrix, differentiable
    through the matched cosines; with ``return_matches=True`` also a ``(B_img, B_rep, K, 2)`` long
    tensor of (view, sentence) pairs in the order taken, ``-1`` where fewer than ``K = min(N_q, S)``
    pairs exist. Identical matches to :func:`pva_literal` (tested). Only the real sentences enter the
    cosine GEMM. ``chunk_size`` images at a time bounds memory (``chunk_size * B_rep * N_q * S`` floats)
    for large retrieval evaluations.

    Bad input: a report with no sentence, NaN/inf embeddings, mismatched shapes -> ConfigError.
    Introduced in ``08_brat_pretraining``.
    """
    V, F, mask = _check_views_sentences(V, F, sentence_mask)
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk_size: expected a positive integer or None, found {chunk_size}")
    B_img, Nq, d = V.shape
    B_rep, S = F.shape[:2]
    real, row_of = _real_sentences(mask)
    F_real = F.reshape(B_rep * S, d)
    if real.numel() < B_rep * S:
        F_real = F_real.index_select(0, real)  # (R, d): padded sentences never enter the GEMM
    R = F_real.shape[0]
    n_matched = mask.sum(dim=1).clamp(max=Nq).to(V.dtype)  # min(N_q, S_j) pairs per report
    report_at = (torch.arange(B_rep, device=V.device) * S)[None, :, None]
    row_or_0 = row_of.view(-1).clamp(min=0)  # padding -> row 0, only read by invalid (zeroed) steps
    step = B_img if chunk_size is None else chunk_size
    sims, all_matches = [], []
    for start in range(0, B_img, step):
        Vc = V[start:start + step]
        b = Vc.shape[0]
        cos = F_real @ Vc.reshape(b * Nq, d).T  # (R, b * N_q): sentence r against view q of image i
        qs, ss, valid = _greedy_matches(cos.view(R, b, Nq), mask, real)
        K = qs.shape[1]
        qs, ss, valid = qs.view(b, B_rep, K), ss.view(b, B_rep, K), valid.view(b, B_rep, K)
        # flat index into cos of every matched cosine (invalid steps point at entry 0 and are zeroed)
        r = row_or_0.index_select(0, (report_at + ss.clamp(min=0)).view(-1)).view(b, B_rep, K)
        view_at = (torch.arange(b, device=V.device) * Nq)[:, None, None] + qs.clamp(min=0)
        picked = cos.view(-1).index_select(0, torch.add(view_at, r, alpha=b * Nq).view(-1))  # with gradient
        sims.append((picked.view(b, B_rep, K) * valid).sum(-1) / n_matched)
        if return_matches:
            all_matches.append(torch.stack([qs, ss], dim=-1))
    sim = torch.cat(sims, 0)
    if return_matches:
        return sim, torch.cat(all_matches, 0)
    return sim


def pva_optimal_similarity(V, F, sentence_mask=None) -> torch.Tensor:
    """PVA with the optimal one-to-one matching (Hungarian algorithm) instead of the greedy one.

    Maximises the sum of matched cosines over all matchings of ``min(N_q, S_j)`` pairs with
    ``scipy.optimize.linear_sum_assignment``; the similarity is their mean, differentiable through the
    cosines. A Python loop over the ``B_img x B_rep`` pairs (scipy runs on CPU): fine for ablations and
    analysis, slower than :func:`pva_similarity` in training. Its value is always >= the greedy one.
    """
    from scipy.optimize import linear_sum_assignment

    V, F, mask = _check_views_sentences(V, F, sentence_mask)
    cos = _cosines(V, F)
    cos_np = cos.detach().cpu().double().numpy()
    mask_np = mask.cpu().numpy()
    rows_all, cols_all, img_all, rep_all, counts = [], [], [], [], []
    for i in range(V.shape[0]):
        for j in range(F.shape[0]):
            keep = np.flatnonzero(mask_np[j])
            r, c = linear_sum_assignment(cos_np[i, j][:, keep], maximize=True)
            rows_all.append(r)
            cols_all.append(keep[c])
            img_all.append(np.full(len(r), i))
            rep_all.append(np.full(len(r), j))
            counts.append(len(r))
    ii = torch.as_tensor(np.concatenate(img_all), device=cos.device)
    jj = torch.as_tensor(np.concatenate(rep_all), device=cos.device)
    qq = torch.as_tensor(np.concatenate(rows_all), device=cos.device)
    ss = torch.as_tensor(np.concatenate(cols_all), device=cos.device)
    vals = cos[ii, jj, qq, ss]
    flat = ii * F.shape[0] + jj
    sums = torch.zeros(V.shape[0] * F.shape[0], dtype=cos.dtype, device=cos.device).index_add(0, flat, vals)
    out = sums / torch.as_tensor(counts, dtype=cos.dtype, device=cos.device)
    return out.view(V.shape[0], F.shape[0])


def colbert_similarity(V, F, sentence_mask=None) -> torch.Tensor:
    """ColBERT-style late interaction (the paper's "Colbert" ablation): for each sentence the cosine of
    its most similar view (views may be reused), averaged over the report's real sentences.
    ``(B_img, B_rep)``, differentiable."""
    V, F, mask = _check_views_sentences(V, F, sentence_mask)
    best = _cosines(V, F).amax(dim=2)  # (B_img, B_rep, S)
    m = mask[None].to(best.dtype)
    return (best * m).sum(-1) / m.sum(-1)


def multiview_similarity(V, F, sentence_mask=None, *, method: str = "pva") -> torch.Tensor:
    """Image-report similarity by ``method``: ``"pva"`` (greedy, Algorithm 1), ``"optimal"`` (Hungarian)
    or ``"colbert"`` -- the matching ablations of notebook 09."""
    if method == "pva":
        return pva_similarity(V, F, sentence_mask)
    if method == "optimal":
        return pva_optimal_similarity(V, F, sentence_mask)
    if method == "colbert":
        return colbert_similarity(V, F, sentence_mask)
    raise ConfigError(f"method: expected one of 'pva', 'optimal', 'colbert', found {method!r}")


# ------------------------------------------------------------------------------------------- DPP
def _check_attention(C, name: str = "C (cross-attention maps)") -> torch.Tensor:
    C = _as_tensor(C, name)
    if C.dim() == 4:  # (B, heads, N_q, D): average the heads
        C = C.mean(dim=1)
    if C.dim() not in (2, 3):
        raise ConfigError(
            f"{name}: expected shape (N_q, D), (B, N_q, D) or (B, heads, N_q, D), found {tuple(C.shape)}"
        )
    if C.shape[-1] == 0 or C.shape[-2] == 0:
        raise ConfigError(f"{name}: expected at least one query and one image token, found {tuple(C.shape)}")
    _check_finite(C, name)
    if bool((C < 0).any()):
        raise ConfigError(f"{name}: expected attention probabilities (>= 0), found a minimum of {float(C.min()):.3g}")
    return C


def attention_entropy(C) -> torch.Tensor:
    """Shannon entropy ``h_i = -sum_k c_i(k) log c_i(k)`` (nats) of each attention map (equation 1).

    ``C``: ``(..., N_q, D)`` with rows summing to one (softmax attention); returns ``(..., N_q)``.
    ``0 log 0 = 0``. Introduced in ``08_brat_pretraining``.
    """
    C = _check_attention(C)
    tiny = torch.finfo(C.dtype).tiny
    return -(C * torch.log(C.clamp_min(tiny))).sum(-1)


def dpp_kernel(C) -> torch.Tensor:
    """DPP kernel ``L_ij = h_i c_i^T c_j h_j`` (equation 2), ``(..., N_q, N_q)``."""
    C = _check_attention(C)
    G = attention_entropy(C)[..., None] * C
    return G @ G.transpose(-1, -2)


def dpp_loss(C, *, eps: float = 1e-4, normalize: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Quality-diversity loss ``-log det(L + eps I)`` (equation 5) of the queries' attention maps.

    ``C``: cross-attention probabilities ``(N_q, D)``, ``(B, N_q, D)`` or ``(B, heads, N_q, D)`` (heads
    averaged); average layers yourself before calling. ``eps`` > 0 keeps a singular kernel (collapsed
    queries, ``L`` of rank one) finite: the loss is then about ``-(N_q - 1) log eps``. The log-det is
    taken in float64 through a Cholesky factorisation. ``normalize=True`` divides by ``N_q``.
    ``reduction``: ``"mean"`` or ``"sum"`` over the batch, or ``"none"``.

    At initialisation the maps are nearly identical and this term's gradient, which grows like
    ``1/eps`` close to collapse, can swamp InfoNCE: scale it with a weight (ramp it in with
    :func:`linear_warmup`), raise ``eps`` or use ``normalize``. Measured on this machine (32 queries,
    64 tokens, attention = softmax of N(0, 0.01^2) logits, batch 8): gradient norm w.r.t. the logits
    9.7 at eps=1e-4, 0.13 at 1e-2, 0.013 at 1e-1 (about 1/eps from 1e-2 up).

    With fewer image tokens ``D`` than queries (MONAI's DenseNet121 leaves 4 tokens at 64x64x32), ``L``
    has rank at most ``D``: the loss cannot fall below about ``-(N_q - D) log eps`` however diverse the
    maps are, and only ``D`` directions can be spread. Introduced in ``08_brat_pretraining``.
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ConfigError(
            f"eps: expected a positive number (a singular DPP kernel has log det = -inf without it), found {eps!r}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction: expected 'mean', 'sum' or 'none', found {reduction!r}")
    C = _check_attention(C)
    L = dpp_kernel(C).double()
    n = L.shape[-1]
    eye = torch.eye(n, dtype=L.dtype, device=L.device)
    chol, info = torch.linalg.cholesky_ex(L + eps * eye)
    if bool((info > 0).any()):
        raise ConfigError(
            f"eps: L + eps*I is not positive definite in float64 with eps={eps:g}; use a larger eps"
        )
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    loss = -logdet
    if normalize:
        loss = loss / n
    loss = loss.to(C.dtype)
    if reduction == "none" or loss.dim() == 0:
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


def mean_pairwise_cosine(X) -> torch.Tensor:
    """Mean cosine similarity over distinct pairs of rows, ``X`` ``(..., N, d)`` -> ``(...)``.

    Applied to attention maps ``(B, N_q, D)`` it is the collapse measure of notebook 08 / 09's gate
    (1 = all queries attend alike). Needs ``N >= 2``.
    """
    X = _as_tensor(X, "X")
    if X.dim() < 2 or X.shape[-2] < 2:
        raise ConfigError(f"X: expected shape (..., N, d) with N >= 2, found {tuple(X.shape)}")
    _check_finite(X, "X")
    Xn = nnf.normalize(X, dim=-1)
    G = Xn @ Xn.transpose(-1, -2)
    n = X.shape[-2]
    off = G.sum((-1, -2)) - torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
    return off / (n * (n - 1))


def pairwise_repulsion_loss(X, *, reduction: str = "mean") -> torch.Tensor:
    """Pairwise repulsion, the simpler diversity term of the paper's ablation ("brat with pairwise
    repulsion"): the mean off-diagonal cosine similarity of the multi-view embeddings ``X``
    ``(B, N_q, d)`` (or of the attention maps), minimised. Unlike the DPP it has no quality term, so
    nothing stops each query from attending to a single token."""
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction: expected 'mean', 'sum' or 'none', found {reduction!r}")
    loss = mean_pairwise_cosine(X)
    if reduction == "none" or loss.dim() == 0:
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


def linear_warmup(step: int, weight: float, warmup_steps: int) -> float:
    """Loss weight ramped linearly from 0 to ``weight`` over ``warmup_steps`` (0 -> constant ``weight``);
    the DPP knob of notebook 08."""
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps: expected >= 0, found {warmup_steps}")
    if warmup_steps == 0:
        return float(weight)
    return float(weight) * min(1.0, max(0, step) / warmup_steps)


# ---------------------------------------------------------------------------------------- InfoNCE
class LearnableTemperature(nn.Module):
    """CLIP's learnable temperature: stores ``log(1/tau)`` and returns the logit scale ``1/tau``,
    clamped to ``max_scale`` (100, as CLIP) so it cannot run away. Introduced in ``08_brat_pretraining``."""

    def __init__(self, init_tau: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        if not (0 < init_tau and 1.0 / init_tau <= max_scale):
            raise ConfigError(f"init_tau: expected 1/max_scale <= tau, found tau={init_tau}, max_scale={max_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_tau)))
        self.max_scale = float(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)


# -------------------------------------------------------------------------------------------- ITG
def itg_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.1,
             shift: bool = True, ignore_index: int = -100) -> torch.Tensor:
    """BLIP-2's image-grounded text generation loss: next-token cross-entropy of a language-model head.

    ``logits`` ``(B, T, V)``, ``labels`` ``(B, T)`` with ``ignore_index`` (-100) on padding / prompt
    tokens. ``shift=True`` predicts token ``t+1`` from position ``t`` (labels aligned with the inputs,
    the transformers convention); ``shift=False`` when labels are already shifted. BLIP-2's Q-Former LM
    head uses label smoothing 0.1, hence the default. The image grounding (text attending to the
    queries) is the model's business; this is only the loss. All labels ignored -> ConfigError.
    """
    logits = _as_tensor(logits, "logits")
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ConfigError(
            f"logits, labels: expected (B, T, V) and (B, T), found {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if shift:
        logits = logits[:, :-1]
        labels = labels[:, 1:]
    if not bool((labels != ignore_index).any()):
        raise ConfigError(f"labels: expected at least one target token, found all equal to {ignore_index}")
    _check_finite(logits, "logits")
    return nnf.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
        ignore_index=ignore_index, label_smoothing=label_smoothing,
    )
