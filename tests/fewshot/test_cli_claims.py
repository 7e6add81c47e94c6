"""Claims of the README checked through the command line: ``--bank-seed``, ``fewshot eval`` with
another way or matcher, and ``fewshot data describe`` against counts read from the zip files."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import matchers
from episodes import EpisodeSampler, load_splits
from fewshot.cli import cli
from fewshot.config import Config
from fewshot.model import to_input
from fewshot.training import train

REPO = Path(__file__).resolve().parents[2]
EVAL_EPISODES = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained Conv-4 ProtoNet run on glyphs (3-way 1-shot, 2 queries), no tracking."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    train(Config(dataset="glyphs", backbone="conv4", matcher="prototype", augment="none", way=3, shot=1, query=2,
                 episodes=4, val_episodes=2, val_every=2, eval_episodes=EVAL_EPISODES, track=False, threads=1,
                 run_dir=str(folder)), progress=False)
    return folder


def eval_json(run_dir, *options) -> dict:
    res = CliRunner().invoke(cli, ["eval", "--run-dir", str(run_dir), "--no-track", "--no-progress", "--threads", "1",
                                   "--json", *options])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def reference_logits(run_dir, way, bank_seed, matcher, shot=1) -> tuple:
    """Independent scoring: the run's best.pt backbone embeds each episode's images (pooled, or its
    nodes for a node-level matcher) and ``matcher`` scores them; the bank is drawn here from (way, shot,
    bank_seed). Returns ``([logits [Q, way] of each episode], bank)``."""
    import models

    test = load_splits("glyphs").test
    bank = EpisodeSampler(test, way, shot, 2, seed=bank_seed).bank(EVAL_EPISODES)
    state = torch.load(Path(run_dir) / "best.pt", weights_only=True)["model"]
    backbone = models.create_backbone("conv4", img_size=28, in_chans=1)
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    backbone.eval()
    m = matchers.create(matcher)
    logits = []
    with torch.no_grad():
        for ep in bank:
            def embed(idx):
                nodes = backbone.forward_features(to_input(test.images[idx]))
                return nodes if getattr(m, "input", "pooled") == "nodes" else backbone.forward_head(nodes, pre_logits=True)
            logits.append(m(embed(ep.support), ep.support_labels, embed(ep.query)))
    return logits, bank


def episode_accuracies(logits, bank) -> list:
    """Correct queries / queries of each episode, from its logits."""
    return [sum(int(p == t) for p, t in zip(lg.argmax(-1).tolist(), ep.query_labels.tolist())) / len(ep.query_labels)
            for lg, ep in zip(logits, bank)]


def reference_accuracy(run_dir, way, bank_seed, matcher, shot=1) -> tuple:
    """``(mean accuracy, bank)`` of :func:`reference_logits`."""
    logits, bank = reference_logits(run_dir, way, bank_seed, matcher, shot)
    accs = episode_accuracies(logits, bank)
    return sum(accs) / len(accs), bank


def test_bank_seed_picks_the_bank(run_dir):
    zero, one, zero_again = (eval_json(run_dir, "--bank-seed", s) for s in ("0", "1", "0"))
    test = load_splits("glyphs").test
    banks = {s: EpisodeSampler(test, 3, 1, 2, seed=s).bank(EVAL_EPISODES) for s in (0, 1)}
    assert zero["test_bank_id"] == zero_again["test_bank_id"] == banks[0].bank_id
    assert one["test_bank_id"] == banks[1].bank_id != banks[0].bank_id
    assert not torch.equal(banks[0].classes, banks[1].classes)                 # other episodes
    assert zero["test_acc"] == zero_again["test_acc"]
    for result, seed in ((zero, 0), (one, 1)):
        acc, _ = reference_accuracy(run_dir, 3, seed, "prototype")
        assert result["test_acc"] == pytest.approx(acc, abs=1e-6)  # float32 per-episode accuracies; one query is 1/36


@pytest.mark.parametrize("changes", [
    {"way": 4},
    {"matcher": "patch_voting"},
    {"way": 2, "shot": 3, "matcher": "knn"},
], ids=["way", "patch_voting", "knn-2way3shot"])
def test_eval_scores_the_trained_weights_with_another_way_or_matcher(run_dir, changes):
    from fewshot.cli import build_config
    from fewshot.evaluate_run import load_run_config, load_trained_model

    way, shot, matcher = changes.get("way", 3), changes.get("shot", 1), changes.get("matcher", "prototype")
    result = eval_json(run_dir, *[a for k, v in changes.items() for a in (f"--{k}", str(v))])
    logits, bank = reference_logits(run_dir, way, 0, matcher, shot)
    assert result["test_way"] == way and result["test_shot"] == shot and result["matcher"] == matcher
    assert result["test_bank_id"] == bank.bank_id and result["test_episodes"] == EVAL_EPISODES
    # episode by episode, the accuracies fewshot eval stored are the reference matcher's (float32, 6 decimals)
    stored = [float(a) for a in (Path(result["eval_dir"]) / "test_episode_accuracies.txt").read_text().split()]
    assert stored == pytest.approx(episode_accuracies(logits, bank), abs=1e-6)
    assert result["test_acc"] == pytest.approx(sum(stored) / len(stored), abs=1e-6)
    if matcher != "prototype":
        # the new matcher decides, checked on what it decides and not on a mean that can tie: the model
        # `fewshot eval` builds from these options gives each query the new matcher's logits, which are
        # not the trained matcher's
        config = build_config(None, changes, base=load_run_config(run_dir))
        test = load_splits("glyphs").test
        model, _ = load_trained_model(run_dir, config, test)
        model.eval()
        trained, _ = reference_logits(run_dir, way, 0, "prototype", shot)
        with torch.no_grad():
            for ep, want, other in zip(bank, logits, trained):
                got = model(test.images[ep.support], ep.support_labels, test.images[ep.query])
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                assert got.shape == other.shape and not torch.allclose(got, other, rtol=1e-3, atol=1e-3)


def count_zip(path: Path) -> dict:
    """{(alphabet, character): number of PNGs} read straight from an Omniglot zip."""
    counts = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            parts = name.strip("/").split("/")
            if name.endswith(".png") and len(parts) == 4:
                counts[(parts[1], parts[2])] = counts.get((parts[1], parts[2]), 0) + 1
    return counts


@pytest.mark.slow  # decodes both zips in a subprocess (~8 s)
def test_data_describe_counts_match_the_zip_files(shared_data):
    root = shared_data / "omniglot"
    small1 = count_zip(root / "images_background_small1.zip")
    small2 = count_zip(root / "images_background_small2.zip")
    base_alphabets = {a for a, _ in small1}
    test_chars = {k: n for k, n in small2.items() if k[0] not in base_alphabets}
    assert len(small1) == 136 and sum(small1.values()) == 2720              # the data README's figures
    assert sorted({a for a, _ in test_chars}) == ["Japanese_(katakana)", "Sanskrit", "Tagalog"]

    out = subprocess.run([sys.executable, "-m", "fewshot", "data", "describe", "omniglot", "--data-root", str(root)],
                         cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    rows = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))
            for m in re.finditer(r"^(train|val|test)\s*:\s*(\d+) classes,\s*(\d+) images \((\d+)-(\d+) per class\)",
                                 out.stdout, re.M)}
    assert set(rows) == {"train", "val", "test"}, out.stdout
    train_c, train_i, _, _ = rows["train"]
    val_c, val_i, val_lo, val_hi = rows["val"]
    # test: every character of the alphabets only in small2, no rotations
    assert rows["test"] == (len(test_chars), sum(test_chars.values()), min(test_chars.values()),
                            max(test_chars.values()))
    # train + val: every character of small1 once; training characters in 4 rotations, 15 held out
    assert val_c == 15 and train_c == 4 * (len(small1) - val_c)
    assert train_i == 4 * (sum(small1.values()) - val_i)
    assert (val_lo, val_hi) == (20, 20) and set(small1.values()) == {20} and val_i == 20 * val_c
    assert len(re.findall(r"^(train|val|test)\s+fingerprint [0-9a-f]{16}$", out.stdout, re.M)) == 3
