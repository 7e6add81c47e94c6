"""fewshot.distributed: sharding arithmetic, and 2 CPU ranks (gloo, torchrun) scoring a bank exactly
as one process does."""
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fewshot import distributed
from fewshot.cli import cli

#: digits, not glyphs: every rank loads the data, ~1 s against ~6 s to generate the glyphs
TINY = ["--dataset", "digits", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
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


def test_a_rank_leaves_its_process_group_when_the_interpreter_exits(monkeypatch, tmp_path):
    """setup() registers the teardown with atexit: a gloo rank exiting with its group up can abort (SIGABRT)."""
    import torch.distributed as dist

    real_init, exits = dist.init_process_group, []
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the group itself is one rank, in this process
    monkeypatch.setattr(dist, "init_process_group", lambda backend: real_init(
        backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1))
    monkeypatch.setattr(distributed.atexit, "register", exits.append)
    try:
        assert distributed.setup(threads=0) == (0, 1) and dist.is_initialized()
        assert len(exits) == 1
        exits[0]()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def torchrun(*args):
    """``torchrun --standalone --nproc_per_node 2 -m fewshot ARGS`` (CPU: gloo), started, not waited for:
    this process works beside it until it reads its output; stopped if the test fails before that."""
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "fewshot", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        yield p
    finally:
        if p.poll() is None:
            p.terminate()  # torchrun passes it on to its ranks
            p.communicate(timeout=60)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_episode_by_episode(tmp_path):
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", *TINY, "--episodes", "2", "--run-dir", str(run_dir), "--no-track"])
    assert r.exit_code == 0, r.output
    # the two ranks score a copy of the run (their evaluation folder cannot exist before they write it)
    # while this process scores the original: one process start-up overlaps the other's work
    shutil.copytree(run_dir, tmp_path / "copy")
    args = ["eval", "--checkpoint", "last", "--no-track", "--no-progress", "--json"]
    with torchrun(*args, "--run-dir", str(tmp_path / "copy")) as p:
        one = CliRunner().invoke(cli, [*args, "--run-dir", str(run_dir)])
        assert one.exit_code == 0, one.output
        res1 = json.loads(one.stdout.strip().splitlines()[-1])
        single = np.loadtxt(os.path.join(res1["eval_dir"], "test_episode_accuracies.txt"))
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-3000:]
        lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
        assert len(lines) == 1  # only rank 0 prints
        res2 = json.loads(lines[0])
        assert res2["test_bank_id"] == res1["test_bank_id"] and res2["test_episodes"] == 11
        assert Path(res2["eval_dir"]).relative_to(tmp_path / "copy") == Path(res1["eval_dir"]).relative_to(run_dir)
        np.testing.assert_array_equal(np.loadtxt(os.path.join(res2["eval_dir"], "test_episode_accuracies.txt")), single)
        assert res2["test_acc"] == res1["test_acc"]


@pytest.mark.slow
def test_two_gloo_ranks_train_with_ddp_on_rank_seeded_streams(tmp_path):
    """torchrun, 2 CPU ranks: the weights after 3 steps equal a one-process reference that averages
    the gradients of rank 0's episode (the single-process stream) and rank 1's (seeded by (seed, 1)),
    then clips and takes the Adam step; rank 0 alone writes and prints."""
    import copy

    import torch
    import torch.nn.functional as F

    from episodes import EpisodeSampler, episode_seed
    from fewshot.checkpoint import load_checkpoint
    from fewshot.config import Config
    from fewshot.training import prepare

    steps = 3
    run_dir = tmp_path / "ddp"
    # started first: this process computes the reference and the one-process run while the ranks start up
    with torchrun("train", *TINY, "--episodes", str(steps), "--run-dir", str(run_dir), "--no-track", "--json") as p:
        cfg = Config(dataset="digits", backbone="test_vig", way=3, shot=1, query=2, eval_episodes=11, val_episodes=0,
                     episodes=steps, track=False, threads=1, run_dir=str(tmp_path / "ref"))
        run = prepare(cfg)
        model = run.model.train()
        streams = [run.train_sampler, EpisodeSampler(run.splits.train, 3, 1, 2, seed=episode_seed(cfg.seed, 1_000_003))]
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        images = run.splits.train.images
        for step in range(steps):
            grads = []
            for rank, sampler in enumerate(streams):
                net = model if rank == 0 else copy.deepcopy(model)  # rank 0's buffers are the ones DDP keeps
                net.zero_grad(set_to_none=True)
                torch.manual_seed(episode_seed(cfg.seed + 7919 + 104_729 * rank, step))
                ep = sampler[step]
                logits = net(images[ep.support], ep.support_labels, images[ep.query])
                F.cross_entropy(logits, ep.query_labels).backward()
                grads.append([q.grad.clone() for q in net.parameters()])
            for q, g0, g1 in zip(model.parameters(), *grads):
                q.grad = (g0 + g1) / 2
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
        ref = model.state_dict()
        # and rank 1's stream mattered: a one-process run (rank 0's stream only) ends elsewhere
        one = CliRunner().invoke(cli, ["train", *TINY, "--episodes", str(steps), "--run-dir", str(tmp_path / "one"),
                                       "--no-track"])
        assert one.exit_code == 0, one.output
        single = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
        assert any(not torch.allclose(single[k].float(), v.float()) for k, v in ref.items())

        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
        assert len(lines) == 1 and json.loads(lines[0])["test_episodes"] == 11
        ddp_state = load_checkpoint(run_dir / "last.pt")["model"]
    for k, v in ref.items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-4, atol=1e-5, msg=k)
