"""Benchmark: the data side of the course, measured in one run.

    python benchmarks/data.py              # the smoke profile's sizes, 3 repeats (about 1-2 min on 2 cores)
    python benchmarks/data.py --quick      # a few subjects, 1 repeat (seconds; what the test runs)

Prints, as medians over ``--repeats``:

* BrainPhantom generation: subjects per second in one process and in ``--jobs`` processes (ratio);
* preprocessing: volumes per second through MedVisionLlama's MSD chain and brat's chain (MONAI transforms
  reading the MSD Task01 files the phantom is written to);
* an epoch over the MSD chain from MONAI ``Dataset`` (every transform each epoch) against ``CacheDataset``
  (deterministic transforms once, then cached): the cache fill, then the cached epoch, and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _epoch(ds) -> int:
    from torch.utils.data import DataLoader

    n = 0
    for batch in DataLoader(ds, batch_size=2, num_workers=0):
        n += batch["image"].shape[0]
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--subjects", type=int, default=16, help="phantom subjects generated per repeat")
    ap.add_argument("--volumes", type=int, default=12, help="MSD volumes preprocessed / in the epoch")
    ap.add_argument("--jobs", type=int, default=2, help="generating processes for the parallel figure")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="4 subjects, 2 volumes, 1 repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.subjects, args.volumes, args.repeats = 4, 2, 1
    if args.subjects < 4:
        ap.error("--subjects: expected >= 4 (generate_cohort uses its processes from 4 subjects on)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Setting affine")  # MONAI's note on every resampled volume

    from monai.data import CacheDataset, Dataset

    from brainkit.data.formats import find_msd_task01, write_brats2020, write_msd_task01
    from brainkit.data.phantoms import generate_cohort
    from brainkit.data.transforms import brat_transforms, msd_transforms
    from brainkit.profiles import resolve

    cfg = resolve(args.profile)
    shape = tuple(cfg.data_volume_shape)
    print(f"profile {cfg.name}: phantom grid {shape}, MSD input {tuple(cfg.data_msd_volume_size)}, "
          f"brat input {tuple(cfg.data_brat_volume_size)}; {args.repeats} repeat(s), medians; "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")

    # Each figure's repeats are interleaved with those it is compared with, so that a busy moment of a
    # shared machine hits both sides of a ratio alike.
    def interleaved(*fns):
        times = [[] for _ in fns]
        for _ in range(args.repeats):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - t0)
        return [statistics.median(t) for t in times]

    # 1. phantom generation, serial and parallel
    generate_cohort(1, shape=shape)  # warm the template caches (loaded once per process)
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")  # Orientationd's labels default
    t1, tj = interleaved(lambda: generate_cohort(args.subjects, shape=shape, n_jobs=1),
                         lambda: generate_cohort(args.subjects, shape=shape, n_jobs=args.jobs))
    serial, parallel = args.subjects / t1, args.subjects / tj
    print(f"phantom subjects/s   : {serial:8.2f} (1 process)   {parallel:8.2f} ({args.jobs} processes)   "
          f"ratio {parallel / serial:.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        subjects = generate_cohort(args.volumes, shape=shape, n_jobs=args.jobs)
        write_msd_task01(Path(tmp) / "msd", subjects)
        cases = [{"image": str(c["image"]), "label": str(c["label"])} for c in find_msd_task01(Path(tmp) / "msd")]
        write_brats2020(Path(tmp) / "brats", subjects)  # brat's chain reads one 3D contrast (FLAIR)
        flair = [{"image": str(p)} for p in sorted((Path(tmp) / "brats").glob("*/*_flair.nii.gz"))]

        # 2. preprocessing throughput of two chains (one untimed pass first: file cache, lazy imports)
        msd, brat = msd_transforms(cfg), brat_transforms(cfg)
        msd(dict(cases[0]))
        brat(dict(flair[0]))
        t_msd, t_brat = interleaved(lambda: [msd(dict(c)) for c in cases], lambda: [brat(dict(c)) for c in flair])
        print(f"preprocess vol/s     : {len(cases) / t_msd:8.2f} (MedVisionLlama MSD chain: 4 channels + label)")
        print(f"preprocess vol/s     : {len(flair) / t_brat:8.2f} (brat chain: FLAIR of the BraTS 2020 layout)")

        # 3. an epoch uncached against cached (CacheDataset runs the deterministic steps once, when filled)
        train = msd_transforms(cfg, train=True)
        uncached = Dataset(cases, transform=train)
        holder = {}

        def fill():
            holder["ds"] = CacheDataset(cases, transform=train, cache_rate=1.0, num_workers=0, progress=False)

        fill()
        t_plain, t_fill, t_cached = interleaved(lambda: _epoch(uncached), fill, lambda: _epoch(holder["ds"]))
        assert _epoch(holder["ds"]) == _epoch(uncached) == len(cases)
        print(f"epoch of {len(cases):3d} volumes : {t_plain:8.3f} s uncached (Dataset)   {t_cached:8.3f} s cached "
              f"(CacheDataset; filling the cache {t_fill:.3f} s)")
        print(f"cached epoch speed-up: {t_plain / t_cached:8.1f}x   (10 epochs: {10 * t_plain:.1f} s uncached, "
              f"{t_fill + 10 * t_cached:.1f} s cached including the fill)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
