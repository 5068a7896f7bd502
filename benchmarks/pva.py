"""Benchmark: vectorised PVA against a literal Algorithm 1 (brat), measured in one run.

    python benchmarks/pva.py                      # batch 32, 32 queries, 20 sentences (issue target)
    python benchmarks/pva.py --batch 8 --repeats 1
    python benchmarks/pva.py --threads 1          # one torch thread: steadier while other jobs run

Runs the two implementations on the same inputs in interleaved repeats (literal, vectorised, literal,
vectorised, ...), so that a change of machine load affects both alike, after one untimed warm-up call of
the vectorised version. In each repeat the vectorised version runs ``--fast-calls`` times back to back and
the median of those calls is its time for that repeat (its first call, right after the literal one has
churned the caches and the allocator, is slower; its median is printed too). Prints the median wall time
of each over the repeats with its min-max range, the speed-up (ratio of the medians) with the spread of
the per-repeat ratios (min, interquartile range, max), and whether every matched (view, sentence) pair
is identical. The target of the course is a speed-up of at least
50x with identical matches. Exits 1 if a match differs (or a similarity differs by 1e-5 or more).

With other jobs on the machine the timings still move (a busy core slows torch's thread pool more than
the single-threaded Python of the literal version): compare the per-repeat ratios, not single runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from brainkit.methods.brat.losses import pva_similarity, pva_similarity_literal


def _quantile(sorted_xs: list[float], f: float) -> float:
    """Linear-interpolation quantile of an already sorted list (works for a single value)."""
    pos = f * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _interleaved_times(fns, repeats: int, calls: list[int]) -> tuple[list[list[list[float]]], list[object]]:
    """Run ``fns`` in turn ``repeats`` times (A B A B ...), ``fns[k]`` ``calls[k]`` times back to back in
    each turn. Returns ``times[k][repeat]``, the wall time of every call, and the first output of each."""
    times: list[list[list[float]]] = [[] for _ in fns]
    outs: list[object] = [None] * len(fns)
    for r in range(repeats):
        for k, fn in enumerate(fns):
            turn = []
            for _ in range(calls[k]):
                t0 = time.perf_counter()
                out = fn()
                turn.append(time.perf_counter() - t0)
            times[k].append(turn)
            if r == 0:
                outs[k] = out
    return times, outs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--sentences", type=int, default=20)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats of each implementation")
    ap.add_argument("--fast-calls", type=int, default=3,
                    help="back-to-back calls of the vectorised version per repeat (their median is its time)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: leave torch's default); 1 is steadier on a busy machine")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats: expected at least 1")
    if args.fast_calls < 1:
        ap.error("--fast-calls: expected at least 1")
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    g = torch.Generator().manual_seed(args.seed)
    V = torch.randn(args.batch, args.queries, args.dim, generator=g)
    F = torch.randn(args.batch, args.sentences, args.dim, generator=g)
    # reports of different lengths, as real ones are: 1..S real sentences, the rest padding
    lengths = torch.randint(1, args.sentences + 1, (args.batch,), generator=g)
    mask = torch.arange(args.sentences)[None] < lengths[:, None]

    def fast():
        return pva_similarity(V, F, mask, return_matches=True)

    def literal():
        return pva_similarity_literal(V, F, mask)

    fast()  # warm-up (first-call allocations); the literal version is slow enough not to need one
    (lit_calls, fast_calls), ((sim_lit, matches), (sim_fast, pairs)) = _interleaved_times(
        [literal, fast], args.repeats, [1, args.fast_calls])
    t_lit = [turn[0] for turn in lit_calls]
    t_fast = [statistics.median(turn) for turn in fast_calls]  # one value per repeat
    t_cold = [turn[0] for turn in fast_calls]  # the first call right after the literal one

    n_pairs = args.batch * args.batch
    same = 0
    for i in range(args.batch):
        for j in range(args.batch):
            fast_ij = [tuple(p) for p in pairs[i, j].tolist() if p[0] >= 0]
            same += fast_ij == matches[i][j]
    max_diff = (sim_fast.double() - sim_lit).abs().max().item()

    med_lit, med_fast = statistics.median(t_lit), statistics.median(t_fast)
    ratios = sorted(a / b for a, b in zip(t_lit, t_fast))
    print(f"PVA at batch {args.batch} x {args.batch} image-report pairs, {args.queries} queries, "
          f"{args.sentences} sentences (max), d={args.dim}; {args.repeats} interleaved repeats "
          f"(literal once, vectorised {args.fast_calls}x per repeat), "
          f"{torch.get_num_threads()} torch threads")
    print(f"  literal Algorithm 1 : {med_lit * 1e3:10.1f} ms median   (min {min(t_lit) * 1e3:.1f}, "
          f"max {max(t_lit) * 1e3:.1f})")
    print(f"  vectorised          : {med_fast * 1e3:10.1f} ms median   (min {min(t_fast) * 1e3:.1f}, "
          f"max {max(t_fast) * 1e3:.1f}; first call after the literal: median "
          f"{statistics.median(t_cold) * 1e3:.1f})")
    print(f"  speed-up            : {med_lit / med_fast:10.1f} x   (target >= 50 x); per-repeat ratios: "
          f"min {ratios[0]:.1f}, IQR {_quantile(ratios, 0.25):.1f}-{_quantile(ratios, 0.75):.1f}, "
          f"max {ratios[-1]:.1f}")
    print(f"  identical matches   : {same} / {n_pairs} pairs; largest similarity difference {max_diff:.2e}")
    return 0 if same == n_pairs and max_diff < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
