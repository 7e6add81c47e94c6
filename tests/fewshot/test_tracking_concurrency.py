"""Many ``fewshot`` processes on one MLflow store, as people launch seeds side by side: six at once (three
``train``, three ``eval``), on a new store and on an existing one, three times each. Every run finishes,
with no traceback and no tracking warning, and is FINISHED in the store with its metrics. The figures
(processes, tries, runs recorded, seconds) are printed.

The six are forked together from one launcher that has imported torch, MLflow and fewshot and drawn
the glyphs once (each is still a process of its own, opening the store itself), so a try costs seconds
of CPU instead of a minute of imports, and the six reach the store within the same second."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

# argv: a JSON list of (argument list, output prefix). Forks one child per command, all before any waits;
# each child runs `fewshot <arguments>` with stdout/stderr in <prefix>.out/.err; prints the exit codes.
LAUNCHER = """
import json, logging, os, sys
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot, mlflow.entities, mlflow.tracking, torch
import fewshot.evaluate_run, fewshot.plots, fewshot.training, matchers, models, prompts
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from episodes import load_splits
from fewshot.cli import cli
load_splits("glyphs", None, 28)  # the generated glyphs are memoised: the children inherit them
pids = []
for args, prefix in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, suffix in ((1, ".out"), (2, ".err")):
                os.dup2(os.open(prefix + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            logging.root.handlers.clear()
            try:
                cli.main(args=args, prog_name="fewshot")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback; traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    pids.append(pid)
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]))
"""

PROCESSES, TRIES = 6, 3
TINY = ["--dataset", "glyphs", "--backbone", "conv4", "--matcher", "prototype", "--threads", "1", "--no-progress",
        "--json"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny trained run (untracked) for the ``eval`` processes to score."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    out = subprocess.run([sys.executable, "-m", "fewshot", "train", *TINY, "--episodes", "2", "--val-episodes", "0",
                          "--eval-episodes", "2", "--no-track", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return run_dir


def _six_at_once(uri: str, folder: Path, trained: Path, attempt: int) -> list:
    """Three trainings and three evaluations started together on ``uri``: their results."""
    cmds = []
    for i in range(PROCESSES // 2):
        cmds.append(["train", *TINY, "--episodes", "2", "--val-episodes", "0", "--eval-episodes", "2", "--seed", str(i),
                     "--run-dir", str(folder / f"try{attempt}-train{i}"), "--tracking-uri", uri])
        cmds.append(["eval", "--run-dir", str(trained), "--checkpoint", "last", "--eval-episodes", "2", "--bank-seed",
                     str(10 * attempt + i), "--threads", "1", "--no-progress", "--json", "--track", "--tracking-uri", uri])
    prefixes = [str(folder / f"try{attempt}-process{i}") for i in range(len(cmds))]
    out = subprocess.run([sys.executable, "-c", LAUNCHER, json.dumps(list(zip(cmds, prefixes)))], capture_output=True,
                         text=True, timeout=900, cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    codes = json.loads(out.stdout.strip().splitlines()[-1])
    results = []
    for cmd, prefix, code in zip(cmds, prefixes, codes):
        stdout, stderr = Path(prefix + ".out").read_text(), Path(prefix + ".err").read_text()
        assert code == 0, f"fewshot {cmd[0]} failed:\n{stderr[-3000:]}"
        assert "Traceback" not in stderr and "MLflow tracking to" not in stderr, stderr[-3000:]
        results.append({**json.loads(stdout.strip().splitlines()[-1]), "command": cmd[0]})
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
def test_six_processes_at_once_three_times_every_run_finished_in_the_store(tmp_path, trained, kind):
    if kind == "existing":
        uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
        code = f"from fewshot.tracking import Tracker; Tracker({uri!r}).start('first', {{}}).end()"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    recorded, seconds = 0, []
    for attempt in range(TRIES):
        if kind == "new":
            uri = f"sqlite:///{tmp_path / f'store{attempt}' / 'mlflow.db'}"
        t0 = time.perf_counter()
        results = _six_at_once(uri, tmp_path, trained, attempt)
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
