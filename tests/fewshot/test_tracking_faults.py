"""A store that cannot take the runs: ``fewshot train`` and ``fewshot eval`` still complete, say so in one
line, keep their records in their folders, and ``fewshot track sync`` writes them once the store works.

The faults are real sqlite ones, injected into the child processes by tests/fewshot/sqlite_faults
(sitecustomize): the store's file opened read-only (a read-only folder, binding root too) or unable to
grow by a page ("database or disk is full"). Where the tests do not run as root, a folder made
read-only with chmod is tried as well.

Each command is a process of its own, forked from one warm launcher (tests/fewshot/forked_fewshot.py)
that runs the fault's sitecustomize in the child before the command, as a fresh interpreter would;
the store is opened only in the children, so each meets the fault (or its absence) with its own
sqlite connections."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

if "forked_fewshot" not in sys.modules:  # one copy for the session: its launcher is shared by the test modules
    _spec = importlib.util.spec_from_file_location("forked_fewshot", Path(__file__).with_name("forked_fewshot.py"))
    sys.modules["forked_fewshot"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["forked_fewshot"])
forked_fewshot = sys.modules["forked_fewshot"]

pytestmark = pytest.mark.slow

FAULTS = Path(__file__).resolve().parent / "sqlite_faults"
TINY = ["--dataset", "glyphs", "--backbone", "conv4", "--matcher", "prototype", "--threads", "1", "--no-progress",
        "--json"]


@pytest.fixture(scope="module")
def launcher():
    return forked_fewshot.shared_launcher()


def _fewshot(launcher, args, cwd: Path, fault: str = "") -> subprocess.CompletedProcess:
    """``fewshot <args>`` in a process of its own, with the sqlite ``fault`` (FEWSHOT_SQLITE_FAULT) when given."""
    startup = FAULTS / "sitecustomize.py" if fault else None
    (out,) = launcher.together([(args, cwd, {"FEWSHOT_SQLITE_FAULT": fault}, startup)], cwd / "processes")
    return out


def _completes_with_one_line(out: subprocess.CompletedProcess, folder: Path, failure: str) -> dict:
    """The command succeeded, said in one line what failed and where its records wait, and kept them."""
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("WARNING fewshot.tracking")]
    assert len(lines) == 1 and "MLflow tracking to" in lines[0], out.stderr[-3000:]
    assert re.search(failure, lines[0]) and f"`fewshot track sync {folder}`" in lines[0], lines[0]
    assert (folder / "mlflow_pending.jsonl").exists()
    return json.loads(out.stdout.strip().splitlines()[-1])


def _synced(launcher, uri: str, folders: list, results: list, cwd: Path) -> None:
    out = _fewshot(launcher, ["track", "sync", *map(str, folders)], cwd)
    assert out.returncode == 0, out.stderr
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fewshot").experiment_id])
    for folder, res in zip(folders, results):
        (run_id,) = re.findall(rf"^{re.escape(str(folder))}: MLflow run (\w+) is up to date$", out.stdout, re.M)
        assert not (folder / "mlflow_pending.jsonl").exists()
        (run,) = [r for r in runs if r.info.run_id == run_id]
        assert run.info.status == "FINISHED" and run.data.metrics["test_acc"] == pytest.approx(res["test_acc"])


def test_a_read_only_then_a_full_store_costs_one_line_and_sync_records_the_runs_later(tmp_path, launcher):
    db = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{db}"
    run_dir = tmp_path / "r1"
    train = _completes_with_one_line(
        _fewshot(launcher, ["train", *TINY, "--episodes", "3", "--val-episodes", "0", "--eval-episodes", "5",
                            "--run-dir", str(run_dir), "--tracking-uri", uri], tmp_path, f"readonly:{db}"),
        run_dir, r"failed \(creating the run: sqlite: unable to open database file\); the run goes on")
    assert train["mlflow_run_id"] is None and (run_dir / "result.json").exists() and (run_dir / "last.pt").exists()
    assert (run_dir / "learning_curves.png").exists(), "curves drawn from the records kept"
    out = _fewshot(launcher, ["eval", "--run-dir", str(run_dir), "--checkpoint", "last", "--eval-episodes", "4",
                              "--threads", "1", "--no-progress", "--json", "--tracking-uri", uri], tmp_path,
                   f"readonly:{db}")
    assert out.returncode == 0, out.stderr[-3000:]
    eval_dir = Path(json.loads(out.stdout.strip().splitlines()[-1])["eval_dir"])
    evaluation = _completes_with_one_line(out, eval_dir, r"failed \(creating the run: sqlite: unable to open")
    _synced(launcher, uri, [run_dir, eval_dir], [train, evaluation], tmp_path)  # the store is created now

    run_dir = tmp_path / "r2"  # the store exists; its disk fills up
    train = _completes_with_one_line(
        _fewshot(launcher, ["train", *TINY, "--episodes", "3", "--val-episodes", "0", "--eval-episodes", "5",
                            "--run-dir", str(run_dir), "--tracking-uri", uri], tmp_path, f"full:{db}"),
        run_dir, r"failed \(\w[\w ]+: \(sqlite3.OperationalError\) database or disk is full\); the run goes on")
    _synced(launcher, uri, [run_dir], [train], tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root; the read-only sqlite fault covers root")
def test_a_store_folder_made_read_only_with_chmod(tmp_path, launcher):
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns").chmod(0o555)
    try:
        uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
        out = _fewshot(launcher, ["train", *TINY, "--episodes", "2", "--val-episodes", "0", "--eval-episodes", "2",
                                  "--run-dir", str(tmp_path / "r"), "--tracking-uri", uri], tmp_path)
        _completes_with_one_line(out, tmp_path / "r", r"failed \(creating the run: .*ermission denied")
    finally:
        (tmp_path / "mlruns").chmod(0o755)
