"""TensorBoard scalars of a training run (``mtlopt train/compare/pareto --tensorboard``).

One event directory per run. Per epoch (step = the epoch, 1-based): ``train/<key>/<task>`` (the epoch
means of what the method logs: ``train/loss/<task>``, ``train/weights/<task>``, ``train/weight_sum``),
``train/steps_left_out/<key>`` (steps the GradScaler skipped), ``val|test/<task>/<metric>`` (one
model), ``val|test_members/member<i>/<task>/<metric>`` and ``val|test/hypervolume`` (set methods),
``lr`` and ``epoch_seconds``. With ``steps=True``, every training step's values too, in the
subdirectory ``steps`` (step = the global training step, 1-based): ``step/<key>/<task>``.

Resuming: the writer of a resumed run sets ``purge_step`` to the first epoch it trains (and the first
global step), so TensorBoard drops whatever an interrupted session logged after the last checkpoint and
the curves have no duplicates. A directory without event files (a run that started without
``--tensorboard``, or a finished one read again) is first filled from the run's history and its
per-step record. The ``tensorboard`` package is an optional dependency (the ``tensorboard`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlopt._optional import require

STEPS_SUBDIR = "steps"


def require_tensorboard() -> None:
    """Raise :class:`~mtlopt._optional.MissingOptionalDependency` (one line) without the package."""
    require(
        "tensorboard", extra="tensorboard", needed_by="--tensorboard", purpose=" to write its event files"
    )


def has_events(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob("events.out.tfevents.*"))


def _after_existing(directory: Path) -> None:
    """Wait (under a second) until the clock is past the newest event file's second: TensorBoard reads a
    directory's files in name order, the name starts with the second it was created, so a resumed run's
    file (whose purge_step drops the later epochs of the earlier files) must sort after them."""
    stamps = []
    for path in directory.glob("events.out.tfevents.*"):
        try:
            stamps.append(int(path.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if 0 < wait <= 1:  # same second: a run resumed in the same process (tests, library calls)
            time.sleep(wait)


def _tags(prefix: str, key: str, count: int, task_names: Sequence[str]) -> list[str]:
    """The tag of each of a logged value's ``count`` entries: per task, one scalar, per member and task."""
    k = len(task_names)
    if count == 1:
        return [f"{prefix}/{key}"]
    if count == k:
        return [f"{prefix}/{key}/{task}" for task in task_names]
    if k and count % k == 0:
        return [f"{prefix}/{key}/member{i // k}/{task_names[i % k]}" for i in range(count)]
    return [f"{prefix}/{key}/{i}" for i in range(count)]


class RunLogger:
    """Writes a run's scalars; :meth:`epoch` after each checkpointed epoch, :meth:`close` at the end."""

    def __init__(
        self,
        log_dir: Path,
        task_names: Sequence[str],
        steps_per_epoch: int,
        *,
        start_epoch: int,
        history: Sequence[Mapping[str, Any]],
        step_record: Mapping[str, np.ndarray] | None,
        steps: bool = False,
    ) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.task_names = list(task_names)
        self.steps_per_epoch = steps_per_epoch
        log_dir = Path(log_dir)
        fill = not has_events(log_dir)
        purge = start_epoch + 1 if start_epoch and not fill else None
        _after_existing(log_dir)
        self.writer = SummaryWriter(str(log_dir), purge_step=purge)
        self.step_writer: Any = None
        fill_steps = False
        if steps:
            step_dir = log_dir / STEPS_SUBDIR
            fill_steps = not has_events(step_dir)
            _after_existing(step_dir)
            first = start_epoch * steps_per_epoch + 1
            self.step_writer = SummaryWriter(
                str(step_dir), purge_step=first if start_epoch and not fill_steps else None
            )
        if fill:
            for record in history[:start_epoch]:
                self._epoch(record)
        if fill_steps and step_record is not None and len(step_record.get("epoch", ())):
            done = np.asarray(step_record["epoch"]) <= start_epoch
            self._steps({key: np.asarray(values)[done] for key, values in step_record.items()})
        self.flush()

    def epoch(self, record: Mapping[str, Any], step_rows: Mapping[str, np.ndarray] | None = None) -> None:
        """Log one epoch's record (a ``history`` entry) and, with ``steps``, its per-step rows."""
        self._epoch(record)
        if step_rows is not None:
            self._steps(step_rows)
        self.flush()

    def _epoch(self, record: Mapping[str, Any]) -> None:
        add, step = self.writer.add_scalar, int(record["epoch"])
        for key, values in record.get("train", {}).items():
            for tag, value in zip(_tags("train", key, len(values), self.task_names), values):
                add(tag, value, step)
        for key, count in record.get("train_steps_left_out", {}).items():
            add(f"train/steps_left_out/{key}", count, step)
        for split in ("val", "test"):
            for task, metrics in record.get(split, {}).items():
                for metric, value in metrics.items():
                    add(f"{split}/{task}/{metric}", value, step)
            for i, member in enumerate(record.get(f"{split}_members", [])):
                for task, metrics in member.items():
                    for metric, value in metrics.items():
                        add(f"{split}_members/member{i}/{task}/{metric}", value, step)
            if f"{split}_hypervolume" in record:
                add(f"{split}/hypervolume", record[f"{split}_hypervolume"], step)
        if "lr" in record:
            add("lr", record["lr"], step)
        if "seconds" in record:
            add("epoch_seconds", record["seconds"], step)

    def _steps(self, rows: Mapping[str, np.ndarray]) -> None:
        if self.step_writer is None or not len(rows.get("epoch", ())):
            return
        globals_ = (np.asarray(rows["epoch"]) - 1) * self.steps_per_epoch + np.asarray(rows["step"])
        for key, values in rows.items():
            if key in ("epoch", "step", "seconds"):
                continue
            values = np.asarray(values, dtype=np.float64).reshape(len(globals_), -1)
            tags = _tags("step", key, values.shape[1], self.task_names)
            for global_step, row in zip(globals_.tolist(), values):
                for tag, value in zip(tags, row.tolist()):
                    if value == value:  # a step the GradScaler skipped logs NaN: no point
                        self.step_writer.add_scalar(tag, value, global_step)

    def flush(self) -> None:
        self.writer.flush()
        if self.step_writer is not None:
            self.step_writer.flush()

    def close(self) -> None:
        self.writer.close()
        if self.step_writer is not None:
            self.step_writer.close()
