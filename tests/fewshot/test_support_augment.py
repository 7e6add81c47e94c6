"""``--support-augment V``: V affine copies of every support image join its class when a model is scored. The
copies are a function of the image alone (seeded by its bytes), so the embed-once evaluation (DN4's bank scorer and
the matcher loop), the per-episode path and ``FewShotClassifier`` give the same accuracies; training episodes are
left as they are."""
import pytest
import torch

from episodes import EpisodeSampler
from episodes.augment import augmented_copies
from fewshot.config import Config, ConfigError, merge
from fewshot.evaluation import evaluate
from fewshot.model import EpisodicModel
from matchers import DN4Matcher, PrototypeMatcher

from .test_evaluation_bank_scorer import NodeBackbone, images


def test_copies_depend_on_the_image_only():
    data = images().images[:6]
    copies = augmented_copies(data, 3)
    assert copies.shape == (18, 1, 8, 8) and copies.dtype == torch.uint8
    order = torch.tensor([4, 0, 5, 2, 1, 3])
    again = augmented_copies(data[order], 3)
    for v in range(3):  # copy v of image i is the same wherever i stands in the batch
        assert torch.equal(again[v * 6:(v + 1) * 6], copies[v * 6:(v + 1) * 6][order])
    assert not torch.equal(copies[:6], data) and not torch.equal(copies[:6], copies[6:12])


@pytest.mark.parametrize("matcher", [DN4Matcher(k=3), PrototypeMatcher()], ids=["dn4-bank-scorer", "prototype-loop"])
def test_every_scoring_path_gives_the_same_accuracies(matcher):
    data = images()
    torch.manual_seed(0)
    plain = EpisodicModel(NodeBackbone(), matcher)
    model = EpisodicModel(plain.backbone, matcher, support_augment=2)
    bank = EpisodeSampler(data, 4, 1, 3, seed=1).bank(12)
    once = evaluate(model, data, bank, per_episode=False)
    each = evaluate(model, data, bank, per_episode=True)
    assert torch.equal(once.accuracies, each.accuracies)
    assert not torch.equal(once.accuracies, evaluate(plain, data, bank).accuracies)  # the copies count


def test_forward_appends_the_copies_to_their_class_when_scored_only():
    data = images().images
    torch.manual_seed(0)
    model = EpisodicModel(NodeBackbone(), DN4Matcher(k=3), support_augment=2)
    support, labels, query = data[[0, 10, 20]], torch.tensor([0, 1, 2]), data[[1, 11, 21, 2]]
    model.eval()
    expected = DN4Matcher(k=3)(model.embed(torch.cat([support, augmented_copies(support, 2)])), labels.repeat(3),
                               model.embed(query))
    assert torch.allclose(model(support, labels, query), expected, atol=1e-6)
    model.train()
    assert model.support_copies(support) is None
    assert torch.allclose(model(support, labels, query), DN4Matcher(k=3)(model.embed(support), labels,
                                                                         model.embed(query)), atol=1e-6)


def test_the_classifier_scores_with_the_copies():
    from fewshot.classifier import FewShotClassifier
    data = images().images
    torch.manual_seed(0)
    model = EpisodicModel(NodeBackbone(), DN4Matcher(k=3), support_augment=2).eval()
    support, labels, query = data[[0, 10, 20]], torch.tensor([0, 1, 2]), data[[1, 11, 21, 2]]
    clf = FewShotClassifier(model=model, img_size=8, in_chans=1, invert=False).fit(support, labels.tolist())
    assert torch.allclose(torch.as_tensor(clf.decision_function(query)).float(), model(support, labels, query),
                          atol=1e-5)


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="support_augment must be an integer >= 0"):
        merge(Config(), {"support_augment": -1})
    with pytest.raises(ConfigError, match="--support-augment applies to a plain episodic model"):
        merge(Config(), {"support_augment": 2, "prompt": "vpt", "backbone": "test_vig"})
    with pytest.raises(ValueError, match="support_augment must be an integer >= 0"):
        EpisodicModel(NodeBackbone(), DN4Matcher(), support_augment=True)


def test_fewshot_eval_scores_a_run_with_copies_in_its_own_folder(tmp_path):
    from .test_eval_folders import TINY, run
    run_dir = tmp_path / "run"
    run(["train", *TINY, "--matcher", "dn4", "--episodes", "2", "--eval-episodes", "20", "--run-dir", str(run_dir),
         "--json"])
    common = ["eval", "--run-dir", str(run_dir), "--checkpoint", "last", "--eval-episodes", "20", "--no-track",
              "--no-progress", "--json"]
    plain, augmented = run(common), run([*common, "--support-augment", "3"])
    assert plain["eval_dir"] != augmented["eval_dir"]  # another scoring setting, another folder
    assert run([*common, "--support-augment", "3"])["eval_dir"] == augmented["eval_dir"]

    def episodes(result):
        return (tmp_path / result["eval_dir"] / "test_episode_accuracies.txt").read_text().split()
    assert len(episodes(plain)) == len(episodes(augmented)) == 20 and episodes(plain) != episodes(augmented)
