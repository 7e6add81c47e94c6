"""No committed results file, README, docs page or benchmark config names an absolute path of the machine
it was written on (``/work/...``, ``/root/...``, ``/tmp/...``, ``/home/...``): commands and paths there are
repository-relative (``runs/...``, ``../shared/data/omniglot``), so anyone can run them from a clone.

One test per file, so that a failure names the file; README.md is its own case."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".md", ".txt", ".json", ".yaml", ".yml", ".csv"}
MACHINE_PATH = re.compile(r"(?:(?<![\w.~/-])|(?<=sqlite:///))/(?:work|root|tmp|home|Users|mnt|scratch)/[^\s`'\",)\]]*")
"""An absolute path under a machine's own folders: at the start of a word (after a space, quote, backtick,
bracket, ``=``) or as the database of a ``sqlite:////abs`` URI; not the path part of a URL."""

KNOWN = {
    "benchmarks/results/vig_speed.md": "--official-dir /tmp/official/vig_pytorch: the authors' code, outside the "
                                        "repository; the prefix rewrite of issue 25 covered runs/ and shared/data/ only",
    "benchmarks/results/vig_speed.json": "the same command and official_code field",
}
"""Files known to name one; each fails strictly (xfail strict) until it is rewritten or regenerated."""


def checked_files() -> list:
    """Committed results files, every README.md, docs/*.md and benchmarks/configs/*, repository-relative."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                                timeout=60, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):  # not a git checkout: the files on disk
        listed = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if ".venv" not in p.parts]
    keep = []
    for name in filter(None, listed):
        path = Path(name)
        if path.suffix not in TEXT:
            continue
        if (name.startswith("benchmarks/results/") or path.name == "README.md"
                or (path.parent.as_posix() == "docs" and path.suffix == ".md")
                or name.startswith("benchmarks/configs/")):
            keep.append(name)
    return sorted(keep)


def cases() -> list:
    return [pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN[name])]
                         if name in KNOWN else []) for name in checked_files()]


def machine_paths(text: str) -> list:
    return [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]


def test_the_checked_files_include_the_readmes_results_and_configs():
    names = checked_files()
    assert {"README.md", "benchmarks/README.md", "benchmarks/results/omniglot_minimal.md"} <= set(names)
    assert any(n.startswith("benchmarks/configs/") for n in names) and any(n.endswith(".json") for n in names)
    assert set(KNOWN) <= set(names), "a known exception is gone: drop it from KNOWN"


@pytest.mark.parametrize("name", cases())
def test_no_absolute_path_of_this_machine(name):
    found = machine_paths((ROOT / name).read_text(encoding="utf-8", errors="replace"))
    assert not found, f"{name} names machine paths (write them relative to the repository root): " + "; ".join(found[:5])


@pytest.mark.parametrize("text, found", [
    ("--data-root /work/shared/data/omniglot --x", ["/work/shared/data/omniglot"]),
    ("`sqlite:////work/runs/mlruns/mlflow.db`", ["/work/runs/mlruns/mlflow.db"]),
    ('"path": "/root/runs/best.pt",', ["/root/runs/best.pt"]),
    ("--out=/tmp/t.txt", ["/tmp/t.txt"]),
    ("(/home/me/x)", ["/home/me/x"]),
    ("--data-root ../shared/data/omniglot --run-dir runs/x sqlite:///runs/mlruns/mlflow.db", []),
    ("https://example.org/home/page and http://host/tmp/file and ./work/x and ~/tmp/y", []),
])
def test_the_pattern_finds_machine_paths_and_nothing_else(text, found):
    assert [m.group(0) for m in MACHINE_PATH.finditer(text)] == found
