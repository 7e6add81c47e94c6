"""What the training engine promises beyond resuming: it learns, dropout / drop-path is re-seeded
from (seed, step) so runs are reproducible and resumable, and learn2learn stays unloaded unless
meta-learning runs."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from fewshot.config import Config
from fewshot.training import train

from ..conftest import assert_same_training_outcome

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~30 s on the shared 2-core machine (80 episodes, 100 test episodes, MLflow)
def test_a_short_glyphs_run_learns(tmp_path):
    """80 episodes of Conv-4 on glyphs, 5-way 1-shot with 5 queries per class.

    Thresholds: chance is 1/5 = 20 % accuracy and a uniform predictor's loss is ln 5 = 1.61. Measured:
    the loss falls from 2.36 (mean of the first 20 episodes) to 0.75 (last 20) and the test accuracy
    reaches 74.3 +- 2.4 % on 100 episodes. The test asks for a falling loss that ends below 0.7 ln 5
    and below 60 % of where it started, and a test accuracy above 50 % (2.5x chance, about ten CI
    half-widths below the measured value, and a margin the training noise of one seed cannot cross).
    """
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    cfg = Config(dataset="glyphs", backbone="conv4", way=5, shot=1, query=5, episodes=80, eval_episodes=100,
                 val_episodes=0, checkpoint_every=80, seed=0, threads=1, track=True, tracking_uri=store,
                 experiment="learns", run_dir=str(tmp_path / "run"))
    result = train(cfg, progress=False)
    history = MlflowClient(tracking_uri=store).get_metric_history(result["mlflow_run_id"], "train_loss")
    loss = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(loss) == 80
    first, last = sum(loss[:20]) / 20, sum(loss[-20:]) / 20
    assert last < 0.6 * first and last < 0.7 * math.log(5), (first, last)
    assert result["test_way"] == 5 and result["test_episodes"] == 100
    assert result["test_acc"] > 0.5, result["test_acc"]


@pytest.fixture
def drop_path(monkeypatch):
    """No CLI option reaches the ViG's ``drop_path_rate``: this builds every test_vig with
    ``drop_path["rate"]`` (0.5 unless changed; block 1 of 2 then drops its residual branches with
    probability 0.5)."""
    original, setting = models.create_backbone, {"rate": 0.5}

    def create(name, **kwargs):
        if name == "test_vig":
            kwargs.setdefault("drop_path_rate", setting["rate"])
        return original(name, **kwargs)

    monkeypatch.setattr(models, "create_backbone", create)
    return setting


def tiny_vig(run_dir, **changes) -> Config:
    base = dict(dataset="glyphs", backbone="test_vig", way=3, shot=1, query=2, episodes=6, checkpoint_every=2,
                val_episodes=0, eval_episodes=3, track=False, threads=1, seed=5, run_dir=str(run_dir))
    return Config(**{**base, **changes})


def final_weights(run_dir) -> dict:
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)["model"]


def test_drop_path_runs_are_reproducible_resumable_and_seed_dependent(tmp_path, drop_path, interrupt):
    a = train(tiny_vig(tmp_path / "a"), progress=False)
    torch.manual_seed(12345)
    torch.rand(100)  # whatever the global RNG held before, the steps re-seed it from (seed, step)
    b = train(tiny_vig(tmp_path / "b"), progress=False)
    assert_same_training_outcome(tmp_path / "a", tmp_path / "b", a, b)
    # resumed after an interruption at episode 3: the dropped paths of steps 3.. are drawn again the same
    interrupt.arm(5, 3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_vig(tmp_path / "cut"), progress=False)
    assert interrupt.fired
    cut = train(tiny_vig(tmp_path / "cut"), resume=True, progress=False)
    assert_same_training_outcome(tmp_path / "a", tmp_path / "cut", a, cut)
    # drop-path is really on (same seed, same episodes, without it: other weights) ...
    drop_path["rate"] = 0.0
    train(tiny_vig(tmp_path / "no-drop"), progress=False)
    drop_path["rate"] = 0.5
    w, no_drop = final_weights(tmp_path / "a"), final_weights(tmp_path / "no-drop")
    assert any(not torch.equal(w[k], no_drop[k]) for k in w)
    # ... and the dropped paths follow the seed
    train(tiny_vig(tmp_path / "other-seed", seed=6), progress=False)
    other = final_weights(tmp_path / "other-seed")
    assert any(not torch.equal(w[k], other[k]) for k in w)


#: One process, three looks at ``sys.modules`` in order: after importing the CLI and the prompt
#: modules, after a plain prompt run, after a --meta-init run. learn2learn, once imported, stays in
#: sys.modules, so "False, False, True" says that neither the imports nor the plain run loaded it,
#: and that the check does see it once meta-learning runs. (A fresh process: the test session itself
#: may have imported learn2learn long before.) The runs read the small ``digits`` set: generating the
#: 8,000 glyphs would cost the child 8-15 s and the dataset plays no part in what gets imported.
IMPORTS_THEN_TWO_RUNS = """
import sys
import fewshot.cli, fewshot.config, prompts, fewshot.prompting
print("after imports:", "learn2learn" in sys.modules)
from fewshot.config import Config
from fewshot.training import train
base = dict(dataset="digits", backbone="test_vig", prompt="gpf", way=3, shot=1, query=2, episodes=1, val_episodes=0,
            eval_episodes=1, track=False, threads=1)
train(Config(**base, run_dir=sys.argv[1]), progress=False)
print("after plain:", "learn2learn" in sys.modules)
train(Config(**base, run_dir=sys.argv[2], meta_init="fomaml", adapt="tune", adapt_steps=1, meta_batch=1),
      progress=False)
print("after meta:", "learn2learn" in sys.modules)
"""


@pytest.mark.slow  # one subprocess: imports torch, two one-episode runs (~10 s)
def test_learn2learn_is_imported_only_when_meta_learning_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-c", IMPORTS_THEN_TWO_RUNS, str(tmp_path / "plain"), str(tmp_path / "meta")],
                          cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    seen = dict(line.split(": ") for line in proc.stdout.splitlines() if line.startswith("after "))
    assert seen["after imports"] == "False"  # importing the CLI and the prompt modules does not load it
    assert seen["after plain"] == "False"    # a prompt run without --meta-init never loads it
    assert seen["after meta"] == "True"      # and the check can see it when it is loaded
