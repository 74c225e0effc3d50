"""What a synthetic ``result.json`` of the report tests holds besides its history (as the trainer
writes it)."""

from __future__ import annotations

from typing import Any


def run_settings(method: str, seed: int, epochs: int, step_ms: float = 1.0) -> dict[str, Any]:
    return {
        "benchmark": "synthetic",
        "protocol": "test",
        "method": method,
        "options": {},
        "seed": seed,
        "time_per_step_ms": {"median": step_ms},
        "environment": {"mtlopt": "0", "torch": "0", "device": "cpu", "threads": 1},
        "training": {
            "epochs": epochs,
            "optimizer": "adam",
            "lr": 0.1,
            "lr_decay_every": 0,
            "lr_decay": 0.5,
            "batch_size": 8,
        },
        "data": {"sizes": [1, 1, 1], "seed": 0},
    }
