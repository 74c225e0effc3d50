"""The speed suite (`mtlopt speed`): end to end on a tiny configuration, the peer agreement, the targets.

Nothing here depends on timings: the tests check what is written and computed, not how fast.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from mtlopt.benchmarks import speed
from mtlopt.benchmarks.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import speed_targets  # tools/speed_targets.py: the acceptance targets, outside the package

pytestmark = pytest.mark.cpu_only(
    reason="`mtlopt speed --device cpu` and the CPU profiler's memory; scripts/gpu_check.sh times cuda"
)

E2E = ("forward-only", "ew", "mgda-ub", "pcgrad", "pmtl", "dwa", "pamal")
"""The end-to-end test's rows: the references, one of each kind of step, the two-task skip."""
TINY = ["--repeats", "2", "--min-rounds", "2", "--steps", "1", "--warmup", "1", "--budget", "1"]


def read_rows(path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_speed_command_writes_table_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "speed"
    code = main(
        ["speed", "--models", "lenet,mlp", "--tasks", "2,lenet=2/3", "--batch-sizes", "4", *TINY,
         "--methods", ",".join(E2E), "--solver-tasks", "2,3", "--solver-gramians", "2", "--peers", "none",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "speed.md" in capsys.readouterr().out
    assert speed_targets.main([str(out)]) == 0  # the targets section, judged from speed.json
    rows = read_rows(out / "speed.csv")
    ours = list(E2E)
    expected = {("lenet", "2"), ("lenet", "3"), ("mlp", "2")}
    assert {(r["model"], r["tasks"]) for r in rows} == expected
    for model, tasks in expected:
        got = {r["method"]: r for r in rows if (r["model"], r["tasks"]) == (model, tasks)}
        assert list(got) == ours  # the requested mtlopt methods, in order, and no peer
        for name, row in got.items():
            assert row["batch"] == "4" and row["threads"] == "1" and row["device"] == "cpu"
            if name in ("pmtl", "epo") and tasks == "3":
                assert row["status"] == "skipped" and "two-task" in row["note"]
                continue
            assert row["status"] == "ok", (model, tasks, name, row["note"])
            assert float(row["ratio_median"]) > 0 and row["rounds"] == "2"
            assert int(row["peak_bytes"]) >= int(row["resident_bytes"]) > 0
        assert float(got["ew"]["ratio_median"]) == 1.0 and float(got["ew"]["memory_ratio"]) == 1.0
    text = (out / "speed.md").read_text()
    assert "## Targets" in text and "## Min-norm solvers" in text and "## lenet" in text and "## mlp" in text
    assert "**1 thread(s)**" in text and "mtlopt speed --models lenet,mlp" in text
    assert text.count("| 2 | 4 | mgda-ub |") == 2  # lenet and mlp
    for target in ("MGDA-UB step ≤ 1.03× EW at K = 2", "exact MGDA step ≤ 1.3× EW", "population of 5 LeNets"):
        assert target in text  # listed, "not measured" at this size
    assert "not measured" in text
    for model in ("lenet", "mlp"):  # set methods: the cost per member or per ray beside the step's
        row = next(r for r in rows if (r["model"], r["tasks"], r["method"]) == (model, "2", "pamal"))
        per_ray = float(row["ratio_median"]) / 3
        assert f"{per_ray:.2f}× EW per ray (3 rays a step)" in text
    assert text.count("× EW per member (5 members a step)") == 2  # pmtl at K = 2, both models
    assert (out / "overhead.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_method_has_a_row_and_every_peer_row_a_counterpart():
    """The catalog's completeness, without running it: every registered benchmark method is a row (or
    is listed as not timed, with why), every row's builder exists, every peer row stands beside an
    mtlopt row and the Gramian peer rows say how they are compared."""
    from mtlopt.benchmarks.methods import METHODS as REGISTERED
    from mtlopt.benchmarks.methods import get_method

    for name in REGISTERED:
        assert name in speed.METHODS or name in speed.catalog.NOT_TIMED, name
    for name, method in speed.METHODS.items():
        assert callable(method.build), name
        if method.peer is not None:
            assert method.peer in speed.PEERS and speed.METHODS[method.counterpart].peer is None, name
        if method.agree is not None:
            assert method.peer_class and method.reference in REGISTERED, name
            get_method(method.reference)(method.agree, 2)  # the agreement's options are valid
    for name in GRAMIAN_PEERS:
        assert speed.METHODS[name].agree is not None, name


def test_speed_rejects_bad_arguments_with_one_line(tmp_path, capsys):
    cases = [
        (["--models", "vgg"], "--models: unknown vgg"),
        (["--tasks", "1"], "--tasks: expected integers >= 2"),
        (["--batch-sizes", "resnet=8"], "unknown model 'resnet'"),
        (["--methods", "mgda,nosuch"], "--methods: unknown nosuch"),
        (["--peers", "libmoon"], "--peers: unknown libmoon"),
        (["--solver-tasks", "2,x"], "--solver-tasks: expected integers"),
    ]
    for args, message in cases:
        assert main(["speed", *args, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mtlopt: error:") and message in err and "\n" not in err, err


def test_per_model_lists():
    from mtlopt.benchmarks.cli import _per_model

    defaults = {"lenet": (256, 64), "resnet18": (8,), "mlp": (120,)}
    models = ("lenet", "resnet18", "mlp")
    assert _per_model("", models, "--batch-sizes", defaults, 1) == defaults
    assert _per_model("32", models, "--batch-sizes", defaults, 1) == {m: (32,) for m in models}
    assert _per_model("2,10,resnet18=40", models, "--tasks", defaults, 2) == {
        "lenet": (2, 10),
        "resnet18": (40,),
        "mlp": (2, 10),
    }
    assert _per_model("lenet=256/64", ("lenet", "mlp"), "--batch-sizes", defaults, 1) == {
        "lenet": (256, 64),
        "mlp": (120,),
    }


def tiny_config(**overrides) -> speed.SpeedConfig:
    settings = dict(
        models=("lenet",),
        tasks={"lenet": (2,)},
        batch_sizes={"lenet": (4,)},
        methods=("ew",),
        peers=(),
        repeats=1,
        min_rounds=1,
        steps=1,
        warmup=1,
        budget=1.0,
        memory=False,
        solver_tasks=(),
    )
    settings.update(overrides)
    return speed.SpeedConfig(**settings)


def test_missing_peers_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(speed.peers, "import_peer", lambda peer: None)
    report = speed.run_speed(tiny_config(peers=("torchjd", "libmtl")), log=lambda line: None)
    assert len(report.notes) == 2
    assert "torchjd is not installed" in report.notes[0] and "LibMTL is not installed" in report.notes[1]
    assert set(report.configs[0].rows) == {"forward-only", "ew"}  # no peer row
    text = speed.markdown(report)
    assert "LibMTL is not installed: its rows are skipped" in text
    assert "scripts/install_peers.sh" in text


def test_a_failing_method_is_reported_not_fatal(monkeypatch):
    def broken(setup):
        def run():
            raise RuntimeError("out of memory (simulated)\nsecond line")

        return speed.Step(run, [])

    monkeypatch.setitem(speed.METHODS, "mgda", speed.Method("mgda", "broken", broken))
    report = speed.run_speed(tiny_config(methods=("ew", "mgda")), log=lambda line: None)
    row = report.configs[0].rows["mgda"]
    assert row.status == "failed" and row.note == "RuntimeError: out of memory (simulated)"
    assert report.configs[0].rows["ew"].ratio == 1.0


def test_a_step_past_the_time_limit_is_abandoned():
    if not hasattr(speed.timing.signal, "setitimer"):
        pytest.skip("no interval timer on this platform")
    with pytest.raises(speed.StepTimeout, match="slow did not finish within 0.05 s"):
        with speed.time_limit(0.05, "slow"):
            while True:
                pass


def setup_for(model: str, tasks: int, batch: int = 8) -> speed.Setup:
    return speed.make_setup(tiny_config(), speed.MODELS[model], tasks, batch, torch.device("cpu"))


@pytest.mark.parametrize(("model", "tasks"), [("lenet", 2), ("lenet", 3), ("mlp", 9)])
def test_torchjd_agrees_with_mtlopt(model, tasks):
    pytest.importorskip("torchjd")
    s = setup_for(model, tasks)
    mgda = speed.agreement(s, speed.METHODS["torchjd-mgda"])
    assert mgda.reference == "mgda"
    assert mgda.objective_excess is not None and mgda.objective_excess >= -1e-9  # mtlopt's is optimal
    if tasks == 2:  # Frank–Wolfe reaches the two-task optimum in one line search
        assert mgda.weight_diff < 1e-5 and mgda.update_diff < 1e-4
    pcgrad = speed.agreement(s, speed.METHODS["torchjd-pcgrad"])  # its random orders replayed
    assert pcgrad.weight_diff < 1e-5 and pcgrad.update_diff < 1e-5, pcgrad


@pytest.mark.parametrize(("model", "tasks"), [("lenet", 2), ("lenet", 3), ("mlp", 9)])
def test_libmtl_agrees_with_mtlopt(model, tasks):
    if speed.import_peer("libmtl") is None:
        pytest.skip("LibMTL is not installed (scripts/install_peers.sh)")
    assert "torchvision" not in sys.modules or hasattr(sys.modules["torchvision"], "__file__")  # stub gone
    s = setup_for(model, tasks)
    for name, reference in (("libmtl-mgda", "mgda"), ("libmtl-mgda-ub", "mgda-ub")):
        result = speed.agreement(s, speed.METHODS[name])
        assert result.reference == reference
        assert result.objective_excess is not None and result.objective_excess >= -1e-9
        if tasks == 2:  # the closed form on both sides
            assert result.weight_diff < 1e-5 and result.update_diff < 1e-4, (name, result)
    for name in ("libmtl-pcgrad", "libmtl-uw"):
        result = speed.agreement(s, speed.METHODS[name])
        assert result.weight_diff < 1e-5 and result.update_diff < 1e-5, (name, result)


def test_peer_steps_run(tmp_path):
    pytest.importorskip("torchjd")
    if speed.import_peer("libmtl") is None:
        pytest.skip("LibMTL is not installed (scripts/install_peers.sh)")
    peers = [name for name, method in speed.METHODS.items() if method.peer]
    counterparts = tuple(dict.fromkeys(speed.METHODS[name].counterpart for name in peers))
    config = tiny_config(methods=("ew", *counterparts), peers=("torchjd", "libmtl"), memory=True)
    report = speed.run_speed(config, log=lambda line: None)
    rows = report.configs[0].rows
    assert set(peers) <= set(rows)
    for name in peers:
        assert rows[name].status == "ok" and rows[name].ratio is not None and rows[name].peak_bytes, name
    assert rows["libmtl-mgda"].agreement is not None and rows["libmtl-gradnorm"].agreement is None
    speed.write_report(report, tmp_path)
    assert "vs mgda: weights Δ" in (tmp_path / "speed.md").read_text()


def fake_config(
    model: str, tasks: int, batch: int, ratios: dict[str, float], **peaks: int
) -> speed.ConfigResult:
    rows = {}
    for name, ratio in ratios.items():
        method = speed.METHODS[name]
        row = speed.MethodResult(model, tasks, batch, name, method.peer)
        row.times = [ratio * 0.01] * 3
        row.ratios = [ratio] * 3
        row.peak_bytes = peaks.get(name.replace("-", "_"))
        rows[name] = row
    return speed.ConfigResult(model, tasks, batch, 3, 1, rows)


def test_targets_are_judged_with_reasons():
    small = fake_config(
        "lenet",
        2,
        256,
        {"forward-only": 0.5, "ew": 1.0, "mgda": 1.5, "mgda-ub": 1.01, "mao": 1.2, "population": 4.6},
    )
    large = fake_config(
        "lenet",
        40,
        64,
        {"forward-only": 0.3, "ew": 1.0, "mgda": 6.0, "mgda-ub": 1.2, "libmtl-mgda": 12.0},
        mgda=100,
        libmtl_mgda=120,
    )
    solver = speed.SolverRow(40, "mtlopt (default)", [0.0005] * 3, [0.0, 1e-15], [2e-14])
    report = speed.SpeedReport(tiny_config(), {}, [small, large], [solver], [])
    targets = {t["target"]: t for t in speed_targets.evaluate_targets(report)}
    by_start = {key.split(":")[0].split(" (")[0]: value for key, value in targets.items()}
    assert by_start["min-norm solve at K = 40"]["met"] == "yes"
    assert targets["MGDA-UB step ≤ 1.03× EW at K = 2"]["met"] == "yes"
    ub40 = targets["MGDA-UB step ≤ 1.10× EW at K = 40"]
    assert ub40["met"] == "**no**" and ub40["note"]
    mgda = targets["exact MGDA step ≤ 1.3× EW at K = 2"]
    # forward 0.5, one backward 0.5: two backward passes alone cost 1.5× EW
    assert mgda["met"] == "**no**" and "cost 1.50× EW" in mgda["note"]
    assert targets["exact MGDA step at K = 40 ≤ 0.75× LibMTL's time"]["measured"] == "0.5 × LibMTL"
    assert targets["exact MGDA peak memory at K = 40 ≤ LibMTL's"]["met"] == "yes"
    assert targets["MAO step ≤ 1.3× EW at K = 2"]["met"] == "yes"
    assert targets["population of 5 LeNets ≤ 2.5× one LeNet step"]["met"] == "**no**"
    loss = "loss-level methods (dwa, rlw, gls, si, imtl-l, stch) step ≤ 1.05× EW at K = {}"
    assert targets[loss.format(2)]["measured"] == "not measured"  # no loss method in these rows
    small.rows.update(fake_config("lenet", 2, 256, {m: 1.01 for m in LOSS}).rows)
    large.rows.update(fake_config("lenet", 40, 64, {**{m: 1.0 for m in LOSS}, "stch": 1.2}).rows)
    targets = {t["target"]: t for t in speed_targets.evaluate_targets(report)}
    assert targets[loss.format(2)]["met"] == "yes" and "gls 1.01" in targets[loss.format(2)]["measured"]
    assert targets[loss.format(40)]["met"] == "**no**" and targets[loss.format(40)]["note"].startswith("stch")


LOSS = ("dwa", "rlw", "gls", "si", "imtl-l", "stch")
LOSS_PEERS = {
    "torchjd-dwa": "dwa",
    "torchjd-random": "rlw",
    "torchjd-geometricmean": "gls",
    "torchjd-imtll": "imtl-l",
    "torchjd-famo": "famo",
    "torchjd-stch": "stch",
    "libmtl-dwa": "dwa",
    "libmtl-rlw": "rlw",
    "libmtl-gls": "gls",
}

GRAMIAN_PEERS = {
    "torchjd-imtlg": "imtl-g",
    "torchjd-alignedmtl": "aligned-mtl",
    "torchjd-alignedmtl-ub": "aligned-mtl-ub",
    "torchjd-config": "config",
    "torchjd-gradvac": "gradvac",
    "libmtl-imtl": "imtl",
    "libmtl-gradvac": "gradvac",
}


@pytest.mark.parametrize(("model", "tasks"), [("lenet", 3), ("mlp", 5)])
def test_gramian_peers_agree_with_mtlopt(model, tasks):
    """The generic Gramian agreement (one step from identical weights, random orders replayed). The
    peers compute in float32 (TorchJD's ConFIG a float32 pseudo-inverse, its weights recovered by least
    squares), mtlopt from a float64 Gramian: agreement to float32 rounding."""
    if all(speed.import_peer(peer) is None for peer in ("torchjd", "libmtl")):
        pytest.skip("neither TorchJD nor LibMTL is installed (scripts/install_peers.sh)")
    s = setup_for(model, tasks)
    for name, reference in GRAMIAN_PEERS.items():
        if speed.import_peer(name.split("-")[0]) is None:
            continue
        result = speed.agreement(s, speed.METHODS[name])
        assert result.reference == reference and speed.METHODS[name].counterpart == reference
        assert result.weight_diff < 1e-4 and result.update_diff < 1e-4, (name, result)


def test_loss_methods_have_rows_and_peer_counterparts():
    for name in (*LOSS, "famo", "famo-no-update"):
        assert name in speed.DEFAULT_METHODS, name
    for name, reference in LOSS_PEERS.items():
        method = speed.METHODS[name]
        assert method.peer == name.split("-")[0] and method.reference == reference, name
    assert speed.METHODS["libmtl-gradnorm"].counterpart == "gradnorm"


def test_loss_rows_run_with_their_hooks():
    names = (*LOSS, "famo", "famo-no-update")
    report = speed.run_speed(tiny_config(methods=("ew", *names), memory=True), log=lambda line: None)
    rows = report.configs[0].rows
    for name in names:
        assert rows[name].status == "ok" and rows[name].ratio is not None and rows[name].peak_bytes, name
    assert "FAMO's step costs more than EW's" in speed.markdown(report)
    assert "lenet K = 2 batch 4: " in speed.markdown(report)  # the hook's price, from this run

    # The hooks run inside the timed steps: DWA and STCH close an epoch every step (past their
    # uniform and warm-up epochs), FAMO updates its logits after every step, famo-no-update never.
    s = setup_for("lenet", 2)
    for name, epochs in (("dwa", 2), ("stch", 6)):
        step = speed.METHODS[name].build(s)
        step.run()
        assert runner_of(step)._weighting.epoch == epochs, name
    assert runner_of(step)._weighting.nadir is not None  # STCH's timed steps take its STCH branch
    step = speed.METHODS["famo"].build(s)
    step.run()
    assert runner_of(step)._weighting._previous is None  # updated
    assert bool((runner_of(step)._weighting.logits != 0).any())
    step = speed.METHODS["famo-no-update"].build(s)
    step.run()
    assert runner_of(step)._weighting._previous is not None  # weighed, never updated
    assert bool((runner_of(step)._weighting.logits == 0).all())


def runner_of(step: speed.Step):
    """The method runner a step's closure holds."""
    cells = [cell.cell_contents for cell in step.run.__closure__ or ()]
    return next(value for value in cells if hasattr(value, "_weighting"))


@pytest.mark.parametrize(("model", "tasks"), [("lenet", 3), ("mlp", 9)])
def test_loss_peers_agree_with_mtlopt(model, tasks):
    if all(speed.import_peer(peer) is None for peer in ("torchjd", "libmtl")):
        pytest.skip("neither TorchJD nor LibMTL is installed (scripts/install_peers.sh)")
    s = setup_for(model, tasks)
    for name, reference in LOSS_PEERS.items():
        if speed.import_peer(name.split("-")[0]) is None:
            continue
        result = speed.agreement(s, speed.METHODS[name])
        assert result.reference == reference
        assert result.weight_diff < 1e-5 and result.update_diff < 1e-5, (name, result)


def test_peer_rows_follow_the_measured_methods(monkeypatch):
    monkeypatch.setattr(speed.peers, "import_peer", lambda peer: object())
    built = []

    def fake(name):
        def build(s):
            built.append(name)
            return speed.Step(lambda: None, [])

        return build

    for name, method in list(speed.METHODS.items()):
        if method.peer:
            monkeypatch.setitem(
                speed.METHODS,
                name,
                speed.Method(name, "", fake(name), method.peer, beside=method.counterpart),
            )
    report = speed.run_speed(
        tiny_config(methods=("ew", "dwa"), peers=("torchjd", "libmtl")), log=lambda line: None
    )
    assert set(built) == {"torchjd-dwa", "libmtl-dwa"}
    assert {"torchjd-dwa", "libmtl-dwa"} <= set(report.configs[0].rows)


def test_paired_timing_writes_its_table(tmp_path):
    import speed_paired  # tools/speed_paired.py

    out = tmp_path / "paired.md"
    args = ["--configs", "mlp:2:4", "--methods", "dwa,famo", "--pairs", "3", "--warmup", "1"]
    assert speed_paired.main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "| mlp | 2 | 4 | dwa |" in text and "| mlp | 2 | 4 | famo |" in text and "EW step" in text
    assert "**1 thread(s)**" in text and "--pairs 3" in text
