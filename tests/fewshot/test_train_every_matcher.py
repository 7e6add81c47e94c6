"""Every registered matcher trains: ``fewshot train --matcher <name>`` on a backbone that suits it (node-level
matchers on a ViG, pooled ones on Conv-4) moves the weights and ends with a test accuracy. k-NN, whose votes
have no gradient, trains through its surrogate and says so in the log and the MLflow parameters; faiss's
loader stays out of the user's terminal."""
from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import matchers
from fewshot.config import Config, ConfigError
from fewshot.evaluate_run import load_run_config
from fewshot.model import build_model
from fewshot.training import train

REPO = Path(__file__).resolve().parents[2]


def tiny(name: str, run_dir: Path, **changes) -> Config:
    """A few 3-way 1-shot glyphs episodes with matcher ``name``: test_vig when it scores nodes, else conv4."""
    backbone = "test_vig" if getattr(matchers.create(name), "input", "pooled") == "nodes" else "conv4"
    settings = dict(dataset="glyphs", backbone=backbone, matcher=name, way=3, shot=1, query=2, episodes=3,
                    val_episodes=0, eval_episodes=2, augment="none", track=False, threads=1, run_dir=str(run_dir))
    return Config(**{**settings, **changes})


@pytest.mark.parametrize("name", matchers.list_matchers())
def test_every_registered_matcher_trains(name, tmp_path):
    config = tiny(name, tmp_path / "run")
    torch.manual_seed(config.seed)  # what training's prepare() does before building the model
    initial = build_model(config, 28, 1).state_dict()
    result = train(config, progress=False)
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert trained["step"] == 3 and 0.0 <= result["test_acc"] <= 1.0
    moved = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, trained["model"][k])]
    assert moved, f"training with --matcher {name} changed no weight"


@pytest.mark.slow  # two runs tracked in a new sqlite store (~8 s)
def test_knn_states_its_surrogate_in_the_log_and_the_mlflow_parameters(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with caplog.at_level(logging.INFO, logger="fewshot.training"):
        result = train(tiny("knn", tmp_path / "run", track=True, tracking_uri=uri, experiment="knn"), progress=False)
    said = matchers.create("knn").gradient_surrogate
    assert f"training objective: {said}" in caplog.text
    params = MlflowClient(tracking_uri=uri).get_run(result["mlflow_run_id"]).data.params
    assert params["train_objective"] == said and params["matcher"] == "knn"
    assert "surrogate of knn" in said
    plain = MlflowClient(tracking_uri=uri)  # a differentiable matcher's run says what it trains too
    other = train(tiny("prototype", tmp_path / "proto", track=True, tracking_uri=uri, experiment="knn"), progress=False)
    assert plain.get_run(other["mlflow_run_id"]).data.params["train_objective"] == "cross-entropy of the matcher's logits"


def test_a_matcher_without_gradient_or_surrogate_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(matchers.KNNMatcher, "gradient_surrogate", None)
    monkeypatch.setattr(matchers.KNNMatcher, "forward", lambda self, s, sl, q: torch.zeros(q.shape[0], 3))
    with pytest.raises(ConfigError, match=r"^--matcher knn gives logits without a gradient, so it cannot train a model; "
                                          r"train with a differentiable matcher .*fewshot eval --run-dir <run> "
                                          r"--matcher knn"):
        train(tiny("knn", tmp_path / "run"), progress=False)


@pytest.mark.slow  # a subprocess that imports torch and faiss (~10 s)
def test_faiss_loader_lines_stay_out_of_the_terminal(tmp_path):
    """A real process: faiss's loader logs only the first time faiss is imported. The run reads the small
    ``digits`` set (generating the 8,000 glyphs would cost the child 8-15 s; faiss loads the same way)."""
    out = subprocess.run([sys.executable, "-m", "fewshot", "train", "--dataset", "digits", "--backbone", "conv4",
                          "--matcher", "knn", "--way", "3", "--shot", "1", "--query", "2", "--episodes", "1",
                          "--val-episodes", "0", "--eval-episodes", "2", "--no-track", "--no-progress", "--threads", "1",
                          "--run-dir", str(tmp_path / "run")],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "training objective: cross-entropy of soft-neighbour" in out.stderr  # the CLI's INFO lines do show
    assert "faiss" not in out.stderr.lower() and "swigfaiss" not in out.stdout, out.stderr


def test_dn4_learned_temperature_trains_and_is_saved_with_the_model(tmp_path):
    """``--matcher-opt learn_temperature=true``: the temperature is a model parameter, so training moves it, the
    checkpoint holds it, and a model built from the saved config loads it back and scores with it."""
    config = tiny("dn4", tmp_path / "run", matcher_opts={"learn_temperature": True, "temperature": 2.0}, lr=0.05)
    train(config, progress=False)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert saved["matcher.log_temperature"].item() != pytest.approx(math.log(2.0), abs=1e-4)
    model = build_model(load_run_config(tmp_path / "run"), 28, 1)
    model.load_state_dict(saved)  # strict: the rebuilt matcher has the parameter
    assert model.matcher.log_temperature.item() == saved["matcher.log_temperature"].item()
