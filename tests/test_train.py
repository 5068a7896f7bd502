"""brainkit.train.fit: learning, validation-based selection, early stopping, checkpoints,
resume after a kill, and two processes against one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from brainkit.env import seed_everything
from brainkit.errors import CheckpointError, ConfigError
from brainkit.train import StopAtStep, fit, load_weights, save_weights

SCRIPT = Path(__file__).parent / "scripts" / "toy_fit.py"


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.05 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x).squeeze(1), y)


def make():
    seed_everything(0)
    model = nn.Linear(4, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def test_fit_learns_and_records_history(tmp_path):
    model, opt = make()
    res = fit(model, DataLoader(data(), batch_size=8, shuffle=True), loss_fn=loss_fn, optimizer=opt, epochs=5,
              val_loader=DataLoader(data(32, 1), batch_size=16), out_dir=tmp_path, log_every=1)
    losses = [e["val_loss"] for e in res.history["epochs"]]
    assert losses[-1] < 0.2 * losses[0]
    assert len(res.history["steps"]) == 5 * 8
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["epochs"] == res.history["epochs"]
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "last.safetensors").is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp"))


def test_best_epoch_is_chosen_on_validation_and_restored(tmp_path):
    # A "validation" metric that is best at epoch 2: the weights of epoch 2 must come back.
    model, opt = make()
    snapshots = {}

    def evaluate(m, loader):
        epoch = len(snapshots) + 1
        snapshots[epoch] = m.weight.detach().clone()
        return {"score": [0.1, 0.9, 0.5, 0.2][epoch - 1]}

    res = fit(model, DataLoader(data(), batch_size=8), loss_fn=loss_fn, optimizer=opt, epochs=4,
              val_loader=DataLoader(data(8, 1)), evaluate=evaluate, monitor="score", mode="max", out_dir=tmp_path)
    assert res.best_epoch == 2 and res.best_metric == 0.9
    assert torch.equal(model.weight, snapshots[2])
    assert not torch.equal(snapshots[4], snapshots[2])


def test_best_restored_without_out_dir():
    model, opt = make()
    seen = []

    def evaluate(m, loader):
        seen.append(m.weight.detach().clone())
        return {"val_loss": [0.5, 0.1, 0.3][len(seen) - 1]}

    res = fit(model, DataLoader(data(), batch_size=8), loss_fn=loss_fn, optimizer=opt, epochs=3,
              val_loader=DataLoader(data(8, 1)), evaluate=evaluate)
    assert res.best_epoch == 2 and torch.equal(model.weight, seen[1])


def test_early_stopping():
    model, opt = make()
    res = fit(model, DataLoader(data(), batch_size=8), loss_fn=loss_fn, optimizer=opt, epochs=20,
              val_loader=DataLoader(data(8, 1)), evaluate=lambda m, l: {"val_loss": 1.0}, patience=3)
    assert res.stopped_early and len(res.history["epochs"]) == 4 and res.best_epoch == 1


def test_gradient_accumulation_matches_big_batch():
    def run(bs, accum):
        model, opt = make()
        fit(model, DataLoader(data(), batch_size=bs), loss_fn=loss_fn, optimizer=opt, epochs=2, grad_accum=accum)
        return model.weight.detach().clone()

    assert torch.allclose(run(16, 1), run(8, 2), atol=1e-6)


def test_evaluate_without_val_loader_gets_none_and_selects(tmp_path):
    model, opt = make()
    seen = []

    def evaluate(m, loader):
        seen.append(loader)
        return {"score": -len(seen) if len(seen) != 2 else 0.0}  # epoch 2 is the best

    res = fit(model, DataLoader(data(), batch_size=8), loss_fn=loss_fn, optimizer=opt, epochs=3,
              evaluate=evaluate, monitor="score", mode="max", out_dir=tmp_path)
    assert seen == [None, None, None] and res.best_epoch == 2


def test_bad_arguments():
    model, opt = make()
    loader = DataLoader(data(), batch_size=8)
    with pytest.raises(ConfigError, match="epochs"):
        fit(model, loader, loss_fn=loss_fn, optimizer=opt, epochs=0)
    with pytest.raises(ConfigError, match="monitor"):
        fit(model, loader, loss_fn=loss_fn, optimizer=opt, epochs=1, val_loader=loader, monitor="dice")
    with pytest.raises(ConfigError, match="monitor"):
        fit(model, loader, loss_fn=loss_fn, optimizer=opt, epochs=1, val_loader=loader,
            evaluate=lambda m, l: {"dice": 0.5}, monitor="val_loss")
    with pytest.raises(ConfigError, match="scalar"):
        fit(model, loader, loss_fn=lambda m, b: m(b[0]), optimizer=opt, epochs=1)


def test_nan_loss_stops_with_clear_error():
    model, opt = make()
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(model, DataLoader(data(), batch_size=8), loss_fn=lambda m, b: loss_fn(m, b) * float("nan"),
            optimizer=opt, epochs=1)


def test_weights_roundtrip_and_mismatch(tmp_path):
    model, _ = make()
    path = save_weights(model, tmp_path / "w.safetensors", {"note": "x"})
    other = nn.Linear(4, 1)
    assert load_weights(other, path) == {"note": "x"}
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(CheckpointError, match="another model configuration"):
        load_weights(nn.Linear(5, 1), path)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(model, tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_weights(model, tmp_path / "bad.safetensors")


def test_only_trainable_parameters_are_saved(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    tensors = load_file(str(save_weights(model, tmp_path / "w.safetensors")))
    assert "0.weight" not in tensors and "2.weight" in tensors and "1.running_mean" in tensors


def test_resume_refuses_other_configuration(tmp_path):
    model, opt = make()
    fit(model, DataLoader(data(), batch_size=8), loss_fn=loss_fn, optimizer=opt, epochs=1, out_dir=tmp_path)
    other = nn.Linear(4, 2)
    with pytest.raises(CheckpointError, match="another model configuration"):
        fit(other, DataLoader(data(), batch_size=8), loss_fn=lambda m, b: m(b[0]).mean(),
            optimizer=torch.optim.SGD(other.parameters(), lr=0.1), epochs=2, out_dir=tmp_path, resume=True)


def test_stop_at_step_interrupts_then_resume_finishes(tmp_path):
    model, opt = make()
    loader = DataLoader(data(), batch_size=8)  # 8 steps per epoch
    with pytest.raises(KeyboardInterrupt, match="after step 6"):
        fit(model, loader, loss_fn=loss_fn, optimizer=opt, epochs=2, out_dir=tmp_path, save_every_steps=4,
            callbacks=[StopAtStep(6)])
    assert not (tmp_path / "history.json").exists() or json.loads((tmp_path / "history.json").read_text())["epochs"] == []
    model, opt = make()
    res = fit(model, loader, loss_fn=loss_fn, optimizer=opt, epochs=2, out_dir=tmp_path, resume=True,
              callbacks=[StopAtStep(0)])  # 0: never
    assert res.resumed_from is not None and res.resumed_from["global_step"] == 4  # the checkpoint before step 6
    assert len(res.history["epochs"]) == 2
    with pytest.raises(ValueError, match=">= 0"):
        StopAtStep(-1)


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def _weights(folder):
    return load_file(str(Path(folder) / "final.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [13, 8])  # mid-epoch (after a step checkpoint) and just before an epoch end
def test_killed_run_resumes_to_identical_weights(tmp_path, kill_at):
    ref = _run([tmp_path / "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = _run([tmp_path / "cut", "--kill-at-step", kill_at])
    assert killed.returncode == -9  # SIGKILL: no clean-up ran
    assert not (tmp_path / "cut" / "final.safetensors").exists()
    resumed = _run([tmp_path / "cut"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    info = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert info["resumed_from"] is not None and info["resumed_from"]["global_step"] > 0
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_hist = json.loads((tmp_path / "ref" / "result.json").read_text())["history"]
    for e1, e2 in zip(ref_hist, info["history"]):
        assert e1["val_loss"] == e2["val_loss"] and e1["train_loss"] == pytest.approx(e2["train_loss"], rel=1e-12)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU) against one process on the same global batch.
    Tolerance: 1e-6 absolute on every weight (float32 all-reduce sums in another order)."""
    one = _run([tmp_path / "one", "--dropout", "0"])
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    two = subprocess.run([torchrun, "--nproc_per_node", "2", str(SCRIPT), str(tmp_path / "two"), "--dropout", "0"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), (k, (a[k] - b[k]).abs().max())
    # the weights did move: the comparison is not between two initialisations
    seed_everything(0)
    assert not torch.allclose(a["3.weight"], torch.zeros_like(a["3.weight"]))
