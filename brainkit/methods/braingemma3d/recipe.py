"""BrainGemma3D's recipe. Notebook ``04_inflating_encoders``: the profile's inflation of a 2D tower, the lesion-side
accuracy of a tower + :class:`~.model.SlabSideProbe`, and the short 3D fine-tune of both that compares an inflated
pretrained tower with a random one. Notebooks ``05_braingemma3d_training`` and ``06_braingemma3d_evaluation``: the
report model with the profile's compressor and token count (:func:`build_vlm`), one training stage through
:func:`brainkit.train.fit` with its checkpoint (:func:`run_stage`), and the trained model rebuilt from that
checkpoint's own settings (:func:`load_trained`), so 06 reloads whatever 05 trained.

Functions here compute and return; they never draw (the notebook plots the curves they return).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError
from ...generation import ReportVLM
from ...train import fit, seed_everything
from .data import flip_lr
from .inflate import VisionTower3D, inflate_vision_tower
from .model import SlabSideProbe

__all__ = ["inflated_tower", "side_accuracy", "finetune_side_probe", "vlm_settings", "build_vlm", "contrastive_loss_fn",
           "report_loss_fn", "run_stage", "stage_settings", "load_trained"]


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


# --------------------------------------------------------------------------------------------
# the report model: build, train a stage, reload (notebooks 05 and 06)
# --------------------------------------------------------------------------------------------
MAX_REPORT_TOKENS = 256


def vlm_settings(cfg: Any) -> dict[str, Any]:
    """The report model's settings taken from the profile: compressor (``cfg.gemma_compressor``), visual token count
    (``cfg.gemma_num_tokens``), LoRA rank (``cfg.gemma_lora_rank``) and the longest report. :func:`run_stage` writes
    them into every stage checkpoint; :func:`load_trained` rebuilds the model from them."""
    return {"compressor": str(cfg.gemma_compressor), "num_tokens": int(cfg.gemma_num_tokens),
            "lora_rank": int(cfg.gemma_lora_rank), "max_report_tokens": MAX_REPORT_TOKENS}


def build_vlm(tower: nn.Module, lm: nn.Module, tokenizer: Any, settings: Mapping[str, Any] | Any) -> ReportVLM:
    """A :class:`~brainkit.generation.ReportVLM` of ``tower`` and ``lm`` with ``settings`` (a profile, or the mapping
    of :func:`vlm_settings` / :func:`stage_settings`); without LoRA (:meth:`ReportVLM.add_lora` before Phase 2B)."""
    s = settings if isinstance(settings, Mapping) else vlm_settings(settings)
    return ReportVLM(tower, lm, tokenizer, compressor=s["compressor"], num_tokens=s["num_tokens"],
                     max_report_tokens=s.get("max_report_tokens", MAX_REPORT_TOKENS))


def contrastive_loss_fn(tau: float) -> Callable[[ReportVLM, tuple], torch.Tensor]:
    """Phase 1's loss for :func:`brainkit.train.fit` on ``(volumes, reports)`` batches: symmetric InfoNCE at
    temperature ``tau`` (``cfg.gemma_tau``)."""
    def loss_fn(m: ReportVLM, batch: tuple) -> torch.Tensor:
        return m.contrastive_loss(batch[0], batch[1], 1 / tau)
    return loss_fn


def report_loss_fn(m: ReportVLM, batch: tuple) -> torch.Tensor:
    """Phases 2A and 2B's loss on ``(volumes, reports)`` batches: next-token cross-entropy of the reports."""
    return m.loss(batch[0], batch[1])


def run_stage(model: ReportVLM, stage: str, loss_fn: Callable, *, steps: int, train_loader, val_loader, lr: float,
              folder: str | os.PathLike, seed: int, settings: Mapping[str, Any], callbacks: Sequence[Any] = (),
              desc: str | None = None, check_batch: tuple | None = None) -> dict[str, Any]:
    """Train ``model``'s ``stage`` (``"phase1"``, ``"phase2a"`` or ``"phase2b"``, :meth:`ReportVLM.set_stage`) for
    ``steps`` steps of AdamW at ``lr`` through :func:`brainkit.train.fit` (validation loss each epoch, the best
    epoch restored), then write ``folder/stage.safetensors`` with ``settings`` (:func:`vlm_settings`) in it.

    With ``check_batch`` ``(volumes, reports)`` the checkpoint is proved: reloaded into a copy whose stage tensors
    were scrambled, it must give back the same loss on that batch (else :class:`~brainkit.errors.CheckpointError`).
    Returns one row: steps, seconds, final training loss, best validation loss and epoch, trainable tensors, the
    checkpoint path and, with ``check_batch``, the losses before / scrambled / reloaded."""
    folder = Path(folder)
    names = model.set_stage(stage)
    t = time.perf_counter()
    model.train()
    epochs = max(1, -(-int(steps) // max(1, len(train_loader))))
    res = fit(model, train_loader, loss_fn=loss_fn, epochs=epochs, max_steps=steps,
              optimizer=torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr),
              val_loader=val_loader, out_dir=folder, seed=seed, desc=desc or stage, callbacks=list(callbacks))
    model.eval()
    path = model.save_stage(folder / "stage.safetensors", stage=stage, steps=int(steps), best_epoch=res.best_epoch,
                            settings=dict(settings))
    last = res.history["epochs"][-1]
    row = {"steps": int(steps), "seconds": time.perf_counter() - t, "final_train_loss": last["train_loss"],
           "best_val_loss": res.best_metric, "best_epoch": res.best_epoch, "trainable_tensors": len(names),
           "checkpoint": str(path)}
    if check_batch is not None:
        row.update(_reload_check(model, path, loss_fn, check_batch))
    return row


@torch.no_grad()
def _reload_check(model: ReportVLM, path: Path, loss_fn: Callable, batch: tuple) -> dict[str, float]:
    clone = copy.deepcopy(model)
    keys = set(clone.stage_tensors())
    before = float(loss_fn(model, batch))
    for k, v in clone.state_dict().items():
        if k in keys and v.is_floating_point():
            v.add_(0.1 * torch.randn_like(v))
    scrambled = float(loss_fn(clone, batch))
    clone.load_stage(path)
    after = float(loss_fn(clone, batch))
    if abs(after - before) >= 1e-5 or abs(scrambled - before) <= 1e-4:
        raise CheckpointError(f"{path}: reloading does not restore the model (loss {before:.6f}, scrambled "
                              f"{scrambled:.6f}, reloaded {after:.6f})")
    return {"loss_before": before, "loss_scrambled": scrambled, "loss_reloaded": after,
            "reload_diff": abs(after - before)}


def stage_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings :func:`run_stage` wrote into the stage checkpoint ``path`` (compressor, visual tokens, LoRA
    rank, longest report); a missing file or a checkpoint without them raises
    :class:`~brainkit.errors.CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: stage checkpoint not found (run notebook 05 first)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("brainkit_meta", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a ReportVLM stage checkpoint ({exc})") from exc
    settings = meta.get("settings")
    want = ("compressor", "num_tokens", "lora_rank")
    if not isinstance(settings, dict) or any(k not in settings for k in want):
        raise CheckpointError(f"{path}: field 'settings' of the checkpoint's metadata: expected {', '.join(want)} "
                              f"(written by brainkit's run_stage), found {settings!r}")
    return settings


def load_trained(tower: nn.Module, lm: nn.Module, tokenizer: Any, folder: str | os.PathLike,
                 stage: str = "phase2b") -> tuple[ReportVLM, dict[str, Any]]:
    """The model that :func:`run_stage` trained into ``folder/<stage>/stage.safetensors``, rebuilt with the
    checkpoint's own settings (not today's profile): ``tower`` and ``lm`` supply the architecture (``lm`` is
    used as it is; pass a copy to keep the original without LoRA), the checkpoint the trained tensors. A
    Phase 2B checkpoint gets its LoRA rank first. Returns ``(model in eval mode, the checkpoint's metadata)``."""
    path = Path(folder) / stage / "stage.safetensors"
    settings = stage_settings(path)
    m = build_vlm(tower, lm, tokenizer, settings)
    if stage == "phase2b":
        m.add_lora(int(settings["lora_rank"]))
    info = m.load_stage(path)
    return m.eval(), info
