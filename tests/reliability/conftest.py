"""Shared helpers of the reliability tests: tiny `fewshot train` runs as real subprocesses and
reading back what they left (checkpoints, MLflow metrics and artifacts, result.json)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import importlib.util
import pytest
import torch

_spec = importlib.util.spec_from_file_location("_fewshot_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
_root_conftest = importlib.util.module_from_spec(_spec)  # its assert_same_tensors, not a copy
_spec.loader.exec_module(_root_conftest)


#: A tiny but complete run: validation (best.pt), checkpoints every 2 episodes, a test bank.
TINY = ["--dataset", "glyphs", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
        "--eval-episodes", "20", "--val-episodes", "4", "--val-every", "3", "--checkpoint-every", "2",
        "--no-progress", "--threads", "1", "--seed", "3"]
EPISODES = 16
#: Fields of result.json that name the run rather than describe its outcome.
RUN_SPECIFIC = {"run_dir", "mlflow_run_id", "eval_seconds"}


def train_command(run_dir: Path, store: str, *extra) -> list:
    return [sys.executable, "-m", "fewshot", "train", *TINY, "--episodes", str(EPISODES), "--run-dir", str(run_dir),
            "--tracking-uri", store, "--experiment", "reliability", "--json", *extra]


def subprocess_env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def store_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


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
def reference_runs(tmp_path_factory):
    """Two uninterrupted runs with the same seed, in two processes started together (they share
    the 2 CPU cores with nothing else of this module). Returns [(run_dir, store, stdout), ...]."""
    root = tmp_path_factory.mktemp("reference")
    procs = []
    for name in ("a", "b"):
        run_dir, store = root / name / "run", store_uri(root / name)
        procs.append((run_dir, store, subprocess.Popen(train_command(run_dir, store), stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE, text=True, env=subprocess_env())))
    out = []
    for run_dir, store, proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        out.append((run_dir, store, stdout))
    return out
