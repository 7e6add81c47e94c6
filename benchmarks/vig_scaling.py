"""ViG backbone cost against image size (node count), with Conv-4 at the same sizes.

For every image size S (``--sizes``, default 28, 56, 84) two backbones are built the way
``fewshot train --backbone NAME --img-size S`` builds them (``fewshot.model.build_model`` calls
``models.create_backbone(NAME, img_size=S, in_chans=C)`` and puts it in the backbone's preferred
``memory_format``, channels-last for both):

* ``vig_small_28``: D 96, 4 blocks with k = 9, 12, 15, 18 neighbours; its stem has stride 4, so
  the graph has N = ceil(S/4)^2 nodes (49, 196, 441), every one of which is ranked against every
  other to build each block's k-NN graph (``models.knn_graph``: an ``[N, N]`` distance matrix
  and a top-k per image, O(N^2)); the rest of the block is O(N).
* ``conv4``: four conv-BN-ReLU-pool blocks, O(pixels); its final grid is (S//16)^2 cells.

Each is wrapped as ``EpisodicModel(backbone, PrototypeMatcher())`` and measured on 1-channel
(omniglot-like) random uint8 images of the right shape (the cost does not depend on the pixel
values; ``to_input`` converts them inside the model as in training):

* train s/episode: forward + cross-entropy + backward + Adam step (lr 1e-3) of one 5-way 1-shot
  15-query episode (80 images), thread CPU seconds (other jobs on a shared machine cost wall time,
  not these figures), median of ``--episodes`` timed episodes after one warm-up; the
  configurations are interleaved (one episode of each in turn) so machine noise hits all alike, and
  the ViG / Conv-4 ratio at each size is the median of the per-round ratios. glibc's malloc is set
  as ``fewshot train`` sets it (``fewshot._malloc.tune_malloc``);
* k-NN s/episode: the forward k-NN graph construction alone (``models.knn_graph`` for each
  block's k on ``[80, N, 96]`` features), the part that is O(N^2);
* eval s/image: ``model.embed`` of a batch of ``--eval-batch`` images in eval mode under
  ``torch.inference_mode`` (the batch size ``fewshot.evaluation`` embeds with), median of
  ``--eval-reps`` batches, divided by the batch size.

The growth is summarised by least-squares slopes in log-log space against N (for Conv-4 the x
value is the same N at that size, i.e. proportional to the pixel count): a slope of 1 is linear
in pixels, 2 quadratic. Writes ``vig_scaling.json`` and ``vig_scaling.png`` (seconds per training
episode against N, log-log, fitted slopes) into ``--out-dir`` and prints a Markdown table.

The JSON records the command, commit, date and machine (``provenance``, from
``benchmarks/_results.py``) beside the results, so the file is the script's whole output.

Usage:
    python benchmarks/vig_scaling.py --smoke --out-dir /tmp/vs   # seconds: sizes 28, 32, 1 episode, batches of 8
    python benchmarks/vig_scaling.py --quick                # 2 training episodes, 1 eval batch per size
    python benchmarks/vig_scaling.py --episodes 10 --sizes 28,56,84,112
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

import _results  # noqa: E402

from fewshot._malloc import tune_malloc  # noqa: E402
from fewshot.model import EpisodicModel, count_parameters  # noqa: E402
from fewshot.plots import _save  # noqa: E402
from matchers import PrototypeMatcher  # noqa: E402
from models import create_backbone, knn_graph  # noqa: E402

WAY, SHOT, QUERY, IN_CHANS, LR = 5, 1, 15, 1, 1e-3
BACKBONES = ("vig_small_28", "conv4")


def cpu_model() -> str:
    """The ``Model name`` line of ``lscpu``."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "unknown")


class Case:
    """One backbone at one image size: the model, its optimiser and a fixed random episode."""

    def __init__(self, name: str, size: int, seed: int = 0):
        torch.manual_seed(seed)
        backbone = create_backbone(name, img_size=size, in_chans=IN_CHANS)
        if getattr(backbone, "memory_format", None) is not None:  # as fewshot.model.build_model does for training
            backbone = backbone.to(memory_format=backbone.memory_format)
        self.name, self.size = name, size
        self.model = EpisodicModel(backbone, PrototypeMatcher())
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.nodes = backbone.grid_size[0] * backbone.grid_size[1]  # nodes after the stem (ViG) / final cells (Conv-4)
        self.knn = list(getattr(backbone, "knn_per_block", []))
        self.params = count_parameters(self.model)["trainable"]
        g = torch.Generator().manual_seed(seed)
        self.support = torch.randint(0, 256, (WAY * SHOT, IN_CHANS, size, size), dtype=torch.uint8, generator=g)
        self.query = torch.randint(0, 256, (WAY * QUERY, IN_CHANS, size, size), dtype=torch.uint8, generator=g)
        self.support_labels = torch.arange(WAY).repeat_interleave(SHOT)
        self.query_labels = torch.arange(WAY).repeat_interleave(QUERY)
        self.train_s: List[float] = []
        self.knn_s: List[float] = []
        self.eval_s: List[float] = []

    def train_episode(self) -> float:
        """Thread CPU seconds of one training step on the episode."""
        self.model.train()
        t = time.thread_time()
        loss = F.cross_entropy(self.model(self.support, self.support_labels, self.query), self.query_labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.thread_time() - t

    def knn_episode(self) -> float:
        """Seconds of the forward k-NN graph construction of one episode (every block), ViG only."""
        feats = torch.randn(WAY * (SHOT + QUERY), self.nodes, self.model.backbone.embed_dim)
        t = time.thread_time()
        for k in self.knn:
            knn_graph(feats, k)
        return time.thread_time() - t

    def eval_batch(self, batch: int) -> float:
        """Seconds per image of embedding ``batch`` images in eval mode."""
        images = self.query.repeat((batch + self.query.shape[0] - 1) // self.query.shape[0], 1, 1, 1)[:batch]
        self.model.eval()
        with torch.inference_mode():
            t = time.thread_time()
            self.model.embed(images)
            return (time.thread_time() - t) / batch


def slope(xs: List[float], ys: List[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def measure(sizes: List[int], episodes: int, eval_reps: int, eval_batch: int) -> List[dict]:
    """Rows (one per backbone and size) with the medians; configurations interleaved."""
    cases = [Case(name, size) for name in BACKBONES for size in sizes]
    for c in cases:  # warm-up: first-touch allocations, oneDNN primitive creation
        c.train_episode()
        c.eval_batch(min(eval_batch, 16))
    for rep in range(episodes):
        for c in cases:
            c.train_s.append(c.train_episode())
            if c.knn:
                c.knn_s.append(c.knn_episode())
        print(f"  training episode {rep + 1}/{episodes} of every configuration done", file=sys.stderr, flush=True)
    for _ in range(eval_reps):
        for c in cases:
            c.eval_s.append(c.eval_batch(eval_batch))
    rows = []
    for c in cases:
        rows.append({"backbone": c.name, "img_size": c.size, "nodes": c.nodes, "vig_nodes": math.ceil(c.size / 4) ** 2,
                     "knn_per_block": c.knn, "params": c.params, "train_s_per_episode": statistics.median(c.train_s),
                     "train_s_all": c.train_s, "knn_s_per_episode": statistics.median(c.knn_s) if c.knn_s else None,
                     "eval_s_per_image": statistics.median(c.eval_s), "eval_s_all": c.eval_s})
    return rows


def summarise(rows: List[dict]) -> Dict[str, dict]:
    """Per backbone: growth relative to the smallest size and log-log slopes against the ViG node count."""
    out = {}
    for name in BACKBONES:
        rs = sorted((r for r in rows if r["backbone"] == name), key=lambda r: r["img_size"])
        base = rs[0]
        for r in rs:
            r["train_growth"] = r["train_s_per_episode"] / base["train_s_per_episode"]
            r["eval_growth"] = r["eval_s_per_image"] / base["eval_s_per_image"]
        s = {}
        if len(rs) > 1:
            xs = [r["vig_nodes"] for r in rs]
            s = {"train_slope": slope(xs, [r["train_s_per_episode"] for r in rs]),
                 "eval_slope": slope(xs, [r["eval_s_per_image"] for r in rs])}
            if rs[0]["knn_s_per_episode"] is not None:
                s["knn_slope"] = slope(xs, [r["knn_s_per_episode"] for r in rs])
        out[name] = s
    return out


def train_ratios(rows: List[dict]) -> Dict[int, dict]:
    """Per image size: ViG's training step over Conv-4's, round by round (the two ran in the same round)."""
    out = {}
    for vig in (r for r in rows if r["backbone"] == BACKBONES[0]):
        conv = next((r for r in rows if r["backbone"] == BACKBONES[1] and r["img_size"] == vig["img_size"]), None)
        if conv is not None:
            vals = [a / b for a, b in zip(vig["train_s_all"], conv["train_s_all"])]
            out[vig["img_size"]] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def markdown(rows: List[dict], slopes: Dict[str, dict]) -> str:
    lines = ["| backbone | img size | nodes | k per block | params | train s/episode | x vs smallest | "
             "k-NN graph s/episode (fwd) | eval ms/image | x vs smallest |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        knn = "-" if r["knn_s_per_episode"] is None else f"{r['knn_s_per_episode']:.4f}"
        lines.append(f"| {r['backbone']} | {r['img_size']} | {r['nodes']} | {','.join(map(str, r['knn_per_block'])) or '-'} "
                     f"| {r['params']:,} | {r['train_s_per_episode']:.3f} | {r['train_growth']:.1f}x | {knn} "
                     f"| {1000 * r['eval_s_per_image']:.3f} | {r['eval_growth']:.1f}x |")
    ratios = train_ratios(rows)
    if ratios:
        lines += ["", "| img size | ViG / Conv-4 train step (median of the per-round ratios) | min | max |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {size} | {r['median']:.2f}x | {r['min']:.2f}x | {r['max']:.2f}x |" for size, r in ratios.items()]
    lines += ["", "| backbone | log-log slope vs N: train | eval | k-NN graph |", "|---|---:|---:|---:|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for name, s in slopes.items():
        lines.append(f"| {name} | {fmt(s.get('train_slope'))} | {fmt(s.get('eval_slope'))} | {fmt(s.get('knn_slope'))} |")
    return "\n".join(lines)


def plot(rows: List[dict], slopes: Dict[str, dict], out: Path, title: str) -> Path:
    """Log-log seconds per training episode against the ViG node count, with the fitted slopes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    series = [("vig_small_28", "train_s_per_episode", "ViG train step", "o-", "train_slope"),
              ("vig_small_28", "knn_s_per_episode", "ViG k-NN graphs (fwd)", "s--", "knn_slope"),
              ("conv4", "train_s_per_episode", "Conv-4 train step", "^-", "train_slope")]
    for name, key, label, style, slope_key in series:
        rs = sorted((r for r in rows if r["backbone"] == name and r[key] is not None), key=lambda r: r["vig_nodes"])
        if not rs:
            continue
        s = slopes[name].get(slope_key)
        ax.plot([r["vig_nodes"] for r in rs], [r[key] for r in rs], style,
                label=label + ("" if s is None else f" (slope {s:.2f})"))
        for r in rs:
            if name == "vig_small_28" and key == "train_s_per_episode":
                ax.annotate(f"{r['img_size']}px", (r["vig_nodes"], r[key]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
    xs = sorted({r["vig_nodes"] for r in rows})
    first = min((r for r in rows if r["backbone"] == "vig_small_28"), key=lambda r: r["vig_nodes"], default=None)
    if first is not None and len(xs) > 1:  # guides through ViG's first point: linear and quadratic in N
        for power, dash in ((1, ":"), (2, "-.")):
            ax.plot(xs, [first["train_s_per_episode"] * (x / xs[0]) ** power for x in xs], dash, color="grey",
                    linewidth=0.8, label=f"slope {power} guide")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("ViG nodes N = (S/4)^2 (proportional to pixels)")
    ax.set_ylabel("seconds per 5-way 1-shot episode")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=8)
    return _save(fig, out)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="28,56,84", help="comma-separated image sizes (default 28,56,84)")
    ap.add_argument("--episodes", type=int, default=5, help="timed training episodes per configuration (default 5)")
    ap.add_argument("--eval-reps", type=int, default=3, help="timed eval batches per configuration (default 3)")
    ap.add_argument("--eval-batch", type=int, default=256, help="images per eval batch (default 256)")
    ap.add_argument("--quick", action="store_true", help="2 training episodes and 1 eval batch per configuration")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out-dir", default=None,
                    help="where vig_scaling.json and vig_scaling.png go (default benchmarks/results; "
                         "--smoke: a temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="seconds: sizes 28 and 32, 1 episode, 1 eval batch of 8")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.episodes, args.eval_reps, args.eval_batch = "28,32", 1, 1, 8
    if args.out_dir is None:
        args.out_dir = tempfile.mkdtemp(prefix="vig_scaling-") if args.smoke else str(ROOT / "benchmarks" / "results")
    provenance = _results.provenance(__file__, argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s})
    episodes, eval_reps = (2, 1) if args.quick else (args.episodes, args.eval_reps)
    if min(sizes) < 16 or min(episodes, eval_reps, args.eval_batch, args.threads) < 1:
        ap.error("sizes must be >= 16 (Conv-4 halves the image 4 times); counts must be >= 1")
    torch.set_num_threads(args.threads)
    tune_malloc()  # as fewshot train runs (training.start_process): no page faults of reused activations
    machine = {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "load_average_at_start": os.getloadavg()}
    print(f"CPU: {machine['cpu']} ({machine['cpus']} CPUs), torch {torch.__version__}, {args.threads} thread(s), "
          f"load average {machine['load_average_at_start']}", file=sys.stderr, flush=True)
    rows = measure(sizes, episodes, eval_reps, args.eval_batch)
    slopes = summarise(rows)
    table = markdown(rows, slopes)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = (f"{WAY}-way {SHOT}-shot {QUERY}q, {machine['cpu']}, {args.threads} thread(s), "
             f"median of {episodes} episodes")
    png = plot(rows, slopes, out_dir / "vig_scaling.png", title)
    result = {"provenance": provenance, "machine": machine, "episode": {"way": WAY, "shot": SHOT, "query": QUERY, "in_chans": IN_CHANS},
              "train_ratio_vig_over_conv4": {str(k): v for k, v in train_ratios(rows).items()},
              "episodes": episodes, "eval_reps": eval_reps, "eval_batch": args.eval_batch,
              "load_average_at_end": os.getloadavg(), "rows": rows, "slopes": slopes, "markdown": table}
    (out_dir / "vig_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{title}; torch {torch.__version__}; written to {out_dir / 'vig_scaling.json'} and {png}\n")
    print(table)


if __name__ == "__main__":
    main()
