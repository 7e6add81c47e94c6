"""Shared helpers of the reliability tests: tiny `fewshot train` runs as real subprocesses and
reading back what they left (checkpoints, MLflow metrics and artifacts, result.json).

Cost: each `fewshot train` process spends most of its time starting (torch, timm, MLflow, the data);
creating an MLflow sqlite store adds MLflow's migrations (~10 s). So the tests start every run on
a copy of one migrated, empty store (:func:`fresh_store`), and a run that is not itself signalled
(the last resume) goes through the CLI in this process (:func:`train_in_process`)."""
import json
import os
import sqlite3
import subprocess
import sys
import traceback
from pathlib import Path

import importlib.util
import pytest
import torch

_spec = importlib.util.spec_from_file_location("_fewshot_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
_root_conftest = importlib.util.module_from_spec(_spec)  # its assert_same_tensors, not a copy
_spec.loader.exec_module(_root_conftest)


#: A tiny but complete run: validation (best.pt), checkpoints every 2 episodes, a test bank. On the digits
#: toy set: a process loads it in ~1 s, against ~6 s to generate the glyphs (the process start is the cost).
TINY = ["--dataset", "digits", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
        "--eval-episodes", "20", "--val-episodes", "4", "--val-every", "3", "--checkpoint-every", "2",
        "--no-progress", "--threads", "1", "--seed", "3"]
EPISODES = 16
#: Fields of result.json that name the run rather than describe its outcome.
RUN_SPECIFIC = {"run_dir", "mlflow_run_id", "eval_seconds"}


def train_command(run_dir: Path, store: str, *extra) -> list:
    return [sys.executable, "-m", "fewshot", "train", *TINY, "--episodes", str(EPISODES), "--run-dir", str(run_dir),
            "--tracking-uri", store, "--experiment", "reliability", "--json", *extra]


def train_in_process(command: list):
    """Run ``train_command(...)`` through the CLI in this process (click's CliRunner): the same code
    path as the child process without its start-up. Returns ``(exit_code, stdout, output)``."""
    from click.testing import CliRunner

    from fewshot.cli import cli

    assert command[:3] == [sys.executable, "-m", "fewshot"], command
    result = CliRunner().invoke(cli, command[3:])
    output = result.output
    if result.exc_info is not None and result.exit_code not in (0, 2):
        output += "".join(traceback.format_exception(*result.exc_info))
    return result.exit_code, result.stdout, output


def subprocess_env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def store_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


def fresh_store(template: Path, folder: Path) -> str:
    """A new store under ``folder`` (the :func:`store_uri`), a copy of the migrated empty ``template``."""
    db = folder / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(template), sqlite3.connect(db)
    try:
        src.backup(dst)  # a consistent copy whatever the journal mode
    finally:
        src.close(), dst.close()
    return store_uri(folder)


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An MLflow sqlite store that has run its migrations and holds no fewshot experiment yet (each
    run creates its experiment, with the artifact folder beside its own copy)."""
    from fewshot.tracking import _open_store

    db = tmp_path_factory.mktemp("store-template") / "mlruns" / "mlflow.db"
    _open_store(f"sqlite:///{db}")
    return db


def run_outcome(run_dir: Path, store: str, run_id: str) -> dict:
    """Everything a finished run leaves that must not depend on how it was run: weights and
    optimiser state, per-step metrics (a step logged twice must have one value), per-episode
    test accuracies and result.json without its run-specific fields."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    metrics = {}
    for name in client.get_run(run_id).data.metrics:
        by_step = {}
        for m in client.get_metric_history(run_id, name):
            assert by_step.setdefault(m.step, m.value) == m.value, f"{name} logged twice at step {m.step} with different values"
        metrics[name] = by_step
    metrics.pop("train_episodes_per_s", None)  # speeds, not results
    metrics.pop("eval_seconds", None)
    local = Path(client.download_artifacts(run_id, "test_episode_accuracies.txt"))
    result = json.loads((run_dir / "result.json").read_text())
    return {"last": torch.load(run_dir / "last.pt", weights_only=True),
            "best": torch.load(run_dir / "best.pt", weights_only=True),
            "metrics": metrics, "episode_accuracies": local.read_text(),
            "result": {k: v for k, v in result.items() if k not in RUN_SPECIFIC},
            "status": client.get_run(run_id).info.status}


def assert_same_state(a, b, where="state"):
    """Nested dicts/lists of tensors and plain values, equal bit for bit (the root conftest's check)."""
    _root_conftest.assert_same_tensors(a, b, where)


def assert_same_outcome(a: dict, b: dict) -> None:
    a, b = dict(a), dict(b)
    for ckpt in ("last", "best"):
        x, y = dict(a.pop(ckpt)), dict(b.pop(ckpt))
        for k in ("mlflow_run_id", "config"):  # the run's id and folders; config_digest stays compared
            x.pop(k, None), y.pop(k, None)
        assert_same_state(x, y, ckpt)
    assert a == b


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory, store_template):
    """Two uninterrupted runs with the same seed, in two processes started together (they share
    the 2 CPU cores with nothing else of this module). Returns [(run_dir, store, stdout), ...]."""
    root = tmp_path_factory.mktemp("reference")
    procs = []
    for name in ("a", "b"):
        run_dir, store = root / name / "run", fresh_store(store_template, root / name)
        procs.append((run_dir, store, subprocess.Popen(train_command(run_dir, store), stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE, text=True, env=subprocess_env())))
    out = []
    for run_dir, store, proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        out.append((run_dir, store, stdout))
    return out
