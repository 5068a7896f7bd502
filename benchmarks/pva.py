"""Benchmark: vectorised PVA against a literal Algorithm 1 (brat), measured in one run.

    python benchmarks/pva.py                      # batch 32, 32 queries, 20 sentences (issue target)
    python benchmarks/pva.py --batch 8 --repeats 1

Prints the median wall time of each implementation over ``--repeats`` runs on the same inputs, the
speed-up ratio, and whether every matched (view, sentence) pair is identical. The target of the course
is a speed-up of at least 20x with identical matches. Exits 1 if a match differs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from brainkit.methods.brat.losses import pva_similarity, pva_similarity_literal


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--sentences", type=int, default=20)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    g = torch.Generator().manual_seed(args.seed)
    V = torch.randn(args.batch, args.queries, args.dim, generator=g)
    F = torch.randn(args.batch, args.sentences, args.dim, generator=g)
    # reports of different lengths, as real ones are: 1..S real sentences, the rest padding
    lengths = torch.randint(1, args.sentences + 1, (args.batch,), generator=g)
    mask = torch.arange(args.sentences)[None] < lengths[:, None]

    t_fast, (sim_fast, pairs) = _median_time(
        lambda: pva_similarity(V, F, mask, return_matches=True), args.repeats)
    t_lit, (sim_lit, matches) = _median_time(lambda: pva_similarity_literal(V, F, mask), args.repeats)

    n_pairs = args.batch * args.batch
    same = 0
    for i in range(args.batch):
        for j in range(args.batch):
            fast = [tuple(p) for p in pairs[i, j].tolist() if p[0] >= 0]
            same += fast == matches[i][j]
    max_diff = (sim_fast.double() - sim_lit).abs().max().item()

    print(f"PVA at batch {args.batch} x {args.batch} image-report pairs, {args.queries} queries, "
          f"{args.sentences} sentences (max), d={args.dim}; median of {args.repeats} runs")
    print(f"  literal Algorithm 1 : {t_lit * 1e3:10.1f} ms")
    print(f"  vectorised          : {t_fast * 1e3:10.1f} ms")
    print(f"  speed-up            : {t_lit / t_fast:10.1f} x   (target >= 20 x)")
    print(f"  identical matches   : {same} / {n_pairs} pairs; largest similarity difference {max_diff:.2e}")
    return 0 if same == n_pairs and max_diff < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
