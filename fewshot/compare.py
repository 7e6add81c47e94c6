"""``fewshot compare``: accuracy table and paired tests for runs scored on the same EpisodeBank.

A run is a folder holding ``result.json`` and ``test_episode_accuracies.txt`` (a training run's
``runs/<name>`` or an evaluation's ``runs/<name>/eval-<checkpoint>-<bank_id>``) or an MLflow run id
whose artifacts hold the same two files. Per-episode accuracies are paired by episode index, which
is valid because every run was scored on the identical bank (same ``test_bank_id``).

Transfer runs (``fewshot transfer``) hold ``test_image_correct.txt`` instead (one 0/1 a test image):
they are paired image by image on the same test set (same ``test_set_id``) by McNemar's test
(:func:`mcnemar`). Episodic and transfer runs are never mixed in one comparison.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import stats

__all__ = ["CompareError", "RunScores", "load_run", "check_same_bank", "paired_test", "compare",
           "format_table", "write_scores", "mcnemar"]

ACC_FILE = "test_episode_accuracies.txt"
RESULT_FILE = "result.json"
CORRECT_FILE = "test_image_correct.txt"
"""Per-image correctness of a transfer run (fewshot.transfer writes it)."""


class CompareError(ValueError):
    """A run cannot be loaded or compared (no per-episode accuracies, different banks)."""


@dataclass(frozen=True)
class RunScores:
    """One run's per-episode test accuracies ``[episodes]`` and the bank they were scored on; for a
    transfer run (``kind="transfer"``), its per-image correctness ``[images]`` (0/1), the test set's id
    as ``bank_id`` and the number of classes as ``way``."""

    name: str
    accuracies: np.ndarray
    bank_id: str
    way: int
    shot: int
    kind: str = "episodes"

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def ci95(self) -> float:
        n = self.accuracies.size
        return 1.96 * float(self.accuracies.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0


def write_scores(folder: Path, accuracies: Sequence[float], result: dict) -> None:
    """Store ``result.json`` and ``test_episode_accuracies.txt`` (one accuracy per line) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ACC_FILE).write_text("".join(f"{float(a):.6f}\n" for a in accuracies))
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))


def _parse(name: str, acc_text: str, result: dict, source: str) -> RunScores:
    try:
        accs = np.array([float(x) for x in acc_text.split()], dtype=np.float64)
    except ValueError:
        raise CompareError(f"{source}: {ACC_FILE} is not one accuracy per line") from None
    if accs.size == 0:
        raise CompareError(f"{source}: {ACC_FILE} holds no per-episode accuracies")
    if "test_bank_id" not in result:
        raise CompareError(f"{source}: {RESULT_FILE} has no test_bank_id")
    if result.get("test_episodes") not in (None, accs.size):
        raise CompareError(f"{source}: {ACC_FILE} has {accs.size} accuracies but {RESULT_FILE} says "
                           f"{result['test_episodes']} episodes")
    return RunScores(name, accs, str(result["test_bank_id"]), int(result.get("test_way", 0)),
                     int(result.get("test_shot", 0)))


def _parse_transfer(name: str, correct_text: str, result: dict, source: str) -> RunScores:
    lines = correct_text.split()
    if not lines or any(x not in ("0", "1") for x in lines):
        raise CompareError(f"{source}: {CORRECT_FILE} must hold one 0 or 1 per test image")
    if "test_set_id" not in result:
        raise CompareError(f"{source}: {RESULT_FILE} has no test_set_id")
    if result.get("test_images") not in (None, len(lines)):
        raise CompareError(f"{source}: {CORRECT_FILE} has {len(lines)} images but {RESULT_FILE} says "
                           f"{result['test_images']}")
    return RunScores(name, np.array([float(x) for x in lines]), str(result["test_set_id"]),
                     int(result.get("num_classes", 0)), 0, kind="transfer")


def load_run(ref: str, tracking_uri: Optional[str] = None) -> RunScores:
    """Load a run folder or, if ``ref`` is not a folder, the MLflow run with that id (episodic or transfer)."""
    path = Path(ref)
    if path.is_dir() and (path / CORRECT_FILE).is_file() and (path / RESULT_FILE).is_file():
        try:
            result = json.loads((path / RESULT_FILE).read_text())
        except json.JSONDecodeError as e:
            raise CompareError(f"{path / RESULT_FILE}: not JSON ({e})") from None
        return _parse_transfer(path.name, (path / CORRECT_FILE).read_text(), result, str(path))
    if path.is_dir():
        if not (path / ACC_FILE).is_file() or not (path / RESULT_FILE).is_file():
            raise CompareError(f"{path}: no per-episode accuracies ({ACC_FILE} and {RESULT_FILE}); "
                               "train or `fewshot eval` the run first")
        try:
            result = json.loads((path / RESULT_FILE).read_text())
        except json.JSONDecodeError as e:
            raise CompareError(f"{path / RESULT_FILE}: not JSON ({e})") from None
        return _parse(path.name, (path / ACC_FILE).read_text(), result, str(path))
    return _load_mlflow(ref, tracking_uri)


def _load_mlflow(run_id: str, tracking_uri: Optional[str]) -> RunScores:
    from .tracking import load_run_artifacts

    try:
        name, texts = load_run_artifacts(run_id, (ACC_FILE, RESULT_FILE), tracking_uri)
    except LookupError as e:
        try:  # a transfer run stores per-image correctness instead
            name, texts = load_run_artifacts(run_id, (CORRECT_FILE, RESULT_FILE), tracking_uri)
        except LookupError:
            raise CompareError(f"{run_id}: not a run folder, and {e}") from None
    try:
        result = json.loads(texts[RESULT_FILE])
    except json.JSONDecodeError as e:
        raise CompareError(f"MLflow run {run_id}: {RESULT_FILE} is not JSON ({e})") from None
    if CORRECT_FILE in texts:
        return _parse_transfer(name, texts[CORRECT_FILE], result, f"MLflow run {run_id}")
    return _parse(name, texts[ACC_FILE], result, f"MLflow run {run_id}")


def check_same_bank(runs: Sequence[RunScores]) -> None:
    """Raise :class:`CompareError` unless every run was scored on the same bank."""
    ids = {r.bank_id for r in runs}
    if len(ids) > 1:
        detail = ", ".join(f"{r.name}: {r.bank_id}" for r in runs)
        raise CompareError(f"runs were evaluated on different episode banks ({detail}); "
                           "score them on one bank with `fewshot eval --bank`")


def paired_test(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired comparison of per-episode accuracies ``a`` and ``b`` (both ``[episodes]``).

    Returns the mean difference ``a - b`` with its 95% CI (t distribution), the paired t-test and
    the Wilcoxon signed-rank p-values. When every difference is zero both p-values are 1.0 (no
    evidence of a difference) instead of scipy's NaN / error.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    mean = float(d.mean())
    if n < 2:
        raise CompareError("a paired test needs at least 2 episodes")
    if np.all(d == 0):
        return {"mean_diff": 0.0, "diff_ci95": 0.0, "t_stat": 0.0, "t_p": 1.0, "wilcoxon_stat": 0.0,
                "wilcoxon_p": 1.0, "episodes": n}
    sem = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * sem
    w = stats.wilcoxon(a, b, zero_method="wilcox")
    if sem == 0:  # constant non-zero difference: t is infinite, the difference is certain
        t_stat, t_p = math.copysign(math.inf, mean), 0.0
    else:
        t = stats.ttest_rel(a, b)
        t_stat, t_p = float(t.statistic), float(t.pvalue)
    return {"mean_diff": mean, "diff_ci95": half, "t_stat": t_stat, "t_p": t_p,
            "wilcoxon_stat": float(w.statistic), "wilcoxon_p": float(w.pvalue), "episodes": n}


def mcnemar(a_correct, b_correct) -> dict:
    """McNemar's test of two classifiers scored on the same test images.

    Args:
        a_correct, b_correct: ``[images]`` 0/1 (or bool) correctness of methods a and b, paired by image.

    Returns:
        ``n01`` (a wrong, b right), ``n10`` (a right, b wrong), the accuracy difference ``a - b``
        with its 95% CI (paired proportions, Wald: ``1.96 sqrt(n01 + n10 - (n10 - n01)^2 / n) / n``),
        the continuity-corrected chi-square statistic ``(|n10 - n01| - 1)^2 / (n01 + n10)`` and the
        two-sided *exact* p-value: a binomial test of ``n10`` successes in ``n01 + n10`` trials at 1/2
        (``scipy.stats.binomtest``); 1.0 when no image is discordant.
    """
    a, b = np.asarray(a_correct).astype(bool), np.asarray(b_correct).astype(bool)
    if a.shape != b.shape or a.ndim != 1:
        raise CompareError(f"McNemar's test pairs images: got {a.size} and {b.size} results")
    n = a.size
    if n == 0:
        raise CompareError("McNemar's test needs at least one test image")
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = n10 + n01
    diff = (n10 - n01) / n
    half = 1.96 * math.sqrt(max(discordant - (n10 - n01) ** 2 / n, 0.0)) / n
    if discordant == 0:
        chi2, p = 0.0, 1.0
    else:
        chi2 = (abs(n10 - n01) - 1) ** 2 / discordant
        p = float(stats.binomtest(n10, discordant, 0.5).pvalue)
    return {"mean_diff": diff, "diff_ci95": half, "n10": n10, "n01": n01, "mcnemar_chi2": chi2,
            "mcnemar_p": p, "images": n}


def compare(runs: Sequence[RunScores]) -> dict:
    """Table and pairwise tests for ``runs`` (all on one bank, or all transfer runs on one test set);
    JSON-serialisable."""
    if len(runs) < 2:
        raise CompareError("compare needs at least two runs")
    kinds = {r.kind for r in runs}
    if len(kinds) > 1:
        raise CompareError("cannot compare transfer runs (per-image results) with episodic runs (per-episode "
                           f"accuracies): {', '.join(f'{r.name}: {r.kind}' for r in runs)}")
    if kinds == {"transfer"}:
        return _compare_transfer(runs)
    check_same_bank(runs)
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name twice (e.g. eval folders): number them
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    table = [{"run": n, "acc": r.mean, "ci95": r.ci95, "way": r.way, "shot": r.shot,
              "episodes": int(r.accuracies.size), "bank_id": r.bank_id} for n, r in zip(names, runs)]
    pairs = [{"a": names[i], "b": names[j], **paired_test(runs[i].accuracies, runs[j].accuracies)}
             for i, j in itertools.combinations(range(len(runs)), 2)]
    return {"bank_id": runs[0].bank_id, "runs": table, "pairs": pairs}


def _compare_transfer(runs: Sequence[RunScores]) -> dict:
    ids = {r.bank_id for r in runs}
    if len(ids) > 1:
        raise CompareError("transfer runs were scored on different test sets "
                           f"({', '.join(f'{r.name}: {r.bank_id}' for r in runs)}); compare runs of one task")
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    table = [{"run": n, "acc": r.mean, "ci95": 1.96 * math.sqrt(r.mean * (1 - r.mean) / r.accuracies.size),
              "classes": r.way, "images": int(r.accuracies.size), "test_set_id": r.bank_id} for n, r in zip(names, runs)]
    pairs = [{"a": names[i], "b": names[j], **mcnemar(runs[i].accuracies, runs[j].accuracies)}
             for i, j in itertools.combinations(range(len(runs)), 2)]
    return {"kind": "transfer", "test_set_id": runs[0].bank_id, "runs": table, "pairs": pairs}


def format_table(report: dict) -> list:
    """Human-readable lines for :func:`compare`'s report."""
    if report.get("kind") == "transfer":
        w = max(len(r["run"]) for r in report["runs"])
        lines = [f"{'run':<{w}}  {'top-1 (95% CI)':>18}  classes  images  test set"]
        for r in report["runs"]:
            lines.append(f"{r['run']:<{w}}  {100 * r['acc']:7.2f} +- {100 * r['ci95']:5.2f} %  {r['classes']:>7}  "
                         f"{r['images']:>6}  {r['test_set_id']}")
        lines += ["", "McNemar's test on per-image results (difference = a - b; n10: a right, b wrong):"]
        for p in report["pairs"]:
            lines.append(f"{p['a']} vs {p['b']}: diff {100 * p['mean_diff']:+.2f} +- {100 * p['diff_ci95']:.2f} %, "
                         f"n10={p['n10']} n01={p['n01']}, exact p={p['mcnemar_p']:.3g}")
        return lines
    w = max(len(r["run"]) for r in report["runs"])
    lines = [f"{'run':<{w}}  {'accuracy (95% CI)':>18}  way  shot  episodes  bank"]
    for r in report["runs"]:
        lines.append(f"{r['run']:<{w}}  {100 * r['acc']:7.2f} +- {100 * r['ci95']:5.2f} %  {r['way']:>3}  "
                     f"{r['shot']:>4}  {r['episodes']:>8}  {r['bank_id']}")
    lines.append("")
    lines.append("paired tests on per-episode accuracies (difference = a - b):")
    for p in report["pairs"]:
        lines.append(f"{p['a']} vs {p['b']}: diff {100 * p['mean_diff']:+.2f} +- {100 * p['diff_ci95']:.2f} %, "
                     f"t-test p={p['t_p']:.3g}, Wilcoxon p={p['wilcoxon_p']:.3g}")
    return lines
