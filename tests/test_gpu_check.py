"""scripts/gpu_check.sh, the one bounded GPU check (issue 21), and its report (tools/gpu_report.py).

Without a GPU the script is checked by its CPU dry run: ``--cpu --quick`` in the default suite (every
stage on the CPU with the smallest settings; a minute or so on 2 idle cores), ``--cpu`` in the slow
suite. The report is checked on a made-up work folder with every kind of stage outcome.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import gpu_report  # tools/gpu_report.py: the report, outside the package

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

STAGES = ["setup", "tests-core", "tests-rest", "speed-k2", "speed-k40", "amp-fp16", "amp-bf16"]
STAGES += ["pareto-mtgd", "pareto-ls-sweep"]
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def test_the_script_parses_and_explains_itself():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for words in ("--cpu", "--quick", "--prepare", "--budget", "480"):
        assert words in usage
    bad = subprocess.run(["bash", str(SCRIPT), "--nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


# --- the report, on a made-up work folder -----------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _stage(
    work: Path, order: str, name: str, status: str, rc: str, seconds: int, limit: int, note="", cmd=""
):
    _write(work / "stages" / f"{order}-{name}.tsv", f"{name}\t{status}\t{rc}\t{seconds}\t{limit}\t{note}\n")
    _write(work / "stages" / f"{order}-{name}.cmd", cmd)


def _result(history: list[dict], final: dict, **extra) -> str:
    return json.dumps({"history": history, "final": final, "time_per_step_ms": {"median": 1.5}, **extra})


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    _write(
        work / "env.json",
        json.dumps(
            {
                "requested_device": "cuda",
                "torch": "2.11.0+cu130",
                "devices": [{"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8}],
                "packages": {"moocore": "0.3.2", "pymoo": None},
            }
        ),
    )
    _write(work / "data.json", json.dumps({"available": True, "protocols": {}}))
    _stage(work, "00", "setup", "ok", "0", 9, 150)
    _stage(work, "02", "tests-core", "failed", "1", 40, 150)
    _write(
        work / "tests-core.xml",
        """<?xml version="1.0"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_ok"/>
<testcase classname="tests.test_a" name="test_bad"><failure message="AssertionError: cuda != cpu">x</failure></testcase>
<testcase classname="tests.test_distributed" name="test_ddp"><skipped type="pytest.skip"
  message="CPU only (gloo DDP); the tests run on cuda"/></testcase>
</testsuite></testsuites>""",
    )
    _stage(work, "03", "tests-rest", "timeout", "124", 150, 150)
    _write(
        work / "logs" / "tests-rest.log",
        "[gw0] [ 50%] PASSED tests/test_b.py::test_x\n[gw1] [100%] FAILED tests/test_b.py::test_y[2]\n",
    )
    _stage(work, "04", "speed-k2", "ok", "0", 50, 60)
    row = {"status": "ok", "note": "", "peak_bytes": 2**21, "memory_ratio": 1.0}
    rows = {
        "ew": {**row, "times": [0.002, 0.002, 0.003], "ratios": [1.0, 1.0, 1.0]},
        "population": {**row, "times": [0.006] * 3, "ratios": [3.0, 3.2, 3.1]},
        "population-vmap": {**row, "times": [0.004] * 3, "ratios": [1.9, 2.0, 2.1]},
        "mgda": {**row, "status": "timeout", "note": "slow", "times": [], "ratios": []},
    }
    _write(
        work / "speed-k2" / "speed.json",
        json.dumps(
            {
                "environment": {"device": "NVIDIA H200", "threads": 4},
                "configs": [
                    {"model": "lenet", "tasks": 2, "batch": 256, "rounds": 3, "steps": 5, "rows": rows}
                ],
            }
        ),
    )
    _stage(work, "05", "speed-k40", "skipped", "", 0, 12, "time: 12s available, needs 20s")
    _stage(
        work,
        "06",
        "amp-fp16",
        "ok",
        "0",
        70,
        150,
        cmd="python -m mtlopt compare --methods ew,mtgd\\[num-models=2\\],mgda --amp fp16",
    )
    member = {"left": {"accuracy": 50.0}, "right": {"accuracy": 60.0}}
    # A step skipped on overflow logs NaN task weights: a diagnostic, not a metric.
    train = {"loss": [0.5, 0.7], "weights": [math.nan, math.nan]}
    finite = _result([{"train": train}], {"test": member}, environment={"amp": "fp16"})
    _write(work / "amp-fp16" / "runs" / "ew" / "seed0" / "result.json", finite)
    nan = _result([{"train": {"member_loss": [0.5, math.nan]}}], {"test_members": [member, member]})
    _write(work / "amp-fp16" / "runs" / "mtgd_num-models=2" / "seed0" / "result.json", nan)
    _stage(work, "07", "amp-bf16", "skipped", "", 0, 0, "no Fashion-MNIST")
    _stage(
        work,
        "08",
        "pareto-mtgd",
        "timeout",
        "124",
        100,
        100,
        cmd="python -m mtlopt pareto --method mtgd --epochs 100",
    )
    _write(
        work / "logs" / "pareto-mtgd.log",
        "mtgd seed 0 epoch 1/100: test hypervolume 0.1000 (2.0 s)\n"
        "mtgd seed 0 epoch 2/100: test hypervolume 0.2500 (2.2 s)\nKeyboardInterrupt\n",
    )
    _stage(
        work,
        "09",
        "pareto-ls-sweep",
        "ok",
        "0",
        20,
        100,
        cmd="python -m mtlopt pareto --method ls-sweep --epochs 2",
    )
    history = [{"test_hypervolume": 0.3, "val_hypervolume": 0.31, "seconds": 3.0}] * 2
    _write(work / "pareto-ls-sweep" / "result.json", _result(history, {}, vectorized=True))
    return work


def test_the_report_reads_every_kind_of_stage_outcome(work: Path):
    report = gpu_report.build_report(work, "gpu", 480, 455)
    assert [s["name"] for s in report["stages"]] == STAGES
    assert report["failed_stages"] == ["tests-core"] and report["skipped_for_time"] == ["speed-k40"]
    core, rest = report["tests"]["core"], report["tests"]["rest"]
    assert (core["passed"], core["failed"], core["errors"], core["skipped"]) == (1, 1, 0, 1)
    assert core["failures"] == ["tests/test_a.py::test_bad: AssertionError: cuda != cpu"]
    assert core["skips"] == {"CPU only (cpu_only marker)": 1} and core["source"] == "junit"
    assert (rest["passed"], rest["failed"]) == (1, 1) and rest["failures"] == ["tests/test_b.py::test_y[2]"]
    assert "stopped" in rest["source"]
    (speed,) = report["speed"]
    assert speed["rows"]["ew"]["step_ms"] == pytest.approx(2.0) and speed["rows"]["mgda"]["ratio"] is None
    target = report["population_target"]["K=2"]
    assert (target["loop"], target["vmap"], target["met"]) == (3.1, 2.0, True)
    fp16 = report["amp"]["fp16"]
    assert fp16["not_run"] == ["mgda"] and not fp16["all_finite"]
    statuses = {r["run"]: r["status"] for r in fp16["runs"]}
    assert statuses == {"ew": "finite", "mtgd_num-models=2": "NON-FINITE"}
    assert report["amp"]["bf16"] is None
    mtgd, sweep = report["pareto"]["mtgd"], report["pareto"]["ls-sweep"]
    assert (mtgd["epochs_reached"], mtgd["epochs_planned"], mtgd["finished"]) == (2, 100, False)
    assert mtgd["hv"] == [0.1, 0.25] and mtgd["final_hv"] == 0.25
    assert (sweep["epochs_reached"], sweep["finished"], sweep["vectorized"]) == (2, True, True)

    text = gpu_report.markdown(report)
    assert text.startswith("# mtlopt GPU check: NVIDIA H200 (gpu mode)")
    for expected in (
        "| speed-k40 | skipped | 0 | 12 | time: 12s available, needs 20s |",
        "Skipped for time: speed-k40.",
        "| tests-rest | timeout | 150 | 150 | exit status 124 |",
        "`tests/test_a.py::test_bad: AssertionError: cuda != cpu`",
        "population of 5 ≤ 2.5× one EW step at K=2: loop 3.10×, vmap 2.00× (met)",
        "NON-FINITE at train[0].member_loss[1]",
        "finite (diagnostic NaN/inf: train[0].weights[0])",
        "**fp16**: 1 of 2 runs finished with finite metrics; not run: mgda; 1 run(s) log NaN/inf diagnostics",
        "**mtgd**: 2 of 100 epochs (stopped at the deadline)",
        "test hypervolume per epoch: 0.1000, 0.2500",
        "pymoo absent",
        "- bf16: not run (no Fashion-MNIST)",
        "Verdict: failed stages: tests-core.",
    ):
        assert expected in text, expected
    assert "population/EW at K=2: loop 3.10×, vmap 2.00×" in gpu_report.summary(report)


def test_the_report_command_writes_both_files_and_fails_on_a_failed_stage(work: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert gpu_report.main(["report", "--work", str(work), "--out", str(out), "--seconds", "455"]) == 1
    assert json.loads((out / "report.json").read_text())["seconds"] == 455
    assert "## c. Mixed precision" in (out / "report.md").read_text()
    assert "== mtlopt GPU check (gpu): NVIDIA H200" in capsys.readouterr().out
    (work / "stages" / "02-tests-core.tsv").write_text("tests-core\tok\t0\t40\t150\t\n")
    assert gpu_report.main(["report", "--work", str(work), "--out", str(out)]) == 0


# --- the CPU dry run ------------------------------------------------------------------------------------


def dry_run(out: Path, *flags: str) -> dict:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MTLOPT_TEST_")) and k != "OUT"
    }
    env.update(OMP_NUM_THREADS="1", PYTHON=sys.executable)
    # A generous budget: the stages' limits scale with it, and a CI machine's 2 cores are often shared.
    run = subprocess.run(
        ["bash", str(SCRIPT), "--cpu", *flags, "--budget", "1200", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "== mtlopt GPU check (cpu" in run.stdout
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "logs.tar.gz", "work"}
    return json.loads((out / "report.json").read_text())


def check_dry_run(report: dict, quick: bool) -> None:
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert list(status) == STAGES
    data = report["data"]["available"]
    if SYSTEM_FASHION_MNIST.is_dir():
        assert data, report["data"]
    for name, value in status.items():
        if quick and name in ("tests-rest", "speed-k40"):
            assert value == "skipped"
        elif not data and name.startswith(("amp-", "pareto-")):
            assert value == "skipped"
        else:
            assert value == "ok", (name, report["stages"])
    assert report["environment"]["requested_device"] == "cpu" and report["failed_stages"] == []
    core = report["tests"]["core"]
    assert core["passed"] > 0 and core["failed"] == core["errors"] == 0
    speed = {config["tasks"]: config for config in report["speed"]}
    assert sorted(speed) == ([2] if quick else [2, 40])
    for config in speed.values():
        for name in ("ew", "mgda-ub", "population", "population-vmap"):
            assert config["rows"][name]["status"] == "ok" and config["rows"][name]["ratio"] > 0
    assert report["population_target"]["K=2"]["met"] in (True, False)
    if data:
        for amp in ("fp16", "bf16"):
            assert report["amp"][amp]["all_finite"], report["amp"][amp]
            assert {r["amp"] for r in report["amp"][amp]["runs"]} == {amp}
        for method in ("mtgd", "ls-sweep"):
            pareto = report["pareto"][method]
            assert pareto["finished"] and pareto["epochs_reached"] == pareto["epochs_planned"] > 0
            assert all(0 <= hv for hv in pareto["hv"])


@pytest.mark.slow
@pytest.mark.cpu_only(reason="the CPU dry run of scripts/gpu_check.sh")
def test_quick_cpu_dry_run_writes_the_report_with_every_stage(tmp_path: Path):
    report = dry_run(tmp_path / "check", "--quick")
    check_dry_run(report, quick=True)
    assert report["mode"] == "cpu-quick"


@pytest.mark.slow
@pytest.mark.cpu_only(reason="the CPU dry run of scripts/gpu_check.sh")
def test_full_cpu_dry_run(tmp_path: Path):
    report = dry_run(tmp_path / "check")
    check_dry_run(report, quick=False)
    assert len(report["amp"]["fp16"]["runs"]) >= 14  # every method (grid: 2 points)
