"""fewshot.distributed: sharding arithmetic, and 2 CPU ranks (gloo, torchrun) scoring a bank exactly
as one process does."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fewshot import distributed
from fewshot.cli import cli

TINY = ["--dataset", "glyphs", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
        "--eval-episodes", "11", "--val-episodes", "0", "--checkpoint-every", "2", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("n,world", [(11, 2), (10, 2), (7, 3), (2, 4)])
def test_shards_cover_the_range_in_order(monkeypatch, n, world):
    parts = []
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.shard(n))
    assert [i for p in parts for i in p] == list(range(n))
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup() == (0, 1)
    assert distributed.shard(5) == range(5)
    import torch
    t = torch.arange(5.0)
    assert distributed.gather_in_order(t, 5) is t


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_episode_by_episode(tmp_path):
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", *TINY, "--episodes", "2", "--run-dir", str(run_dir), "--no-track"])
    assert r.exit_code == 0, r.output
    args = ["eval", "--run-dir", str(run_dir), "--checkpoint", "last", "--no-track", "--no-progress", "--json"]
    one = CliRunner().invoke(cli, args)
    assert one.exit_code == 0, one.output
    res1 = json.loads(one.stdout.strip().splitlines()[-1])
    acc_file = os.path.join(res1["eval_dir"], "test_episode_accuracies.txt")
    single = np.loadtxt(acc_file)
    os.remove(acc_file)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "fewshot", *args], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 prints
    res2 = json.loads(lines[0])
    assert res2["test_bank_id"] == res1["test_bank_id"] and res2["test_episodes"] == 11
    np.testing.assert_array_equal(np.loadtxt(acc_file), single)
    assert res2["test_acc"] == res1["test_acc"]
