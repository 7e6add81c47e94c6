"""Where a ViG training step's time goes: the shipped recipe's step taken apart, beside Conv-4's.

One training step of ``vig_small_c4_28`` + DN4 (the shipped recipe: 20-way 5-shot, 5 queries per
class, 28x28, one thread): ``EpisodicModel`` forward (uint8 -> float, stem, position embedding, 4
Grapher + FFN blocks, final LayerNorm, DN4), cross-entropy, backward, Adam step. Measured on a
fixed random uint8 episode with an untrained seeded model (the cost does not depend on the values):

* **components**: each part of the step run alone, forward + backward (backward with a fixed
  random output gradient), on the inputs it receives in the real step (captured from one forward):
  the stem (with the input conversion and the position embedding); per block, ``fc_in`` (1x1 conv +
  norm), the k-NN graph (forward only: it is not differentiated), the max-relative aggregation
  (gather of the neighbours, max, minus the node), the rest of the graph convolution (interleave,
  grouped 1x1 conv, norm, GELU), ``fc_out`` + residual, the FFN; the final norm; DN4 with the loss;
  the Adam step. Their sum is compared with the whole step;
* **whole step**: ViG + DN4, and Conv-4 + prototype (the Conv-4 recipe) and Conv-4 + DN4 on the same
  episode, so the ratio ``ViG step / Conv-4 step`` is measured side by side;
* **ops**: ``torch.profiler``'s table of the whole ViG step (self CPU time per op, top ``--ops``).

Every configuration runs in turn within each round (``--rounds``); times are the thread's CPU
time (medians), so other jobs on a shared machine cost wall time but not these figures; the load
average is recorded. glibc's malloc is set as ``fewshot train`` sets it (``fewshot._malloc``). Writes ``--out`` (Markdown) and the JSON beside it.

Usage:
    python benchmarks/vig_step_profile.py --threads 1
    python benchmarks/vig_step_profile.py --smoke --out /tmp/vsp/vig_step_profile.md   # seconds
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _results  # noqa: E402
from fewshot._malloc import tune_malloc  # noqa: E402
from fewshot.model import EpisodicModel, to_input  # noqa: E402
from matchers import DN4Matcher, PrototypeMatcher  # noqa: E402
from models import create_backbone, knn_graph  # noqa: E402
from models.vig import max_relative  # noqa: E402


def build(name: str, matcher, seed: int = 0) -> EpisodicModel:
    torch.manual_seed(seed)
    backbone = create_backbone(name, img_size=28, in_chans=1)
    if getattr(backbone, "memory_format", None) is not None:  # as fewshot.model.build_model does
        backbone = backbone.to(memory_format=backbone.memory_format)
    return EpisodicModel(backbone, matcher).train()


class Step:
    """A whole training step (forward, cross-entropy, backward, Adam) of a model on one episode."""

    def __init__(self, model, episode):
        self.model, self.episode = model, episode
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def __call__(self):
        support, support_labels, query, query_labels = self.episode
        loss = F.cross_entropy(self.model(support, support_labels, query), query_labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def fwd_bwd(fn: Callable, *inputs: torch.Tensor) -> Callable[[], None]:
    """Forward of ``fn`` on fresh leaves copied from ``inputs``, backward with a fixed random gradient."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)

    def run():
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(grad)
    return run


def components(model: EpisodicModel, episode):
    """Closures that run each part of the ViG step alone on the inputs it gets in the step, and closures
    for the alternatives the code replaced (stem in the contiguous layout, max-relative by indexing)."""
    backbone = model.backbone
    support, support_labels, query, query_labels = episode
    images = torch.cat([support, query])
    captured: Dict[str, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(backbone.blocks):
        hooks.append(block.grapher.register_forward_pre_hook(
            lambda m, args, i=i: captured.__setitem__(f"grapher{i}", args[0].detach())))
        hooks.append(block.ffn.register_forward_pre_hook(
            lambda m, args, i=i: captured.__setitem__(f"ffn{i}", args[0].detach())))
    hooks.append(backbone.norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("norm", args[0].detach())))
    with torch.no_grad():
        model(support, support_labels, query)
    for h in hooks:
        h.remove()

    def stem(x):
        return backbone._pos_embed(backbone.stem(to_input(x)))

    parts = {"stem (input conversion, convs, position embedding)": _stem_run(stem, images)}
    contiguous = copy.deepcopy(backbone).to(memory_format=torch.contiguous_format)
    compare = {"stem, contiguous layout": _stem_run(
        lambda x: contiguous._pos_embed(contiguous.stem(to_input(x))), images)}
    for i, block in enumerate(backbone.blocks):
        g = block.grapher
        x = captured[f"grapher{i}"]
        with torch.no_grad():
            h = g.fc_in(x)
            nbrs = knn_graph(h, g.num_knn, g.dilation)
            rel = max_relative(h, nbrs)
            y = g.graph_conv.act(g.graph_conv.norm(g.graph_conv.conv(torch.stack([h, rel], -1).flatten(2))))
        parts[f"block {i}: fc_in (1x1 conv + norm)"] = fwd_bwd(g.fc_in, x)
        parts[f"block {i}: k-NN graph (forward)"] = lambda h=h, g=g: knn_graph(h, g.num_knn, g.dilation)
        parts[f"block {i}: max-relative (gather, max, minus node)"] = fwd_bwd(lambda a, n=nbrs: max_relative(a, n), h)
        compare[f"block {i}: max-relative by indexing and max(dim)"] = fwd_bwd(
            lambda a, n=nbrs: a[torch.arange(a.shape[0])[:, None, None], n].max(dim=2).values - a, h)
        gc = g.graph_conv
        parts[f"block {i}: graph conv rest (interleave, grouped conv, norm, GELU)"] = fwd_bwd(
            lambda a, b, gc=gc: gc.act(gc.norm(gc.conv(torch.stack([a, b], -1).flatten(2)))), h, rel)
        parts[f"block {i}: fc_out + residual"] = fwd_bwd(lambda a, r, g=g: r + g.drop_path(g.fc_out(a)), y, x)
        parts[f"block {i}: FFN"] = fwd_bwd(block.ffn, captured[f"ffn{i}"])
    parts["final norm"] = fwd_bwd(backbone.norm, captured["norm"])
    with torch.no_grad():
        feats = model.embed(images)
    n = support.shape[0]
    parts["DN4 + cross-entropy"] = fwd_bwd(
        lambda s, q: F.cross_entropy(model.matcher(s, support_labels, q), query_labels), feats[:n], feats[n:])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    parts["Adam step"] = opt.step
    return parts, compare


def _stem_run(stem, images):
    out = stem(images)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))

    def run():
        stem(images).backward(grad)
    return run


def timed(fns: Dict[str, Callable], rounds: int) -> Dict[str, List[float]]:
    """Thread CPU seconds of each closure per round, the closures interleaved (one warm-up call each)."""
    for fn in fns.values():
        fn()
    out: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            t = time.thread_time()
            fn()
            out[name].append(time.thread_time() - t)
        print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return out


def step_gflop(step: Step) -> float:
    """GFLOP of one step's matrix products and convolutions, forward and backward (``FlopCounterMode``;
    elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def op_table(step: Step, steps: int, top: int) -> List[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps, "share": e.self_cpu_time_total / total,
             "calls_per_step": e.count / steps} for e in rows[:top]]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--way", type=int, default=20)
    p.add_argument("--shot", type=int, default=5)
    p.add_argument("--query", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ops", type=int, default=25, help="rows of the op table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="Markdown (default benchmarks/results/vig_step_profile.md; --smoke: a "
                                               "temporary folder); the JSON goes beside it")
    p.add_argument("--smoke", action="store_true", help="seconds: 3-way 1-shot 1-query, 1 round")
    args = p.parse_args(argv)
    if args.smoke:
        args.way, args.shot, args.query, args.rounds, args.ops = 3, 1, 1, 1, 5
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="vig_step_profile-")) / "vig_step_profile.md"
                                           if args.smoke else REPO / "benchmarks/results/vig_step_profile.md")
    torch.set_num_threads(args.threads)
    tune_malloc()  # as fewshot train runs (training.start_process): no page faults of reused activations
    run = _results.provenance(__file__, argv, checkpoint=None, outputs=[out, out.with_suffix(".json")])
    run["threads"] = args.threads
    load_start = os.getloadavg()[0]
    g = torch.Generator().manual_seed(0)
    way, shot, query = args.way, args.shot, args.query
    episode = (torch.randint(0, 256, (way * shot, 1, 28, 28), dtype=torch.uint8, generator=g),
               torch.arange(way).repeat_interleave(shot),
               torch.randint(0, 256, (way * query, 1, 28, 28), dtype=torch.uint8, generator=g),
               torch.arange(way).repeat_interleave(query))
    vig = build("vig_small_c4_28", DN4Matcher(k=3))
    steps = {"ViG + DN4 step": Step(vig, episode),
             "Conv-4 + prototype step": Step(build("conv4", PrototypeMatcher()), episode),
             "Conv-4 + DN4 step": Step(build("conv4", DN4Matcher(k=1)), episode)}
    parts, compare = components(build("vig_small_c4_28", DN4Matcher(k=3)), episode)
    times = timed({**steps, **parts, **compare}, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    vig_step = med["ViG + DN4 step"]

    def per_round_ratio(a, b):
        vals = [x / y for x, y in zip(times[a], times[b])]
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    ratios = {"ViG + DN4 / Conv-4 + prototype": per_round_ratio("ViG + DN4 step", "Conv-4 + prototype step"),
              "ViG + DN4 / Conv-4 + DN4": per_round_ratio("ViG + DN4 step", "Conv-4 + DN4 step")}
    groups: Dict[str, float] = {}
    for name in parts:
        key = name.split(": ", 1)[1] if name.startswith("block ") else name
        groups[key] = groups.get(key, 0.0) + med[name]
    ops = op_table(steps["ViG + DN4 step"], 2 if not args.smoke else 1, args.ops)
    gflop = {name: step_gflop(step) for name, step in steps.items()}
    rows = [{"part": k, "cpu_s": v, "share_of_step": v / vig_step} for k, v in groups.items()]
    extra = {"episode": {"way": way, "shot": shot, "query": query, "images": way * (shot + query), "img_size": 28},
             "load_average": [load_start, os.getloadavg()[0]], "steps_cpu_s": {k: med[k] for k in steps},
             "steps_gflop": gflop,
             "ratios": ratios, "components_cpu_s": {k: med[k] for k in parts}, "components_sum_cpu_s": sum(groups.values()),
             "alternatives": alternatives(med, parts, compare),
             "times_per_round": times, "ops": ops}
    _results.write_json(out.with_suffix(".json"), [run], rows, **extra)
    out.write_text("\n".join(markdown(run, args, rows, extra)) + "\n")
    print(out.read_text())


def alternatives(med: Dict[str, float], parts, compare) -> List[dict]:
    """The replaced code against what the step runs now: the stem's layouts, and max-relative summed over
    the blocks."""
    stem = next(k for k in parts if k.startswith("stem"))
    now_rel = sum(med[k] for k in parts if "max-relative" in k)
    old_rel = sum(med[k] for k in compare if "max-relative" in k)
    return [{"part": "stem", "now": "channels-last (VisionGNN.memory_format)", "now_cpu_s": med[stem],
             "before": "contiguous", "before_cpu_s": med["stem, contiguous layout"]},
            {"part": "max-relative, all blocks", "now": "models.layers.neighbour_max", "now_cpu_s": now_rel,
             "before": "indexing [B, N, k, D] + max(dim)", "before_cpu_s": old_rel}]


def markdown(run, args, rows, extra) -> List[str]:
    e = extra["episode"]
    steps = extra["steps_cpu_s"]
    lines = _results.markdown_header("Where the ViG training step's time goes", [run])
    lines += [f"Episode: {e['way']}-way {e['shot']}-shot {e['query']}-query ({e['images']} images, {e['img_size']}x"
              f"{e['img_size']}, random uint8), untrained seeded models, {args.threads} thread(s); thread CPU time, "
              f"median of {args.rounds} interleaved rounds. Load average {extra['load_average'][0]:.1f} at the start "
              f"and {extra['load_average'][1]:.1f} at the end on {os.cpu_count()} CPUs.", "",
              "| whole step | CPU s | GFLOP (products and convolutions, fwd + bwd) | GFLOP/s |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {extra['steps_gflop'][k]:.1f} | {extra['steps_gflop'][k] / v:.1f} |"
              for k, v in steps.items()]
    flop_ratio = extra["steps_gflop"]["ViG + DN4 step"] / extra["steps_gflop"]["Conv-4 + prototype step"]
    lines += ["", f"The ViG + DN4 step does {flop_ratio:.1f}x the matrix-product and convolution FLOPs of the Conv-4 + "
                  "prototype step: at equal FLOP rates its time would be that multiple of Conv-4's."]
    lines += ["", "| ratio (per round) | median | min | max |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['median']:.2f}x | {v['min']:.2f}x | {v['max']:.2f}x |" for k, v in extra["ratios"].items()]
    lines += ["", "ViG + DN4 step taken apart (each part alone, forward + backward; blocks summed over the 4 blocks):",
              "", "| part | CPU s | share of the step |", "|---|---:|---:|"]
    lines += [f"| {r['part']} | {r['cpu_s']:.3f} | {100 * r['share_of_step']:.1f}% |" for r in rows]
    lines += [f"| sum of the parts | {extra['components_sum_cpu_s']:.3f} | "
              f"{100 * extra['components_sum_cpu_s'] / steps['ViG + DN4 step']:.1f}% |", "",
              "What two parts cost before (same rounds, forward + backward):", "",
              "| part | now | CPU s | before | CPU s | speed-up |", "|---|---|---:|---|---:|---:|"]
    lines += [f"| {a['part']} | {a['now']} | {a['now_cpu_s']:.3f} | {a['before']} | {a['before_cpu_s']:.3f} | "
              f"{a['before_cpu_s'] / a['now_cpu_s']:.2f}x |" for a in extra["alternatives"]]
    lines += ["", f"torch.profiler, the ViG + DN4 step, top {len(extra['ops'])} ops by self CPU time:", "",
              "| op | self CPU ms / step | share | calls / step |", "|---|---:|---:|---:|"]
    lines += [f"| `{o['op']}` | {o['self_cpu_ms_per_step']:.1f} | {100 * o['share']:.1f}% | {o['calls_per_step']:.0f} |"
              for o in extra["ops"]]
    return lines


if __name__ == "__main__":
    main()
