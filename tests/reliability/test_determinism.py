"""Same seed, same everything, across processes (CPU). What is and is not deterministic on GPU:
docs/determinism.md."""
import json
import subprocess
import sys

import pytest

from .conftest import assert_same_outcome, run_outcome, subprocess_env

EPISODES_SCRIPT = """
import sys
from episodes import EpisodeSampler, load_splits
splits = load_splits("glyphs")
for split, seed in (("train", 3), ("test", 0)):
    print(EpisodeSampler(splits[split], 5, 1, 3, seed=seed).bank(200).bank_id)
"""


def test_the_same_seed_draws_the_same_episodes_in_processes_with_other_hash_seeds():
    procs = [subprocess.Popen([sys.executable, "-c", EPISODES_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=subprocess_env(PYTHONHASHSEED=hash_seed))
             for hash_seed in ("1", "2")]  # started together: they are independent, and 2 cores are there
    ids = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        ids.append(stdout.split())
    from episodes import EpisodeSampler, load_splits
    splits = load_splits("glyphs")
    here = [EpisodeSampler(splits[s], 5, 1, 3, seed=seed).bank(200).bank_id for s, seed in (("train", 3), ("test", 0))]
    assert ids[0] == ids[1] == here and len(set(here)) == 2


@pytest.mark.slow
def test_two_processes_with_the_same_seed_give_the_same_losses_weights_and_accuracy(reference_runs):
    outcomes = [run_outcome(run_dir, store, json.loads(stdout.strip().splitlines()[-1])["mlflow_run_id"])
                for run_dir, store, stdout in reference_runs]
    a, b = outcomes
    assert len(a["metrics"]["train_loss"]) == 16 and len(a["metrics"]["val_acc"]) == 6  # val at 3,6,9,12,15,16
    assert len(set(a["metrics"]["train_loss"].values())) > 1  # a run that learns, not a constant
    assert_same_outcome(a, b)
