"""Shared fixtures: the real data in ../shared/data and seeded synthetic episodes."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEWSHOT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (override with FEWSHOT_SHARED_DATA)."""
    if not (SHARED_DATA / "omniglot").is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}: the repository expects ../shared/data beside it")
    return SHARED_DATA


@pytest.fixture
def episode_tensors():
    """A factory of seeded random episodes: ``make(way, shot, query, nodes=None, dim=16, seed=0)``.

    Returns ``support [way*shot(, nodes), dim]``, ``support_labels [way*shot]``,
    ``query [way*query(, nodes), dim]``, ``query_labels [way*query]``.
    """

    def make(way=5, shot=1, query=3, nodes=None, dim=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        tail = (dim,) if nodes is None else (nodes, dim)
        support = torch.randn(way * shot, *tail, generator=g)
        query_t = torch.randn(way * query, *tail, generator=g)
        support_labels = torch.arange(way).repeat_interleave(shot)
        query_labels = torch.arange(way).repeat_interleave(query)
        return support, support_labels, query_t, query_labels

    return make


class _Interrupt:
    """Ctrl-C injected into training: ``arm(seed, index)`` makes the next request for episode ``index``
    of a sampler seeded ``seed`` (the training stream; banks use ``bank_seed`` and ``bank_seed + 1``)
    raise ``KeyboardInterrupt``, once. ``fired`` tells whether it did."""

    def __init__(self):
        self.target, self.fired = None, False

    def arm(self, seed: int, index: int) -> None:
        self.target, self.fired = (int(seed), int(index)), False


@pytest.fixture
def interrupt(monkeypatch):
    """Interrupt a training run at a chosen training episode, as Ctrl-C would (see :class:`_Interrupt`)."""
    from episodes import EpisodeSampler

    state, original = _Interrupt(), EpisodeSampler.__getitem__

    def getitem(self, index):
        if state.target == (self.seed, int(index)) and not state.fired:
            state.fired = True
            raise KeyboardInterrupt(f"injected at training episode {index}")
        return original(self, index)

    monkeypatch.setattr(EpisodeSampler, "__getitem__", getitem)
    return state


def assert_same_tensors(a, b, where="state"):
    """Nested dicts / lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


#: result.json fields that name a run (its folder, id, timing) rather than describe its outcome
RUN_SPECIFIC = {"run_dir", "mlflow_run_id", "eval_seconds"}


def assert_same_training_outcome(run_a: Path, run_b: Path, result_a: dict, result_b: dict) -> None:
    """Two run folders ended identically: last.pt (weights, optimiser, scheduler, step, best), best.pt
    when present, per-episode test accuracies and the result without its run-specific fields."""
    import json

    for name in ("last.pt", "best.pt"):
        if not (run_a / name).exists():
            assert not (run_b / name).exists(), name
            continue
        a = torch.load(run_a / name, weights_only=True)
        b = torch.load(run_b / name, weights_only=True)
        for key in ("mlflow_run_id", "config"):  # the config names the run folder; config_digest stays compared
            a.pop(key, None), b.pop(key, None)
        assert_same_tensors(a, b, name)
    assert (run_a / "test_episode_accuracies.txt").read_text() == (run_b / "test_episode_accuracies.txt").read_text()
    strip = lambda r: {k: v for k, v in r.items() if k not in RUN_SPECIFIC}  # noqa: E731
    assert strip(result_a) == strip(result_b)
    assert strip(json.loads((run_a / "result.json").read_text())) == strip(result_a)


# ---------------------------------------------------------------- running on every core (pytest-xdist)

MAX_WORKERS = 4
"""``-n auto`` (setup.cfg) starts one worker per CPU core, at most this many: each worker imports torch,
timm and MLflow, and most tests start processes or torch threads of their own."""


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def pytest_configure(config):
    """A worker gets its share of the cores for torch's own threads, so two workers do not run twice as
    many threads as there are cores (a child process a test starts chooses its own)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))
