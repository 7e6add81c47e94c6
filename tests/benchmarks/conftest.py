"""Running the results scripts of benchmarks/ inside the test process.

A script run as a child process paid seconds of importing torch and friends, and a test made up to
three, so the tests load each script by path and call its ``main(argv)``: the provenance is the same (the
scripts record ``argv``, not ``sys.argv``) and a refusal is the ``SystemExit`` that the command would have
exited with. benchmarks/ never stays on ``sys.path``: its matchers.py and prompts.py would shadow the
packages of those names.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def split_row(line: str) -> list:
    """The cells of one Markdown table row ``| a | b |`` -> ``["a", "b"]``, stripped."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


@contextlib.contextmanager
def script_state():
    """Puts back what a script changes in the process for itself: torch's thread count and ``sys.path``."""
    threads, path = torch.get_num_threads(), list(sys.path)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        sys.path[:] = path


def load_script(name: str):
    """``benchmarks/<name>.py`` as a fresh module, by path; the ``sys.path`` entries it adds on import
    (to import its sibling ``_results``) are taken back."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    with script_state():
        spec.loader.exec_module(module)
    return module


def call_main(script, *argv: str, setup: Optional[Callable] = None):
    """``python benchmarks/<script> *argv`` as the script's ``main(list(argv))`` in this process, then
    :func:`script_state` put back. ``script`` is a name (``"transfer"`` or ``"transfer.py"``, loaded anew)
    or a module from :func:`load_script`; ``setup(module)`` runs first, e.g. to watch a function."""
    module = load_script(script.removesuffix(".py")) if isinstance(script, str) else script
    with script_state():
        if setup is not None:
            setup(module)
        return module.main(list(argv))
