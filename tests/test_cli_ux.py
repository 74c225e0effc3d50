"""The command line explains itself (issue 20, item 3): help with each protocol's real defaults, clean
metavars, ``--version``, ``mtlopt protocols``, negative numbers in list options, ``--sizes`` for every
protocol, an overall progress line that shows when the output goes to a file, a warning for runs too
short to mean anything, plots readable after one epoch, and finished runs extended to more epochs
exactly as an uninterrupted longer run."""

from __future__ import annotations

import json
import re

import pytest

import mtlopt
from mtlopt.benchmarks.cli import _build_parser, _given_options, main
from mtlopt.benchmarks.methods import get_method
from mtlopt.benchmarks.suite import BENCHMARKS

# 200 source images per split, batch 64: 4 steps per epoch.
TINY = ["--benchmark", "multimnist", "--max-sources", "200", "--threads", "1", "--quiet", "--batch-size", "64"]  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTLOPT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def help_of(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "compare", "pareto"])
def test_help_has_clean_metavars_single_defaults_and_points_at_the_protocols(capsys, command):
    text = help_of(capsys, command)
    assert "METHOD_" not in text and "BATCH_SIZE" not in text and "LR_DECAY" not in text
    assert "(default: equal) (default: None)" not in text
    assert not re.search(r"\(default: [^()]*\) \(default:", " ".join(text.split()))  # never two in a row
    for flag, metavar in (("--epochs", "N"), ("--lr", "FLOAT"), ("--momentum", "FLOAT"), ("--clip", "X,Y")):
        assert f"{flag} {metavar}" in text
    assert "--task-weights W1,W2,..." in text and "--sizes TRAIN,VAL,TEST" in text
    for flag in ("--epochs", "--lr", "--batch-size", "--momentum"):
        block = text.split(f"  {flag} ")[1].split("\n  --")[0]
        assert "the protocol's" in block and "mtlopt protocols" in " ".join(block.split()), block
    assert f"usage: mtlopt {command} " in text and "[options]" in text.splitlines()[0]


def test_help_shows_the_given_protocols_defaults(capsys):
    text = " ".join(help_of(capsys, "train", "--benchmark", "multifashion", "--protocol", "pmtl").split())
    assert "--epochs N epochs to train" in text and "(default: 100, the multifashion/pmtl protocol's)" in text
    assert "learning rate (default: 0.001, the multifashion/pmtl protocol's)" in text
    assert "(default: 256, the multifashion/pmtl protocol's)" in text
    text = " ".join(help_of(capsys, "compare", "--benchmark=qm9").split())
    assert (
        "(default: 10, the qm9/cpu protocol's)" in text and "(default: adam, the qm9/cpu protocol's)" in text
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mtlopt {mtlopt.__version__}"


def test_protocols_lists_every_benchmark_and_protocol_with_its_settings(capsys):
    assert main(["protocols"]) == 0
    rows = {
        line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if "/" in line[:30]
    }
    for name, benchmark in BENCHMARKS.items():
        for protocol in benchmark.protocols:
            d = benchmark.defaults[protocol]
            row = rows[f"{name}/{protocol}"]
            assert row[1:4] == [str(d.epochs), d.optimizer, f"{d.lr:g}"] and str(d.batch_size) in row[4:6]
    assert rows["multimnist/pmtl"][-2:] == ["108,000/12,000/20,000", "composites"]
    assert rows["qm9/cpu"][-2:] == ["4,000/1,000/1,000", "molecules"]


@pytest.mark.parametrize("value", ["-1,2", "-0.5,1.5", "1e-3,-2", "-1e-3,2"])
def test_list_options_take_negative_numbers_without_equals(value):
    args = _build_parser().parse_args(
        ["train", "--benchmark", "multimnist", "--method", "grid", "--out", "x", "--task-weights", value]
    )
    parsed = _given_options(args, [get_method("grid")])["grid"]["task-weights"]
    assert parsed == tuple(float(v) for v in value.split(","))


def test_sizes_shrinks_the_sener_protocol_too(tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--method", "ew", "--epochs", "1", "--sizes", "100,50,60", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "result.json").read_text())["data"]["sizes"] == {
        "train": 100,
        "val": 50,
        "test": 60,
    }


def test_compare_shows_overall_progress_in_a_file_and_warns_about_a_one_epoch_run(
    tmp_path, capsys, monkeypatch
):
    import matplotlib.figure

    axes = {}

    def record(figure, path, **kwargs):  # what the plots would show, instead of drawing them
        axes[path.name] = figure.axes

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    out = tmp_path / "cmp"
    loud = [a for a in TINY if a != "--quiet"]  # no bar either way: stderr is not a terminal here
    args = ["compare", *loud, "--epochs", "1", "--methods", "ew,mgda", "--seeds", "1", "--out", str(out)]
    assert main(args) == 0  # capsys: stderr is not a terminal, as when redirected to a file
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[1].startswith("mtlopt: run 1 of 2: ew seed 0 (") and "known after the first epoch" in err[1]
    assert err[3].startswith("mtlopt: run 2 of 2: mgda seed 0 (") and "left)" in err[3]
    assert err[2].startswith("ew seed 0 epoch 1/1: ") and "[run 1/2, " in err[2] and " left]" in err[2]
    assert err[4].endswith(" elapsed, done]")
    assert "warning: 1 epoch of the 100 that the multimnist/sener protocol trains" in err[0]
    assert captured.out.strip().splitlines()[-1].startswith("warning: 1 epoch of the 100")
    summary = (out / "summary.md").read_text()
    assert "## Epoch: mean of the last 1 epoch (all the run has)" in summary
    assert "mean of the last 10 epochs" not in summary and "**warning: 1 epoch" in summary
    for name in ("learning_curves.png", "hypervolume.png"):  # single points are drawn as markers
        lines = [line for ax in axes[name] for line in ax.get_lines() if len(line.get_xdata()) == 1]
        assert lines and all(line.get_marker() == "o" for line in lines)
    assert axes["hypervolume.png"][0].get_ylim()[0] == 0.0


def strip_times(result: dict) -> dict:
    """A result without what depends on the wall clock or on how the run was split into sessions."""
    for record in result["history"]:
        record.pop("seconds")
    for key in ("time_per_step_ms", "train_seconds", "wall_seconds_this_session", "environment"):
        result.pop(key)
    return result


@pytest.mark.parametrize("method", ["mgda", pytest.param("famo", marks=pytest.mark.slow)])
def test_extending_a_finished_run_equals_the_uninterrupted_longer_run(tmp_path, capsys, method):
    # An lr decayed every epoch and a stateful method: the schedule, the optimizer and method states and
    # the RNG all have to continue as they would have.
    args = ["train", *TINY, "--method", method, "--lr-decay-every", "1", "--lr-decay", "0.7"]
    assert main([*args, "--epochs", "3", "--out", str(tmp_path / "reference")]) == 0
    out = tmp_path / "extended"
    assert main([*args, "--epochs", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{out}: extending the finished 2-epoch run to 3 epochs" in err and "resuming after epoch 2" in err
    reference = strip_times(json.loads((tmp_path / "reference" / "result.json").read_text()))
    extended = strip_times(json.loads((out / "result.json").read_text()))
    assert [r["lr"] for r in extended["history"]] == pytest.approx([0.05, 0.035, 0.0245])
    assert extended == reference
    # the same length again is not rerun; fewer epochs are refused in one line
    assert main([*args, "--epochs", "3", "--out", str(out)]) == 0
    assert "already finished, skipping" in capsys.readouterr().err
    assert main([*args, "--epochs", "2", "--out", str(out)]) == 2
    assert "holds a finished 3-epoch run; --epochs 2 is fewer" in capsys.readouterr().err


def test_a_run_whose_training_depends_on_its_length_is_not_extended(tmp_path, capsys):
    args = ["pareto", *TINY, "--method", "mtgd", "--num-models", "2", "--transfer-schedule", "linear", "--transfer-form", "mgd"]  # fmt: skip
    out = tmp_path / "run"
    assert main([*args, "--epochs", "1", "--out", str(out)]) == 0
    transfer = json.loads((out / "result.json").read_text())["transfer"]
    assert (transfer["form"], transfer["schedule"]) == ("mgd", "linear")
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "whose training depends on its length" in err and "cannot be continued to 2 epochs" in err
