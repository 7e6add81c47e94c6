"""Results files name paths relative to the repository: ``runs/...`` inside it, ``../shared/data/...`` beside
it (benchmarks/_results.py ``shown_path`` / ``shown_arg``, used by ``command``, ``checkpoint_info``,
``provenance`` and the scripts' own path fields)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, load_script

_results = load_script("_results")


@pytest.fixture
def repo(monkeypatch, tmp_path):
    """A repository root at ``<tmp>/home/me/fewshot`` (``_results.ROOT``)."""
    root = tmp_path / "home" / "me" / "fewshot"
    monkeypatch.setattr(_results, "ROOT", root)
    return root


@pytest.mark.parametrize("where, shown", [
    ("fewshot/runs/vig/best.pt", "runs/vig/best.pt"),              # inside the repository
    ("fewshot/benchmarks/results/", "benchmarks/results/"),
    ("fewshot", "."),
    ("shared/data/omniglot", "../shared/data/omniglot"),           # beside it, in its parent
    ("runs/old/best.pt", "../runs/old/best.pt"),
    ("shared/../fewshot/runs/x", "runs/x"),                        # normalised
])
def test_paths_inside_or_beside_the_repository_become_relative(repo, where, shown):
    assert _results.shown_path(f"{repo.parent}/{where}") == shown
    assert _results.shown_path(Path(f"{repo.parent}/{where}")) == shown.rstrip("/")  # a Path has no trailing /


@pytest.mark.parametrize("path", ["/opt/official/vig_pytorch", "runs/x", "../shared/data/omniglot", "5", "cosine"])
def test_other_paths_and_words_are_left_as_they_are(repo, path):
    assert _results.shown_path(path) == path == _results.shown_arg(path)


def test_a_sibling_folder_whose_name_starts_like_the_repository_is_not_inside_it(repo):
    assert _results.shown_path(f"{repo}-old/runs/x") == "../fewshot-old/runs/x"   # beside, not inside
    assert _results.shown_path(f"{repo.parent}x/data") == f"{repo.parent}x/data"  # neither


def test_sqlite_uris_and_option_values_are_rewritten_too(repo):
    assert _results.shown_arg(f"sqlite:///{repo}/runs/mlruns/mlflow.db") == "sqlite:///runs/mlruns/mlflow.db"
    assert _results.shown_arg(f"sqlite:///{repo.parent}/runs/mlflow.db") == "sqlite:///../runs/mlflow.db"
    assert _results.shown_arg("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"   # already relative
    assert _results.shown_arg(f"--data-root={repo.parent}/shared/data/omniglot") == "--data-root=../shared/data/omniglot"


def test_the_command_checkpoint_and_extras_of_a_run_are_relative():
    data, runs = ROOT.parent / "shared" / "data" / "omniglot", ROOT / "runs" / "paths-test"
    argv = ["--data-root", str(data), "--runs-dir", str(runs), "--tracking-uri", f"sqlite:///{runs}/mlflow.db",
            "--methods", "VGP + tune"]
    assert _results.command(str(ROOT / "benchmarks" / "prompts.py"), argv) == (
        "python benchmarks/prompts.py --data-root ../shared/data/omniglot --runs-dir runs/paths-test "
        "--tracking-uri sqlite:///runs/paths-test/mlflow.db --methods 'VGP + tune'")
    run = _results.provenance(str(ROOT / "benchmarks" / "prompts.py"), [], runs / "best.pt", official_code=str(data),
                              settings={"way": 5})
    assert run["checkpoint"] == {"path": "runs/paths-test/best.pt", "missing": True}
    assert run["official_code"] == "../shared/data/omniglot" and run["settings"] == {"way": 5}


def test_a_checkpoint_read_from_inside_the_repository_is_named_relative(tmp_path, monkeypatch):
    monkeypatch.setattr(_results, "ROOT", tmp_path)
    torch.save({"model": {}, "step": 7}, tmp_path / "best.pt")
    info = _results.checkpoint_info(tmp_path / "best.pt")
    assert info["path"] == "best.pt" and info["step"] == 7


def test_omniglot_minimal_reports_each_step_command_with_relative_paths():
    omniglot_minimal = load_script("omniglot_minimal")
    words = ["train", "--data-root", str(ROOT.parent / "shared" / "data" / "omniglot"), "--run-dir",
             str(ROOT / "runs" / "step"), "--tracking-uri", f"sqlite:///{ROOT / 'runs' / 'mlruns' / 'mlflow.db'}"]
    assert omniglot_minimal._shown(words) == ("train --data-root ../shared/data/omniglot --run-dir runs/step "
                                              "--tracking-uri sqlite:///runs/mlruns/mlflow.db")
