"""A toy run of brainkit.train.fit, for the resume and multi-process tests.

usage: toy_fit.py OUT_DIR [--kill-at-step N] [--batch B] [--epochs E]
Writes OUT_DIR/final.safetensors (the weights after fit) and OUT_DIR/result.json.
With --kill-at-step the process SIGKILLs itself right after that training step, as a
Colab disconnect would, leaving whatever checkpoint fit had written.
"""

import argparse
import json
import os
import signal
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from brainkit.env import seed_everything
from brainkit.train import fit, save_weights


class Killer:
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, state):
        if state.global_step == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--kill-at-step", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seed_everything(0)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(96, 6, generator=g)
    y = (x @ torch.randn(6, 1, generator=g)).squeeze(1) + 0.1 * torch.randn(96, generator=g)
    train = TensorDataset(x[:64], y[:64])
    val = TensorDataset(x[64:], y[64:])
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(args.dropout), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)

    def loss_fn(m, batch):
        xb, yb = batch
        return nn.functional.mse_loss(m(xb).squeeze(1), yb)

    res = fit(model, DataLoader(train, batch_size=args.batch, shuffle=True), loss_fn=loss_fn, optimizer=opt,
              scheduler=sched, epochs=args.epochs, val_loader=DataLoader(val, batch_size=16), out_dir=args.out,
              resume=True, save_every_steps=3, seed=0, restore_best=False, log_every=1,
              callbacks=[Killer(args.kill_at_step)] if args.kill_at_step else [], cpu=True)
    if int(os.environ.get("RANK", "0")) == 0:
        save_weights(res.model, os.path.join(args.out, "final.safetensors"))
        with open(os.path.join(args.out, "result.json"), "w") as fh:
            json.dump({"history": res.history["epochs"], "resumed_from": res.resumed_from,
                       "best_epoch": res.best_epoch}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
