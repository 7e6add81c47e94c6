"""Every command that reads a ``.pt`` file answers a bad one with one line naming it and exit code 2.

The files: a text file, an empty file, a real file of the right kind cut in half, and a zip archive
that is no torch file; the places: ``fewshot train --backbone-from`` and ``--resume``, ``fewshot eval``
(the run's ``best.pt`` / ``last.pt``, ``--bank``), ``fewshot transfer --backbone-from`` and ``--resume``.
The reader itself (:func:`models.checkpoints.read_checkpoint`) is checked against what each file is.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from episodes import EpisodeBank, EpisodeSampler, load_splits
from fewshot.checkpoint import CheckpointError, load_checkpoint
from fewshot.cli import cli
from fewshot.config import Config
from fewshot.training import train
from models.checkpoints import BackboneCheckpointError, CheckpointReadError, read_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = ["--way", "2", "--shot", "1", "--query", "1", "--episodes", "2", "--eval-episodes", "2", "--val-episodes", "0",
        "--no-progress", "--threads", "1", "--no-track"]
TRANSFER = ["transfer", "--dataset", "glyphs", "--backbone", "test_vig", "--train-per-class", "2", "--epochs", "1",
            "--no-progress", "--threads", "1", "--no-track"]
KINDS = ("text", "empty", "truncated", "zip")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained test_vig run on glyphs (best.pt, last.pt, config.yaml) and a saved test bank."""
    folder = tmp_path_factory.mktemp("trained")
    train(Config(dataset="glyphs", backbone="test_vig", way=2, shot=1, query=1, episodes=2, val_episodes=2,
                 val_every=2, eval_episodes=2, track=False, threads=1, run_dir=str(folder / "run")), progress=False)
    EpisodeSampler(load_splits("glyphs").test, 2, 1, 1, seed=0).bank(3).save(folder / "bank.pt")
    return {"run": folder / "run", "checkpoint": folder / "run" / "best.pt", "last": folder / "run" / "last.pt",
            "bank": folder / "bank.pt"}


def bad_file(path: Path, kind: str, real: Path) -> Path:
    """Write a bad file of ``kind`` at ``path``; ``real`` is a good file of the kind the command expects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path.write_text("notes on the run: lr 1e-3 looked best\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = real.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes/readme.txt", "not a checkpoint")
    return path


def run_folder(tmp_path: Path, trained: dict) -> Path:
    """A copy of the trained run's config.yaml in a new folder (its weights files are what is tested)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained["run"] / "config.yaml", run / "config.yaml")
    return run


def case(where: str, kind: str, tmp_path: Path, trained: dict):
    """``(argv, the bad file)`` of command place ``where`` with a bad file of ``kind``."""
    if where == "train --backbone-from":
        f = bad_file(tmp_path / "notes.pt", kind, trained["checkpoint"])
        return ["train", *TINY, "--backbone", "test_vig", "--prompt", "gpf", "--backbone-from", str(f),
                "--run-dir", str(tmp_path / "out")], f
    if where == "train --resume":
        f = bad_file(tmp_path / "run" / "last.pt", kind, trained["last"])
        return ["train", *TINY, "--backbone", "test_vig", "--run-dir", str(tmp_path / "run"), "--resume"], f
    if where in ("eval best.pt", "eval last.pt"):
        name = where.split()[1]
        run = run_folder(tmp_path, trained)
        f = bad_file(run / name, kind, trained["checkpoint" if name == "best.pt" else "last"])
        return ["eval", "--run-dir", str(run), "--checkpoint", name[:-3], "--no-progress", "--no-track"], f
    if where == "eval --bank":
        f = bad_file(tmp_path / "bank.pt", kind, trained["bank"])
        return ["eval", "--run-dir", str(trained["run"]), "--bank", str(f), "--no-progress", "--no-track"], f
    if where == "transfer --backbone-from":
        f = bad_file(tmp_path / "weights.pt", kind, trained["checkpoint"])
        return [*TRANSFER, "--backbone-from", str(f), "--run-dir", str(tmp_path / "out")], f
    if where == "transfer --resume":
        f = bad_file(tmp_path / "run" / "last.pt", kind, trained["last"])
        return [*TRANSFER, "--run-dir", str(tmp_path / "run"), "--resume"], f
    raise AssertionError(where)


PLACES = ("train --backbone-from", "train --resume", "eval best.pt", "eval last.pt", "eval --bank",
          "transfer --backbone-from", "transfer --resume")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", PLACES)
def test_a_bad_file_is_one_line_naming_it_and_exit_2(where, kind, tmp_path, trained, monkeypatch):
    monkeypatch.delenv("FEWSHOT_DEBUG", raising=False)
    argv, path = case(where, kind, tmp_path, trained)
    r = CliRunner().invoke(cli, argv)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output   # click's exit, not a crash
    assert "Traceback" not in r.output
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: "), r.stderr
    assert not (tmp_path / "out").exists()  # refused before a run folder was written


@pytest.mark.slow  # one subprocess (~10 s): what the user's terminal shows, logging included
def test_the_issue_command_prints_one_line_in_a_real_terminal(tmp_path):
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes\n")
    out = subprocess.run([sys.executable, "-m", "fewshot", "train", "--backbone", "vig_small_28", "--backbone-from",
                          str(notes), "--prompt", "gpf", *TINY, "--run-dir", str(tmp_path / "run")],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"Error: {notes}: text, not a file written by torch.save (it begins 'my notes')"]


class TestReader:
    """What :func:`read_checkpoint` says each file is."""

    @pytest.mark.parametrize("kind, reason", [
        ("text", "text, not a file written by torch.save (it begins 'notes on the run: lr 1e-3 looked best')"),
        ("empty", "the file is empty (0 bytes), not a file written by torch.save"),
        ("zip", "a zip archive of 1 file(s) without torch's data.pkl, not a file written by torch.save"),
    ])
    def test_what_a_foreign_file_is(self, tmp_path, kind, reason):
        path = bad_file(tmp_path / f"{kind}.pt", kind, None)
        with pytest.raises(CheckpointReadError) as err:
            read_checkpoint(path)
        assert str(err.value) == f"{path}: {reason}" and err.value.kind == kind.replace("zip", "not_torch")

    @pytest.mark.parametrize("legacy", [False, True], ids=["zip format", "legacy format"])
    def test_a_truncated_checkpoint(self, tmp_path, legacy):
        whole = tmp_path / "whole.pt"
        torch.save({"model": {"w": torch.randn(64, 64)}}, whole, _use_new_zipfile_serialization=not legacy)
        path = bad_file(tmp_path / "half.pt", "truncated", whole)
        with pytest.raises(CheckpointReadError, match=r"truncated or corrupt \(.*\); copy or download it again$") as err:
            read_checkpoint(path)
        assert err.value.kind == "truncated" and err.value.path == str(path)

    def test_random_bytes_and_a_folder_and_a_missing_file(self, tmp_path):
        (tmp_path / "noise.pt").write_bytes(bytes(range(1, 256)) * 2)
        with pytest.raises(CheckpointReadError, match=r"noise.pt: not a file written by torch.save \("):
            read_checkpoint(tmp_path / "noise.pt")
        with pytest.raises(CheckpointReadError, match=r": a folder, not a file$"):
            read_checkpoint(tmp_path)
        with pytest.raises(CheckpointReadError, match=r"nope.pt: no such file$"):
            read_checkpoint(tmp_path / "nope.pt")

    def test_a_good_file_reads_and_the_errors_keep_their_families(self, tmp_path):
        torch.save({"model": {"w": torch.arange(3)}}, tmp_path / "good.pt")
        assert torch.equal(read_checkpoint(tmp_path / "good.pt")["model"]["w"], torch.arange(3))
        assert issubclass(CheckpointReadError, BackboneCheckpointError) and issubclass(CheckpointReadError, ValueError)
        bad_file(tmp_path / "notes.pt", "text", None)
        with pytest.raises(CheckpointError, match=r"notes.pt: not a loadable fewshot checkpoint \(text, not a file"):
            load_checkpoint(tmp_path / "notes.pt")

    def test_a_bank_file_that_is_text_or_empty(self, tmp_path):
        from episodes.errors import DataError

        for kind, why in (("text", "UnpicklingError|IndexError"), ("empty", "the file is empty, 0 bytes")):
            path = bad_file(tmp_path / f"{kind}.pt", kind, None)
            with pytest.raises(DataError, match=rf"^{path}: not a fewshot episode bank \(({why})"):
                EpisodeBank.load(path)
