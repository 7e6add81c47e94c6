"""DN4 bank scoring against its compute floor, side by side in one run.

Scoring a bank with DN4 is dominated by its node-to-node cosine similarities: for a 20-way 1-shot
episode with 15 queries per class, 300 x 49 query nodes against 20 x 49 support nodes in 96
dimensions, ``2 * 14,700 * 980 * 96`` = 2.8 GFLOP. This script measures, on the same episodes of
one bank, with an untrained seeded ``vig_small_c4_28`` (accuracy does not matter for speed):

* **ours**: ``DN4Matcher.bank_scorer`` (what ``fewshot.evaluation.evaluate`` calls): every image's
  nodes normalised once, episodes gathered by index, similarities by batched matrix products in
  cache-sized blocks, each block reduced to per-class top-k sums at once (``matchers/class_topk.py``);
* **matmuls alone**: the same matrix products, same shapes and blocks, into a reused buffer and
  nothing else (no gather, no top-k): the floor at the rate these shapes reach;
* **GEMM-rate floor**: the episodes' FLOPs divided by the machine's GEMM rate, measured in the same
  rounds on a square ``--gemm-size`` float32 product;
* **reference**: the straightforward way (the matcher before this change): per episode, cosine
  similarities ``[Q, M, S*N]`` then ``torch.topk`` per query node and class, on ``--reference-episodes``.

The configurations alternate round by round (``--rounds`` slices of the bank, each measured by every
configuration in turn) so machine load hits all alike; ratios are medians of the per-round ratios.
Both wall time and the thread's CPU time are recorded (on a shared machine the CPU time is what
the work cost; the wall time is what a user waited); the load average and the CPU share
(CPU / wall) say how loaded the machine was. Then, once each, as a user runs it:
``evaluate(model, images, bank)`` end to end (embedding every distinct image once, then scoring),
and the same for Conv-4 with the prototype matcher. Before timing, ours is checked against a loop
written from the paper's definition in float64 on small episodes (``allclose``) and against the
reference in float32 on the timed episodes (largest difference, argmax disagreements).

Writes ``--out`` (Markdown) and the JSON beside it under a provenance header.

Usage:
    python benchmarks/dn4_scoring.py --data-root ../shared/data/omniglot --threads 1
    python benchmarks/dn4_scoring.py --smoke --out /tmp/dn4/dn4_scoring.md     # seconds, random images
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # after the repository: benchmarks/ holds scripts named
# like our packages (matchers.py, prompts.py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _results  # noqa: E402
from episodes import EpisodeSampler, ImageSet, load_splits  # noqa: E402
from fewshot.evaluation import _embed_all, evaluate  # noqa: E402
from fewshot.model import EpisodicModel  # noqa: E402
from matchers import DN4Matcher, PrototypeMatcher  # noqa: E402
from matchers.class_topk import _rows_per_block, class_minor  # noqa: E402
from matchers.patch_metrics import node_cosine  # noqa: E402
from models import create_backbone  # noqa: E402


def reference_logits(support: torch.Tensor, query: torch.Tensor, way: int, k: int) -> torch.Tensor:
    """The straightforward DN4 of one episode (support grouped by class, equal shots): ``[Q, way]``."""
    scores = []
    for part in torch.split(query, max(1, (1 << 22) // (query.shape[1] * support.shape[0] * support.shape[1]))):
        sim = node_cosine(part, support)  # [q, M, S*N]
        scores.append(sim.unflatten(-1, (way, -1)).topk(k, dim=-1).values.sum(-1).sum(1))
    return torch.cat(scores)


def loop_reference(support, labels, query, k):
    """DN4 from its definition, loops only (float64): sum over query nodes of the k largest cosines
    with the nodes of each class's support images."""
    way = int(labels.max()) + 1
    out = torch.zeros(query.shape[0], way, dtype=torch.float64)
    for c in range(way):
        nodes = torch.cat([support[s] for s in range(len(labels)) if int(labels[s]) == c])
        for q in range(query.shape[0]):
            for m in range(query.shape[1]):
                sims = F.cosine_similarity(query[q, m][None], nodes, dim=-1)
                out[q, c] += sims.sort(descending=True).values[:k].sum()
    return out


def check_float64(k: int) -> float:
    """Largest |ours - loop reference| over small float64 episodes (forward and bank scorer); raises if not allclose."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for way, shot, nodes, q in ((3, 2, 5, 4), (5, 1, 7, 3), (4, 3, 6, 2)):
        feats = torch.randn(way * (shot + q), nodes, 8, generator=g, dtype=torch.float64)
        support, query = feats[:way * shot], feats[way * shot:]
        labels = torch.arange(way).repeat_interleave(shot)
        ref = loop_reference(support, labels, query, k)
        ours = DN4Matcher(k=k)(support, labels, query)
        bank = DN4Matcher(k=k).bank_scorer(feats)(torch.arange(way * shot)[None], torch.arange(way * shot, len(feats))[None], way)[0]
        for got in (ours, bank):
            if not torch.allclose(got, ref, rtol=1e-12, atol=1e-12):
                raise SystemExit(f"error: DN4 differs from the loop reference by {float((got - ref).abs().max()):.3g}")
            worst = max(worst, float((got - ref).abs().max()))
    return worst


class Timer:
    """Wall and thread-CPU seconds of a block, added to a named pair of lists."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def __call__(self, name, fn):
        w, c = time.perf_counter(), time.thread_time()
        out = fn()
        self.wall.setdefault(name, []).append(time.perf_counter() - w)
        self.cpu.setdefault(name, []).append(time.thread_time() - c)
        return out


def matmuls_alone(support_nodes: list, query_nodes: list, nodes: int) -> None:
    """The similarity products of the episodes (pre-gathered, class-minor) in ours' blocks, nothing else."""
    for s, q in zip(support_nodes, query_nodes):
        rows = _rows_per_block(1, s.shape[1], nodes, q.shape[1])
        buf = q.new_empty(1, s.shape[1], rows)
        for start in range(0, q.shape[1], rows):
            block = q[:, start:start + rows]
            torch.bmm(s, block.transpose(1, 2), out=buf[..., :block.shape[1]] if block.shape[1] == rows else None)


def gemm_rate(size: int) -> float:
    """GFLOP/s of one ``size``-square float32 product (after one warm-up product of the same size)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    c = torch.empty(size, size)
    torch.mm(a, b, out=c)
    t = time.thread_time()
    torch.mm(a, b, out=c)
    return 2 * size ** 3 / max(time.thread_time() - t, 1e-9) / 1e9


def load_images(args) -> ImageSet:
    if args.data_root:
        return load_splits("omniglot", args.data_root, img_size=28).test
    g = torch.Generator().manual_seed(0)
    classes, per_class = args.random_classes, 20
    images = torch.randint(0, 256, (classes * per_class, 1, 28, 28), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(classes).repeat_interleave(per_class), [f"c{i}" for i in range(classes)],
                    name="random")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", help="folder with the omniglot-minimal zips (its 106 test classes); "
                                       "default: random uint8 images of the same shape")
    p.add_argument("--random-classes", type=int, default=106, help="classes of random images without --data-root")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--way", type=int, default=20)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (slices of the bank)")
    p.add_argument("--reference-episodes", type=int, default=100, help="episodes the reference scores, all rounds")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="Markdown file (default benchmarks/results/dn4_scoring.md; --smoke: "
                                               "a temporary folder); the JSON goes beside it")
    p.add_argument("--smoke", action="store_true", help="seconds: 6 random classes, 8 episodes of 5-way 1-shot 3-query")
    args = p.parse_args(argv)
    if args.smoke:
        args.data_root, args.random_classes, args.episodes, args.way, args.query = None, 6, 8, 5, 3
        args.rounds, args.reference_episodes, args.gemm_size = 2, 2, 256
    if min(args.episodes, args.rounds, args.reference_episodes, args.threads) < 1 or args.rounds > args.episodes:
        p.error("counts must be >= 1 and --rounds at most --episodes")
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="dn4_scoring-")) / "dn4_scoring.md"
                                           if args.smoke else REPO / "benchmarks/results/dn4_scoring.md")
    torch.set_num_threads(args.threads)
    run = _results.provenance(__file__, argv, checkpoint=None, outputs=[out, out.with_suffix(".json")])
    load_start = os.getloadavg()

    worst64 = check_float64(args.k)
    images = load_images(args)
    bank = EpisodeSampler(images, args.way, args.shot, args.query, seed=0).bank(args.episodes)
    torch.manual_seed(0)
    model = EpisodicModel(create_backbone("vig_small_c4_28", img_size=28, in_chans=1), DN4Matcher(k=args.k)).eval()
    ids = torch.unique(torch.cat([bank.support.flatten(), bank.query.flatten()]))
    timer = Timer()
    feats = timer("embed", lambda: _embed_all(model, images.images, ids, torch.device("cpu"), 256, False))
    where = torch.full((len(images),), -1, dtype=torch.long)
    where[ids] = torch.arange(ids.numel())
    support_rows, query_rows = where[bank.support], where[bank.query]
    nodes = feats.shape[1]
    score = model.matcher.bank_scorer(feats)
    unit = F.normalize(feats, dim=-1)
    labels = torch.arange(args.way).repeat_interleave(args.shot)

    slices = [range(r * args.episodes // args.rounds, (r + 1) * args.episodes // args.rounds) for r in range(args.rounds)]
    ref_per_round = max(1, args.reference_episodes // args.rounds)
    worst32, disagree, compared = 0.0, 0, 0
    rates = []
    with torch.inference_mode():
        for r, eps in enumerate(slices):
            sl = slice(eps.start, eps.stop)
            ours = timer("ours", lambda: score(support_rows[sl], query_rows[sl], args.way))
            pre_s = [class_minor(unit[support_rows[i]][None], args.way) for i in eps]
            pre_q = [unit[query_rows[i]].reshape(1, -1, unit.shape[-1]) for i in eps]
            timer("matmuls", lambda: matmuls_alone(pre_s, pre_q, nodes))
            del pre_s, pre_q
            ref_eps = list(eps)[:ref_per_round]
            ref = timer("reference", lambda: [reference_logits(feats[support_rows[i]], feats[query_rows[i]], args.way,
                                                               args.k) for i in ref_eps])
            rates.append(gemm_rate(args.gemm_size))
            for i, logits in zip(ref_eps, ref):
                got = ours[i - eps.start]
                worst32 = max(worst32, float((got - logits).abs().max()))
                disagree += int((got.argmax(-1) != logits.argmax(-1)).sum())
                compared += got.shape[0]
            print(f"  round {r + 1}/{args.rounds}: ours {timer.cpu['ours'][-1]:.2f} s, matmuls alone "
                  f"{timer.cpu['matmuls'][-1]:.2f} s, reference {timer.cpu['reference'][-1]:.2f} s ({len(ref_eps)} "
                  f"episodes) CPU; GEMM {rates[-1]:.1f} GFLOP/s", file=sys.stderr, flush=True)

    # as a user runs it, once each: evaluate() end to end, ViG + DN4 and Conv-4 + prototype
    model.train()
    vig_eval = timer("evaluate ViG + DN4", lambda: evaluate(model, images, bank))
    torch.manual_seed(0)
    conv4 = create_backbone("conv4", img_size=28, in_chans=1)
    conv4 = conv4.to(memory_format=conv4.memory_format) if getattr(conv4, "memory_format", None) else conv4
    c4_eval = timer("evaluate Conv-4 + prototype", lambda: evaluate(EpisodicModel(conv4, PrototypeMatcher()), images,
                                                                   bank))
    load_end = os.getloadavg()

    flop_per_episode = 2 * (args.way * args.query * nodes) * (args.way * args.shot * nodes) * feats.shape[-1]
    n = [len(s) for s in slices]
    per_round = {name: [t / k for t, k in zip(timer.cpu[name], n)] for name in ("ours", "matmuls")}
    per_round["reference"] = [t / min(ref_per_round, k) for t, k in zip(timer.cpu["reference"], n)]
    per_round["gemm floor"] = [flop_per_episode / (rate * 1e9) for rate in rates]
    med = {name: statistics.median(v) for name, v in per_round.items()}

    def ratio(a, b):
        vals = [x / y for x, y in zip(per_round[a], per_round[b])]
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    ratios = {"ours / matmuls alone": ratio("ours", "matmuls"), "ours / GEMM-rate floor": ratio("ours", "gemm floor"),
              "matmuls alone / GEMM-rate floor": ratio("matmuls", "gemm floor"),
              "reference / ours": ratio("reference", "ours")}
    share = {name: sum(timer.cpu[name]) / max(sum(timer.wall[name]), 1e-9) for name in timer.cpu}
    rows = [{"configuration": name, "cpu_s_per_episode": med[name], "bank_cpu_s": med[name] * args.episodes,
             "per_round_cpu_s_per_episode": per_round[name]} for name in ("ours", "matmuls", "gemm floor", "reference")]
    once = {name: {"wall_s": timer.wall[name][0], "cpu_s": timer.cpu[name][0]}
            for name in ("embed", "evaluate ViG + DN4", "evaluate Conv-4 + prototype")}
    run.update(threads=args.threads)
    extra = {"bank": {"episodes": args.episodes, "way": args.way, "shot": args.shot, "query": args.query, "k": args.k,
                      "images": "omniglot-minimal test split" if args.data_root else f"random uint8, {args.random_classes} classes",
                      "distinct_images": int(ids.numel()), "nodes": nodes, "dim": feats.shape[-1],
                      "gflop_per_episode": flop_per_episode / 1e9},
             "gemm_gflops_per_round": rates, "load_average": [load_start[0], load_end[0]], "ratios": ratios, "once": once,
             "cpu_share": share, "checks": {"float64_max_abs_diff_vs_loop": worst64,
                                            "float32_max_abs_diff_vs_reference": worst32,
                                            "argmax_disagreements": disagree, "queries_compared": compared},
             "accuracy": {"vig_dn4": vig_eval.mean, "conv4_prototype": c4_eval.mean}}
    _results.write_json(out.with_suffix(".json"), [run], rows, **extra)
    out.write_text("\n".join(markdown(run, args, rows, ratios, once, share, extra)) + "\n")
    print(out.read_text())


def markdown(run, args, rows, ratios, once, share, extra) -> list:
    b = extra["bank"]
    lines = _results.markdown_header("DN4 bank scoring against its compute floor", [run])
    lines += [f"Bank: {b['episodes']} episodes of {b['way']}-way {b['shot']}-shot {b['query']}-query ({b['images']}, "
              f"{b['distinct_images']} distinct images), untrained seeded `vig_small_c4_28` ({b['nodes']} nodes of "
              f"{b['dim']} features per image), DN4 k={b['k']}: {b['gflop_per_episode']:.2f} GFLOP of similarity "
              f"products per episode. {args.threads} thread(s). Load average {extra['load_average'][0]:.1f} at the "
              f"start and {extra['load_average'][1]:.1f} at the end on {os.cpu_count()} CPUs (other jobs running); "
              "the timed configurations got these shares of a core (CPU / wall): "
              + ", ".join(f"{k} {100 * v:.0f}%" for k, v in share.items()) + ".", "",
              f"Thread CPU seconds, median over {args.rounds} interleaved rounds, per episode and scaled to the bank:", "",
              "| configuration | CPU ms / episode | bank, CPU s |", "|---|---:|---:|"]
    names = {"ours": "ours (`DN4Matcher.bank_scorer`)", "matmuls": "the same matrix products alone",
             "gemm floor": "GEMM-rate floor (FLOPs / measured GEMM rate)",
             "reference": f"reference (per episode, `torch.topk`; {args.reference_episodes} episodes)"}
    for r in rows:
        lines.append(f"| {names[r['configuration']]} | {1000 * r['cpu_s_per_episode']:.1f} | {r['bank_cpu_s']:.1f} |")
    rates = extra["gemm_gflops_per_round"]
    lines += ["", f"GEMM rate ({args.gemm_size}-square float32 product, one per round): median "
                  f"{statistics.median(rates):.1f} GFLOP/s (min {min(rates):.1f}, max {max(rates):.1f}).", "",
              "| ratio (per round, CPU time) | median | min | max |", "|---|---:|---:|---:|"]
    for name, v in ratios.items():
        lines.append(f"| {name} | {v['median']:.2f}x | {v['min']:.2f}x | {v['max']:.2f}x |")
    c = extra["checks"]
    lines += ["", f"Checks: float64 against the loop written from the paper's definition, largest difference "
                  f"{c['float64_max_abs_diff_vs_loop']:.1e} (allclose); float32 against the reference on the "
                  f"{c['queries_compared']} timed queries, largest difference {c['float32_max_abs_diff_vs_reference']:.1e}, "
                  f"{c['argmax_disagreements']} argmax disagreements.", "",
              "As a user runs it, once each (`fewshot.evaluation.evaluate` on the whole bank: embed every distinct "
              "image once, then score):", "",
              "| | wall s | CPU s |", "|---|---:|---:|"]
    for name, v in once.items():
        label = "embedding the distinct images alone" if name == "embed" else name
        lines.append(f"| {label} | {v['wall_s']:.1f} | {v['cpu_s']:.1f} |")
    acc = extra["accuracy"]
    lines += ["", f"Accuracies (untrained backbones, meaningless except as a check that both ran): ViG + DN4 "
                  f"{100 * acc['vig_dn4']:.2f} %, Conv-4 + prototype {100 * acc['conv4_prototype']:.2f} %."]
    return lines


if __name__ == "__main__":
    main()
