"""fewshot.plots and the commands that draw: learning curves, accuracy vs shot, predicted episode grids."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from episodes import EpisodeSampler, load_splits
from fewshot.cli import cli
from fewshot.plots import accuracy_vs_shot, episode_grid, learning_curves

TINY = ["--dataset", "glyphs", "--backbone", "test_vig", "--way", "3", "--shot", "1", "--query", "2",
        "--eval-episodes", "8", "--val-episodes", "4", "--val-every", "2", "--checkpoint-every", "2",
        "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tracked 4-episode run: (run_dir, store, result)."""
    tmp = tmp_path_factory.mktemp("plots")
    store = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    r = CliRunner().invoke(cli, ["train", *TINY, "--episodes", "4", "--run-dir", str(tmp / "run"),
                                 "--tracking-uri", store, "--json"])
    assert r.exit_code == 0, r.output
    return tmp / "run", store, json.loads(r.stdout.strip().splitlines()[-1])


def test_training_writes_and_logs_learning_curves(trained):
    run_dir, store, res = trained
    png = run_dir / "learning_curves.png"
    assert Image.open(png).size == (900, 350)
    assert "learning_curves.png" in {a.path for a in MlflowClient(store).list_artifacts(res["mlflow_run_id"])}


def test_learning_curves_draws_the_given_series(tmp_path):
    empty = np.asarray(Image.open(learning_curves({}, tmp_path / "a.png")).convert("RGB"))
    hist = {"train_loss": ([1, 2, 3], [1.2, 0.9, 0.5]), "val_acc": ([2], [0.7])}
    drawn = np.asarray(Image.open(learning_curves(hist, tmp_path / "b.png")).convert("RGB"))
    red = lambda a: ((a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum()  # tab:red loss line
    assert red(empty) == 0 and red(drawn) > 50


def test_accuracy_vs_shot_writes_a_png(tmp_path):
    out = accuracy_vs_shot([{"shot": 5, "acc": 0.8, "ci95": 0.02}, {"shot": 1, "acc": 0.5, "ci95": 0.03}],
                           tmp_path / "s.png")
    assert Image.open(out).size == (450, 350)


def test_episode_grid_frames_right_green_and_wrong_red(tmp_path):
    images = load_splits("glyphs", None, None).test
    ep = EpisodeSampler(images, 2, 1, 2, seed=0)[0]
    pred = ep.query_labels.clone()
    pred[1] = 1 - pred[1]  # second query of class 0 predicted wrong
    img = np.asarray(Image.open(episode_grid(images, ep, tmp_path / "g.png", predictions=pred)))
    h = images.image_shape[-1]
    scale = max(1, 64 // h)
    th, gap, sep = h * scale, 2, 8
    x_q0 = gap + 1 * (th + gap) + sep  # first query tile of row 0
    x_q1 = x_q0 + th + gap
    assert tuple(img[gap + th - 1, x_q0 + 5]) == (0, 200, 0)  # bottom edge of the right query
    assert tuple(img[gap + th - 1, x_q1 + th - 3]) == (230, 0, 0)  # bottom edge of the wrong one
    assert tuple(img[gap + th + gap + th - 1, x_q1 + 5]) == (0, 200, 0)  # row 1 all right
    plain = np.asarray(Image.open(episode_grid(images, ep, tmp_path / "p.png")))
    assert plain.shape == img.shape
    assert (plain[gap + th - 1, x_q0:x_q1 + th] != img[gap + th - 1, x_q0:x_q1 + th]).any()


def test_data_grid_with_a_run_reports_its_predictions(trained, tmp_path):
    run_dir, _, _ = trained
    r = CliRunner().invoke(cli, ["data", "grid", "glyphs", "--way", "3", "--query", "2", "--out",
                                 str(tmp_path / "g.png"), "--run-dir", str(run_dir)])
    assert r.exit_code == 0, r.output
    assert "/6 queries right" in r.output and (tmp_path / "g.png").exists()


def test_plot_shots_evaluates_each_shot_like_eval(trained, tmp_path):
    run_dir, store, _ = trained
    r = CliRunner().invoke(cli, ["plot", "shots", "--run-dir", str(run_dir), "--shots", "2,1", "--eval-episodes", "6",
                                 "--out", str(tmp_path / "s.png"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row["shot"] for row in out["rows"]] == [1, 2] and (tmp_path / "s.png").exists()
    e = CliRunner().invoke(cli, ["eval", "--run-dir", str(run_dir), "--shot", "2", "--eval-episodes", "6",
                                 "--no-track", "--no-progress", "--json"])
    assert json.loads(e.stdout.strip().splitlines()[-1])["test_acc"] == pytest.approx(out["rows"][1]["acc"])
    client = MlflowClient(store)
    assert "s.png" in {a.path for a in client.list_artifacts(out["mlflow_run_id"])}


def test_plot_shots_rejects_bad_lists(trained):
    r = CliRunner().invoke(cli, ["plot", "shots", "--run-dir", str(trained[0]), "--shots", "1,x"])
    assert r.exit_code == 2 and "comma-separated" in r.output
