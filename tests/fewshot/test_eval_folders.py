"""Evaluations of one run on one bank with other scoring settings land in their own folders."""
import json

from click.testing import CliRunner

from fewshot.cli import cli
from fewshot.compare import compare, load_run

TINY = ["--dataset", "glyphs", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
        "--eval-episodes", "8", "--val-episodes", "0", "--no-progress", "--threads", "1", "--no-track"]


def run(args):
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_other_matchers_on_the_same_bank_get_their_own_folders_and_pair(tmp_path):
    run_dir = tmp_path / "run"
    trained = run(["train", *TINY, "--episodes", "2", "--run-dir", str(run_dir), "--json"])
    common = ["eval", "--run-dir", str(run_dir), "--checkpoint", "last", "--no-track", "--no-progress", "--json"]
    same = run(common)
    hungarian = run([*common, "--matcher", "hungarian"])
    knn = run([*common, "--matcher", "knn", "--matcher-opt", "k=1"])
    again = run([*common, "--matcher", "hungarian"])
    bank = trained["test_bank_id"]
    assert same["eval_dir"].endswith(f"eval-last-{bank}")  # the run's own settings: the plain name
    folders = {same["eval_dir"], hungarian["eval_dir"], knn["eval_dir"]}
    assert len(folders) == 3 and again["eval_dir"] == hungarian["eval_dir"]
    report = compare([load_run(f) for f in sorted(folders)])
    assert report["bank_id"] == bank and len(report["pairs"]) == 3
    assert abs(load_run(hungarian["eval_dir"]).mean - hungarian["test_acc"]) < 1e-6  # stored with 6 decimals
