"""fewshot._malloc.tune_malloc: repeated large allocations stop page-faulting (glibc), and the opt-out
and non-glibc cases leave malloc alone."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STEPS = r"""
import json, resource, sys, torch
from fewshot._malloc import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else None
def step():  # a training step's pattern: several large activations alive together, then all freed
    acts = [torch.ones(4 << 20) for _ in range(4)]  # 4 x 16 MiB
    return float(sum(a[::4096].sum() for a in acts))
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "faults_per_step": sum(faults[3:]) / 6}))  # after 3 warm-up steps
"""


def run(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuning_stops_the_page_faults_of_repeated_large_allocations():
    default, tuned = run("default"), run("tune")
    assert tuned["tuned"] is True
    # glibc's defaults give part of the freed memory back every step (its dynamic thresholds make how much vary:
    # 683 to 3,408 faults per step seen on this machine), so the next step faults it in again; tuned, none
    assert default["faults_per_step"] > 100
    assert tuned["faults_per_step"] < 100


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_fewshot_malloc_default_keeps_glibc_behaviour():
    kept = run("tune", FEWSHOT_MALLOC="default")
    assert kept["tuned"] is False and kept["faults_per_step"] > 100  # glibc's refaulting, as without tuning


def test_off_glibc_it_does_nothing(monkeypatch):
    import fewshot._malloc as m

    monkeypatch.setattr(m, "_done", False)
    monkeypatch.setattr(m.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(m.ctypes, "CDLL", lambda *a: pytest.fail("libc must not be loaded off glibc"))
    assert m.tune_malloc() is False
