"""SIGKILL `fewshot train` at seeded random moments, resume with --resume each time, and compare
the end with an uninterrupted run of the same seed: weights, optimiser, metrics, evaluation.

Kill moments (seeded by KILL_SEED; the same plan every run, the exact instant varies with timing):
during a write of best.pt and of last.pt (the process is killed while its temporary file exists,
widened by ``FEWSHOT_TEST_SAVE_DELAY``, see fewshot/checkpoint.py), during start-up (imports,
data loading, reading the checkpoint) and at random delays after a random training step.
After every kill each checkpoint in the run folder must load whole.

The runs that get signalled are real processes; the last resume, which only has to finish, runs
through the CLI in this process, and the uninterrupted reference is the session's (conftest.py).
"""
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fewshot.checkpoint import load_checkpoint

from .conftest import (EPISODES, assert_same_outcome, fresh_store, run_outcome, subprocess_env, train_command,
                       train_in_process)

KILL_SEED = 20261125
#: The kinds of kill, in order (write:best first: only an improving validation writes best.pt).
PLAN = ["write:best", "step", "write:last", "startup", "step"]
SAVE_DELAY_S = "0.3"


def checkpoint_step(run_dir: Path) -> int:
    try:
        return int(torch.load(run_dir / "last.pt", weights_only=True)["step"])
    except FileNotFoundError:
        return 0


def assert_checkpoints_whole(run_dir: Path) -> dict:
    """Every checkpoint file loads completely; returns {name: step}."""
    steps = {}
    for path in sorted(run_dir.glob("*.pt")):
        ckpt = load_checkpoint(path)  # raises CheckpointError on a partial file
        assert 1 <= int(ckpt["step"]) <= EPISODES, path
        steps[path.name] = int(ckpt["step"])
    return steps


def wait_until(proc, condition, timeout=120.0):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the planned kill"
        assert time.time() < deadline, "planned kill moment never came"
        time.sleep(0.005)


def kill_at(kind: str, proc, run_dir: Path, rng: random.Random, step0: int) -> str:
    """Wait for the moment ``kind`` picks, SIGKILL ``proc``, return a description of the moment."""
    if kind.startswith("write:"):
        tmp = run_dir / f".{kind[6:]}.pt.tmp{proc.pid}"
        wait_until(proc, tmp.exists)
        moment = f"while writing {kind[6:]}.pt ({tmp.name} present)"
    elif kind == "startup":
        delay = rng.uniform(0.2, 4.0)
        time.sleep(delay)
        moment = f"{delay:.2f} s after start"
    else:
        target = min(step0 + rng.randint(1, 6), EPISODES - 4)  # a few episodes on, never the last ones
        wait_until(proc, lambda: checkpoint_step(run_dir) >= target)
        delay = rng.uniform(0.0, 0.5)
        time.sleep(delay)
        moment = f"{delay:.2f} s after the checkpoint of step >= {target}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{kind}: the run was not killed (exit {proc.returncode})"
    return moment


@pytest.mark.slow
def test_killed_five_times_and_resumed_ends_bit_for_bit_like_an_uninterrupted_run(tmp_path, reference_runs,
                                                                                  store_template):
    rng = random.Random(KILL_SEED)
    run_dir, store = tmp_path / "run", fresh_store(store_template, tmp_path)
    command = train_command(run_dir, store, "--resume")
    survived = []
    for kind in PLAN:
        step0 = checkpoint_step(run_dir)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=subprocess_env(FEWSHOT_TEST_SAVE_DELAY=SAVE_DELAY_S))
        moment = kill_at(kind, proc, run_dir, rng, step0)
        steps = assert_checkpoints_whole(run_dir)  # never a half-written checkpoint
        survived.append((kind, moment, step0, steps))
        if kind.startswith("write:"):
            assert list(run_dir.glob(f".{kind[6:]}.pt.tmp*")), "the kill did not land inside the write"
    assert len(survived) == len(PLAN)
    assert max(s[3].get("last.pt", 0) for s in survived) < EPISODES

    code, stdout, output = train_in_process(command)
    assert code == 0, output
    assert not list(run_dir.glob(".*.tmp*")), "temporary files of killed writes were left behind"
    run_id = json.loads(stdout.strip().splitlines()[-1])["mlflow_run_id"]
    resumed = run_outcome(run_dir, store, run_id)

    ref_dir, ref_store, ref_stdout = reference_runs[0]
    reference = run_outcome(ref_dir, ref_store, json.loads(ref_stdout.strip().splitlines()[-1])["mlflow_run_id"])
    assert resumed["status"] == "FINISHED"
    assert sorted(resumed["metrics"]["train_loss"]) == list(range(1, EPISODES + 1))  # no step lost
    assert_same_outcome(reference, resumed)
    print(f"\nkills survived: {len(survived)}/{len(PLAN)}")
    for kind, moment, step0, steps in survived:
        print(f"  {kind:11s} resumed from step {step0:2d}, killed {moment}; checkpoints after kill {steps}")


@pytest.mark.slow
def test_ctrl_c_then_resume_ends_bit_for_bit_like_an_uninterrupted_run(tmp_path, reference_runs, store_template):
    """SIGINT (what Ctrl-C sends) to `fewshot train` in the middle of training: it exits 130 saying
    "interrupted", its MLflow run is marked KILLED, the checkpoints load whole, and the same command
    with --resume ends exactly where the uninterrupted reference run ends."""
    from mlflow.tracking import MlflowClient

    run_dir, store = tmp_path / "run", fresh_store(store_template, tmp_path)
    command = train_command(run_dir, store, "--resume")
    # SIGINT restored to its default in the child: a shell that starts pytest as a background job (`&`) makes it
    # ignored, the child would inherit that, never see the Ctrl-C and train to the end (exit 0)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(FEWSHOT_TEST_SAVE_DELAY="0.2"),  # slower writes: mid-run for sure
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until(proc, lambda: checkpoint_step(run_dir) >= 4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    steps = assert_checkpoints_whole(run_dir)
    assert 4 <= steps["last.pt"] < EPISODES
    run_id = torch.load(run_dir / "last.pt", weights_only=True)["mlflow_run_id"]
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.status == "KILLED"

    code, stdout, output = train_in_process(command)
    assert code == 0, output
    assert json.loads(stdout.strip().splitlines()[-1])["mlflow_run_id"] == run_id  # the same MLflow run
    resumed = run_outcome(run_dir, store, run_id)
    ref_dir, ref_store, ref_stdout = reference_runs[0]
    reference = run_outcome(ref_dir, ref_store, json.loads(ref_stdout.strip().splitlines()[-1])["mlflow_run_id"])
    assert resumed["status"] == "FINISHED"
    assert sorted(resumed["metrics"]["train_loss"]) == list(range(1, EPISODES + 1))
    assert_same_outcome(reference, resumed)
