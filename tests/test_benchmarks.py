"""The benchmark scripts run and measure what they claim (their timings are not asserted: see benchmarks/)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_pva_benchmark_checks_identical_matches(capsys):
    assert _load("pva").main(["--batch", "6", "--queries", "5", "--sentences", "4", "--dim", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "identical matches   : 36 / 36" in out and "speed-up" in out


def test_pva_benchmark_interleaves_repeats_and_reports_the_spread(capsys):
    mod = _load("pva")
    calls = []
    real_fast, real_literal = mod.pva_similarity, mod.pva_similarity_literal
    mod.pva_similarity = lambda *a, **k: calls.append("fast") or real_fast(*a, **k)
    mod.pva_similarity_literal = lambda *a, **k: calls.append("literal") or real_literal(*a, **k)
    argv = ["--batch", "3", "--queries", "4", "--sentences", "6", "--dim", "8",
            "--repeats", "3", "--fast-calls", "2"]
    assert mod.main(argv) == 0
    assert calls == ["fast"] + ["literal", "fast", "fast"] * 3  # one warm-up, then A B A B A B
    out = capsys.readouterr().out
    assert "3 interleaved repeats" in out and "per-repeat ratios: min" in out and "IQR" in out
    assert "first call after the literal" in out
    assert "identical matches   : 9 / 9" in out


def test_pva_benchmark_exits_1_when_a_match_differs(capsys):
    mod = _load("pva")
    real_fast = mod.pva_similarity

    def one_match_lost(*a, **k):
        sim, pairs = real_fast(*a, **k)
        pairs = pairs.clone()
        pairs[0, 0, 0] = -1  # image 0 and report 0 lose their first match
        return sim, pairs

    mod.pva_similarity = one_match_lost
    argv = ["--batch", "3", "--queries", "4", "--sentences", "6", "--dim", "8", "--repeats", "1"]
    assert mod.main(argv) == 1
    assert "identical matches   : 8 / 9" in capsys.readouterr().out


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


def _numbers(line):
    import re

    return [float(x) for x in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?:x|%)?(?![\w.])", line)]


@pytest.mark.slow
def test_data_benchmark_prints_rates_and_ratios(capsys):
    import math

    assert _load("data").main(["--quick"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if ":" in line}
    gen = lines["phantom subjects/s"]
    assert "1 process" in gen and "ratio" in gen
    prep = [line for line in out.splitlines() if line.startswith("preprocess vol/s")]
    assert len(prep) == 2 and "MSD chain" in prep[0] and "brat chain" in prep[1]
    epoch = next(line for line in out.splitlines() if line.startswith("epoch of"))
    assert "uncached (Dataset)" in epoch and "cached" in epoch
    speed = lines["cached epoch speed-up"]
    for line in (gen, *prep, epoch, speed):
        values = _numbers(line.split(":", 1)[1])
        assert values and all(math.isfinite(v) and v > 0 for v in values), line


@pytest.mark.slow
def test_train_benchmark_prints_throughput_memory_and_flop_fraction(capsys):
    import math

    assert _load("train").main(["--quick", "--methods", "brat", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "dense fp32" in out and "GFLOP/s" in out
    row = next(line for line in out.splitlines() if line.startswith("brat "))
    fields = row.split()
    assert fields[1] == "smoke" and len(fields) >= 10
    samples, step, peak, gflop, gflop_s = map(float, fields[4:9])
    fraction = float(fields[9].rstrip("%")) / 100
    for v in (samples, step, peak, gflop, gflop_s, fraction):
        assert math.isfinite(v) and v > 0, row
    assert abs(samples * step - int(fields[3])) < 0.02 * int(fields[3])  # samples/s = batch / step time
    assert fraction < 2  # a training step does not beat the dense matmul by much


def test_train_benchmark_refuses_unknown_method():
    with pytest.raises(SystemExit):
        _load("train").main(["--methods", "nope"])
