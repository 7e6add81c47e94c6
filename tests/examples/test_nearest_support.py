"""examples/nearest_support.py, the one-file matcher of examples/README.md: its maths, its
registration, its option checks, and its use from the command line.

Importing the example registers ``nearest_support`` in the process-wide matcher registry. The
checks run in this process (a subprocess would spend seconds importing torch for each command),
inside the ``isolated`` fixture: it snapshots the registry and ``sys.modules``' entry for the example
and puts both back afterwards, so the other tests keep seeing only the package's matchers. The
command line is the example's own ``if __name__ == "__main__"`` block, run by :func:`runpy.run_path`
with ``sys.argv`` set, as ``python examples/nearest_support.py ...`` runs it.
"""
import doctest
import importlib
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import matchers
from matchers.base import _REGISTRY

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "nearest_support.py"


@pytest.fixture
def isolated(monkeypatch):
    """The examples folder on sys.path (as the script's own folder is when run), and the matcher
    registry and ``sys.modules['nearest_support']`` restored after the test. Returns ``reset()``,
    which puts the registry back to the package's matchers mid-test (each run of the script
    registers its own class object, and a second registration under the same name is refused)."""
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    package_matchers = dict(_REGISTRY._loaded())
    monkeypatch.setattr(_REGISTRY, "_entries", dict(package_matchers))
    monkeypatch.delitem(sys.modules, "nearest_support", raising=False)

    def reset():
        _REGISTRY._entries.clear()
        _REGISTRY._entries.update(package_matchers)
        sys.modules.pop("nearest_support", None)

    yield reset
    sys.modules.pop("nearest_support", None)


def run_example(reset, capsys, monkeypatch, *args) -> tuple:
    """``python examples/nearest_support.py *args`` in this process, on a registry holding only the package's
    matchers: ``(exit code, stdout, stderr)``. The example's matcher stays registered afterwards."""
    reset()
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *args])
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
        code = 0
    except SystemExit as e:  # click's standalone mode ends every command with sys.exit
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_the_example_matcher_computes_registers_and_validates(isolated):
    nearest_support = importlib.import_module("nearest_support")
    NearestSupportMatcher = nearest_support.NearestSupportMatcher

    # registered under its name, found by the registry like the package's own matchers
    assert "nearest_support" in matchers.list_matchers()
    assert matchers.get("nearest_support") is NearestSupportMatcher
    assert isinstance(matchers.create("nearest_support", reduce="mean"), NearestSupportMatcher)

    # logits against a loop over classes and shots, both reductions, pooled and node inputs
    g = torch.Generator().manual_seed(0)
    way, shot = 4, 3
    support, query = torch.randn(way * shot, 16, generator=g), torch.randn(7, 16, generator=g)
    labels = torch.arange(way).repeat(shot)                        # interleaved classes
    sim = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).T
    for reduce, pick in (("max", lambda s: s.max(1).values), ("mean", lambda s: s.mean(1))):
        expected = torch.stack([pick(sim[:, labels == c]) for c in range(way)], 1) / 0.5
        got = NearestSupportMatcher(temperature=0.5, reduce=reduce)(support, labels, query)
        torch.testing.assert_close(got, expected)
    nodes_s, nodes_q = torch.randn(way * shot, 5, 16, generator=g), torch.randn(7, 5, 16, generator=g)
    torch.testing.assert_close(NearestSupportMatcher()(nodes_s, labels, nodes_q),
                               NearestSupportMatcher()(nodes_s.mean(1), labels, nodes_q.mean(1)))

    # "max" is the nearest support item: a query equal to one support item scores 1 / temperature for its class
    got = NearestSupportMatcher(temperature=1.0)(support, labels, support[5:6])
    assert got[0, int(labels[5])].item() == pytest.approx(1.0)

    # trainable: the loss reaches support and query
    support.requires_grad_(True), query.requires_grad_(True)
    F.cross_entropy(NearestSupportMatcher()(support, labels, query), torch.zeros(7, dtype=torch.long)).backward()
    assert support.grad.abs().sum() > 0 and query.grad.abs().sum() > 0

    # bad options and bad episodes: one clear ValueError each
    for kwargs, words in (({"temperature": 0}, "temperature must be"), ({"temperature": True}, "temperature must be"),
                          ({"reduce": "median"}, "reduce must be 'max' or 'mean'")):
        with pytest.raises(ValueError, match=words):
            NearestSupportMatcher(**kwargs)
    with pytest.raises(ValueError, match="class 1 has no support"):
        NearestSupportMatcher()(torch.randn(2, 8), torch.tensor([0, 2]), torch.randn(3, 8))
    with pytest.raises(ValueError, match="already registered"):
        matchers.register_matcher("nearest_support")(type("Other", (matchers.Matcher,), {}))

    # the docstring example runs
    failed, tried = doctest.testmod(nearest_support, extraglobs={"torch": torch})
    assert tried > 0 and failed == 0, (failed, tried)


@pytest.mark.slow
def test_the_example_trains_and_evaluates_from_the_command_line(tmp_path, isolated, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    common = ["--matcher", "nearest_support", "--eval-episodes", "5", "--no-track", "--no-progress", "--json",
              "--run-dir", str(run_dir), "--device", "cpu", "--threads", "1"]
    code, out, err = run_example(isolated, capsys, monkeypatch, "train", *common, "--episodes", "3",
                                 "--val-episodes", "0", "--temperature", "0.05", "--matcher-opt", "reduce=mean")
    assert code == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["episodes"] == 3 and result["test_episodes"] == 5 and 0 <= result["test_acc"] <= 1
    assert (run_dir / "last.pt").is_file()
    # the options reach the matcher the run builds (a rebuilt run, as fewshot eval makes it), with the
    # matcher registered by a plain import of the example
    from fewshot.evaluate_run import load_run_config
    from fewshot.model import build_model

    isolated()
    importlib.import_module("nearest_support")
    m = build_model(load_run_config(run_dir), 28, 1).matcher
    assert (type(m).__name__, m.reduce, m.temperature) == ("NearestSupportMatcher", "mean", 0.05)

    code, out, err = run_example(isolated, capsys, monkeypatch, "eval", *common, "--checkpoint", "last", "--shot", "2")
    assert code == 0, err[-3000:]
    scored = json.loads(out.strip().splitlines()[-1])
    assert scored["matcher"] == "nearest_support" and scored["test_shot"] == 2


def test_an_unknown_matcher_name_or_option_value_on_the_command_line_is_one_clear_error(tmp_path, isolated, capsys,
                                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_example(isolated, capsys, monkeypatch, "train", "--matcher", "nearest_suport", "--no-track",
                               "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert "nearest_support" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()

    code, _, err = run_example(isolated, capsys, monkeypatch, "train", "--matcher", "nearest_support", "--matcher-opt",
                               "reduce=median", "--no-track", "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert "reduce" in err and "max, mean" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
