"""Provenance of benchmark results files: one header, one paired-difference cell, one ``--append``.

Every results script in ``benchmarks/`` writes its file through this module, so that the file is
the whole, untouched output of the runs it names: each run's exact command (``sys.argv``), the
git commit (:func:`commit`), the date, the machine and, where a trained
backbone was used, its checkpoint (path, sha256 fingerprint, step and validation accuracy as
stored in it). Paired differences always come from :func:`fewshot.compare.paired_test`.

``--append`` is how runs are merged: the script reads the JSON it wrote before (``{"runs": [...],
"rows": [...]}``), adds its own run and rows (a row with the same key as an older one replaces
it), and rewrites every output from the merged JSON. Each row names the run that made it.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["commit", "code_version", "file_sha256", "ResultCache", "command", "shown_path", "shown_arg", "checkpoint_info", "provenance", "markdown_header",
           "text_header", "paired", "paired_cell", "load_previous", "merge_rows", "write_json", "cpu_model", "smoke_run"]

HEADER_MARK = "Untouched output of"
"""Every header says this; tests look for it."""


def _inside(paths: Iterable, root: Path) -> List[str]:
    """Those of ``paths`` that lie in the checkout at ``root``, relative to it (POSIX form)."""
    root = Path(root).resolve()
    return [p.relative_to(root).as_posix() for p in (Path(x).resolve() for x in paths) if p.is_relative_to(root)]


def commit(outputs: Sequence = (), root: Path = ROOT) -> str:
    """The short commit hash of the repository, with ``-dirty`` when a tracked file differs from it
    (untracked files do not count, as with ``git describe --dirty``); ``unknown`` outside a checkout.

    Changes to results do not count either: to ``outputs`` (the files or folders the script is
    about to write, wherever they are) and to anything under ``benchmarks/results/``. An ``--append``
    run finds its own table modified by the earlier runs of it, which say so themselves, and one
    script run after another finds the other's file rewritten; neither is a change to the code."""
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        excluded = [f":(exclude){path}" for path in _inside([root / "benchmarks" / "results", *outputs], root)]
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, changed = "", ""
    if not head:
        return "unknown"
    return f"{head}-dirty" if changed else head


CODE = ("fewshot/", "models/", "matchers/", "episodes/", "prompts/", "registry.py", "prototypes.py", "setup.cfg",
        "pyproject.toml", "scripts/install.sh", "scripts/constraints.txt")
"""The tracked paths whose content can change a cached result: the installed package (what ``fewshot eval`` and
``fewshot transfer`` run) and the pins it is installed with. The benchmark scripts are not among them: the
results they cache are made by the package, with every setting the script chose in the cache's key."""


def code_version(outputs: Sequence = (), root: Path = ROOT, paths: Sequence[str] = CODE) -> str:
    """The version of the code that makes a result: ``src-`` and 12 hex digits of the sha256 of every tracked file
    under ``paths`` (:data:`CODE`), by path and git blob id of its content in the working tree, so the same sources
    give the same version whether committed or not. Nothing else counts (tests, docs, results, plans, the scripts'
    own reporting), nor ``outputs`` or untracked files: committing a README line, a results table or a change to a
    script's report keeps every cached result, while a changed line of the package makes all of them again.
    ``unknown`` outside a checkout."""
    git = ["git", "-C", str(root)]
    skip = _inside(outputs, root)

    def counts(path: str) -> bool:
        return (any(path == p or path.startswith(p) for p in paths) and not path.endswith(".md")
                and not any(path == s or path.startswith(s.rstrip("/") + "/") for s in skip))

    try:
        listed = subprocess.run([*git, "ls-tree", "-r", "-z", "HEAD"], capture_output=True, timeout=60)
        changed = subprocess.run([*git, "diff", "HEAD", "--name-only", "-z"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if listed.returncode != 0:
        return "unknown"
    blobs = {}
    for entry in listed.stdout.decode().split("\0"):
        if "\t" in entry:
            meta, path = entry.split("\t", 1)
            blobs[path] = meta.split()[2]
    for path in changed.stdout.decode().split("\0"):
        if path and counts(path):  # changed in the working tree or the index: its content now (or gone)
            file = Path(root) / path
            blobs[path] = (subprocess.run([*git, "hash-object", "--", path], capture_output=True, text=True)
                           .stdout.strip() if file.is_file() else "deleted")
    digest = hashlib.sha256("".join(f"{p} {blobs[p]}\n" for p in sorted(blobs) if counts(p)).encode())
    return "src-" + digest.hexdigest()[:12]


def file_sha256(path) -> Optional[str]:
    """sha256 of a file, read every time (a checkpoint of a few MB: milliseconds); None when there is none."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ResultCache:
    """"Already made?", one answer for every script: ``key -> folder`` in a JSON file, the key the settings,
    the sha256 of the weights the result was made from and the code version (:meth:`key`). A result is reused
    only when all three match and its folder still holds ``marker``; so a rerun makes only what is new, and a
    change to the package (:func:`code_version`; not tests, docs, results or the scripts' reporting) makes
    everything again."""

    def __init__(self, path, marker: str = "result.json"):
        self.path, self.marker = Path(path), marker

    @staticmethod
    def key(settings, weights, code: str) -> str:
        """``settings`` (a list or a mapping of plain values), the weights file (its sha256; None: none) and the
        code version, as one JSON string."""
        settings = [str(a) for a in settings] if isinstance(settings, (list, tuple)) else settings
        return json.dumps({"settings": settings, "weights_sha256": file_sha256(weights), "code": code},
                          sort_keys=True, default=str)

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str) -> Optional[str]:
        folder = self._read().get(key)
        return folder if folder and (Path(folder) / self.marker).is_file() else None

    def put(self, key: str, folder) -> None:
        cache = self._read()  # another invocation may have added since
        cache[key] = str(folder)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, self.path)  # atomic: a concurrent reader sees the old or the new file, never half of one


def shown_path(path) -> str:
    """``path`` as a results file shows it: relative to the repository root when it lies inside the
    repository or beside it, in the repository's parent (``/home/me/fewshot/runs/x`` -> ``runs/x``,
    ``/home/me/shared/data/omniglot`` -> ``../shared/data/omniglot``), so that the command runs on
    any machine with the same layout; a relative path or one elsewhere is left as it is."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    norm, root = os.path.normpath(text), os.path.normpath(str(ROOT))
    for base in (root, os.path.dirname(root)):
        if norm == base or norm.startswith(base.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(norm, root)
            return rel + (os.sep if text.endswith(os.sep) and rel != "." else "")
    return text


_SQLITE = "sqlite:///"


def shown_arg(arg) -> str:
    """A command-line word with the absolute path in it shown by :func:`shown_path`: the whole word,
    the value of ``--option=PATH``, or the database of a ``sqlite:////abs/path.db`` URI (which becomes
    ``sqlite:///runs/...``, relative to where the command runs)."""
    text = str(arg)
    if text.startswith(_SQLITE + "/"):
        return _SQLITE + shown_path(text[len(_SQLITE):])
    if text.startswith("--") and "=" in text:
        name, value = text.split("=", 1)
        return f"{name}={shown_arg(value)}"
    return shown_path(text)


def command(script: str, argv: Sequence[str]) -> str:
    """The command line that reruns ``script`` (a path) with ``argv``, from the repository root, with
    the paths in it relative to the repository root where they lie in it or beside it (:func:`shown_arg`)."""
    path = Path(script).resolve()
    try:
        shown = str(path.relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return shlex.join(["python", shown, *map(shown_arg, argv)])


def cpu_model() -> str:
    """lscpu's "Model name", else ``platform.processor()``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.processor() or platform.machine())


def checkpoint_info(path) -> Optional[dict]:
    """Path, sha256 fingerprint (16 hex digits), and the step / validation accuracy the checkpoint
    stores (``fewshot train``'s best.pt holds both); ``None`` for no checkpoint. The path is shown
    by :func:`shown_path`."""
    if path is None:
        return None
    path = Path(path)
    info = {"path": shown_path(path)}
    if not path.is_file():
        info["missing"] = True
        return info
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    info["sha256"] = digest.hexdigest()[:16]
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the authors' release files or anything torch cannot read safely: fingerprint only
        state = None
    if isinstance(state, dict):
        for key in ("step", "val_acc"):
            if isinstance(state.get(key), (int, float)):
                info[key] = state[key]
    return info


def describe_checkpoint(info: Optional[dict]) -> str:
    if info is None:
        return "none (untrained, seeded weights)"
    parts = [f"`{info['path']}`"]
    if info.get("missing"):
        parts.append("(file not found when the command ran)")
    if "sha256" in info:
        parts.append(f"sha256 {info['sha256']}")
    if "step" in info:
        parts.append(f"step {info['step']}")
    if "val_acc" in info:
        parts.append(f"validation accuracy {100 * info['val_acc']:.2f} %")
    return ", ".join(parts)


NO_BACKBONE = "no backbone"


def provenance(script: str, argv: Sequence[str], checkpoint=NO_BACKBONE, outputs: Sequence = (), **extra) -> dict:
    """What a results file records about the run that made it (JSON-serialisable). ``checkpoint``:
    the backbone weights' file, ``None`` for untrained seeded weights, or left out when the script
    uses no backbone; ``outputs``: what the script writes (see :func:`commit`)."""
    import torch

    out = {"command": command(script, argv), "commit": commit(outputs),
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start, "
                      f"torch {torch.__version__}, Python {platform.python_version()}"}
    if checkpoint != NO_BACKBONE:
        out["checkpoint"] = checkpoint_info(checkpoint)
    return {**out, **{k: shown_arg(v) if isinstance(v, (str, Path)) else v for k, v in extra.items()}}


def _run_line(run: dict) -> str:
    line = f"`{run['command']}` at commit {run['commit']} on {run['date']} ({run['machine']})"
    extra = {k: v for k, v in run.items() if k not in ("command", "commit", "date", "machine", "checkpoint")}
    if "checkpoint" in run:
        line += f"; backbone checkpoint: {describe_checkpoint(run['checkpoint'])}"
    for key, value in extra.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        line += f"; {key.replace('_', ' ')}: {value}"
    return line


def markdown_header(title: str, runs: Sequence[dict]) -> List[str]:
    """Markdown lines naming every run of the file (one: "Generated by"; several: a numbered list)."""
    lines = [f"# {title}", ""]
    if len(runs) == 1:
        lines.append(f"Generated by {_run_line(runs[0])}. {HEADER_MARK} that command; nothing here is edited "
                     "by hand.")
    else:
        lines.append(f"Merged from {len(runs)} runs (the later ones with `--append`; a row made again replaces the "
                     f"older one, and the `run` column names the run of each row). {HEADER_MARK} these commands; "
                     "nothing here is edited by hand.")
        lines.append("")
        lines += [f"{i}. {_run_line(run)}" for i, run in enumerate(runs, 1)]
    return lines + [""]


def text_header(runs: Sequence[dict]) -> List[str]:
    """The same as :func:`markdown_header` for plain-text files, every line starting with ``# ``."""
    return ["# " + line if line else "#" for line in markdown_header("", runs)[2:]]


def paired(a, b) -> dict:
    """:func:`fewshot.compare.paired_test` of per-episode accuracies ``a - b`` (equal lengths)."""
    import numpy as np

    from fewshot.compare import paired_test

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired accuracies need the same episodes: {a.size} against {b.size}")
    return paired_test(a, b)


def paired_cell(a, b) -> str:
    """``+1.23 +- 0.45 (t p=0.012, W p=0.034)`` in points, from :func:`paired`."""
    p = paired(a, b)
    return (f"{100 * p['mean_diff']:+.2f} +- {100 * p['diff_ci95']:.2f} "
            f"(t p={p['t_p']:.2g}, W p={p['wilcoxon_p']:.2g})")


def load_previous(path: Path, append: bool) -> Tuple[List[dict], List[dict]]:
    """``(runs, rows)`` of the JSON results at ``path`` when appending, else empty lists."""
    path = Path(path)
    if not append:
        return [], []
    if not path.is_file():
        raise SystemExit(f"--append: {path} does not exist; run once without --append first")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not isinstance(data.get("rows"), list):
        raise SystemExit(f"--append: {path} was not written with a run record (it predates benchmarks/_results.py); "
                         "write a new file without --append")
    return data["runs"], data["rows"]


def check_append(path: Path, runs: Sequence[dict], run: dict, same: Sequence[str]) -> None:
    """``--append``: exit with one line naming the earlier run of ``path`` and what differs unless every run
    in ``runs`` has the new ``run``'s values of the settings ``same`` (``run["settings"]``) and its backbone
    checkpoint (sha256): rows of different set-ups do not belong in one table."""
    for i, old in enumerate(runs, 1):
        differ = [k for k in same if (old.get("settings") or {}).get(k) != run["settings"][k]]
        if (old.get("checkpoint") or {}).get("sha256") != (run.get("checkpoint") or {}).get("sha256"):
            differ.append("backbone checkpoint (sha256)")
        if differ:
            raise SystemExit(f"--append: run {i} in {path} differs in {', '.join(differ)}; "
                             "rows of different set-ups do not belong in one table")


def merge_rows(old: Iterable[dict], new: Iterable[dict], key: Callable[[dict], tuple]) -> List[dict]:
    """Old rows in their order with the ones a new row re-makes replaced, then the other new rows."""
    new = list(new)
    fresh = {key(r): r for r in new}
    merged, seen = [], set()
    for r in old:
        k = key(r)
        if k in fresh:
            merged.append(fresh[k])
            seen.add(k)
        else:
            merged.append(r)
    return merged + [r for r in new if key(r) not in seen]


def write_json(path: Path, runs: Sequence[dict], rows: Sequence[dict], **extra) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": list(runs), **extra, "rows": list(rows)}, indent=2, default=str) + "\n")


def smoke_run(run_dir: Path, backbone: str = "test_vig", episodes: int = 4) -> Path:
    """Train a tiny ProtoNet (``backbone`` on glyphs, a few episodes, no tracking) into ``run_dir``
    for the scripts' ``--smoke`` modes; returns the run folder (its best.pt is the checkpoint)."""
    from fewshot.config import Config
    from fewshot.training import train

    run_dir = Path(run_dir)
    config = Config(dataset="glyphs", backbone=backbone, way=5, shot=1, query=5, episodes=episodes,
                    val_every=max(1, episodes // 2), val_episodes=4, eval_episodes=4, checkpoint_every=episodes,
                    run_dir=str(run_dir), track=False, threads=1)
    train(config, progress=False)
    return run_dir
