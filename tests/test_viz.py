"""brainkit.viz.LivePlot: it redraws at most every few seconds and always at the end of a run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from brainkit import viz


@pytest.fixture
def drawn(monkeypatch):
    calls = []
    monkeypatch.setattr(viz.LivePlot, "draw", lambda self, state: (calls.append(len(state.history["epochs"])),
                                                                  setattr(self, "_drawn_at", clock[0]),
                                                                  setattr(self, "_drawn_epochs",
                                                                          len(state.history["epochs"]))))
    clock = [0.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    return calls, clock


def run(plot, clock, epochs, seconds_per_epoch):
    state = SimpleNamespace(history={"steps": [], "epochs": []}, finished=False)
    for e in range(epochs):
        clock[0] += seconds_per_epoch
        state.history["epochs"].append({"epoch": e})
        state.finished = e == epochs - 1
        plot.on_epoch_end(state)
    plot.on_fit_end(state)


def test_fast_epochs_are_drawn_every_few_seconds_and_at_the_end(drawn):
    calls, clock = drawn
    run(viz.LivePlot(every_seconds=5.0), clock, epochs=40, seconds_per_epoch=1.0)
    assert calls[0] == 1 and calls[-1] == 40  # the first epoch, and the figure that stays holds all 40
    assert 8 <= len(calls) <= 10  # about one drawing per 5 s of training, not 40
    assert all(b - a >= 5 for a, b in zip(calls[:-2], calls[1:-1]))


def test_slow_epochs_are_each_drawn_once(drawn):
    calls, clock = drawn
    run(viz.LivePlot(every_seconds=5.0), clock, epochs=6, seconds_per_epoch=10.0)
    assert calls == [1, 2, 3, 4, 5, 6]


def test_a_run_that_stops_early_still_ends_with_its_last_epoch(drawn):
    calls, clock = drawn
    plot = viz.LivePlot(every_seconds=5.0)
    state = SimpleNamespace(history={"steps": [], "epochs": []}, finished=False)
    for e in range(3):  # stopped by max_steps: no epoch was marked finished
        clock[0] += 1.0
        state.history["epochs"].append({"epoch": e})
        plot.on_epoch_end(state)
    plot.on_fit_end(state)
    assert calls == [1, 3]


def test_draw_really_draws(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda fig: shown.append(fig))
    monkeypatch.setattr("IPython.display.clear_output", lambda wait=False: None)
    state = SimpleNamespace(history={"steps": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}],
                                     "epochs": [{"epoch": 0, "val_loss": 0.7}]}, finished=True)
    viz.LivePlot(["val_loss"], title="t").on_fit_end(state)
    assert len(shown) == 1 and shown[0].axes[1].get_ylabel() == "val_loss"
