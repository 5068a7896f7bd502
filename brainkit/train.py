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
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from .cache import atomic_save_tensors, atomic_write_text
from .errors import CheckpointError, ConfigError

__all__ = ["fit", "FitResult", "TrainState", "StopAtStep", "save_weights", "load_weights", "to_device", "seed_everything"]

log = logging.getLogger(__name__)

_STATE_KEY = "brainkit_state"


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices); with ``deterministic`` ask torch for
    deterministic kernels (warn-only, so an op without one still runs)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative int, found {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # cuBLAS needs this for deterministic matmuls on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


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
    """An optimiser ``state_dict`` as ``optim/<param>/<key>`` tensors and a JSON part (groups, scalar states)."""
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
    """The inverse of :func:`_flatten_optimizer`: a ``state_dict`` for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, vals in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Capture the torch (CPU and every CUDA device), NumPy and Python generators: ``rng/*`` tensors and a
    JSON part."""
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
    """Restore the generators captured by :func:`_rng_state`."""
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
# last.safetensors: the checkpoint a run resumes from
# --------------------------------------------------------------------------------------------
# The loop position and selection state saved in ``last``, in the order they are written.
_LOOP_FIELDS = ("epoch", "step_in_epoch", "global_step", "optimizer_steps", "best_metric", "best_epoch",
                "bad_epochs", "finished", "stopped_early", "history")


def _jsonable(obj: Any) -> Any:
    """``obj`` made JSON-serialisable (string keys, lists for tuples, one-element tensors as numbers)."""
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


def _pack_last(raw: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainState,
               fingerprint: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of ``last``: weights (``model/*``), optimiser (``optim/*``) and random-number
    states (``rng/*``) as tensors; their JSON parts, the scheduler, the loop position and the history as JSON."""
    tensors = {f"model/{k}": v for k, v in _weight_tensors(raw).items()}
    opt_t, opt_meta = _flatten_optimizer(optimizer.state_dict())
    rng_t, rng_meta = _rng_state()
    tensors.update(opt_t)
    tensors.update(rng_t)
    saved = {
        "fingerprint": fingerprint, "optimizer": _jsonable(opt_meta), "rng": rng_meta,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        **{key: getattr(state, key) for key in _LOOP_FIELDS},
    }
    return tensors, {"format": "pt", _STATE_KEY: json.dumps(saved)}


def _read_last(path: Path, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the JSON state of the checkpoint ``path``; a :class:`~brainkit.errors.CheckpointError`
    if it is unreadable or was written for a model whose trainable parameters differ."""
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as fh:
            saved = json.loads((fh.metadata() or {})[_STATE_KEY])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot resume from this checkpoint ({exc}); "
                              "delete it to start afresh") from exc
    if saved["fingerprint"] != fingerprint:
        raise CheckpointError(f"{path}: written by another model configuration (trainable-parameter "
                              f"fingerprint {saved['fingerprint']}, this model {fingerprint}); "
                              "use another out_dir or delete the checkpoint")
    return tensors, saved


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


def _check_fit_arguments(epochs: int, mode: str, scheduler_step: str, grad_accum: int,
                         val_loader: Iterable | None, evaluate: Callable | None, monitor: str) -> None:
    """Refuse, with a :class:`~brainkit.errors.ConfigError`, settings :func:`fit` cannot honour."""
    if epochs < 1:
        raise ConfigError(f"epochs: expected >= 1, found {epochs}")
    if mode not in ("min", "max"):
        raise ConfigError(f"mode: expected 'min' or 'max', found {mode!r}")
    if scheduler_step not in ("step", "epoch"):
        raise ConfigError(f"scheduler_step: expected 'step' or 'epoch', found {scheduler_step!r}")
    if grad_accum < 1:
        raise ConfigError(f"grad_accum: expected >= 1, found {grad_accum}")
    if val_loader is not None and evaluate is None and monitor != "val_loss":
        raise ConfigError(f"monitor={monitor!r} needs an evaluate function; the default evaluation "
                          "only returns 'val_loss'")


@dataclass(eq=False)
class _Loop:
    """One call of :func:`fit` after ``accelerator.prepare``: its settings, the prepared objects, the
    :class:`TrainState` and what passes between the parts below (the RNG states to put back after a resume,
    the best weights kept in memory when there is no ``out_dir``)."""

    acc: Any
    model: nn.Module  # as prepared (possibly wrapped for several processes)
    raw: nn.Module  # the model itself: checkpoints, callbacks, the result
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    loss_fn: Callable[[nn.Module, Any], Any]
    eval_fn: Callable[[nn.Module, Iterable], Mapping[str, float]] | None
    val_loader: Iterable | None
    epochs: int
    monitor: str
    mode: str
    scheduler_step: str
    max_grad_norm: float | None
    patience: int
    save_every_steps: int | None
    callbacks: list
    max_steps: int | None
    restore_best: bool
    log_every: int
    desc: str
    out: Path | None
    fingerprint: str
    state: TrainState = field(init=False)
    resumed_from: dict | None = field(default=None, init=False)
    restore_rng: tuple[dict, dict] | None = field(default=None, init=False)
    best_in_memory: dict[str, torch.Tensor] | None = field(default=None, init=False)
    steps_per_epoch: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.state = TrainState(model=self.raw)
        self.last_path = self.out / "last.safetensors" if self.out else None
        self.best_path = self.out / "best.safetensors" if self.out else None

    # -- checkpoints ----------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``last`` if there is one: weights, optimiser, scheduler and loop state now, the RNG
        states later, when the epoch's loader has started (:meth:`_epoch_batches`)."""
        if self.last_path is None or not self.last_path.is_file():
            return
        tensors, saved = _read_last(self.last_path, self.fingerprint)
        _apply_weights(self.raw, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
                       self.last_path, True)
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, saved["optimizer"]))
        if self.scheduler is not None and saved.get("scheduler") is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        st = self.state
        for key in _LOOP_FIELDS:
            setattr(st, key, saved[key])
        self.restore_rng = (tensors, saved["rng"])
        self.resumed_from = {"epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "global_step": st.global_step}
        log.info("resuming from %s at epoch %d step %d", self.last_path, st.epoch, st.step_in_epoch)

    def write_last(self) -> None:
        """Write ``last`` and ``history.json`` (main process, between barriers); nothing without ``out_dir``."""
        if self.last_path is None:
            return
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            tensors, metadata = _pack_last(self.raw, self.optimizer, self.scheduler, self.state, self.fingerprint)
            atomic_save_tensors(tensors, self.last_path, metadata)
            atomic_write_text(self.out / "history.json", json.dumps(self.state.history, indent=1))
        self.acc.wait_for_everyone()

    # -- random-number states -------------------------------------------------------------------
    def _restore_rng(self) -> None:
        """Put back the RNG states read by :meth:`resume`, once."""
        _set_rng_state(*self.restore_rng)
        self.restore_rng = None

    def _epoch_batches(self, epoch: int) -> Iterable:
        """This epoch's batches, without those already done before a mid-epoch resume; the RNG states of a
        resume are put back where they were captured relative to the loader's start."""
        st = self.state
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        loader = self.train_loader
        if st.step_in_epoch:
            loader = self.acc.skip_first_batches(self.train_loader, st.step_in_epoch)
        if self.restore_rng is not None and not st.step_in_epoch:
            # At an epoch boundary the state was saved before this epoch's loader started.
            self._restore_rng()
        iterator: Iterable = iter(loader)
        if self.restore_rng is not None:
            # Mid-epoch the state was saved after the loader had started and prefetched the next
            # batch; accelerate's loader starts lazily, so fetch the first batch, then restore.
            try:
                first = next(iterator)  # type: ignore[call-overload]
            except StopIteration:
                first = None
            self._restore_rng()
            iterator = itertools.chain([first], iterator) if first is not None else iter(())
        return iterator

    # -- training -------------------------------------------------------------------------------
    def run(self) -> None:
        """The epochs: train, validate and select, step an epoch scheduler, record, checkpoint, stop."""
        st = self.state
        try:
            self.steps_per_epoch = len(self.train_loader)
        except TypeError:
            self.steps_per_epoch = None
        while not st.finished and st.epoch < self.epochs:
            if self.max_steps is not None and st.global_step >= self.max_steps:
                break
            epoch = st.epoch
            batches = self._epoch_batches(epoch)
            self.model.train()
            t_epoch = time.perf_counter()
            run_loss, run_n, stop_now = self._train_epoch(epoch, batches)
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": run_loss / max(run_n, 1),
                                      "steps": st.global_step, "lr": self.optimizer.param_groups[0]["lr"]}
            if self.eval_fn is not None:
                record.update(self._validate(epoch))
            if self.scheduler is not None and self.scheduler_step == "epoch":
                self.scheduler.step()
            record["seconds"] = round(time.perf_counter() - t_epoch, 3)
            self._end_epoch(epoch, record, stop_now)
            if st.finished:
                break

    def _train_epoch(self, epoch: int, batches: Iterable) -> tuple[float, int, bool]:
        """Train on ``batches`` under a progress bar, writing ``last`` every ``save_every_steps``; returns the
        epoch's loss sum and batch count (counting those before a mid-epoch resume) and whether ``max_steps``
        was reached."""
        st = self.state
        run_loss, run_n = 0.0, 0
        if st.step_in_epoch:
            prev = st.history.get("partial_epoch") or {}
            run_loss, run_n = prev.get("loss_sum", 0.0), prev.get("n", 0)
        bar = tqdm(total=self.steps_per_epoch, initial=st.step_in_epoch,
                   desc=f"{self.desc} {epoch + 1}/{self.epochs}", disable=not self.acc.is_local_main_process,
                   leave=False)
        stop_now = False
        for batch in batches:
            lval, logs = self._train_step(epoch, batch)
            run_loss += lval
            run_n += 1
            self._record_step(epoch, lval, logs, bar)
            if self.save_every_steps and st.global_step % self.save_every_steps == 0:
                st.history["partial_epoch"] = {"loss_sum": run_loss, "n": run_n}
                self.write_last()
            if self.max_steps is not None and st.global_step >= self.max_steps:
                stop_now = True
                break
        bar.close()
        st.history.pop("partial_epoch", None)
        return run_loss, run_n, stop_now

    def _train_step(self, epoch: int, batch: Any) -> tuple[float, dict[str, float]]:
        """Forward, backward and (when gradients sync) clipping, optimiser and step-scheduler steps on one batch;
        returns the loss (averaged over processes) and the loss function's extra logs."""
        acc, st = self.acc, self.state
        with acc.accumulate(self.model):
            loss, logs = _split_loss(self.loss_fn(self.model, batch))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.desc}: loss became {float(loss.detach())} at epoch {epoch + 1}, "
                                         f"step {st.step_in_epoch + 1}")
            acc.backward(loss)
            if acc.sync_gradients and self.max_grad_norm is not None:
                acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            if acc.sync_gradients:
                st.optimizer_steps += 1
                if self.scheduler is not None and self.scheduler_step == "step":
                    self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        lval = float(acc.reduce(loss.detach().clone(), reduction="mean")) if acc.num_processes > 1 \
            else float(loss.detach())
        return lval, logs

    def _record_step(self, epoch: int, lval: float, logs: dict[str, float], bar: Any) -> None:
        """Advance the step counters, log every ``log_every`` steps to the history, update the bar, then call
        ``on_step_end``."""
        st = self.state
        st.step_in_epoch += 1
        st.global_step += 1
        st.logs = {"loss": lval, **logs}
        if st.global_step % max(self.log_every, 1) == 0 or st.global_step == 1:
            lr = self.optimizer.param_groups[0]["lr"]
            st.history["steps"].append({"step": st.global_step, "epoch": epoch + 1,
                                        "loss": lval, "lr": lr, **logs})
        bar.update(1)
        bar.set_postfix(loss=f"{lval:.4f}")
        _call(self.callbacks, "on_step_end", st)

    # -- validation and selection -----------------------------------------------------------------
    def _validate(self, epoch: int) -> dict[str, float]:
        """Evaluate on the whole validation loader, check the monitored metric, select on it; returns the
        metrics as floats."""
        self.model.eval()
        with torch.no_grad():
            metrics = dict(self.eval_fn(self.model, self.val_loader))
        if self.monitor not in metrics:
            raise ConfigError(f"monitor={self.monitor!r} is not among the validation metrics "
                              f"{sorted(metrics)}")
        values = {k: float(v) for k, v in metrics.items()}
        value = float(metrics[self.monitor])
        if math.isnan(value):
            raise FloatingPointError(f"{self.desc}: validation metric {self.monitor!r} is NaN at epoch {epoch + 1}")
        self._select_best(epoch, value)
        return values

    def _improves(self, value: float) -> bool:
        """Whether ``value`` of the monitored metric beats the best so far (or is the first)."""
        best = self.state.best_metric
        return best is None or (value < best if self.mode == "min" else value > best)

    def _select_best(self, epoch: int, value: float) -> None:
        """Keep the best epoch: write ``best`` (or, without ``out_dir``, keep its weights in memory when they
        will be restored) on an improvement; count a bad epoch otherwise."""
        st = self.state
        if self._improves(value):
            st.best_metric, st.best_epoch, st.bad_epochs = value, epoch + 1, 0
            if self.best_path is not None:
                self.acc.wait_for_everyone()
                if self.acc.is_main_process:
                    save_weights(self.raw, self.best_path, {"epoch": epoch + 1, self.monitor: value})
                self.acc.wait_for_everyone()
            elif self.restore_best:
                self.best_in_memory = _weight_tensors(self.raw)
        else:
            st.bad_epochs += 1

    # -- end of an epoch, end of the run ------------------------------------------------------------
    def _stops_early(self, epoch: int) -> bool:
        """Early stopping: ``patience`` epochs in a row without improvement (only with validation)."""
        if self.patience and self.eval_fn is not None and self.state.bad_epochs >= self.patience:
            log.info("early stopping after epoch %d (no improvement in %d epochs)", epoch + 1, self.patience)
            return True
        return False

    def _end_epoch(self, epoch: int, record: dict[str, Any], stop_now: bool) -> None:
        """Record the epoch, move to the next, decide whether the run is finished, write ``last``, then call
        ``on_epoch_end``."""
        st = self.state
        st.history["epochs"].append(record)
        st.epoch += 1
        st.step_in_epoch = 0
        if self._stops_early(epoch):
            st.stopped_early = True
        if st.stopped_early or st.epoch >= self.epochs or stop_now:
            st.finished = True
        self.write_last()
        _call(self.callbacks, "on_epoch_end", st)

    def finish(self) -> FitResult:
        """Restore the best weights (if asked and validated), write the final ``history.json``, call
        ``on_fit_end`` and return the result."""
        st = self.state
        if self.restore_best and self.eval_fn is not None:
            if self.best_path is not None and self.best_path.is_file():
                load_weights(self.raw, self.best_path)
            elif self.best_in_memory is not None:
                _apply_weights(self.raw, self.best_in_memory, Path("<memory>"), True)
        if self.out is not None and self.acc.is_main_process:
            atomic_write_text(self.out / "history.json", json.dumps(st.history, indent=1))
        st.finished = True
        _call(self.callbacks, "on_fit_end", st)
        return FitResult(model=self.raw, history=st.history, best_metric=st.best_metric, best_epoch=st.best_epoch,
                         stopped_early=st.stopped_early, out_dir=self.out, resumed_from=self.resumed_from)


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
    ``evaluate`` without ``val_loader`` is called as ``evaluate(model, None)``: validation from data the
    caller holds (notebook 07 scores whole validation volumes by sliding window). Validation runs on every process over the whole ``val_loader`` (not sharded), so every
    process chooses the same best epoch.

    ``out_dir`` receives ``best.safetensors``, ``last.safetensors`` and ``history.json``;
    ``resume=True`` continues from ``last`` (or returns at once with the best weights if that
    run had finished). ``save_every_steps`` also writes ``last`` inside an epoch. Exact resume
    mid-epoch assumes a data pipeline that draws no random numbers from the global generators
    (augmentation seeded per sample, or none); at epoch boundaries it is exact in any case.
    ``scheduler`` is stepped after every optimiser step (``scheduler_step="step"``) or every
    epoch (``"epoch"``). ``max_steps`` caps the number of training batches over all epochs.
    """
    _check_fit_arguments(epochs, mode, scheduler_step, grad_accum, val_loader, evaluate, monitor)
    callbacks = list(callbacks)

    acc = _make_accelerator(mixed_precision, grad_accum, seed, cpu)
    fingerprint = _fingerprint(model)  # of the model itself, before accelerate wraps it
    if scheduler is not None:
        model, optimizer, train_loader, scheduler = acc.prepare(model, optimizer, train_loader, scheduler)
    else:
        model, optimizer, train_loader = acc.prepare(model, optimizer, train_loader)
    raw = acc.unwrap_model(model)
    eval_fn = evaluate or (_default_evaluate(loss_fn, acc.device) if val_loader is not None else None)

    loop = _Loop(acc=acc, model=model, raw=raw, optimizer=optimizer, scheduler=scheduler,
                 train_loader=train_loader, loss_fn=loss_fn, eval_fn=eval_fn, val_loader=val_loader, epochs=epochs,
                 monitor=monitor, mode=mode, scheduler_step=scheduler_step, max_grad_norm=max_grad_norm,
                 patience=patience, save_every_steps=save_every_steps, callbacks=callbacks, max_steps=max_steps,
                 restore_best=restore_best, log_every=log_every, desc=desc,
                 out=Path(out_dir) if out_dir is not None else None, fingerprint=fingerprint)
    if resume:
        loop.resume()
    t_start = time.perf_counter()
    loop.run()
    result = loop.finish()
    log.info("fit: %d steps in %.1f s", loop.state.global_step, time.perf_counter() - t_start)
    return result
