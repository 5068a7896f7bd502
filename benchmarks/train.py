"""Benchmark: one training step of each method's model on CPU, measured in one run.

    python benchmarks/train.py              # smoke and 1.5x the input side, 3 repeats (a few minutes on 2 cores)
    python benchmarks/train.py --quick      # smoke configuration only, 1 repeat, 2 steps (what the test runs)
    python benchmarks/train.py --methods medvisionllama,brat

For each method's model, built as its notebook builds it from the smoke profile (and at a larger size):

* training samples per second: median over ``--repeats`` of ``--steps`` optimiser steps (forward, backward,
  AdamW step) on random inputs of the real shapes, after one warm-up step;
* peak memory: parameters + the peak of the bytes of live tensors during one training step (activations,
  gradients, AdamW moments), counted op by op with benchmarks/memory.py's ``LiveBytes``;
* achieved FLOP/s: the FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` divided by the
  step's median time, and that as a fraction of a dense fp32 matmul's FLOP/s measured in the same run with
  the same threads (the ceiling a CPU reaches on the friendliest op).

Models in smoke use the profile's ``tiny:`` sources (MedVisionLlama's Llama layer, brat's BERT); offline or hub
weights would change the absolute figures, not what is measured.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import LiveBytes  # noqa: E402  (benchmarks/memory.py, beside this file)

MB = 1024**2


@dataclass
class Case:
    """One model at one configuration: how to build it, a batch, and the loss of a batch."""

    method: str
    config: str
    model: nn.Module
    batch: Any
    loss: Callable[[nn.Module, Any], torch.Tensor]
    batch_size: int
    shape: str


def _scaled(n: int, scale: float) -> int:
    """``n * scale`` rounded to a multiple of 8 (patch sizes and DenseNet strides divide it)."""
    return n if scale == 1 else max(8, int(round(n * scale / 8)) * 8)


def _loss_value(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------------------- the methods
def brainmri_gpt(cfg, scale: float, batch: int = 0) -> Case:
    """BrainMRI-GPT: the frozen CLIP + one patch decoder per layer, Dice+Focal on the masks (notebook 02);
    the step runs the frozen tower too (an epoch without cached features)."""
    from brainkit.methods import brainmri_gpt as cl

    size = _scaled(cfg.clip_image_size, scale)
    clip, tok = cl.load_clip(cfg.clip_source, image_size=size, patch_size=cfg.clip_patch_size, seed=0)
    model = cl.CLIPLocaliser(clip, cl.text_features(clip, tok), layers=cfg.clip_layers,
                             decoder_hidden=cfg.clip_decoder_hidden or None, temperature=cfg.clip_temperature)
    g = torch.Generator().manual_seed(0)
    b = batch or cfg.clip_batch_size
    batch = {"image": torch.rand(b, 3, size, size, generator=g),
             "mask": (torch.rand(b, size, size, generator=g) > 0.9).float()}
    loss_fn = cl.make_loss_fn()
    return Case("BrainMRI-GPT", "", model, batch, lambda m, x: _loss_value(loss_fn(m, x)), b, f"{size}x{size}")


def medvisionllama(cfg, scale: float, batch: int = 0) -> Case:
    """MedVisionLlama: 3D ViT + one frozen LLM layer through LoRA mappers, Dice+Focal (notebook 07)."""
    from brainkit.data.transforms import dhw_to_xyz
    from brainkit.hub import load_model
    from brainkit.methods import medvisionllama as mvl

    roi = dhw_to_xyz(cfg.mvl_roi_size or cfg.data_msd_volume_size)
    roi = tuple(_scaled(r, scale) for r in roi)
    conf = mvl.MVLConfig(in_channels=1, out_channels=1, img_size=roi, patch_size=dhw_to_xyz(cfg.mvl_patch_size),
                         hidden_size=cfg.mvl_hidden_size, mlp_dim=cfg.mvl_mlp_dim, num_layers=cfg.mvl_layers,
                         num_heads=cfg.mvl_heads, llm_position=cfg.mvl_llm_position, mapper=cfg.mvl_mapper,
                         lora_rank=cfg.mvl_lora_rank, decoder=cfg.mvl_decoder,
                         decoder_channels=cfg.mvl_decoder_channels,
                         input_skip=getattr(cfg, "mvl_input_skip", 0)).check()
    layer = mvl.FrozenLLMLayer.from_model(load_model(cfg.mvl_llm_source, kind="causal_lm", seed=0),
                                          cfg.mvl_llm_layer, source=cfg.mvl_llm_source)
    model = mvl.MedVisionLlama(conf, layer)
    g = torch.Generator().manual_seed(0)
    b = batch or cfg.mvl_batch_size
    x = torch.randn(b, 1, *roi, generator=g)
    y = (torch.rand(b, 1, *roi, generator=g) > 0.9).float()
    crit = mvl.build_loss(cfg.mvl_loss)
    return Case("MedVisionLlama", "", model, (x, y), lambda m, xy: crit(m(xy[0]), xy[1]), b,
                "x".join(map(str, roi)))


def brat(cfg, scale: float, batch: int = 0) -> Case:
    """brat: 3D DenseNet tokens + Q-Former queries, PVA-matched InfoNCE + DPP + ITG (notebook 08); the text
    encoder is frozen in smoke and its outputs cached, as pretrain() does."""
    from brainkit.hub import load_model, load_tokenizer
    from brainkit.methods import brat as B

    src = "tiny:bert"
    dhw = cfg.brat_volume_size or cfg.data_brat_volume_size
    xyz = tuple(_scaled(s, scale) for s in (dhw[2], dhw[1], dhw[0]))
    conf = B.config_from_profile(cfg, xyz)
    conf = B.BratConfig(**{**conf.__dict__, "bert_source": src}).validate()
    model = B.BratModel(conf, bert=load_model(src, kind="bert", seed=0)).train()
    tok = load_tokenizer(src)
    b = batch or cfg.brat_batch_size
    reports = ["A mass in the left frontal lobe. It enhances. No midline shift.", "Normal study. No mass.",
               "Right temporal lesion with oedema. Mild mass effect.",
               "Two small lesions. Both enhance in a ring. No hydrocephalus."]
    text = B.tokenize_reports(tok, [reports[i % 4] for i in range(b)], max_tokens=conf.max_text_tokens,
                              max_sentences=conf.max_sentences)
    if model.uses_queries and conf.itg_weight > 0:
        model.set_itg_vocab(text["input_ids"].flatten())
    if not conf.train_text:
        text["text_states"] = B.cache_text_states(model, text)
    g = torch.Generator().manual_seed(0)
    batch = {**text, "image": torch.randn(b, 1, *xyz, generator=g)}
    return Case("brat", "", model, batch, lambda m, x: _loss_value(m.loss(x)), b, "x".join(map(str, xyz)))


def braingemma3d(cfg, scale: float, batch: int = 0) -> Case:
    """BrainGemma3D: the 2D tower (``gemma_vision_source``) inflated to 3D (``gemma_depth_kernel`` /
    ``_stride``) -> Perceiver compressor -> projector -> a tiny random Gemma 3 language model, phase 2B
    (projector + LoRA on q/k/v/o), next-token cross-entropy on the report. The LM here is ``tiny:gemma3``
    unquantised: the real one (4-bit Gemma 3 270M in smoke) would dominate the step's time. The volume is the
    profile's ``data_gemma_volume_size``, batch 4."""
    from brainkit.generation import ReportVLM, load_language_model
    from brainkit.hub import load_model
    from brainkit.methods.braingemma3d.inflate import inflate_vision_tower

    d, h, w = cfg.data_gemma_volume_size
    d, h, w = _scaled(d, scale), _scaled(h, scale), _scaled(w, scale)
    v2d = load_model(cfg.gemma_vision_source, kind="siglip_vision", seed=0, vision_image_size=h)
    tower = inflate_vision_tower(v2d, depth_kernel=cfg.gemma_depth_kernel, depth_stride=cfg.gemma_depth_stride,
                                 init=cfg.gemma_init, pos=cfg.gemma_pos)
    lm, tok = load_language_model("tiny:gemma3", seed=0)
    model = ReportVLM(tower, lm, tok, num_tokens=32, max_report_tokens=128)
    model.add_lora()
    model.set_stage("phase2b")
    b = batch or 4  # no report-training batch in the profile yet (notebook 05 is not written)
    reports = ["A mass in the left frontal lobe with surrounding oedema. It enhances after contrast.",
               "No abnormality. Normal ventricles and midline."]
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(b, 1, d, h, w, generator=g)
    texts = [reports[i % 2] for i in range(b)]
    return Case("BrainGemma3D", "", model, (vol, texts), lambda m, x: m.loss(x[0], x[1]), b, f"{d}x{h}x{w}")


METHODS = {"brainmri_gpt": brainmri_gpt, "braingemma3d": braingemma3d, "medvisionllama": medvisionllama,
           "brat": brat}


# ---------------------------------------------------------------------------------------- measurement
def _step(case: Case, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    loss = case.loss(case.model, case.batch)
    loss.backward()
    opt.step()


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def static(case: Case) -> tuple[dict[str, float], torch.optim.Optimizer]:
    """Peak memory and FLOPs of one training step (the first step also creates the AdamW moments)."""
    model = case.model.train()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    opt = _optimizer(model)
    with LiveBytes() as counter:  # every tensor an op creates, freed with it
        _step(case, opt)
    from torch.utils.flop_counter import FlopCounterMode

    opt.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as fc:  # forward + backward; AdamW's elementwise work is not counted
        case.loss(model, case.batch).backward()
    return {"peak_mb": (param_bytes + counter.peak) / MB, "param_mb": param_bytes / MB,
            "flops": fc.get_total_flops()}, opt


def time_steps(case: Case, opt: torch.optim.Optimizer, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(case, opt)
    return (time.perf_counter() - t0) / steps


def matmul_time(a: torch.Tensor, b: torch.Tensor) -> float:
    t0 = time.perf_counter()
    for _ in range(4):
        a @ b
    return (time.perf_counter() - t0) / 4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--scale", type=float, default=1.5, help="the larger configuration: input side x this")
    ap.add_argument("--steps", type=int, default=1, help="optimiser steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--matmul", type=int, default=1024, help="side of the reference matmul")
    ap.add_argument("--batch", type=int, default=0, help="batch size of every model (0: the profile's)")
    ap.add_argument("--quick", action="store_true", help="smoke configuration only, 1 repeat of 2 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.matmul = 2, 1, 512
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    from brainkit.profiles import resolve

    cfg = resolve(args.profile)
    print(f"profile {cfg.name}; torch threads {torch.get_num_threads()}; {args.repeats} repeat(s) of {args.steps} "
          f"steps, medians; 'of matmul' = achieved FLOP/s / a dense fp32 {args.matmul}^2 matmul's GFLOP/s, "
          "timed between the same repeats")
    header = (f"{'method':15s} {'config':7s} {'input':>11s} {'batch':>5s} {'samples/s':>9s} {'step s':>7s} "
              f"{'peak MB':>8s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'of matmul':>9s}")
    print(header)
    print("-" * len(header))
    scales = [("smoke", 1.0)] + ([] if args.quick else [(f"x{args.scale:g}", args.scale)])
    a, b = torch.randn(args.matmul, args.matmul), torch.randn(args.matmul, args.matmul)
    a @ b
    rows = []
    for name in methods:
        cases, opts, stats = [], [], []
        for label, scale in scales:
            case = METHODS[name](cfg, scale, args.batch)
            case.config = label
            st, opt = static(case)
            cases.append(case)
            opts.append(opt)
            stats.append(st)
        # the repeats interleave the configurations and the reference matmul, so that a busy moment of a
        # shared machine hits all of them alike
        times: list[list[float]] = [[] for _ in cases]
        mm: list[float] = []
        for _ in range(args.repeats):
            for i, case in enumerate(cases):
                times[i].append(time_steps(case, opts[i], args.steps))
            mm.append(matmul_time(a, b))
        ref = 2 * args.matmul**3 / statistics.median(mm)
        for case, st, ts in zip(cases, stats, times):
            t = statistics.median(ts)
            r = {**st, "step_s": t, "samples_per_s": case.batch_size / t, "flop_s": st["flops"] / t}
            r["of_matmul"] = r["flop_s"] / ref
            rows.append((case, r))
            print(f"{case.method:15s} {case.config:7s} {case.shape:>11s} {case.batch_size:5d} "
                  f"{r['samples_per_s']:9.2f} {r['step_s']:7.3f} {r['peak_mb']:8.1f} {r['flops'] / 1e9:10.3f} "
                  f"{r['flop_s'] / 1e9:8.2f} {r['of_matmul']:9.1%}   (matmul {ref / 1e9:.1f} GFLOP/s)", flush=True)
        del cases, opts
    if not args.quick:
        print("larger / smoke:")
        by = {(c.method, c.config): r for c, r in rows}
        for c, r in rows:
            if c.config != "smoke":
                s = by[(c.method, "smoke")]
                print(f"  {c.method:15s} samples/s {r['samples_per_s'] / s['samples_per_s']:.2f}x   "
                      f"peak memory {r['peak_mb'] / s['peak_mb']:.2f}x   FLOP/step {r['flops'] / s['flops']:.2f}x")
    bad = [c.method for c, r in rows if not all(math.isfinite(v) and v > 0 for v in
                                                (r["samples_per_s"], r["peak_mb"], r["flops"], r["of_matmul"]))]
    if bad:
        print(f"non-positive or non-finite figures for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
