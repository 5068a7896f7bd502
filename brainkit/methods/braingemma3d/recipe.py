"""BrainGemma3D's recipe, introduced in notebook ``04_inflating_encoders``: the profile's inflation of a 2D tower,
the lesion-side accuracy of a tower + :class:`~.model.SlabSideProbe`, and the short 3D fine-tune of both that
compares an inflated pretrained tower with a random one.

Functions here compute and return; they never draw (the notebook plots the curves they return).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...train import seed_everything
from .data import flip_lr
from .inflate import VisionTower3D, inflate_vision_tower
from .model import SlabSideProbe

__all__ = ["inflated_tower", "side_accuracy", "finetune_side_probe"]


def inflated_tower(m2d: nn.Module, init: str, cfg: Any) -> VisionTower3D:
    """``m2d`` inflated to 3D with the profile's depth kernel, depth stride and position embedding
    (``cfg.gemma_depth_kernel``, ``cfg.gemma_depth_stride``, ``cfg.gemma_pos``) and the inflation ``init``
    (``"centre"`` or ``"mean"``); ``m2d`` is copied, not changed. Introduced in ``04_inflating_encoders``."""
    return inflate_vision_tower(m2d, depth_kernel=cfg.gemma_depth_kernel, depth_stride=cfg.gemma_depth_stride,
                                init=init, pos=cfg.gemma_pos)


@torch.no_grad()
def side_accuracy(tower: nn.Module, probe: nn.Module, volumes: torch.Tensor, targets: torch.Tensor,
                  ix: Sequence[int], batch: int = 32) -> float:
    """The accuracy of ``probe(tower(volume)).argmax`` against ``targets`` (0 none, 1 left, 2 right) over the
    volumes ``volumes[ix]``, in batches of ``batch``, both modules in eval mode; afterwards both are put back in
    the training mode ``tower`` had. Introduced in ``04_inflating_encoders``."""
    was_training = tower.training
    tower.eval()
    probe.eval()
    pred = torch.cat([probe(tower(volumes[ix[j:j + batch]])).argmax(1) for j in range(0, len(ix), batch)])
    tower.train(was_training)
    probe.train(was_training)
    return float((pred == targets[ix]).float().mean())


def finetune_side_probe(m2d: nn.Module, init: str, heads: nn.Module, *, cfg: Any, volumes: torch.Tensor,
                        targets: torch.Tensor, idx: Mapping[str, Sequence[int]], grid: tuple[int, int, int],
                        seed: int, eval_every: int = 50):
    """The short 3D fine-tune of notebook ``04_inflating_encoders``: ``m2d`` inflated (:func:`inflated_tower`,
    ``init``) and a :class:`~.model.SlabSideProbe` starting from the side head ``heads`` on the token ``grid``,
    trained together on the lesion side ``targets`` (0 none, 1 left, 2 right) of the ``idx["train"]`` volumes.

    ``cfg.gemma_probe_steps`` steps of AdamW (``cfg.gemma_probe_lr``, one rate for tower and probe); each step
    draws ``cfg.gemma_probe_batch`` training volumes with replacement and flips each left-right with
    probability 1/2, its side swapped (:func:`~.data.flip_lr`), both draws from one ``torch.Generator`` seeded
    with ``seed`` (after :func:`brainkit.train.seed_everything` ``(seed)``, which fixes the initialisation), so
    every tower sees the same data. The validation accuracy (:func:`side_accuracy` on ``idx["val"]``) is
    measured at step 0, every ``eval_every`` steps and at the last step; the checkpoint with the best one (the
    earliest among ties) is loaded into the tower and probe returned.

    A plain step loop, not :func:`brainkit.train.fit`: it samples its batches by step from one generator and
    validates the untrained model at step 0, which ``fit``'s epoch loop does not; moving it through ``fit``
    would change the numbers the notebook's gates check.

    Returns ``(tower, probe, loss_curve, val_curve, best_step)``: the training loss of every step, and
    ``(step, validation accuracy)`` pairs.
    """
    seed_everything(seed)
    tw = inflated_tower(m2d, init, cfg).train()
    probe = SlabSideProbe(heads, grid).train()
    opt = torch.optim.AdamW([*tw.parameters(), *probe.parameters()], lr=cfg.gemma_probe_lr)
    g = torch.Generator().manual_seed(seed)
    train_ix = torch.tensor(idx["train"])
    curve, val_curve = [], [(0, side_accuracy(tw, probe, volumes, targets, idx["val"]))]
    best = (val_curve[0][1], 0, copy.deepcopy(tw.state_dict()), copy.deepcopy(probe.state_dict()))
    for step in range(1, cfg.gemma_probe_steps + 1):
        b = train_ix[torch.randint(len(train_ix), (cfg.gemma_probe_batch,), generator=g)]
        x, y = volumes[b], targets[b]
        flip = torch.rand(len(b), generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1, 1), flip_lr(x), x)
        y = torch.where(flip & (y > 0), 3 - y, y)  # left <-> right
        loss = F.cross_entropy(probe(tw(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
        if step % eval_every == 0 or step == cfg.gemma_probe_steps:
            val_curve.append((step, side_accuracy(tw, probe, volumes, targets, idx["val"])))
            if val_curve[-1][1] > best[0]:
                best = (val_curve[-1][1], step, copy.deepcopy(tw.state_dict()), copy.deepcopy(probe.state_dict()))
    tw.load_state_dict(best[2])
    probe.load_state_dict(best[3])
    return tw, probe, curve, val_curve, best[1]
