"""The contract every registered matcher keeps: registry names, episode errors, purity, docstring examples."""
import doctest
import subprocess
import sys

import pytest
import torch

import matchers
from matchers import HungarianMatcher, KNNMatcher, PatchVotingMatcher, PrototypeMatcher

CLASSES = {"prototype": PrototypeMatcher, "patch_voting": PatchVotingMatcher, "hungarian": HungarianMatcher,
           "knn": KNNMatcher}
NODE_LEVEL = {"patch_voting", "hungarian"}
ALL = sorted(CLASSES)


def episode(name, support=(4,), query=(3,), labels=(0, 1, 0, 1), dim=8):
    """Tensors for ``name``: node-level matchers get 5 nodes per image, the others pooled vectors."""
    nodes, g = (5,) if name in NODE_LEVEL else (), torch.Generator().manual_seed(0)
    return (torch.randn(*support, *nodes, dim, generator=g), torch.tensor(labels),
            torch.randn(*query, *nodes, dim, generator=g))


@pytest.mark.parametrize("name", ALL)
def test_get_returns_the_registered_class(name):
    assert matchers.get(name) is CLASSES[name]
    assert isinstance(matchers.create(name), CLASSES[name])
    assert name in matchers.list_matchers()


@pytest.mark.parametrize("typo,closest", [("hungarien", "hungarian"), ("patch-voting", "patch_voting"), ("kn", "knn")])
def test_unknown_names_list_every_valid_name_and_the_closest(typo, closest):
    with pytest.raises(ValueError, match=f"Did you mean '{closest}'") as err:
        matchers.get(typo)
    assert all(name in str(err.value) for name in ALL)


def test_a_duplicate_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        matchers.register_matcher("knn")(type("Other", (matchers.Matcher,), {}))


@pytest.mark.parametrize("name,expected", [("patch_voting", "nodes"), ("hungarian", "nodes"), ("knn", "pooled")])
def test_matchers_tell_the_engine_which_features_they_want(name, expected):
    assert matchers.create(name).input == expected


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("name", ALL)
class TestEveryMatcher:
    @pytest.mark.parametrize("device", DEVICES)
    def test_logits_are_query_by_way_on_the_input_device(self, name, device):
        support, labels, query = (t.to(device) for t in episode(name, support=(6,), query=(7,),
                                                                 labels=(0, 1, 2, 0, 1, 2)))
        logits = matchers.create(name)(support, labels, query)
        assert logits.shape == (7, 3) and logits.device == query.device and torch.isfinite(logits).all()

    def test_nothing_is_stored_between_calls(self, name):
        m = matchers.create(name)
        before = dict(vars(m))
        m(*episode(name))
        assert vars(m).keys() == before.keys()
        assert all(getattr(m, k) == v for k, v in before.items() if not k.startswith("_"))
        assert not list(m.buffers()) and not list(m.parameters()) and not list(m.children())

    def test_mismatched_feature_dims_are_refused(self, name):
        support, labels, query = episode(name)
        with pytest.raises(ValueError, match="same rank and feature dim"):
            matchers.create(name)(support, labels, query[..., :-1])

    @pytest.mark.parametrize("bad,message", [((-1, 0, 1, 1), "0..way-1"), ((0, 2, 0, 2), "class 1 has no support")])
    def test_bad_labels_are_refused(self, name, bad, message):
        with pytest.raises(ValueError, match=message):
            matchers.create(name)(*episode(name, labels=bad))

    def test_label_count_must_match_the_support(self, name):
        with pytest.raises(ValueError, match=r"support_labels must be \[4\]"):
            matchers.create(name)(*episode(name, labels=(0, 1, 0)))

    def test_an_empty_query_is_refused(self, name):
        with pytest.raises(ValueError, match="query is empty"):
            matchers.create(name)(*episode(name, query=(0,)))

    def test_rank_four_inputs_are_refused(self, name):
        with pytest.raises(ValueError, match="must be"):
            matchers.create(name)(torch.zeros(4, 2, 5, 8), torch.tensor([0, 1, 0, 1]), torch.zeros(3, 2, 5, 8))

    def test_the_docstring_example_runs(self, name):
        cls = CLASSES[name]
        assert "Example:" in cls.__doc__
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in doctest.DocTestFinder(recurse=False).find(cls, globs={"torch": torch, cls.__name__: cls}):
            runner.run(test)
        assert runner.summarize(verbose=False).failed == 0 and runner.summarize(verbose=False).attempted > 0


@pytest.mark.parametrize("name", sorted(NODE_LEVEL))
def test_node_level_matchers_refuse_pooled_features_saying_why(name):
    with pytest.raises(ValueError, match="needs node-level features"):
        matchers.create(name)(torch.zeros(4, 8), torch.tensor([0, 1, 0, 1]), torch.zeros(3, 8))


def test_importing_matchers_loads_neither_faiss_nor_scipy():
    code = "import sys, matchers; print(sorted(m for m in ('faiss', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]"
