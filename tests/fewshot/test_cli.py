"""The command line end to end, on tiny configurations of the embedded glyphs data."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fewshot.cli import cli

TINY = ["--dataset", "glyphs", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
        "--eval-episodes", "20", "--val-episodes", "4", "--val-every", "3", "--checkpoint-every", "2",
        "--no-progress", "--threads", "1"]


def run_cli(args, **kw):
    result = CliRunner().invoke(cli, args, catch_exceptions=False, **kw)
    return result


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_train_prints_a_json_result_last_and_tracks_it_in_mlflow(tmp_path, store):
    r = run_cli(["train", *TINY, "--episodes", "6", "--run-dir", str(tmp_path / "run"), "--tracking-uri", store,
                 "--experiment", "cli-test", "--json"])
    assert r.exit_code == 0, r.output
    res = last_json(r.stdout)
    assert 0.0 <= res["test_acc"] <= 1.0 and res["test_episodes"] == 20 and res["test_way"] == 3
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "best.pt").exists()
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test_acc"] == res["test_acc"]

    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(res["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["way"] == "3" and int(run.data.params["trainable_params"]) > 0
    assert run.data.metrics["test_acc"] == pytest.approx(res["test_acc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(1, 7))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "result.json", "test_episode_accuracies.txt"} <= artifacts


def test_eval_scores_a_trained_run_and_can_change_the_shot(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(["train", *TINY, "--episodes", "3", "--run-dir", str(run_dir), "--no-track"]).exit_code == 0
    r = run_cli(["eval", "--run-dir", str(run_dir), "--shot", "2", "--eval-episodes", "10", "--no-track",
                 "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    res = last_json(r.stdout)
    assert res["test_shot"] == 2 and res["test_episodes"] == 10


def test_eval_on_a_saved_bank_matches_the_bank_id(tmp_path):
    run_dir, bank = tmp_path / "run", tmp_path / "bank.pt"
    assert run_cli(["train", *TINY, "--episodes", "2", "--run-dir", str(run_dir), "--no-track"]).exit_code == 0
    assert run_cli(["data", "bank", "glyphs", "--out", str(bank), "--way", "3", "--episodes", "7"]).exit_code == 0
    r = run_cli(["eval", "--run-dir", str(run_dir), "--bank", str(bank), "--no-track", "--no-progress", "--json"])
    from episodes import EpisodeBank
    assert last_json(r.stdout)["test_bank_id"] == EpisodeBank.load(bank).bank_id


def test_data_list_and_grid(tmp_path):
    r = run_cli(["data", "list"])
    assert r.exit_code == 0 and "glyphs" in r.output and "omniglot" in r.output
    out = tmp_path / "ep.png"
    r = run_cli(["data", "grid", "glyphs", "--out", str(out), "--way", "4", "--shot", "2", "--query", "3"])
    assert r.exit_code == 0, r.output
    from PIL import Image
    w, h = Image.open(out).size
    assert h > w / 5 * 4 / 2 and w > h  # 4 rows, 5 columns of upscaled 28px tiles


class TestBadInput:
    """Each gives one line naming the problem and exit code 2, and writes nothing to the store."""

    @pytest.mark.parametrize("args,message", [
        (["--way", "500"], "way=500 needs 500 classes"),
        (["--dataset", "omniglot", "--data-root", "/no/such/folder"], "/no/such/folder: no such file"),
        (["--dataset", "omniglot"], "give their location with --data-root"),
        (["--backbone", "vig_smal_28"], "vig_small_28"),
        (["--shot", "19", "--query", "5"], "fewer than shot+query"),
    ])
    def test_bad_options_give_one_clear_line(self, tmp_path, store, args, message):
        r = CliRunner().invoke(cli, ["train", *TINY, "--tracking-uri", store, "--run-dir", str(tmp_path / "r"), *args])
        assert r.exit_code == 2, r.output
        assert message in r.output and "Traceback" not in r.output
        assert not (tmp_path / "mlruns").exists()

    def test_unknown_yaml_keys_are_listed(self, tmp_path):
        cfg = tmp_path / "c.yaml"
        cfg.write_text("way: 5\nepochs: 3\n")
        r = CliRunner().invoke(cli, ["train", "--config", str(cfg)])
        assert r.exit_code == 2 and "unknown configuration keys: epochs" in r.output

    def test_eval_of_a_folder_that_is_not_a_run(self, tmp_path):
        r = CliRunner().invoke(cli, ["eval", "--run-dir", str(tmp_path)])
        assert r.exit_code == 2 and "not a fewshot run folder" in r.output

    def test_checkpoint_from_another_architecture_is_refused(self, tmp_path):
        run_dir = tmp_path / "run"
        assert run_cli(["train", *TINY, "--episodes", "2", "--run-dir", str(run_dir), "--no-track"]).exit_code == 0
        r = CliRunner().invoke(cli, ["eval", "--run-dir", str(run_dir), "--backbone", "conv4", "--no-track"])
        assert r.exit_code == 2 and "does not fit backbone 'conv4'" in r.output


def test_help_points_to_the_listings_of_registered_names():
    r = run_cli(["train", "--help"])
    assert r.exit_code == 0 and "--resume" in r.output and "--matcher-opt NAME=VALUE" in r.output
    assert "`fewshot matchers`" in r.output and "`fewshot prompts`" in r.output and "`fewshot data list`" in r.output


def test_importing_the_cli_and_its_help_load_neither_torch_nor_a_registry():
    code = ("import sys; import fewshot.cli as c; from click.testing import CliRunner; "
            "assert CliRunner().invoke(c.cli, ['train', '--help']).exit_code == 0; "
            "print(sorted(m for m in ('torch', 'mlflow', 'matchers', 'prompts', 'episodes', 'models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]"


def test_train_only_options_are_not_on_eval_and_config_fields_are_options():
    import dataclasses
    from fewshot.config import Config

    train = {p.name for p in cli.commands["train"].params}
    evaluate = {p.name for p in cli.commands["eval"].params}
    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields <= train and {"episodes", "lr", "augment", "train_way", "val_every"}.isdisjoint(evaluate)
    assert {"way", "matcher_opts", "prompt_opts", "track", "cache", "run_dir"} <= evaluate
    assert all(f.metadata.get("help") for f in dataclasses.fields(Config)), "give each Config field setting(help=...)"


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a `fewshot train` process after its first checkpoint, resume, and compare with an
    uninterrupted run. The killed run is a real process (the point is the signal); the resume and the
    uninterrupted run go through the same CLI in this process, sparing two process start-ups."""
    # digits: the child loads it in ~1 s (glyphs: ~6 s of its start-up); options after TINY's win
    args = ["train", *TINY, "--dataset", "digits", "--episodes", "12", "--no-track", "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fewshot", *args, "--run-dir", str(killed_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not (killed_dir / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    step = torch.load(killed_dir / "last.pt", weights_only=True)["step"]
    assert step < 12, "the run finished before it could be killed"
    resumed = run_cli([*args, "--run-dir", str(killed_dir), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    full = run_cli([*args, "--run-dir", str(tmp_path / "full")])
    assert full.exit_code == 0, full.output
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(killed_dir / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert last_json(full.stdout)["test_acc"] == last_json(resumed.stdout)["test_acc"]
