"""The one training loop every method uses: :func:`fit`, on accelerate's ``Accelerator``.

Introduced in ``00_quickstart``; every training notebook calls it.

What it does, so the notebooks don't have to:

- device placement, mixed precision and gradient accumulation through ``Accelerator``; the same
  code runs in several processes under ``torchrun`` / ``accelerate launch`` (the loader's batch is
  the *global* batch, split across processes, so the result does not depend on their number);
- a ``tqdm.auto`` progress bar; a history of step losses and per-epoch metrics saved as JSON;
- validation each epoch on a named metric (``monitor``), the best checkpoint chosen on validation
  (never on test) and restored at the end, early stopping after ``patience`` epochs;
- safetensors checkpoints written atomically (temporary file, then rename): ``best.safetensors``
  (weights) and ``last.safetensors`` (weights, optimiser, scheduler, random-number states, loop
  position). With ``resume=True`` an interrupted run continues from ``last`` and ends with the
  same weights as an uninterrupted one; a finished run is not trained again.

Checkpoints hold the *trainable* parameters and the persistent buffers only, so a LoRA stage on a
4-bit language model writes megabytes, not gigabytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .cache import publish
from .errors import CheckpointError, ConfigError

__all__ = ["fit", "FitResult", "TrainState", "StopAtStep", "save_weights", "load_weights", "to_device",
           "atomic_write_text", "atomic_save_tensors"]

log = logging.getLogger(__name__)

_STATE_KEY = "brainkit_state"


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------
def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` as safetensors to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        for v in batch.values():
            n = _batch_size(v)
            if n:
                return n
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = _batch_size(v)
            if n:
                return n
    return 0


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def _weight_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and persistent buffers, detached copies on CPU (no shared storage)."""
    keys = set(model.state_dict().keys())
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name] = p.detach().to("cpu").clone().contiguous()
    for name, b in model.named_buffers():
        if name in keys and b is not None:
            out[name] = b.detach().to("cpu").clone().contiguous()
    return out


def _fingerprint(model: nn.Module) -> str:
    """A hash of the trainable parameters' names and shapes: a checkpoint of another
    configuration does not match it."""
    items = sorted((n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad)
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save the trainable parameters and persistent buffers of ``model`` as safetensors, atomically."""
    path = Path(path)
    meta = {"format": "pt", "brainkit_fingerprint": _fingerprint(model),
            "brainkit_meta": json.dumps(dict(metadata or {}))}
    atomic_save_tensors(_weight_tensors(model), path, meta)
    return path


def _apply_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path,
                   require_all_trainable: bool) -> None:
    own = model.state_dict()
    unexpected = sorted(k for k in tensors if k not in own)
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in tensors.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = []
    if require_all_trainable:
        missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in tensors)
    if unexpected or mismatched or missing:
        def _few(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        parts = []
        if mismatched:
            parts.append(f"shape mismatch for {_few(mismatched)}")
        if unexpected:
            parts.append(f"tensors the model does not have: {_few(unexpected)}")
        if missing:
            parts.append(f"trainable parameters missing from the checkpoint: {_few(missing)}")
        raise CheckpointError(f"{path}: the checkpoint was written by another model configuration: "
                              + "; ".join(parts))
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].device, own[k].dtype))


def load_weights(model: nn.Module, path: str | os.PathLike, *, require_all_trainable: bool = True) -> dict:
    """Load weights written by :func:`save_weights` (or the ``model/`` part of ``last``) into ``model``.

    Raises :class:`~brainkit.errors.CheckpointError` naming the file when it is missing, corrupt or
    from another configuration (an unknown tensor, a shape mismatch, or — with
    ``require_all_trainable`` — a trainable parameter it does not hold). Returns its metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if any(k.startswith("model/") for k in tensors):
        tensors = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    _apply_weights(model, tensors, path, require_all_trainable)
    try:
        return json.loads(meta.get("brainkit_meta", "{}"))
    except json.JSONDecodeError:
        return {}


# --------------------------------------------------------------------------------------------
# optimiser / RNG state <-> safetensors + JSON
# --------------------------------------------------------------------------------------------
def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = val.detach().to("cpu").clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, vals in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng/torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s.clone()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)],
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    v, internal, g = meta["python"]
    random.setstate((v, tuple(internal), g))


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What callbacks see: the loop position, the last step's logs and the history so far."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    optimizer_steps: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    history: dict = field(default_factory=lambda: {"steps": [], "epochs": []})
    logs: dict = field(default_factory=dict)
    model: nn.Module | None = None


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    model: nn.Module
    history: dict
    best_metric: float | None
    best_epoch: int | None
    stopped_early: bool
    out_dir: Path | None
    resumed_from: dict | None = None

    @property
    def last(self) -> dict:
        """The last epoch's record (train loss, validation metrics, time)."""
        return self.history["epochs"][-1] if self.history["epochs"] else {}


class StopAtStep:
    """A callback that interrupts :func:`fit` after ``step`` steps (``0``: never), as a Colab disconnect or a
    kernel interrupt would: it raises ``KeyboardInterrupt`` at the end of that step, before the step's own
    checkpoint, so a second run with ``resume=True`` continues from the last checkpoint written before it (the
    notebooks use it to show resuming)."""

    def __init__(self, step: int):
        if int(step) < 0:
            raise ValueError(f"StopAtStep: step must be >= 0 (0 = never), got {step}")
        self.step = int(step)

    def on_step_end(self, state: TrainState) -> None:
        if self.step and state.global_step == self.step:
            raise KeyboardInterrupt(f"interrupted after step {state.global_step} (STOP_AT_STEP); "
                                    "run the notebook again with RESUME=True")


def _call(callbacks: Iterable[Any], hook: str, state: TrainState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is None and hook == "on_epoch_end" and callable(cb):
            fn = cb
        if fn is not None:
            fn(state)


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(out, tuple):
        loss, logs = out
    else:
        loss, logs = out, {}
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise ConfigError(f"loss_fn: expected a scalar tensor (or (tensor, dict)), found {type(loss).__name__}"
                          + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
    return loss, {k: float(v) for k, v in logs.items()}


def _default_evaluate(loss_fn: Callable, device: torch.device) -> Callable:
    def evaluate(model: nn.Module, loader: Iterable) -> dict[str, float]:
        total, count = 0.0, 0
        for batch in loader:
            batch = to_device(batch, device)
            loss, _ = _split_loss(loss_fn(model, batch))
            n = max(_batch_size(batch), 1)
            total += float(loss) * n
            count += n
        return {"val_loss": total / max(count, 1)}
    return evaluate


def _make_accelerator(mixed_precision: str, grad_accum: int, seed: int, cpu: bool | None):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import DataLoaderConfiguration

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process: let each fit() choose its own precision / accumulation.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        PartialState._reset_state()
    dl_cfg = DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=seed)
    kwargs = {}
    if cpu is not None:
        kwargs["cpu"] = cpu
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       dataloader_config=dl_cfg, **kwargs)


def _jsonable(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, Mapping):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        if isinstance(obj, torch.Tensor) and obj.numel() == 1:
            return obj.item()
        raise


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    loss_fn: Callable[[nn.Module, Any], Any],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    val_loader: Iterable | None = None,
    evaluate: Callable[[nn.Module, Iterable], Mapping[str, float]] | None = None,
    monitor: str = "val_loss",
    mode: str = "min",
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    scheduler: Any = None,
    scheduler_step: str = "step",
    grad_accum: int = 1,
    mixed_precision: str = "no",
    max_grad_norm: float | None = None,
    patience: int = 0,
    save_every_steps: int | None = None,
    callbacks: Iterable[Any] = (),
    seed: int = 0,
    max_steps: int | None = None,
    restore_best: bool = True,
    log_every: int = 10,
    desc: str = "train",
    cpu: bool | None = None,
) -> FitResult:
    """Train ``model`` and return a :class:`FitResult`.

    ``loss_fn(model, batch)`` returns the loss (or ``(loss, {name: value})`` to log more).
    ``evaluate(model, val_loader)`` returns validation metrics; by default the mean of
    ``loss_fn`` over ``val_loader``, logged as ``val_loss``. ``monitor`` names the metric that
    picks the best epoch (``mode`` "min" or "max"); it must be one that ``evaluate`` returns.
    Validation runs on every process over the whole ``val_loader`` (not sharded), so every
    process chooses the same best epoch.

    ``out_dir`` receives ``best.safetensors``, ``last.safetensors`` and ``history.json``;
    ``resume=True`` continues from ``last`` (or returns at once with the best weights if that
    run had finished). ``save_every_steps`` also writes ``last`` inside an epoch. Exact resume
    mid-epoch assumes a data pipeline that draws no random numbers from the global generators
    (augmentation seeded per sample, or none); at epoch boundaries it is exact in any case.
    ``scheduler`` is stepped after every optimiser step (``scheduler_step="step"``) or every
    epoch (``"epoch"``). ``max_steps`` caps the number of training batches over all epochs.
    """
    if epochs < 1:
        raise ConfigError(f"epochs: expected >= 1, found {epochs}")
    if mode not in ("min", "max"):
        raise ConfigError(f"mode: expected 'min' or 'max', found {mode!r}")
    if scheduler_step not in ("step", "epoch"):
        raise ConfigError(f"scheduler_step: expected 'step' or 'epoch', found {scheduler_step!r}")
    if grad_accum < 1:
        raise ConfigError(f"grad_accum: expected >= 1, found {grad_accum}")
    has_val = val_loader is not None
    if evaluate is not None and not has_val:
        raise ConfigError("evaluate was given without val_loader: pass the validation loader too")
    if has_val and evaluate is None and monitor != "val_loss":
        raise ConfigError(f"monitor={monitor!r} needs an evaluate function; the default evaluation "
                          "only returns 'val_loss'")
    callbacks = list(callbacks)

    acc = _make_accelerator(mixed_precision, grad_accum, seed, cpu)
    out = Path(out_dir) if out_dir is not None else None
    last_path = out / "last.safetensors" if out else None
    best_path = out / "best.safetensors" if out else None
    fingerprint = _fingerprint(model)

    if scheduler is not None:
        model, optimizer, train_loader, scheduler = acc.prepare(model, optimizer, train_loader, scheduler)
    else:
        model, optimizer, train_loader = acc.prepare(model, optimizer, train_loader)
    raw = acc.unwrap_model(model)
    device = acc.device
    eval_fn = evaluate or (_default_evaluate(loss_fn, device) if has_val else None)
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)

    state = TrainState(model=raw)
    resumed_from: dict | None = None
    restore_rng: tuple[dict, dict] | None = None
    if resume and last_path is not None and last_path.is_file():
        try:
            tensors = load_file(str(last_path))
            from safetensors import safe_open
            with safe_open(str(last_path), framework="pt") as fh:
                saved = json.loads((fh.metadata() or {})[_STATE_KEY])
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{last_path}: cannot resume from this checkpoint ({exc}); "
                                  "delete it to start afresh") from exc
        if saved["fingerprint"] != fingerprint:
            raise CheckpointError(f"{last_path}: written by another model configuration (trainable-parameter "
                                  f"fingerprint {saved['fingerprint']}, this model {fingerprint}); "
                                  "use another out_dir or delete the checkpoint")
        _apply_weights(raw, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, last_path, True)
        optimizer.load_state_dict(_unflatten_optimizer(tensors, saved["optimizer"]))
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        for key in ("epoch", "step_in_epoch", "global_step", "optimizer_steps", "best_metric", "best_epoch",
                    "bad_epochs", "finished", "stopped_early", "history"):
            setattr(state, key, saved[key])
        restore_rng = (tensors, saved["rng"])
        resumed_from = {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step}
        log.info("resuming from %s at epoch %d step %d", last_path, state.epoch, state.step_in_epoch)

    def write_last() -> None:
        if last_path is None:
            return
        acc.wait_for_everyone()
        if acc.is_main_process:
            tensors = {f"model/{k}": v for k, v in _weight_tensors(raw).items()}
            opt_t, opt_meta = _flatten_optimizer(optimizer.state_dict())
            rng_t, rng_meta = _rng_state()
            tensors.update(opt_t)
            tensors.update(rng_t)
            saved = {
                "fingerprint": fingerprint, "optimizer": _jsonable(opt_meta), "rng": rng_meta,
                "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
                "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
                "optimizer_steps": state.optimizer_steps, "best_metric": state.best_metric,
                "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs, "finished": state.finished,
                "stopped_early": state.stopped_early, "history": state.history,
            }
            atomic_save_tensors(tensors, last_path, {"format": "pt", _STATE_KEY: json.dumps(saved)})
            atomic_write_text(out / "history.json", json.dumps(state.history, indent=1))
        acc.wait_for_everyone()

    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None

    best_in_memory: dict[str, torch.Tensor] | None = None  # the best weights when there is no out_dir
    t_start = time.perf_counter()
    while not state.finished and state.epoch < epochs:
        if max_steps is not None and state.global_step >= max_steps:
            break
        epoch = state.epoch
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        loader = train_loader
        if state.step_in_epoch:
            loader = acc.skip_first_batches(train_loader, state.step_in_epoch)
        if restore_rng is not None and not state.step_in_epoch:
            # At an epoch boundary the state was saved before this epoch's loader started.
            _set_rng_state(*restore_rng)
            restore_rng = None
        iterator: Iterable = iter(loader)
        if restore_rng is not None:
            # Mid-epoch the state was saved after the loader had started and prefetched the next
            # batch; accelerate's loader starts lazily, so fetch the first batch, then restore.
            try:
                first = next(iterator)  # type: ignore[call-overload]
            except StopIteration:
                first = None
            _set_rng_state(*restore_rng)
            restore_rng = None
            iterator = itertools.chain([first], iterator) if first is not None else iter(())
        model.train()
        t_epoch = time.perf_counter()
        run_loss, run_n = 0.0, 0
        if state.step_in_epoch:
            prev = state.history.get("partial_epoch") or {}
            run_loss, run_n = prev.get("loss_sum", 0.0), prev.get("n", 0)
        bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, desc=f"{desc} {epoch + 1}/{epochs}",
                   disable=not acc.is_local_main_process, leave=False)
        stop_now = False
        for batch in iterator:
            with acc.accumulate(model):
                loss, logs = _split_loss(loss_fn(model, batch))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {float(loss.detach())} at epoch {epoch + 1}, "
                                             f"step {state.step_in_epoch + 1}")
                acc.backward(loss)
                if acc.sync_gradients and max_grad_norm is not None:
                    acc.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                if acc.sync_gradients:
                    state.optimizer_steps += 1
                    if scheduler is not None and scheduler_step == "step":
                        scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            lval = float(acc.reduce(loss.detach().clone(), reduction="mean")) if acc.num_processes > 1 \
                else float(loss.detach())
            run_loss += lval
            run_n += 1
            state.step_in_epoch += 1
            state.global_step += 1
            state.logs = {"loss": lval, **logs}
            if state.global_step % max(log_every, 1) == 0 or state.global_step == 1:
                lr = optimizer.param_groups[0]["lr"]
                state.history["steps"].append({"step": state.global_step, "epoch": epoch + 1,
                                               "loss": lval, "lr": lr, **logs})
            bar.update(1)
            bar.set_postfix(loss=f"{lval:.4f}")
            _call(callbacks, "on_step_end", state)
            if save_every_steps and state.global_step % save_every_steps == 0:
                state.history["partial_epoch"] = {"loss_sum": run_loss, "n": run_n}
                write_last()
            if max_steps is not None and state.global_step >= max_steps:
                stop_now = True
                break
        bar.close()
        state.history.pop("partial_epoch", None)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": run_loss / max(run_n, 1),
                                  "steps": state.global_step, "lr": optimizer.param_groups[0]["lr"]}
        if eval_fn is not None:
            model.eval()
            with torch.no_grad():
                metrics = dict(eval_fn(model, val_loader))
            if monitor not in metrics:
                raise ConfigError(f"monitor={monitor!r} is not among the validation metrics "
                                  f"{sorted(metrics)}")
            record.update({k: float(v) for k, v in metrics.items()})
            value = float(metrics[monitor])
            if math.isnan(value):
                raise FloatingPointError(f"{desc}: validation metric {monitor!r} is NaN at epoch {epoch + 1}")
            if state.best_metric is None or better(value, state.best_metric):
                state.best_metric, state.best_epoch, state.bad_epochs = value, epoch + 1, 0
                if best_path is not None:
                    acc.wait_for_everyone()
                    if acc.is_main_process:
                        save_weights(raw, best_path, {"epoch": epoch + 1, monitor: value})
                    acc.wait_for_everyone()
                elif restore_best:
                    best_in_memory = _weight_tensors(raw)
            else:
                state.bad_epochs += 1
        if scheduler is not None and scheduler_step == "epoch":
            scheduler.step()
        record["seconds"] = round(time.perf_counter() - t_epoch, 3)
        state.history["epochs"].append(record)
        state.epoch += 1
        state.step_in_epoch = 0
        if patience and eval_fn is not None and state.bad_epochs >= patience:
            state.stopped_early = True
            log.info("early stopping after epoch %d (no improvement in %d epochs)", epoch + 1, patience)
        if state.stopped_early or state.epoch >= epochs or stop_now:
            state.finished = True
        write_last()
        _call(callbacks, "on_epoch_end", state)
        if state.finished:
            break

    if restore_best and eval_fn is not None:
        if best_path is not None and best_path.is_file():
            load_weights(raw, best_path)
        elif best_in_memory is not None:
            _apply_weights(raw, best_in_memory, Path("<memory>"), True)
    if out is not None and acc.is_main_process:
        atomic_write_text(out / "history.json", json.dumps(state.history, indent=1))
    state.finished = True
    _call(callbacks, "on_fit_end", state)
    log.info("fit: %d steps in %.1f s", state.global_step, time.perf_counter() - t_start)
    return FitResult(model=raw, history=state.history, best_metric=state.best_metric, best_epoch=state.best_epoch,
                     stopped_early=state.stopped_early, out_dir=out, resumed_from=resumed_from)
