"""Episodes within groups of classes (EpisodeSampler(groups=...), --episode-groups) and the omniglot-minimal
val option (--val-per-alphabet), from the sampler up to fewshot train / fewshot eval."""
import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from episodes import DataError, EpisodeSampler, ImageSet, load_splits
from episodes.sampler import EPISODE_GROUPS, class_groups
from fewshot.cli import cli
from fewshot.config import Config, ConfigError


def make_set(sizes, name="toy"):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    images = torch.zeros(labels.numel(), 1, 8, 8, dtype=torch.uint8)
    return ImageSet(images, labels, [f"class{c}" for c in range(len(sizes))], name=name)


GROUPS = {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7, 8, 9], "c": [10, 11]}


class TestSampler:
    def test_every_episode_draws_its_classes_from_one_group(self):
        sampler = EpisodeSampler(make_set([6] * 12), 2, 1, 2, seed=0, groups=GROUPS)
        owner = {c: g for g, classes in GROUPS.items() for c in classes}
        used = set()
        for i in range(200):
            classes = sampler[i].classes.tolist()
            assert len({owner[c] for c in classes}) == 1 and len(set(classes)) == 2
            used.add(owner[classes[0]])
        assert used == {"a", "b", "c"}

    def test_groups_are_drawn_uniformly_not_by_size(self):
        sampler = EpisodeSampler(make_set([6] * 12), 2, 1, 2, seed=0, groups=GROUPS)
        owner = {c: g for g, classes in GROUPS.items() for c in classes}
        counts = {g: 0 for g in GROUPS}
        for i in range(3000):
            counts[owner[sampler[i].classes[0].item()]] += 1
        assert all(abs(n / 3000 - 1 / 3) < 0.04 for n in counts.values()), counts

    def test_a_group_smaller_than_way_sits_out_with_a_warning(self):
        with pytest.warns(UserWarning, match=r"toy: c \(2 classes\) has fewer classes than way = 3 and takes no part"):
            sampler = EpisodeSampler(make_set([6] * 12), 3, 1, 2, seed=0, groups=GROUPS)
        assert not {10, 11} & {c for i in range(100) for c in sampler[i].classes.tolist()}

    def test_no_group_large_enough_is_an_error_naming_every_group(self):
        with pytest.raises(DataError, match=r"toy: 7-way episodes within one group need a group of at least 7 classes; "
                                            r"the groups have a \(4\), b \(6\), c \(2\); lower --way"):
            EpisodeSampler(make_set([6] * 12), 7, 1, 2, groups=GROUPS)

    def test_a_group_naming_a_class_twice_or_out_of_range_is_refused(self):
        with pytest.raises(ValueError, match=r"group 'x' must list distinct class indices in 0..11, got \[0, 12\]"):
            EpisodeSampler(make_set([6] * 12), 2, 1, 2, groups={"x": [0, 12]})
        with pytest.raises(ValueError, match="group 'x' must list distinct"):
            EpisodeSampler(make_set([6] * 12), 2, 1, 2, groups={"x": [1, 1, 2]})

    def test_seeded_and_independent_of_access_order(self):
        a = EpisodeSampler(make_set([6] * 12), 2, 1, 2, seed=5, groups=GROUPS)
        b = EpisodeSampler(make_set([6] * 12), 2, 1, 2, seed=5, groups=GROUPS)
        late = b[40]
        assert torch.equal(a[40].classes, late.classes) and torch.equal(a[40].query, late.query)
        assert a.bank(30).bank_id == b.bank(30).bank_id

    def test_without_groups_the_episodes_are_what_they_always_were(self):
        """The ungrouped path is the historical one: classes = randperm(num_classes)[:way] from (seed, i)'s generator."""
        from episodes import episode_seed

        images = make_set([6] * 12)
        sampler = EpisodeSampler(images, 3, 1, 2, seed=9)
        for i in (0, 7):
            g = torch.Generator().manual_seed(episode_seed(9, i))
            assert sampler[i].classes.tolist() == torch.randperm(12, generator=g)[:3].tolist()


class TestClassGroups:
    def test_none_means_the_whole_split(self):
        assert class_groups(make_set([3, 3]), "none", "glyphs") is None

    def test_a_dataset_without_alphabets_refuses_naming_itself(self):
        with pytest.raises(DataError, match="--episode-groups alphabet: dataset 'glyphs' has no alphabet of its "
                                            "classes; only omniglot does"):
            class_groups(make_set([3, 3]), "alphabet", "glyphs")

    def test_an_unknown_grouping_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match="episode groups must be one of none, alphabet, got 'drawer'"):
            class_groups(make_set([3, 3]), "drawer", "omniglot")

    def test_omniglot_class_names_group_by_alphabet(self):
        images = ImageSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4),
                          ["Greek/character01", "Greek/character01@rot90", "Latin/character02", "Greek/character03"])
        assert class_groups(images, "alphabet", "omniglot") == {"Greek": [0, 1, 3], "Latin": [2]}

    def test_a_class_name_without_an_alphabet_is_an_error_naming_the_set(self):
        images = make_set([2, 2], name="custom/test")
        with pytest.raises(DataError, match="custom/test: 'class0' is not an Omniglot class name"):
            class_groups(images, "alphabet", "omniglot")


class TestConfig:
    def test_defaults_keep_the_usual_protocol(self):
        assert Config().episode_groups == "none" and Config().val_per_alphabet is None
        assert EPISODE_GROUPS == ("none", "alphabet")

    @pytest.mark.parametrize("changes, message", [
        ({"episode_groups": "drawer"}, "episode_groups must be one of none, alphabet, got 'drawer'"),
        ({"val_per_alphabet": 0}, "val_per_alphabet must be a positive integer or unset, got 0"),
    ])
    def test_bad_values_are_refused(self, changes, message):
        with pytest.raises(ConfigError, match=message):
            Config().replace(**changes)

    def test_training_groups_default_to_the_protocol_and_are_checked(self):
        assert Config(episode_groups="alphabet").effective_train_episode_groups == "alphabet"
        assert Config(train_episode_groups="alphabet").effective_train_episode_groups == "alphabet"
        assert Config(train_episode_groups="alphabet").episode_groups == "none"
        with pytest.raises(ConfigError, match="train_episode_groups must be one of none, alphabet, got 'drawer'"):
            Config(train_episode_groups="drawer")

    def test_the_run_digest_changes_with_the_protocol(self):
        assert Config().digest() != Config(episode_groups="alphabet").digest()
        assert Config().digest() != Config(val_per_alphabet=6).digest()


class TestCommandLine:
    @pytest.mark.parametrize("args, message", [
        (["--episode-groups", "alphabet"], "--episode-groups alphabet: dataset 'glyphs' has no alphabet"),
        (["--val-per-alphabet", "6"], "dataset 'glyphs' has no option --val-per-alphabet"),
    ])
    def test_glyphs_refuses_the_omniglot_options_in_one_line(self, tmp_path, args, message):
        r = CliRunner().invoke(cli, ["train", "--backbone", "conv4", "--episodes", "1", "--no-track", "--no-progress",
                                     "--run-dir", str(tmp_path / "r"), *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1

    @pytest.mark.slow
    def test_harder_training_episodes_leave_validation_and_test_on_the_usual_protocol(self, tmp_path, shared_data):
        """--train-episode-groups alphabet: every training episode's classes share an alphabet, while the
        validation and test banks are those of --episode-groups none."""
        from fewshot.training import prepare
        root = shared_data / "omniglot"
        config = Config(dataset="omniglot", data_root=str(root), backbone="conv4", train_episode_groups="alphabet",
                        val_per_alphabet=5, train_way=10, episodes=1, val_episodes=3, eval_episodes=4, query=3,
                        track=False, threads=1, run_dir=str(tmp_path / "run"))
        run = prepare(config)
        names = run.splits.train.class_names
        for i in range(8):
            alphabets = {names[c].split("/")[0] for c in run.train_sampler[i].classes.tolist()}
            assert len(alphabets) == 1, alphabets
        usual = EpisodeSampler(run.splits.train, 10, 1, 15, seed=0)
        assert any(len({names[c].split("/")[0] for c in usual[i].classes.tolist()}) > 1 for i in range(8))
        assert run.test_bank.bank_id == EpisodeSampler(run.splits.test, 5, 1, 3, seed=0).bank(4).bank_id
        assert run.val_bank.bank_id == EpisodeSampler(run.splits.val, 5, 1, 3, seed=1).bank(3).bank_id

    @pytest.mark.slow
    def test_train_and_eval_on_omniglot_within_alphabets(self, tmp_path, shared_data):
        """The training run's test bank is the grouped bank, its val split the enlarged one; fewshot eval of the
        same run scores the grouped bank of another setting, and the usual protocol's bank is another one."""
        root = shared_data / "omniglot"
        run_dir = tmp_path / "run"
        common = ["--no-track", "--no-progress", "--threads", "1", "--json"]
        r = CliRunner().invoke(cli, ["train", "--dataset", "omniglot", "--data-root", str(root), "--backbone", "conv4",
                                     "--episode-groups", "alphabet", "--val-per-alphabet", "5", "--train-way", "10",
                                     "--episodes", "2", "--val-every", "2", "--val-episodes", "3",
                                     "--eval-episodes", "4", "--query", "3", "--run-dir", str(run_dir), *common],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        result = json.loads(r.stdout.strip().splitlines()[-1])
        splits = load_splits("omniglot", root, val_per_alphabet=5)
        assert splits.val.num_classes == 25
        grouped = EpisodeSampler(splits.test, 5, 1, 3, seed=0, groups=class_groups(splits.test, "alphabet", "omniglot"))
        assert result["test_bank_id"] == grouped.bank(4).bank_id
        assert result["test_bank_id"] != EpisodeSampler(splits.test, 5, 1, 3, seed=0).bank(4).bank_id

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Tagalog sits out of 20-way episodes
            r = CliRunner().invoke(cli, ["eval", "--run-dir", str(run_dir), "--way", "20", "--eval-episodes", "2",
                                         *common], catch_exceptions=False)
            assert r.exit_code == 0, r.output
            scored = json.loads(r.stdout.strip().splitlines()[-1])
            twenty = EpisodeSampler(splits.test, 20, 1, 3, seed=0,
                                    groups=class_groups(splits.test, "alphabet", "omniglot")).bank(2)
        assert scored["test_bank_id"] == twenty.bank_id
        r = CliRunner().invoke(cli, ["eval", "--run-dir", str(run_dir), "--episode-groups", "none",
                                     "--eval-episodes", "4", *common], catch_exceptions=False)
        assert json.loads(r.stdout.strip().splitlines()[-1])["test_bank_id"] == \
            EpisodeSampler(splits.test, 5, 1, 3, seed=0).bank(4).bank_id
