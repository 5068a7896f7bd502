"""The benchmark scripts run and measure what they claim (their timings are not asserted: see benchmarks/)."""

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pva_benchmark_checks_identical_matches(capsys):
    assert _load("pva").main(["--batch", "6", "--queries", "5", "--sentences", "4", "--dim", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "identical matches   : 36 / 36" in out and "speed-up" in out


def test_live_bytes_counts_and_frees_meta_tensors():
    mem = _load("memory")
    lin = torch.nn.Linear(100, 50, device="meta")
    x = torch.zeros(8, 100, device="meta")
    # no grad: the output (8 x 50 fp32) is the only allocation
    assert mem.peak_activation_bytes(lambda: lin(x), train=False) == 8 * 50 * 4
    with mem.LiveBytes() as counter:
        y = lin(x)
        assert counter.live == 8 * 50 * 4
        del y
        assert counter.live == 0


def test_fused_attention_never_holds_the_score_matrix():
    mem = _load("memory")
    q = torch.zeros(1, 2, 256, 16, device="meta")
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)  # noqa: E731
    fused = mem.peak_activation_bytes(sdpa, train=False, fused_attention=True)
    math = mem.peak_activation_bytes(sdpa, train=False, fused_attention=False)
    assert fused < 2 * 256 * 256 * 4 <= math  # the 2 x 256 x 256 fp32 scores exist only on the math path
