"""examples/nearest_support.py, the one-file matcher of examples/README.md: its maths, its
registration, its option checks, and its use from the command line.

Importing the example registers ``nearest_support`` in the process-wide matcher registry, so
every check runs in a subprocess: the other tests keep seeing only the package's matchers. Each
starts torch (several seconds), hence all are marked slow.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "nearest_support.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "examples")}

CHECKS = textwrap.dedent(r"""
    import doctest
    import pytest
    import torch
    import torch.nn.functional as F

    import matchers
    import nearest_support
    from nearest_support import NearestSupportMatcher

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
    support.requires_grad_(True); query.requires_grad_(True)
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
    print("all checks passed")
""")


@pytest.mark.slow
def test_the_example_matcher_computes_registers_and_validates():
    proc = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all checks passed" in proc.stdout


@pytest.mark.slow
def test_the_example_trains_and_evaluates_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    common = ["--matcher", "nearest_support", "--eval-episodes", "5", "--no-track", "--no-progress", "--json",
              "--run-dir", str(run_dir), "--device", "cpu"]
    train = subprocess.run([sys.executable, str(EXAMPLE), "train", *common, "--episodes", "3", "--val-episodes", "0",
                            "--temperature", "0.05", "--matcher-opt", "reduce=mean"], capture_output=True, text=True,
                           env=ENV, cwd=tmp_path, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    result = json.loads(train.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 3 and result["test_episodes"] == 5 and 0 <= result["test_acc"] <= 1
    assert (run_dir / "last.pt").is_file()
    # the options reach the matcher the run builds (a rebuilt run, as fewshot eval makes it)
    built = subprocess.run([sys.executable, "-c", "import sys, nearest_support\n"
                            "from fewshot.evaluate_run import load_run_config\nfrom fewshot.model import build_model\n"
                            "m = build_model(load_run_config(sys.argv[1]), 28, 1).matcher\n"
                            "print(type(m).__name__, m.reduce, m.temperature)", str(run_dir)],
                           capture_output=True, text=True, env=ENV, timeout=120)
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.split() == ["NearestSupportMatcher", "mean", "0.05"]

    evaluated = subprocess.run([sys.executable, str(EXAMPLE), "eval", *common, "--checkpoint", "last", "--shot", "2"],
                               capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scored = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert scored["matcher"] == "nearest_support" and scored["test_shot"] == 2


@pytest.mark.slow
def test_an_unknown_matcher_name_or_option_value_on_the_command_line_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE), "train", "--matcher", "nearest_suport", "--no-track",
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2
    assert "nearest_support" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()

    bad = subprocess.run([sys.executable, str(EXAMPLE), "train", "--matcher", "nearest_support", "--matcher-opt",
                          "reduce=median", "--no-track", "--run-dir", str(tmp_path / "run")], capture_output=True,
                         text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2
    assert "reduce" in bad.stderr and "max, mean" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "run").exists()
