"""EW vs MGDA vs MGDA-UB on real data: scikit-learn's bundled 8×8 digits as a two-task problem.

Task "digit": the digit (10 classes). Task "shape": whether the digit is one of {0, 6, 8, 9} (closed
loops) — a coarser label that competes with the first for the shared features. A shared MLP encoder,
one head per task, plain SGD with momentum, the same seeds for every method.

    python examples/digits_two_tasks.py --epochs 40 --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import mtlopt

TASKS = ("digit", "shape")


def load_digits_tasks(seed: int) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    digit = data.target.astype(np.int64)
    shape = np.isin(digit, [0, 6, 8, 9]).astype(np.int64)
    x_tr, x_te, d_tr, d_te, s_tr, s_te = train_test_split(
        x, digit, shape, test_size=0.3, random_state=seed, stratify=digit
    )
    return tuple(torch.from_numpy(a) for a in (x_tr, d_tr, s_tr, x_te, d_te, s_te))


class TwoTaskMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(32, 10), nn.Linear(32, 2)])

    def losses(self, z: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {task: F.cross_entropy(head(z), y) for task, head, y in zip(TASKS, self.heads, targets)}


def train(method: str, seed: int, epochs: int, batch_size: int = 64, lr: float = 0.05) -> dict[str, float]:
    torch.manual_seed(seed)
    x_tr, d_tr, s_tr, x_te, d_te, s_te = load_digits_tasks(seed)
    model = TwoTaskMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    weighting = mtlopt.EW() if method == "ew" else mtlopt.MGDA()
    generator = torch.Generator().manual_seed(seed)
    steps, elapsed = 0, 0.0
    for _ in range(epochs):
        order = torch.randperm(len(x_tr), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            z = model.encoder(x_tr[index])
            losses = model.losses(z, (d_tr[index], s_tr[index]))
            if method == "mgda":
                mtlopt.backward(losses, weighting, shared_params=model.encoder)
            elif method == "mgda-ub":
                mtlopt.backward(losses, weighting, features=z)
            else:
                mtlopt.backward(losses, weighting)
            optimizer.step()
            elapsed += time.perf_counter() - began
            steps += 1
    with torch.no_grad():
        z = model.encoder(x_te)
        accuracy = {
            task: (head(z).argmax(1) == y).float().mean().item() * 100
            for task, head, y in zip(TASKS, model.heads, (d_te, s_te))
        }
    return {**accuracy, "ms_per_step": 1000 * elapsed / steps}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [
        f"digits (sklearn, 1797 images), {args.epochs} epochs, {args.seeds} seeds, "
        f"torch {torch.__version__}, {args.threads} thread(s)",
        "",
        "| method | digit acc % | shape acc % | ms / step |",
        "|---|---|---|---|",
    ]
    for method in ("ew", "mgda", "mgda-ub"):
        runs = [train(method, seed, args.epochs) for seed in range(args.seeds)]
        cells = []
        for key in (*TASKS, "ms_per_step"):
            values = [run[key] for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
