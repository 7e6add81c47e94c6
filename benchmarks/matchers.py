"""Time per episode of every matcher against a naive per-pair Python-loop version of the same rule.

Episodes are 5-way, 1 or 5 shots, 15 queries per class (75 query images), with random node
features ``[N, 192]`` for N = 196 (a 14x14 grid) and N = 49 (7x7); pooled matchers get them
mean-pooled by the matcher itself. Every call runs under ``torch.no_grad()`` (evaluation).

Each repetition calls our matcher and the naive version on the same episode (interleaved,
alternating which goes first), after one untimed warm-up call of each; the table gives the median seconds per
episode, the ratio naive/ours, the peak memory of one call and the largest difference between
the two versions' logits (they implement the same rule, so it must be ~0).

Peak memory = (peak resident set during the call) - (resident set just before it), from
``VmHWM``/``VmRSS`` in ``/proc/self/status`` with the peak reset before each call by writing 5
to ``/proc/self/clear_refs`` (Linux), after ``malloc_trim(0)`` has returned glibc's cached free
memory to the OS. Elsewhere it falls back to the ``resource.getrusage`` max-RSS delta, which
only shows calls that raise the process's lifetime peak.

The table goes to stdout and, with ``--out``, to that file, headed by the command, commit, date
and machine (``benchmarks/_results.py``): the file is the script's whole output.

Usage:
    python benchmarks/matchers.py --quick --out benchmarks/results/matchers_quick.txt   # 1 timed repetition
    python benchmarks/matchers.py --reps 7    # default 5
    python benchmarks/matchers.py --smoke --out /tmp/m.txt   # seconds: 16 nodes, 1-shot, 1 repetition
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matchers import DN4Matcher, HungarianMatcher, KNNMatcher, PatchVotingMatcher, PrototypeMatcher  # noqa: E402
from matchers.hungarian import sinkhorn_plan  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

WAY, QUERY, DIM = 5, 15, 192


# ----------------------------------------------------------------------------- naive versions
# One (query, support) pair -- or one query -- at a time, the same rule as the batched matcher.

def naive_prototype(support, labels, query, way):
    support, query = support.mean(1), query.mean(1)
    logits = torch.empty(query.shape[0], way)
    for q in range(query.shape[0]):
        for c in range(way):
            prototype = support[labels == c].mean(0)
            logits[q, c] = -((query[q] - prototype) ** 2).sum()
    return logits


def naive_patch_voting(support, labels, query, way, k=5, temperature=0.1, discriminative=False, smoothing=1e-3):
    node_lab = labels.repeat_interleave(support.shape[1])
    logits = torch.empty(query.shape[0], way)
    for q in range(query.shape[0]):
        x = F.normalize(query[q], dim=-1)
        sim = torch.cat([x @ F.normalize(support[s], dim=-1).T for s in range(support.shape[0])], dim=1)  # [M, S*N]
        top, idx = sim.topk(min(k, sim.shape[1]), dim=1)
        votes = torch.zeros(sim.shape[0], way).scatter_add_(1, node_lab[idx], torch.softmax(top / temperature, 1))
        weight = torch.ones(sim.shape[0], 1)
        if discriminative:
            best = torch.stack([sim[:, node_lab == c].max(1).values for c in range(way)], 1).topk(2, dim=1).values
            weight = (best[:, 0] - best[:, 1]).unsqueeze(1)
        share = (weight * votes).sum(0) / weight.sum()
        logits[q] = torch.log((share + smoothing) / (1 + way * smoothing))
    return logits


def _per_pair(support, labels, query, way, pair_score, temperature):
    scores = torch.empty(query.shape[0], support.shape[0])
    for q in range(query.shape[0]):
        for s in range(support.shape[0]):
            sim = F.normalize(query[q], dim=-1) @ F.normalize(support[s], dim=-1).T  # this pair's [M, N]
            scores[q, s] = pair_score(sim)
    return torch.stack([scores[:, labels == c].mean(1) for c in range(way)], 1) / temperature


def naive_hungarian(support, labels, query, way):
    from scipy.optimize import linear_sum_assignment

    def score(sim):
        rows, cols = linear_sum_assignment((1 - sim).numpy())
        return sim[torch.from_numpy(rows), torch.from_numpy(cols)].mean()

    return _per_pair(support, labels, query, way, score, 0.1)


def naive_sinkhorn(support, labels, query, way):
    return _per_pair(support, labels, query, way, lambda sim: (sinkhorn_plan(1 - sim, 0.05, 50) * sim).sum(), 0.1)


def _cross_reference(x, y):
    """DeepEMD's weights of one pair's nodes, node by node: ``a[m] = relu(x[m] . mean(y)) + 1e-3``
    (``b`` likewise for ``y``), each normalised to sum 1."""
    a = torch.stack([torch.relu(x[m] @ y.mean(0)) + 1e-3 for m in range(x.shape[0])])
    b = torch.stack([torch.relu(y[n] @ x.mean(0)) + 1e-3 for n in range(y.shape[0])])
    return a / a.sum(), b / b.sum()


def _per_pair_weighted(support, labels, query, way, pair_score, temperature):
    """Like :func:`_per_pair`, ``pair_score(sim, a, b)`` also given the pair's cross-reference weights."""
    scores = torch.empty(query.shape[0], support.shape[0])
    for q in range(query.shape[0]):
        for s in range(support.shape[0]):
            sim = F.normalize(query[q], dim=-1) @ F.normalize(support[s], dim=-1).T
            scores[q, s] = pair_score(sim, *_cross_reference(query[q], support[s]))
    return torch.stack([scores[:, labels == c].mean(1) for c in range(way)], 1) / temperature


def naive_hungarian_cross_reference(support, labels, query, way):
    from scipy.optimize import linear_sum_assignment

    def score(sim, a, b):
        w = (sim.shape[0] * a[:, None] + sim.shape[1] * b[None, :]) / 2  # [M, N] pair weights
        rows, cols = linear_sum_assignment((-(w * sim)).numpy())  # the assignment maximising sum w * sim
        rows, cols = torch.from_numpy(rows), torch.from_numpy(cols)
        return (w * sim)[rows, cols].sum() / w[rows, cols].sum()

    return _per_pair_weighted(support, labels, query, way, score, 0.1)


def naive_sinkhorn_cross_reference(support, labels, query, way):
    return _per_pair_weighted(support, labels, query, way,
                              lambda sim, a, b: (sinkhorn_plan(1 - sim, 0.05, 50, a, b) * sim).sum(), 0.1)


def naive_dn4(support, labels, query, way, k=3):
    """Per query image and class: each query node's k most similar nodes among the class's support
    nodes, similarities summed over k and over the query nodes (reduce "sum", temperature 1)."""
    logits = torch.empty(query.shape[0], way)
    for q in range(query.shape[0]):
        x = F.normalize(query[q], dim=-1)
        for c in range(way):
            nodes = F.normalize(support[labels == c].flatten(0, 1), dim=-1)  # [shot*N, D]
            logits[q, c] = (x @ nodes.T).topk(k, dim=1).values.sum()
    return logits


def _knn_rows(dist, neighbour_labels, way, k):
    """Counts plus the tie bonus, one neighbour rank at a time; ``dist`` ascending."""
    logits = torch.zeros(dist.shape[0], way)
    seen = torch.zeros(dist.shape[0], way, dtype=torch.bool)
    for rank in range(k):
        onehot = F.one_hot(neighbour_labels[:, rank], way).bool()
        logits += onehot.float() + 0.5 * (k - rank) / k * (onehot & ~seen).float()
        seen |= onehot
    return logits


def naive_knn(support, labels, query, way, k=5):
    support, query = support.mean(1), query.mean(1)
    k = min(k, support.shape[0])
    rows = []
    for q in range(query.shape[0]):
        dist, idx = torch.cdist(query[q:q + 1], support).topk(k, dim=1, largest=False)
        rows.append(_knn_rows(dist, labels[idx], way, k))
    return torch.cat(rows)


def naive_knn_nodes(support, labels, query, way, k=5):
    flat, node_lab = support.flatten(0, 1), labels.repeat_interleave(support.shape[1])
    k = min(k, flat.shape[0])
    rows = []
    for q in range(query.shape[0]):
        dist, idx = torch.cdist(query[q], flat).topk(k, dim=1, largest=False)  # [M, k]
        rows.append(_knn_rows(dist, node_lab[idx], way, k).mean(0, keepdim=True))
    return torch.cat(rows)


ENTRIES: Dict[str, Tuple[Callable, Callable]] = {
    "prototype": (PrototypeMatcher(), naive_prototype),
    "patch_voting": (PatchVotingMatcher(), naive_patch_voting),
    "patch_voting:discriminative": (PatchVotingMatcher(discriminative=True),
                                      lambda *a: naive_patch_voting(*a, discriminative=True)),
    "hungarian": (HungarianMatcher(), naive_hungarian),
    "hungarian:sinkhorn": (HungarianMatcher(solver="sinkhorn"), naive_sinkhorn),
    "hungarian:cross_reference": (HungarianMatcher(weights="cross_reference"), naive_hungarian_cross_reference),
    "hungarian:sinkhorn:cross_reference": (HungarianMatcher(solver="sinkhorn", weights="cross_reference"),
                                           naive_sinkhorn_cross_reference),
    "knn": (KNNMatcher(), naive_knn),
    "knn:nodes": (KNNMatcher(level="nodes"), naive_knn_nodes),
    "dn4": (DN4Matcher(k=3, temperature=1.0, reduce="sum"), naive_dn4),
}


# ----------------------------------------------------------------------------- measuring

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _setup_memory_probe() -> str:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kib("VmHWM")
    except OSError:
        return "getrusage"
    return "vmhwm"


def _release_free_heap() -> None:
    """Give glibc's cached free memory back to the OS, so the next call's peak shows as RSS growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measured_call(fn: Callable, probe: str) -> Tuple[float, float, torch.Tensor]:
    """Seconds, peak memory rise (MiB) and the result of one call."""
    gc.collect()
    _release_free_heap()
    if probe == "vmhwm":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if probe == "vmhwm" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, max(peak - before, 0) / 1024, out


def episode(shot: int, nodes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(WAY * shot, nodes, DIM, generator=g)
    query = torch.randn(WAY * QUERY, nodes, DIM, generator=g)
    return support, torch.arange(WAY).repeat_interleave(shot), query


def run(names: List[str], shots: List[int], node_counts: List[int], reps: int,
        seed: int) -> Tuple[List[dict], str]:
    """Table rows (one per matcher and case) and the memory probe used."""
    probe, rows = _setup_memory_probe(), []
    for nodes in node_counts:
        for shot in shots:
            support, labels, query = episode(shot, nodes, seed)
            for name in names:
                matcher, naive = ENTRIES[name]
                ours_fn = lambda: matcher(support, labels, query)  # noqa: E731
                naive_fn = lambda: naive(support, labels, query, WAY)  # noqa: E731
                times: Dict[str, list] = {"ours": [], "naive": []}
                peaks: Dict[str, list] = {"ours": [], "naive": []}
                with torch.no_grad():
                    ours_out, naive_out = ours_fn(), naive_fn()  # warm-up (lazy imports, first-touch)
                    for rep in range(reps):  # alternate which goes first
                        pairs = (("ours", ours_fn), ("naive", naive_fn))
                        for label, fn in pairs if rep % 2 == 0 else pairs[::-1]:
                            seconds, peak, _ = measured_call(fn, probe)
                            times[label].append(seconds)
                            peaks[label].append(peak)
                ours_s, naive_s = statistics.median(times["ours"]), statistics.median(times["naive"])
                rows.append({"matcher": name, "shot": shot, "nodes": nodes, "ours_ms": 1000 * ours_s,
                             "naive_ms": 1000 * naive_s, "ratio": naive_s / ours_s,
                             "ours_mib": statistics.median(peaks["ours"]),
                             "naive_mib": statistics.median(peaks["naive"]),
                             "diff": float((ours_out.float() - naive_out.float()).abs().max())})
                print(f"  done: {name}, {shot}-shot, {nodes} nodes", file=sys.stderr, flush=True)
    return rows, probe


def markdown(rows: List[dict]) -> str:
    lines = ["| matcher | shot | nodes | ours ms | naive ms | naive/ours | ours peak MiB | naive peak MiB "
             "| max abs logit diff |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['matcher']} | {r['shot']} | {r['nodes']} | {r['ours_ms']:.1f} | {r['naive_ms']:.1f} "
                     f"| {r['ratio']:.1f}x | {r['ours_mib']:.0f} | {r['naive_mib']:.0f} | {r['diff']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed repetition (default 5)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per matcher and case")
    parser.add_argument("--matchers", nargs="+", choices=list(ENTRIES), default=list(ENTRIES), metavar="NAME",
                        help=f"subset of: {', '.join(ENTRIES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", default="1,5", help="comma-separated shots (default 1,5)")
    parser.add_argument("--nodes", default="196,49", help="comma-separated node counts (default 196,49)")
    parser.add_argument("--smoke", action="store_true", help="seconds: 16 nodes, 1-shot, one repetition")
    parser.add_argument("--out", default=None, help="also write the output (with its provenance header) to this file")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.smoke:
        args.shots, args.nodes, args.reps = "1", "16", 1
    reps = args.reps or (1 if args.quick else 5)
    if reps < 1:
        parser.error(f"--reps must be >= 1, got {reps}")
    shots, nodes = [int(v) for v in args.shots.split(",") if v], [int(v) for v in args.nodes.split(",") if v]
    header = _results.text_header([_results.provenance(__file__, argv)])
    rows, probe = run(args.matchers, shots, nodes, reps, args.seed)
    memory = ("peak RSS rise during the call (VmHWM reset via /proc/self/clear_refs, minus VmRSS before)"
              if probe == "vmhwm" else "resource.getrusage max-RSS delta (lifetime peak: later calls may show 0)")
    text = (f"\n{WAY}-way, {QUERY} queries per class, dim {DIM}; median of {reps} interleaved repetition(s) per cell; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
            f"{platform.processor() or platform.machine()}; memory: {memory}.\n\n" + markdown(rows))
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(header) + "\n" + text + "\n")


if __name__ == "__main__":
    main()
