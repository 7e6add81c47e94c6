"""fewshot.compare: loading runs, refusing mismatched banks, paired tests against scipy, the CLI."""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from fewshot.cli import cli
from fewshot.compare import CompareError, RunScores, compare, load_run, paired_test, write_scores

TINY = ["--dataset", "glyphs", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
        "--eval-episodes", "12", "--val-episodes", "0", "--checkpoint-every", "2", "--no-progress", "--threads", "1"]


def scores(name, accs, bank="b0"):
    return RunScores(name, np.asarray(accs, dtype=np.float64), bank, 5, 1)


def fake_run(folder, accs, bank="b0"):
    write_scores(folder, accs, {"test_bank_id": bank, "test_way": 5, "test_shot": 1, "test_episodes": len(accs)})
    return str(folder)


def test_paired_test_matches_scipy_and_a_t_interval():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.4, 1.0, 40).round(2)
    b = np.clip(a - rng.normal(0.05, 0.05, 40), 0, 1).round(2)
    p = paired_test(a, b)
    d = a - b
    assert p["mean_diff"] == pytest.approx(d.mean())
    half = stats.t.ppf(0.975, 39) * d.std(ddof=1) / math.sqrt(40)
    assert p["diff_ci95"] == pytest.approx(half)
    assert p["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert p["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert p["t_p"] < 0.001 and p["mean_diff"] > 0


def test_identical_runs_give_p_one_without_warnings():
    a = np.array([0.2, 0.6, 1.0, 0.4])
    with np.errstate(all="raise"):
        p = paired_test(a, a.copy())
    assert p == {"mean_diff": 0.0, "diff_ci95": 0.0, "t_stat": 0.0, "t_p": 1.0, "wilcoxon_stat": 0.0,
                 "wilcoxon_p": 1.0, "episodes": 4}


def test_constant_nonzero_difference_is_certain():
    a = np.array([0.5, 0.625, 0.75, 0.875, 1.0])  # exact in binary: every difference is exactly 0.125
    with np.errstate(all="raise"):
        p = paired_test(a, a - 0.125)
    assert p["t_p"] == 0.0 and p["t_stat"] == math.inf and p["mean_diff"] == 0.125 and p["diff_ci95"] == 0.0
    assert p["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, a - 0.125).pvalue)


def test_compare_refuses_different_banks():
    with pytest.raises(CompareError, match="different episode banks.*x: b0, y: b1"):
        compare([scores("x", [0.5, 0.6]), scores("y", [0.5, 0.6], bank="b1")])


def test_compare_table_and_all_pairs():
    rep = compare([scores("x", [0.5, 0.7, 0.9]), scores("y", [0.4, 0.7, 0.6]), scores("z", [1, 1, 1])])
    assert [r["run"] for r in rep["runs"]] == ["x", "y", "z"]
    assert rep["runs"][0]["acc"] == pytest.approx(0.7)
    assert rep["runs"][0]["ci95"] == pytest.approx(1.96 * 0.2 / math.sqrt(3))
    assert [(p["a"], p["b"]) for p in rep["pairs"]] == [("x", "y"), ("x", "z"), ("y", "z")]
    json.dumps(rep)


def test_load_run_folder_round_trip_and_missing_accuracies(tmp_path):
    run = load_run(fake_run(tmp_path / "r", [0.25, 0.5, 1.0]))
    assert run.bank_id == "b0" and run.accuracies.tolist() == [0.25, 0.5, 1.0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no per-episode accuracies"):
        load_run(str(tmp_path / "empty"))
    with pytest.raises(CompareError, match="not a run folder, and no MLflow run"):
        load_run("0123abcd", tracking_uri=f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}")


def test_cli_refuses_mismatched_banks_with_one_line(tmp_path):
    a, b = fake_run(tmp_path / "a", [0.5, 0.6]), fake_run(tmp_path / "b", [0.5, 0.6], bank="other")
    r = CliRunner().invoke(cli, ["compare", a, b])
    assert r.exit_code == 2 and "different episode banks" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_compare_trained_and_evaluated_runs_end_to_end(tmp_path):
    """A --no-track training run vs. a tracked one (by MLflow run id), and eval folders."""
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    runner = CliRunner()
    r1 = runner.invoke(cli, ["train", *TINY, "--episodes", "2", "--run-dir", str(tmp_path / "r1"), "--no-track"])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(cli, ["train", *TINY, "--episodes", "2", "--seed", "1",
                             "--run-dir", str(tmp_path / "r2"), "--tracking-uri", store, "--json"])
    assert r2.exit_code == 0, r2.output
    run_id = json.loads(r2.stdout.strip().splitlines()[-1])["mlflow_run_id"]
    r = runner.invoke(cli, ["compare", str(tmp_path / "r1"), run_id, "--tracking-uri", store, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    accs1 = np.loadtxt(tmp_path / "r1" / "test_episode_accuracies.txt")
    assert rep["runs"][0]["acc"] == pytest.approx(accs1.mean()) and rep["runs"][0]["episodes"] == 12
    assert rep["pairs"][0]["mean_diff"] == pytest.approx(accs1.mean() - rep["runs"][1]["acc"])

    e = runner.invoke(cli, ["eval", "--run-dir", str(tmp_path / "r1"), "--checkpoint", "last", "--no-track", "--no-progress", "--json"])
    assert e.exit_code == 0, e.output
    eval_dir = json.loads(e.stdout.strip().splitlines()[-1])["eval_dir"]
    same = load_run(eval_dir)
    np.testing.assert_allclose(same.accuracies, accs1)  # same weights, same bank
    e5 = runner.invoke(cli, ["eval", "--run-dir", str(tmp_path / "r1"), "--shot", "2", "--checkpoint", "last", "--no-track",
                             "--no-progress", "--json"])
    other = json.loads(e5.stdout.strip().splitlines()[-1])["eval_dir"]
    r = runner.invoke(cli, ["compare", eval_dir, other])
    assert r.exit_code == 2 and "different episode banks" in r.output
