"""Many ``fewshot`` processes on one MLflow store, as people launch seeds side by side: six at once (three
``train``, three ``eval``), on a new store and on an existing one, twice each. Every run finishes,
with no traceback and no tracking warning, and is FINISHED in the store with its metrics. The figures
(processes, tries, runs recorded, seconds) are printed.

Why six and twice are enough: with the store's file lock taken out of fewshot/tracking.py (MLflow's
migrations then run in every process that finds the store new, the bug this guards against), every
try on a new store failed: 2 processes 5 of 5 tries (1-2 dying each), 4 processes 3 of 3 (4 of 4
dying), 6 processes 4 of 4 (5-6 of 6 dying; "duplicate column name", "table _alembic_tmp_... already
exists", "Online migration expected to match one row"). The second try is a second new store and a
second round on the existing one, which then holds the first round's runs.

The six are forked together from one launcher that has imported torch, MLflow and fewshot and drawn
the glyphs once (tests/fewshot/forked_fewshot.py; each is still a process of its own, opening the store
itself), so a try costs seconds of CPU instead of a minute of imports, and the six reach the store
within the same second. One launcher serves the session (it is shared with test_tracking_faults.py)."""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fewshot.tracking import Tracker

if "forked_fewshot" not in sys.modules:  # one copy for the session: its launcher is shared by the test modules
    _spec = importlib.util.spec_from_file_location("forked_fewshot", Path(__file__).with_name("forked_fewshot.py"))
    sys.modules["forked_fewshot"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["forked_fewshot"])
forked_fewshot = sys.modules["forked_fewshot"]

pytestmark = pytest.mark.slow

PROCESSES, TRIES = 6, 2
TINY = ["--dataset", "glyphs", "--backbone", "conv4", "--matcher", "prototype", "--threads", "1", "--no-progress",
        "--json"]


@pytest.fixture(scope="module")
def launcher():
    return forked_fewshot.shared_launcher()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, launcher) -> Path:
    """A tiny trained run (untracked) for the ``eval`` processes to score."""
    folder = tmp_path_factory.mktemp("trained")
    (out,) = launcher.together([(["train", *TINY, "--episodes", "2", "--val-episodes", "0", "--eval-episodes", "2",
                                  "--no-track", "--run-dir", folder / "run"], folder)], folder / "logs")
    assert out.returncode == 0, out.stderr[-2000:]
    return folder / "run"


def _six_at_once(launcher, uri: str, folder: Path, trained: Path, attempt: int) -> list:
    """Three trainings and three evaluations started together on ``uri``: their results."""
    cmds = []
    for i in range(PROCESSES // 2):
        cmds.append(["train", *TINY, "--episodes", "2", "--val-episodes", "0", "--eval-episodes", "2", "--seed", str(i),
                     "--run-dir", str(folder / f"try{attempt}-train{i}"), "--tracking-uri", uri])
        cmds.append(["eval", "--run-dir", str(trained), "--checkpoint", "last", "--eval-episodes", "2", "--bank-seed",
                     str(10 * attempt + i), "--threads", "1", "--no-progress", "--json", "--track", "--tracking-uri", uri])
    results = []
    for cmd, out in zip(cmds, launcher.together([(cmd, folder) for cmd in cmds], folder / f"try{attempt}")):
        assert out.returncode == 0, f"fewshot {cmd[0]} failed:\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr and "MLflow tracking to" not in out.stderr, out.stderr[-3000:]
        results.append({**json.loads(out.stdout.strip().splitlines()[-1]), "command": cmd[0]})
    return results


def _recorded(uri: str, results: list) -> int:
    """How many of ``results`` are FINISHED runs in the store holding their test accuracy (all, or it fails)."""
    client = MlflowClient(tracking_uri=uri)
    for res in results:
        run = client.get_run(res["mlflow_run_id"])
        assert run.info.status == "FINISHED", (res["command"], run.info)
        assert run.data.metrics["test_acc"] == pytest.approx(res["test_acc"]), res
        assert run.data.tags["command"] == res["command"]
        if res["command"] == "train":
            assert len(client.get_metric_history(res["mlflow_run_id"], "train_loss")) == 2
    return len(results)


@pytest.mark.parametrize("kind", ["new", "existing"])
def test_six_processes_at_once_twice_every_run_finished_in_the_store(tmp_path, launcher, trained, kind):
    if kind == "existing":
        uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
        Tracker(uri).start("first", {}).end()
    recorded, seconds = 0, []
    for attempt in range(TRIES):
        if kind == "new":
            uri = f"sqlite:///{tmp_path / f'store{attempt}' / 'mlflow.db'}"
        t0 = time.perf_counter()
        results = _six_at_once(launcher, uri, tmp_path, trained, attempt)
        seconds.append(time.perf_counter() - t0)
        assert len({r["mlflow_run_id"] for r in results}) == PROCESSES
        recorded += _recorded(uri, results)
    if kind == "existing":
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("fewshot").experiment_id], max_results=1000)
        assert len(runs) == 1 + TRIES * PROCESSES and {r.info.status for r in runs} == {"FINISHED"}
    print(f"\nconcurrency, {kind} store: {PROCESSES} processes (3 train, 3 eval) x {TRIES} tries: "
          f"{recorded}/{PROCESSES * TRIES} runs FINISHED with their metrics; "
          f"{', '.join(f'{s:.0f}' for s in seconds)} s per try")
