"""The same episode gives bit-identical logits in two separate processes, whatever else those
processes did before (other episodes, other matchers, another call order, another hash seed)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

import matchers

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, torch, matchers
order, warmup, out = sys.argv[1].split(","), sys.argv[2] == "1", sys.argv[3]

def episode(seed, nodes):
    g = torch.Generator().manual_seed(seed)
    tail = (5, 8) if nodes else (8,)
    return (torch.randn(6, *tail, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(7, *tail, generator=g))

if warmup:  # other episodes first, and the global RNG moved
    torch.manual_seed(123); torch.rand(1000)
    for name in order:
        m = matchers.create(name)
        m(*episode(99, 2 not in m.accepts))
logits = {}
for name in order:
    m = matchers.create(name)
    logits[name] = m(*episode(0, 2 not in m.accepts)).detach()  # node-level matchers get [n, 5, 8]
torch.save(logits, out)
"""


def run(tmp_path, tag, order, warmup, hash_seed):
    out = tmp_path / f"{tag}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": str(hash_seed)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(order), "1" if warmup else "0", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return torch.load(out, weights_only=True)


def test_the_same_episode_gives_bit_identical_logits_in_two_processes(tmp_path):
    names = matchers.list_matchers()
    first = run(tmp_path, "a", names, warmup=False, hash_seed=1)
    second = run(tmp_path, "b", names[::-1], warmup=True, hash_seed=2)
    assert set(first) == set(second) == set(names)
    for name in names:
        assert first[name].shape == (7, 3), name
        assert torch.isfinite(first[name]).all(), name
        assert torch.equal(first[name], second[name]), f"{name}: logits differ between processes"
    # and the check can fail: another episode gives other logits
    g = torch.Generator().manual_seed(1)
    other = matchers.create("prototype")(torch.randn(6, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]),
                                         torch.randn(7, 8, generator=g))
    assert not torch.equal(other, first["prototype"])
