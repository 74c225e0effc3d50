"""The lean benchmark trainer: one method, one benchmark, one seed → ``DIR/result.json``.

- Deterministic on the CPU for a given seed and thread count: the models are initialized after
  ``torch.manual_seed(seed)``, epoch e visits the training set in an order drawn from (seed, e), and
  the global RNG state (dropout) is saved with every checkpoint.
- After every epoch, ``DIR/checkpoint.pt`` is written atomically (temporary file, then rename). Running
  the same command again resumes from it and continues exactly as an uninterrupted run would; a
  finished run (``result.json`` present) is not run again with the same settings; with a larger
  ``epochs`` (nothing else changed) it continues from its last checkpoint to that length, with the same
  numbers as an uninterrupted run of that length (the lr schedule depends on the epoch only, the epoch
  orders on (seed, epoch), the RNG state and the history come from the checkpoint).
- Validation and test metrics (accuracy and cross-entropy per task) after every epoch; the reported
  epochs are the last one and the one with the best mean validation accuracy.
- A run whose loss becomes NaN or infinite stops with :class:`Diverged` (method, seed, epoch, step and a
  hint) and leaves ``DIR/result.json`` with ``"status": "failed"`` and the reason, so that a comparison
  can report it and go on; running it again raises the recorded failure (delete that file to retry).
- ``DIR/steps.npz``: every training step's logged values (the task weights, losses, weight sums, ...),
  one row per step, beside the run's ``epoch``, ``step`` (1-based within the epoch) and ``seconds``;
  written atomically with every checkpoint, kept across resumption and extension without duplicates
  (:func:`read_steps`). An epoch's mean of a column is its ``history`` value: NaN rows are the steps
  the GradScaler skipped (``train_steps_left_out``), left out of that mean as well.
- Optional TensorBoard scalars per epoch (and per step) with ``TrainConfig.tensorboard``, rank 0 only
  (:mod:`mtlopt.benchmarks.tensorboard_log`).
- The output directory is checked before any training (:func:`prepare_output_dir`), and a damaged
  checkpoint is reported with the file to delete (:class:`CorruptRunFile`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtlopt
from mtlopt.errors import NonFiniteError

from .interfaces import BenchmarkData, DataOptions
from .methods import OptimizerSettings, get_method
from .suite import get_benchmark

RESULT_FORMAT = 1
STEPS_FILE = "steps.npz"
_STEP_INDEX = ("epoch", "step", "seconds")  # the columns of steps.npz that are not logged values


class RunConflict(RuntimeError):
    """The output directory holds a different run."""


class OutputError(RuntimeError):
    """The output directory cannot be used: it is a file, below a file, or not writable."""


class CorruptRunFile(RuntimeError):
    """``checkpoint.pt`` or ``result.json`` cannot be read, or does not fit this run (truncated, damaged,
    another format); the message names the file to delete."""


class Diverged(RuntimeError):
    """A loss became NaN or infinite: the run stopped at ``epoch`` (1-based), ``step`` of ``steps``.

    ``result.json`` records it with ``"status": "failed"`` (see :func:`train`).
    """

    def __init__(
        self, label: str, seed: int, epoch: int, step: int, steps: int, reason: str, hint: str
    ) -> None:
        self.label, self.seed, self.epoch, self.step, self.steps = label, seed, epoch, step, steps
        self.reason, self.hint = reason, hint
        self.recorded_in: Path | None = None  # set when raised again from an earlier run's result.json
        super().__init__(
            f"{label} seed {seed} diverged at epoch {epoch}, step {step} of {steps}: {reason}; {hint}"
        )

    def failure(self) -> dict[str, Any]:
        """What ``result.json`` records of it (``"failure"``)."""
        return {
            "kind": "diverged",
            "reason": self.reason,
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": self.steps,
            "hint": self.hint,
            "message": str(self),
        }

    @classmethod
    def recorded(cls, result: dict[str, Any], path: Path) -> Diverged:
        """The failure a ``result.json`` with ``"status": "failed"`` records, to raise again."""
        failure = result.get("failure") or {}
        error = cls(
            str(result.get("label") or result.get("method")),
            int(result.get("seed", 0)),
            int(failure.get("epoch", 0)),
            int(failure.get("step", 0)),
            int(failure.get("steps_per_epoch", 0)),
            str(failure.get("reason", "unknown")),
            f"{failure.get('hint', 'see the run')}; recorded in {path}: delete it to train this run again",
        )
        error.recorded_in = path
        return error


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``None`` fields take the protocol's published default."""

    benchmark: str
    method: str
    out: str
    protocol: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    momentum: float | None = None
    weight_decay: float = 0.0
    lr_decay_every: int | None = None
    lr_decay: float | None = None
    seed: int = 0
    data: DataOptions = field(default_factory=DataOptions)
    threads: int | None = None
    device: str = "auto"
    progress: bool = True
    eval_batch_size: int = 1000
    amp: str = "off"  # "off", "bf16" (autocast) or "fp16" (autocast and a GradScaler)
    weight_total: float | None = None  # rescale every shared update to this total weight (None: native)
    label: str | None = None  # how reports name this run (e.g. "grid[task-weights=0.3,0.7]")
    tensorboard: str | None = None  # TensorBoard event directory ("": OUT/tensorboard); None: none
    tensorboard_steps: bool = False  # also every step's logged values (in the directory's steps/)

    def resolved(self) -> ResolvedConfig:
        """A copy with defaults filled in and every value checked (ValueError naming the bad one)."""
        benchmark = get_benchmark(self.benchmark)
        get_method(self.method)
        protocol = self.protocol or benchmark.default_protocol
        if protocol not in benchmark.protocols:
            raise ValueError(
                f"unknown protocol {protocol!r} for {benchmark.name}; expected one of {', '.join(benchmark.protocols)}"
            )
        defaults = benchmark.defaults[protocol]
        unchanged = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _FILLED_BY_RESOLVED
        }
        config = ResolvedConfig(
            **unchanged,
            protocol=protocol,
            epochs=defaults.epochs if self.epochs is None else self.epochs,
            lr=defaults.lr if self.lr is None else self.lr,
            batch_size=defaults.batch_size if self.batch_size is None else self.batch_size,
            optimizer=defaults.optimizer if self.optimizer is None else self.optimizer,
            momentum=defaults.momentum if self.momentum is None else self.momentum,
            lr_decay_every=defaults.lr_decay_every if self.lr_decay_every is None else self.lr_decay_every,
            lr_decay=defaults.lr_decay if self.lr_decay is None else self.lr_decay,
            threads=torch.get_num_threads() if self.threads is None else self.threads,
        )
        checks = [
            ("epochs", config.epochs, config.epochs >= 1, "an integer >= 1"),
            ("lr", config.lr, math.isfinite(config.lr) and config.lr > 0, "a number > 0"),
            ("batch-size", config.batch_size, config.batch_size >= 1, "an integer >= 1"),
            ("momentum", config.momentum, 0 <= config.momentum < 1, "in [0, 1)"),
            (
                "weight-decay",
                config.weight_decay,
                math.isfinite(config.weight_decay) and config.weight_decay >= 0,
                "a number >= 0",
            ),
            (
                "lr-decay-every",
                config.lr_decay_every,
                config.lr_decay_every >= 0,
                "an integer >= 0 (0: no decay)",
            ),
            ("lr-decay", config.lr_decay, 0 < config.lr_decay <= 1, "in (0, 1]"),
            ("threads", config.threads, config.threads >= 1, "an integer >= 1"),
            ("optimizer", config.optimizer, config.optimizer in ("sgd", "adam"), "'sgd' or 'adam'"),
            ("amp", config.amp, config.amp in ("off", "bf16", "fp16"), "'off', 'bf16' or 'fp16'"),
            (
                "weight-total",
                config.weight_total,
                config.weight_total is None
                or (math.isfinite(config.weight_total) and config.weight_total > 0),
                "a number > 0",
            ),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"--{name} {value!r} is invalid: expected {expected}")
        return config

    def identity(self) -> dict[str, Any]:
        """The settings that change the numbers (what a resumed or skipped run must match)."""
        data = dataclasses.asdict(self.data)
        for key in ("cache_dir", "download"):
            data.pop(key)
        return {
            "benchmark": self.benchmark,
            "protocol": self.protocol,
            "method": self.method,
            "method_options": _jsonable(self.method_options),
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "lr_decay_every": self.lr_decay_every,
            "lr_decay": self.lr_decay,
            "seed": self.seed,
            "data": data,
            **({"amp": self.amp} if self.amp != "off" else {}),
            **({"weight_total": self.weight_total} if self.weight_total is not None else {}),
        }


@dataclass
class ResolvedConfig(TrainConfig):
    """A :class:`TrainConfig` after :meth:`~TrainConfig.resolved`: the protocol's defaults filled in, checked."""

    protocol: str = field(kw_only=True)
    epochs: int = field(kw_only=True)
    lr: float = field(kw_only=True)
    batch_size: int = field(kw_only=True)
    optimizer: str = field(kw_only=True)
    momentum: float = field(kw_only=True)
    lr_decay_every: int = field(kw_only=True)
    lr_decay: float = field(kw_only=True)
    threads: int = field(kw_only=True)


# The fields ResolvedConfig narrows (its keyword-only ones); resolved() copies the others unchanged.
_FILLED_BY_RESOLVED = frozenset(f.name for f in dataclasses.fields(ResolvedConfig) if f.kw_only)


def train(
    config: TrainConfig,
    log: Callable[[str], None] | None = None,
    epoch_note: Callable[[int, int, float], str] | None = None,
) -> dict[str, Any]:
    """Run (or resume, or skip if finished, or extend) one training run; returns the result dict.

    A finished run asked for more epochs (every other setting the same) continues from its last
    checkpoint, as an uninterrupted run of that length would, unless its training depends on the run's
    length (:meth:`MethodRunner.uses_run_length`). ``epoch_note(epoch, epochs, seconds)``: text
    appended to each epoch's log line (the command line's overall progress).

    Raises :class:`Diverged` when a loss becomes NaN or infinite, after writing ``result.json`` with
    ``"status": "failed"``; a run recorded as failed raises the same again (delete its ``result.json`` to
    retry). :class:`OutputError`: the output directory cannot be used; :class:`CorruptRunFile`: its
    ``checkpoint.pt`` or ``result.json`` is damaged; :class:`RunConflict`: it holds another run.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    config = config.resolved()
    if config.tensorboard is not None:  # before any training, on every rank: one line naming the package
        from .tensorboard_log import require_tensorboard

        require_tensorboard()
    out = Path(config.out)
    result_path, checkpoint_path = out / "result.json", out / "checkpoint.pt"
    identity = config.identity()
    extending: int | None = None  # the epochs of the finished run that this one extends
    if result_path.is_file():
        existing = read_result(result_path)
        saved = existing.get("identity")
        if existing.get("status") == "failed":
            _check_same_run(saved, identity, out)
            raise Diverged.recorded(existing, result_path)
        if saved == identity:
            log(f"{out}: already finished, skipping")
            if config.tensorboard is not None and os.environ.get("RANK", "0") == "0":
                _log_finished_run(config, existing)  # fills an empty event directory from the result
            return existing
        if not _only_epochs_differ(saved, identity):
            _check_same_run(saved, identity, out)
        assert isinstance(saved, dict)
        if saved["epochs"] > config.epochs:
            raise RunConflict(
                f"{out} holds a finished {saved['epochs']}-epoch run; --epochs {config.epochs} is fewer: "
                f"give --epochs {saved['epochs']} to read it, more to extend it, or choose another --out"
            )
        if not checkpoint_path.is_file():
            raise RunConflict(
                f"{out} holds a finished {saved['epochs']}-epoch run without its checkpoint.pt, so it cannot "
                f"be extended to {config.epochs} epochs; choose another --out or delete that directory"
            )
        extending = saved["epochs"]
    prepare_output_dir(out)

    torch.set_num_threads(config.threads)
    process_group, rank, world = _distributed(config.device)
    device = resolve_device(config.device, rank if process_group is not None else None)
    log = log if rank == 0 else (lambda message: None)
    benchmark = get_benchmark(config.benchmark)
    data = benchmark.load(config.protocol, config.data)
    runner = get_method(config.method)(config.method_options, len(data.task_names), config.seed)
    if world > 1 and not runner.produces_set and config.batch_size % world:
        raise ValueError(
            f"--batch-size {config.batch_size} must be a multiple of the {world} processes (it is the global batch)"
        )
    runner.scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    runner.weight_total = config.weight_total
    torch.manual_seed(config.seed)
    optimizer = OptimizerSettings(config.optimizer, config.lr, config.momentum, config.weight_decay)
    steps_per_epoch = math.ceil(data.size("train") / config.batch_size) - (
        data.size("train") % config.batch_size == 1
    )
    runner.steps_per_epoch = steps_per_epoch
    dropped = 0 if runner.produces_set else dropped_per_epoch(data.size("train"), config.batch_size, world)
    if dropped:
        log(
            f"warning: {data.size('train')} training examples in batches of {config.batch_size} over {world} "
            f"processes: each rank takes an equal share of the last batch, so {dropped} example(s) per epoch "
            "are not trained on (a single process would use them)"
        )
    runner.build(
        lambda: benchmark.model(config.protocol).to(device), optimizer, steps_per_epoch * config.epochs, data
    )
    autocast = _autocast(config.amp, device)

    start_epoch, history, step_times = 0, [], []
    if checkpoint_path.is_file():
        state = _load_checkpoint(checkpoint_path, device)
        if state["identity"] != identity:  # a run of other settings, or a longer version of this one
            if not (_only_epochs_differ(state["identity"], identity) and state["epoch"] <= config.epochs):
                _check_same_run(state["identity"], identity, out)
            if runner.uses_run_length():
                raise RunConflict(
                    f"{out} holds a {state['identity']['epochs']}-epoch run of {config.label or config.method} "
                    f"whose training depends on its length (a schedule over the whole run), so it cannot be "
                    f"continued to {config.epochs} epochs; choose another --out or delete that directory"
                )
        if state.get("world", 1) != world:
            raise RunConflict(
                f"{out} was checkpointed with {state.get('world', 1)} processes; resume it with the same number"
            )
        try:
            runner.load_state_dict(state["runner"])
            if runner.scaler is not None and state.get("scaler"):
                runner.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["cpu"])
            if device.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # another layout of the state
            raise CorruptRunFile(
                f"cannot resume from {checkpoint_path} ({_first_line(error)}); "
                f"delete it to start this run over from epoch 1"
            ) from None
        start_epoch, history, step_times = state["epoch"], state["history"], state["step_times"]
        if extending is not None:
            log(f"{out}: extending the finished {extending}-epoch run to {config.epochs} epochs")
        log(f"{out}: resuming after epoch {start_epoch}")
    step_record = _StepRecord.resume(out / STEPS_FILE, start_epoch)
    tensorboard = None
    if config.tensorboard is not None and rank == 0:
        from .tensorboard_log import RunLogger

        tensorboard = RunLogger(
            _tensorboard_dir(config),
            data.task_names,
            steps_per_epoch,
            start_epoch=start_epoch,
            history=history,
            step_record=step_record.columns(),
            steps=config.tensorboard_steps,
        )

    def diverged(reason: str, epoch: int, step: int) -> Diverged:
        """The error to raise, after recording the failed run in result.json (rank 0)."""
        failure = Diverged(
            config.label or config.method,
            config.seed,
            epoch,
            step,
            steps_per_epoch,
            reason,
            f"try a lower --lr (this run: {config.lr:g})",
        )
        if rank == 0:
            failed = _header(config, identity, benchmark, data, runner, history, device)
            failed["status"] = "failed"
            failed["failure"] = failure.failure()
            failed["produces_set"] = runner.produces_set  # for reports, when no epoch finished
            failed["environment"]["git_commit"] = _git_commit()
            failed["environment"]["processes"] = world
            failed["environment"]["amp"] = config.amp
            write_json_atomic(result_path, failed)
        return failure

    commit = _git_commit()  # the code this session runs
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        lr = config.lr * (
            config.lr_decay ** (epoch // config.lr_decay_every) if config.lr_decay_every else 1.0
        )
        for opt in runner.optimizers():
            for group in opt.param_groups:  # lr_scale: a runner's fixed factor for one group
                group["lr"] = lr * group.get("lr_scale", 1.0)
        runner.on_epoch_start(epoch)
        runner.set_training(True)
        order = torch.randperm(
            data.size("train"), generator=torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        )
        # A method that reads several independent batches per step (MoDo, SDMGrad) gets the others from
        # passes of their own over the training set, each in an order of its own (seeded by the run's
        # seed, the epoch and the pass), at the position of the step's batch.
        extra_orders = [
            torch.randperm(
                data.size("train"),
                generator=torch.Generator().manual_seed(_extra_pass_seed(config.seed, epoch, extra)),
            )
            for extra in range(1, runner.batches_per_step)
        ]
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        left_out: dict[str, int] = {}
        # A trailing batch of one example is skipped: BatchNorm cannot train on a single example.
        last = len(order) - 1 if len(order) % config.batch_size == 1 and len(order) > 1 else len(order)
        batches = range(0, last, config.batch_size)
        epoch_began = time.perf_counter()
        for step, start in enumerate(
            _progress(
                batches,
                config.progress,
                f"{config.method} seed {config.seed} epoch {epoch + 1}/{config.epochs}",
            ),
            1,
        ):
            drawn = []
            for pass_order in (order, *extra_orders):
                index = pass_order[start : start + config.batch_size]
                if world > 1 and not runner.produces_set:  # this rank's contiguous share of the global batch
                    share = len(index) // world
                    index = index[rank * share : (rank + 1) * share]
                drawn.append(data.batch("train", index, device))
            (x, y), extra_batches = drawn[0], drawn[1:]
            began = time.perf_counter()
            try:
                with autocast:
                    if extra_batches:
                        logged = runner.train_step_with_extra(x, y, extra_batches)
                    else:
                        logged = runner.train_step(x, y)
            except NonFiniteError as error:
                raise diverged(_task_names_in(_first_line(error), data.task_names), epoch + 1, step) from None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - began)
            logged = {key: value.detach().to("cpu") for key, value in logged.items()}  # one copy each
            step_record.add(epoch + 1, step, step_times[-1], logged)
            for key, value in logged.items():
                value = value.detach().to("cpu", torch.float64)
                # A method that does not check its losses (one process only: a rank that raised alone
                # would leave the others waiting; under torchrun the check after the epoch catches it).
                if process_group is None and "loss" in key and not bool(torch.isfinite(value).all()):
                    shown = ", ".join(f"{v:g}" for v in value.reshape(-1).tolist())
                    raise diverged(f"non-finite {key.replace('_', ' ')} ({shown})", epoch + 1, step)
                if "loss" not in key and not bool(torch.isfinite(value).all()):
                    # a step the GradScaler skipped logs NaN weights: the epoch's mean is over the others
                    left_out[key] = left_out.get(key, 0) + 1
                    continue
                sums[key] = sums[key] + value if key in sums else value
                counts[key] = counts.get(key, 0) + 1
        steps = len(batches)
        if not _finite_state(runner, process_group, device):  # diverged without a non-finite loss
            raise diverged("the model's parameters or buffers became NaN or infinite", epoch + 1, steps)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train": {
                key: [float(v) for v in (total / counts[key]).reshape(-1)] for key, total in sums.items()
            },
        }
        if left_out:  # the means above are over the other steps
            record["train_steps_left_out"] = dict(left_out)
        for split in ("val", "test"):
            with autocast:
                members, bad = _evaluate(runner, data, split, device, config.eval_batch_size)
            if runner.produces_set and process_group is not None:  # every rank's members, in member order
                gathered: list[Any] = [None] * world
                torch.distributed.all_gather_object(gathered, (members, bad), group=process_group)
                members = [m for part, _ in gathered for m in part]
                bad = [pair for _, part in gathered for pair in part]  # any rank's: every rank raises
            if bad:  # e.g. weights finite but so large that the outputs overflow
                tasks = sorted({data.task_names[t] for _, t in bad})
                raise diverged(
                    f"the model's {split} outputs for {', '.join(map(repr, tasks))} contain NaN or inf",
                    epoch + 1,
                    steps,
                )
            if runner.produces_set:
                record[f"{split}_members"] = members
            else:
                record[split] = members[0]
            if benchmark.hv_reference is not None and data.hv_objective is not None:
                objective = data.hv_objective
                overflowed = sorted(
                    {t for m in members for t in data.task_names if not math.isfinite(m[t][objective])}
                )
                if overflowed:  # finite outputs so large that the loss overflows
                    raise diverged(
                        f"the {split} {objective.replace('_', '-')} of {', '.join(map(repr, overflowed))} "
                        f"{'is' if len(overflowed) == 1 else 'are'} NaN or infinite",
                        epoch + 1,
                        steps,
                    )
                record[f"{split}_hypervolume"] = hypervolume_of(
                    members, data.task_names, benchmark.hv_reference, data.hv_objective
                )
        seconds = time.perf_counter() - epoch_began
        record["seconds"] = seconds
        history.append(record)
        runner_state = runner.state_dict()  # collective for distributed populations: every rank calls it
        if rank == 0:  # the steps first: a resumed run drops the rows of epochs after its checkpoint
            step_record.write(out / STEPS_FILE)
            _save_checkpoint(
                checkpoint_path,
                identity,
                epoch + 1,
                runner_state,
                history,
                step_times,
                device,
                world,
                runner.scaler,
            )
        if process_group is not None:
            torch.distributed.barrier(process_group)
        if tensorboard is not None:  # after the checkpoint: a resumed run logs from the epoch after it
            tensorboard.epoch(record, step_record.epoch_rows(epoch + 1) if config.tensorboard_steps else None)
        log(
            _epoch_line(config, record, data.task_names)
            + (epoch_note(epoch + 1, config.epochs, seconds) if epoch_note else "")
        )

    result = _result(
        config, identity, benchmark, data, runner, history, step_times, device, time.perf_counter() - started
    )
    result["environment"]["git_commit"] = commit
    result["environment"]["processes"] = world
    result["environment"]["examples_dropped_per_epoch"] = dropped
    result["environment"]["amp"] = config.amp
    result["steps"] = step_record.describe(steps_per_epoch)
    if tensorboard is not None:
        tensorboard.close()
        result["tensorboard"] = str(_tensorboard_dir(config))
    if rank == 0:
        write_json_atomic(result_path, result)
    if process_group is not None:
        torch.distributed.barrier(process_group)
    return result


class _StepRecord:
    """Every training step's logged values, as the columns of ``steps.npz``: ``epoch``, ``step`` (1-based
    within the epoch), ``seconds`` (1-D), and each logged key as ``(steps, n)`` (n: its entries, e.g. K
    task weights; 1 for a scalar) in float32, or float64 where the method logs float64. NaN: a step the
    GradScaler skipped (or, for a key a method logs on some steps only, a step without it)."""

    def __init__(self, columns: dict[str, np.ndarray] | None = None) -> None:
        self._columns = columns or {}
        self._rows: list[dict[str, Any]] = []  # this session's steps, merged into _columns on demand

    @classmethod
    def resume(cls, path: Path, start_epoch: int) -> _StepRecord:
        """The record of a run resumed after ``start_epoch``: the saved rows of those epochs only (an
        interrupted session may have saved a later epoch's rows before its checkpoint)."""
        if start_epoch == 0 or not path.is_file():
            return cls()
        columns = read_steps(path)
        keep = columns["epoch"] <= start_epoch
        return cls({key: values[keep] for key, values in columns.items()})

    def add(self, epoch: int, step: int, seconds: float, logged: dict[str, torch.Tensor]) -> None:
        row: dict[str, Any] = {"epoch": epoch, "step": step, "seconds": seconds}
        for key, value in logged.items():
            dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
            row[key] = value.detach().to("cpu", dtype).reshape(-1).numpy().copy()  # not a view of it
        self._rows.append(row)

    def columns(self) -> dict[str, np.ndarray]:
        if self._rows:
            self._columns = _merge_rows(self._columns, self._rows)
            self._rows = []
        return self._columns

    def write(self, path: Path) -> None:
        """``steps.npz``, atomically (uncompressed: the float columns hardly compress)."""
        columns: dict[str, Any] = self.columns()
        _write_atomic(path, "wb", lambda f: np.savez(f, **columns))

    def epoch_rows(self, epoch: int) -> dict[str, np.ndarray]:
        columns = self.columns()
        if not columns:
            return {}
        mask = columns["epoch"] == epoch
        return {key: values[mask] for key, values in columns.items()}

    def describe(self, steps_per_epoch: int) -> dict[str, Any]:
        """What ``result.json`` says of the record (``"steps"``)."""
        columns = self.columns()
        epochs = columns["epoch"] if columns else np.zeros(0, dtype=np.int32)
        return {
            "file": STEPS_FILE,
            "rows": len(epochs),
            "steps_per_epoch": steps_per_epoch,
            "epochs": [int(epochs.min()), int(epochs.max())] if len(epochs) else [],
            "columns": {
                key: list(values.shape[1:]) for key, values in columns.items() if key not in _STEP_INDEX
            },
        }


def _merge_rows(columns: dict[str, np.ndarray], rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """``columns`` with ``rows`` appended; a key missing from some rows (or shorter) is NaN there."""
    old = len(columns["epoch"]) if columns else 0
    total = old + len(rows)
    merged: dict[str, np.ndarray] = {
        "epoch": np.concatenate([columns.get("epoch", np.zeros(0)), [r["epoch"] for r in rows]]).astype(
            np.int32
        ),
        "step": np.concatenate([columns.get("step", np.zeros(0)), [r["step"] for r in rows]]).astype(
            np.int32
        ),
        "seconds": np.concatenate([columns.get("seconds", np.zeros(0)), [r["seconds"] for r in rows]]).astype(
            np.float64
        ),
    }
    keys = dict.fromkeys([k for k in columns if k not in _STEP_INDEX] + [k for r in rows for k in r])
    for key in keys:
        if key in _STEP_INDEX:
            continue
        parts = [r[key] for r in rows if key in r]
        saved = columns.get(key)
        width = max([len(p) for p in parts] + ([saved.shape[1]] if saved is not None else []))
        wide = any(p.dtype == np.float64 for p in parts) or (saved is not None and saved.dtype == np.float64)
        values = np.full((total, width), np.nan, dtype=np.float64 if wide else np.float32)
        if saved is not None:
            values[:old, : saved.shape[1]] = saved
        for i, r in enumerate(rows):
            if key in r:
                values[old + i, : len(r[key])] = r[key]
        merged[key] = values
    return merged


def read_steps(path: Path | str) -> dict[str, np.ndarray]:
    """A run's per-step record (``DIR/steps.npz``, or ``DIR``): its columns (see the module's docstring).

    The mean of a column over an epoch's rows, NaN rows left out, is that epoch's ``history`` value.
    :class:`CorruptRunFile` naming the file when it cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STEPS_FILE
    try:
        with np.load(path, allow_pickle=False) as saved:
            columns = {key: saved[key] for key in saved.files}
    except (OSError, ValueError, EOFError) as error:
        raise CorruptRunFile(
            f"{path} cannot be read as a per-step record ({_first_line(error)}); delete it "
            "(a resumed run then records the steps from where it resumes)"
        ) from None
    if not {"epoch", "step", "seconds"} <= set(columns):
        raise CorruptRunFile(f"{path} is not a per-step record of mtlopt's trainer; delete it")
    return columns


def _tensorboard_dir(config: TrainConfig) -> Path:
    return Path(config.tensorboard) if config.tensorboard else Path(config.out) / "tensorboard"


def _log_finished_run(config: TrainConfig, result: dict[str, Any]) -> None:
    """The TensorBoard scalars of a finished run, when its event directory has none yet."""
    from .tensorboard_log import STEPS_SUBDIR, RunLogger, has_events

    directory = _tensorboard_dir(config)
    if has_events(directory) and (not config.tensorboard_steps or has_events(directory / STEPS_SUBDIR)):
        return  # logged already: a new event file would add nothing
    history = result.get("history") or []
    steps_file = Path(config.out) / STEPS_FILE
    columns = read_steps(steps_file) if steps_file.is_file() else None
    steps_per_epoch = (result.get("steps") or {}).get("steps_per_epoch") or (
        int(columns["step"].max()) if columns is not None and len(columns["step"]) else 1
    )
    RunLogger(
        _tensorboard_dir(config),
        result.get("tasks") or [],
        steps_per_epoch,
        start_epoch=len(history),
        history=history,
        step_record=columns,
        steps=config.tensorboard_steps,
    ).close()


@torch.no_grad()
def evaluate(
    runner, data: BenchmarkData, split: str, task_names, device, batch_size: int
) -> list[dict[str, dict[str, float]]]:
    """Every task's metrics on a split, for each member of the method (one for single-model methods)."""
    return _evaluate(runner, data, split, device, batch_size)[0]


@torch.no_grad()
def _evaluate(
    runner, data: BenchmarkData, split: str, device, batch_size: int
) -> tuple[list[dict[str, dict[str, float]]], list[tuple[int, int]]]:
    """:func:`evaluate`, and the (member, task) pairs whose outputs were NaN or infinite somewhere."""
    runner.set_training(False)
    count = data.size(split)
    evaluators: list[Any] | None = None
    finite: dict[tuple[int, int], torch.Tensor] = {}  # flags on the device: one host sync at the end
    for start in range(0, count, batch_size):
        x, y = data.batch(split, torch.arange(start, min(start + batch_size, count)), device)
        members = runner.predict_members(x)
        if evaluators is None:
            evaluators = [data.evaluator() for _ in members]
        for m, (evaluator, outputs) in enumerate(zip(evaluators, members)):
            evaluator.update(outputs, y)
            for t, output in enumerate(outputs):
                if isinstance(output, torch.Tensor) and output.is_floating_point():
                    ok = torch.isfinite(output).all()
                    finite[(m, t)] = finite[(m, t)] & ok if (m, t) in finite else ok
    assert evaluators is not None
    flags = torch.stack(list(finite.values())).tolist() if finite else []
    bad = [key for key, flag in zip(finite, flags) if not flag]
    return [evaluator.compute() for evaluator in evaluators], bad


def hypervolume_of(
    members: list[dict[str, dict[str, float]]], task_names, reference, objective: str
) -> float:
    """Hypervolume of the members' points (``objective`` per task), minimization."""
    from mtlopt.hypervolume import hypervolume

    return hypervolume([[member[task][objective] for task in task_names] for member in members], reference)


def short_run_warning(benchmark: str, protocol: str, epochs: int) -> str | None:
    """A warning when ``epochs`` is too few for the numbers to say anything about the methods: under a
    tenth of the protocol's published epochs, or a single epoch; None otherwise."""
    published = get_benchmark(benchmark).defaults[protocol].epochs
    enough = max(2, math.ceil(published / 10))
    if epochs >= enough:
        return None
    return (
        f"warning: {epochs} epoch{'s' if epochs != 1 else ''} of the {published} that the {benchmark}/"
        f"{protocol} protocol trains: the numbers show where training starts, not what the methods "
        f"reach (models after so few epochs can sit near chance); use --epochs {enough} or more for "
        "results to compare"
    )


def dropped_per_epoch(examples: int, batch_size: int, world: int) -> int:
    """Examples of the last batch that ``world`` equal shares leave out (a lone last example is skipped)."""
    tail = examples % batch_size
    if tail == 1 and examples > 1:  # skipped in any case: BatchNorm cannot train on a single example
        return 0
    return tail % world


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            index = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is not None else None
            return torch.device("cuda", index) if index is not None else torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def prepare_output_dir(out: Path, flag: str = "--out") -> None:
    """Create ``out`` (and its parents) and check that files can be written in it.

    Raises :class:`OutputError`, one line saying what to do, when ``out`` is a file, lies below a file,
    cannot be created or is not writable; before any training, so that no epoch is lost to it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"{flag} {out} is a file, not a directory; choose another {flag} or delete that file"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{flag} {out}: {parent} is a file, not a directory; choose another {flag}")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{flag} {out}: cannot create the directory ({error.strerror or error}); choose another {flag}"
        ) from None
    probe = out / f".mtlopt-write-test.{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        raise OutputError(
            f"{flag} {out} is not writable ({error.strerror or error}); "
            f"choose another {flag} or make it writable"
        ) from None


def read_result(path: Path) -> dict[str, Any]:
    """A ``result.json``; :class:`CorruptRunFile` naming the file when it is not one."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CorruptRunFile(
            f"{path} cannot be read as a result file ({_first_line(error)}); "
            "delete it to train this run again"
        ) from None
    if not isinstance(result, dict) or not ({"method", "label"} & set(result)):
        raise CorruptRunFile(
            f"{path} is not a result file of mtlopt's trainer; delete it to train this run again"
        )
    return result


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    _write_atomic(path, "w", lambda f: json.dump(payload, f, indent=1))


def _write_atomic(path: Path, mode: str, write: Callable[[Any], None]) -> None:
    """Write through a partial file, fsync'ed, then renamed over ``path``: a reader sees the old file or
    the new one, never a torn one; a failed write is one line naming the file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except OSError as error:
        raise OutputError(
            f"cannot write {path} ({error.strerror or error}); free some space or choose another --out"
        ) from None


_CHECKPOINT_KEYS = frozenset({"identity", "epoch", "runner", "rng", "history", "step_times"})


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """``checkpoint.pt``, or :class:`CorruptRunFile` saying to delete it (truncated, damaged, foreign)."""
    start_over = f"delete it to start this run over from epoch 1 (rm {path})"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch.load raises many kinds: zip, unpickling, EOF, ...
        reason = _first_line(error)
        if "weights only load failed" in reason.lower() or "weights_only" in reason:
            reason = f"{type(error).__name__}: not a checkpoint written by mtlopt's trainer"
        raise CorruptRunFile(f"{path} cannot be read ({reason}); it is damaged: {start_over}") from None
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= set(state):
        raise CorruptRunFile(f"{path} is not a checkpoint of mtlopt's trainer; {start_over}")
    return state


def _finite_state(runner: Any, process_group: Any = None, device: torch.device | None = None) -> bool:
    """Whether every trained parameter (found through the optimizers, so populations count) and every
    floating-point buffer of the runner's modules is finite, on every rank of ``process_group``."""
    tensors = [p for opt in runner.optimizers() for group in opt.param_groups for p in group["params"]]
    tensors += [b for module in runner.modules() for b in module.buffers() if b.is_floating_point()]
    finite = torch.stack([torch.isfinite(t.detach()).all() for t in tensors]).all() if tensors else None
    if process_group is None:
        return finite is None or bool(finite)
    flag = torch.tensor(1.0 if finite is None or bool(finite) else 0.0, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=process_group)
    return bool(flag.item() == 1.0)


def _task_names_in(message: str, task_names: Sequence[str]) -> str:
    """The library's message for the command line: the runners' task indices ('0', task 1, ...) shown
    as the task names, and without its advice to library users (the trainer gives its own hint)."""

    def name(match: re.Match[str]) -> str:
        index = int(match.group(2))
        shown = repr(task_names[index]) if index < len(task_names) else match.group(0)
        return (match.group(1) or "") + shown

    message = re.sub(r"(task )?'(\d+)'", name, message)
    message = re.sub(r"(task )(\d+)\b", name, message)
    return re.sub(r"; lower the learning rate.*$", "", message)


def _first_line(error: BaseException, limit: int = 160) -> str:
    """An exception's message in one line, at most ``limit`` characters (its type when empty)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _save_checkpoint(
    path, identity, epoch, runner_state, history, step_times, device, world=1, scaler=None
) -> None:
    state = {
        "format": RESULT_FORMAT,
        "identity": identity,
        "epoch": epoch,
        "world": world,
        "runner": runner_state,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
        "history": history,
        "step_times": step_times,
    }
    _write_atomic(path, "wb", lambda f: torch.save(state, f))


def _distributed(device: str) -> tuple[Any, int, int]:
    """Join the process group that ``torchrun`` describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, 0, 1
    if not torch.distributed.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.distributed.group.WORLD, torch.distributed.get_rank(), torch.distributed.get_world_size()


def _autocast(amp: str, device: torch.device):
    import contextlib

    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _only_epochs_differ(saved: Any, identity: dict[str, Any]) -> bool:
    """Whether ``saved`` is the identity of the same run with another number of epochs."""
    if not isinstance(saved, dict) or not isinstance(saved.get("epochs"), int):
        return False
    return {**saved, "epochs": identity["epochs"]} == identity


def _check_same_run(saved: dict[str, Any] | None, identity: dict[str, Any], out: Path) -> None:
    if saved == identity:
        return
    saved = saved or {}
    differing = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    raise RunConflict(
        f"{out} holds a run with other settings ({', '.join(differing)} differ); "
        "choose another --out or delete that directory"
    )


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def _extra_pass_seed(seed: int, epoch: int, extra: int) -> int:
    """The seed of the order of extra pass ``extra`` (1, 2, ...) in an epoch: not that of any epoch's
    main order of this run."""
    return (_epoch_seed(seed, epoch) * 7_919 + 104_729 * extra + 1) % (2**63)


def _progress(iterable, enabled: bool, description: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=description, leave=False, file=sys.stderr, dynamic_ncols=True)


def _epoch_line(config: TrainConfig, record: dict[str, Any], task_names) -> str:
    if "test" not in record:
        hv = record.get("test_hypervolume")
        return f"{config.label or config.method} seed {config.seed} epoch {record['epoch']}/{config.epochs}: test hypervolume {hv:.4f} ({record['seconds']:.1f} s)"
    test = record["test"]
    first = {name: next(iter(test[name])) for name in task_names}
    metric = first[task_names[0]] if len(set(first.values())) == 1 else "metrics"
    if len(task_names) <= 3:
        shown = " ".join(
            f"{name} {'' if metric != 'metrics' else first[name] + ' '}{test[name][first[name]]:.4g}"
            for name in task_names
        )
    else:
        shown = f"mean over {len(task_names)} tasks {statistics.fmean(test[name][first[name]] for name in task_names):.4g}"
    return f"{config.label or config.method} seed {config.seed} epoch {record['epoch']}/{config.epochs}: test {metric} {shown} ({record['seconds']:.1f} s)"


def _result(
    config, identity, benchmark, data, runner, history, step_times, device, seconds
) -> dict[str, Any]:
    if runner.produces_set and "val_hypervolume" in history[0]:
        best = max(history, key=lambda r: r["val_hypervolume"])
        selection = "epoch with the best validation hypervolume"
    else:  # each task's first metric, signed so that higher is better, averaged over tasks
        primary = {task: metrics[0] for task, metrics in data.task_metrics.items()}

        def score(record: dict[str, Any]) -> float:
            return statistics.mean(
                (1.0 if m.higher_is_better else -1.0) * record["val"][t][m.name] for t, m in primary.items()
            )

        best = max(history, key=score)
        names = "/".join(dict.fromkeys(m.name for m in primary.values()))
        selection = f"epoch with the best mean validation {names}"
    pick = ["val", "test", "val_members", "test_members", "val_hypervolume", "test_hypervolume"]
    return {
        **_header(config, identity, benchmark, data, runner, history, device),
        "final": {"epoch": history[-1]["epoch"], **{k: history[-1][k] for k in pick if k in history[-1]}},
        "best_val": {
            "selection": selection,
            "epoch": best["epoch"],
            **{k: best[k] for k in pick if k in best},
        },
        "time_per_step_ms": {
            "median": 1000 * statistics.median(step_times),
            "mean": 1000 * statistics.fmean(step_times),
            "steps": len(step_times),
        },
        "train_seconds": sum(r["seconds"] for r in history),
        "wall_seconds_this_session": seconds,
    }


def _header(config, identity, benchmark, data, runner, history, device) -> dict[str, Any]:
    """What every result file records, finished or failed: the run's settings, data and history."""
    return {
        "format": RESULT_FORMAT,
        "status": "finished",
        "identity": identity,
        "label": config.label or config.method,
        "benchmark": config.benchmark,
        "protocol": config.protocol,
        "data": data.meta,
        **runner.describe(),
        "seed": config.seed,
        "tasks": list(data.task_names),
        "metrics": {
            m.name: ("higher" if m.higher_is_better else "lower")
            for ms in data.task_metrics.values()
            for m in ms
        },
        "task_metrics": {
            task: {m.name: ("higher" if m.higher_is_better else "lower") for m in ms}
            for task, ms in data.task_metrics.items()
        },
        "training": {
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "optimizer": config.optimizer,
            "momentum": config.momentum,
            "weight_decay": config.weight_decay,
            "lr_decay_every": config.lr_decay_every,
            "lr_decay": config.lr_decay,
        },
        "environment": {
            "mtlopt": mtlopt.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "device": str(device),
            "threads": config.threads,
        },
        "history": history,
        "hypervolume_reference": list(benchmark.hv_reference) if benchmark.hv_reference else None,
    }


def _git_commit() -> str | None:
    """The commit of the mtlopt checkout that ran (suffixed "+dirty" with local changes), if any."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
