"""Meta-learned prompt initialisation (MAML, first-order MAML) and DAM-VP cluster prompts.

For a frozen ViG backbone (``--backbone-from``, a ProtoNet run's best.pt) and one prompt family
(``--prompt``, VPT deep by default), on one dataset:

1. **init**: ``random`` (the prompt as created, no meta-training), ``fomaml`` and ``maml``
   (``prompts.meta.meta_train``: ``--meta-steps`` outer steps of ``--meta-batch`` 5-way 1-shot
   training tasks, ``--inner-steps`` inner SGD steps at ``--inner-lr`` on the support-only loss);
2. **clusters**: 1 (a single prompt) or C > 1: DAM-VP (``--prompt damvp``, C copies of the prompt,
   centroids fitted by k-means on 4096 training images' frozen features, each image routed to its
   nearest centroid), meta-trained with ``--cluster-init`` from the prompt as created
   (``--cluster-from scratch``), or (``--cluster-from single``) every cluster starting from a copy of
   the single prompt meta-trained with ``--cluster-init``, then meta-trained further per cluster with
   ``--cluster-meta`` (``metasgd``: each cluster's copy has its own learned step sizes);
3. every (init, C) is scored on the same test bank after 0, 1, 5 and 10 test-time adaptation steps
   (``--steps``): each episode clones the prompt and adapts it on its support set only, with the
   same loss and learning rate as the inner loop (``PromptedModel`` with ``meta_init``, whose own
   learner is the one meta-trained, so Meta-SGD adapts with its learned rates);
4. accuracy +- 95% CI per cell, a markdown table, a plot of accuracy against adaptation steps
   (PNG), one MLflow run per cell in one experiment (unless ``--no-track``);
5. paired differences on the same episodes (``fewshot.compare.paired_test``: difference +- 95% CI,
   t-test and Wilcoxon p) at every step count: each meta-learned initialisation against
   ``random``, and each DAM-VP C against the single prompt of ``--cluster-init``.

Everything goes to ``--out``/``--name`` (default ``benchmarks/results/meta_prompts/<dataset>``):
``results.json`` (the runs that made it, with command, commit, backbone checkpoint and its sha256,
prompt and every setting, and the rows with per-episode accuracies), ``results.md`` (that header,
the accuracy table and the paired table) and ``accuracy_vs_steps.png``, all rewritten from the
JSON. ``--append`` adds this run's rows to that JSON (a cell made again replaces the older one;
the checkpoint, dataset, prompt, temperature and seed must be the same).

Usage:
    python benchmarks/meta_prompts.py --quick        # tiny: checks the pipeline
    python benchmarks/meta_prompts.py --smoke --out /tmp/mp   # seconds: test_vig trained on glyphs
    python benchmarks/meta_prompts.py --dataset omniglot --data-root ../shared/data/omniglot \\
        --backbone-from runs/omniglot-vig-fixed-20w5s/best.pt --bank 100 --meta-steps 40
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before benchmarks/: its matchers.py is a script
sys.path.insert(1, str(Path(__file__).resolve().parent))

import _results  # noqa: E402
import matchers  # noqa: E402
import models  # noqa: E402
import prompts  # noqa: E402
from episodes import EpisodeSampler, load_splits  # noqa: E402
from fewshot.evaluation import evaluate, summarise  # noqa: E402
from fewshot.model import to_input  # noqa: E402
from fewshot.prompting import PromptedModel, freeze, load_backbone  # noqa: E402
from fewshot.tracking import make_tracker  # noqa: E402
from prompts import meta  # noqa: E402


SMOKE = {"dataset": "glyphs", "data_root": None, "backbone": "test_vig", "bank": "4", "meta_steps": 1,
         "meta_batch": 2, "steps": "0,1", "inits": "random,fomaml", "clusters": "2", "no_track": True}
"""--smoke's defaults; the backbone is a test_vig trained for a few glyphs episodes (``_results.smoke_run``)."""
SAME_FOR_APPEND = ("dataset", "backbone", "prompt", "blocks", "nodes", "temperature", "seed")


def tasks(train_set, way: int, shot: int, query: int, seed: int):
    """Endless float training tasks ``(s_img, s_lab, q_img, q_lab)`` from the project's sampler."""
    sampler = EpisodeSampler(train_set, way, shot, query, seed=seed)
    i = 0
    while True:
        ep = sampler[i]
        yield (to_input(train_set.images[ep.support]), ep.support_labels,
               to_input(train_set.images[ep.query]), ep.query_labels)
        i += 1


def build(args, backbone, clusters: int, train_set):
    """The prompt: ``args.prompt`` itself, or DAM-VP around it with centroids fitted on training images."""
    torch.manual_seed(args.seed)
    if clusters == 1:
        options = {"blocks": args.blocks, "num_nodes": args.nodes}
        accepted = prompts.accepted_options(args.prompt)
        return prompts.create(args.prompt, backbone, **{k: v for k, v in options.items() if k in accepted})
    prompt = prompts.create("damvp", backbone, blocks=args.blocks, num_nodes=args.nodes, clusters=clusters,
                            base=args.prompt)
    idx = torch.randperm(len(train_set.images), generator=torch.Generator().manual_seed(args.seed))[:4096]
    sizes = prompt.fit_clusters(backbone, to_input(train_set.images[idx]), seed=args.seed)
    print(f"  DAM-VP C={clusters}: cluster sizes {sizes.tolist()}", flush=True)
    return prompt


def plot(rows, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ways = sorted({r["way"] for r in rows})
    fig, axes = plt.subplots(1, len(ways), figsize=(6 * len(ways), 4.5), squeeze=False)
    for ax, way in zip(axes[0], ways):
        for key in dict.fromkeys((r["init"], r["clusters"]) for r in rows if r["way"] == way):
            pts = sorted((r["steps"], 100 * r["acc"], 100 * r["ci95"]) for r in rows
                         if r["way"] == way and (r["init"], r["clusters"]) == key)
            label = key[0] if key[1] == 1 else f"DAM-VP C={key[1]} ({key[0]})"
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=3, label=label)
        ax.set_xlabel("test-time adaptation steps (support set only)")
        ax.set_ylabel("accuracy % (+- 95% CI)")
        ax.set_title(f"{title}, {way}-way 1-shot", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows, runs=()) -> str:
    """The results file: header, accuracy per (way, init, clusters) against steps, paired table."""
    many = len(runs) > 1
    steps = sorted({r["steps"] for r in rows})
    lines = _results.markdown_header("Meta-learned prompt initialisation and DAM-VP", runs) if runs else []
    lines += ["| way | init | clusters | meta-train s | " + " | ".join(f"{s} steps" for s in steps) + " |"
              + (" run |" if many else ""),
              "|---|---|---|---|" + "---|" * len(steps) + ("---|" if many else "")]
    for key in dict.fromkeys((r["way"], r["init"], r["clusters"]) for r in rows):
        cells = {r["steps"]: r for r in rows if (r["way"], r["init"], r["clusters"]) == key}
        any_row = next(iter(cells.values()))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {any_row['meta_train_s']:.0f} | " + " | ".join(
            f"{100 * cells[s]['acc']:.2f} +- {100 * cells[s]['ci95']:.2f}" if s in cells else "-" for s in steps) + " |"
            + (f" {','.join(sorted({str(c['run']) for c in cells.values()}))} |" if many else ""))
    pairs = paired_rows(rows)
    if pairs:
        lines += ["", "Paired on the same episodes (points, +- 95% CI; paired t-test and Wilcoxon signed-rank p, "
                  "`fewshot.compare.paired_test`): each meta-learned initialisation against `random`, each DAM-VP C "
                  "against the single prompt with the same initialisation.", "",
                  "| way | steps | init | clusters | against | difference (t p, W p) |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['way']} | {r['steps']} | {r['init']} | {r['clusters']} | {against} | {cell} |"
                  for r, against, cell in pairs]
    return "\n".join(lines)


def paired_rows(rows) -> list:
    """``(row, what it is paired with, difference cell)`` for every row that has a partner."""
    cells = {(r["way"], r["init"], r["clusters"], r["steps"]): r for r in rows}
    out = []
    for r in rows:
        if r["clusters"] == 1 and r["init"] != "random":
            partner, against = cells.get((r["way"], "random", 1, r["steps"])), "random, 1 cluster"
        elif r["clusters"] > 1:
            source = r["init"].split(" single, then ")[0]
            partner, against = cells.get((r["way"], source, 1, r["steps"])), f"{source}, 1 cluster"
        else:
            continue
        if partner is not None and len(partner["episode_accuracies"]) == len(r["episode_accuracies"]) \
                and partner["bank_id"] == r["bank_id"]:
            out.append((r, against, _results.paired_cell(r["episode_accuracies"], partner["episode_accuracies"])))
    return out


def _key(row: dict) -> tuple:
    return row["way"], row["init"], row["clusters"], row["steps"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--backbone", default="vig_small_28")
    ap.add_argument("--backbone-from", default=None, help="checkpoint of a ProtoNet run (default: untrained)")
    ap.add_argument("--prompt", default="vpt", help="a fixed prompt (vpt, gpf, gpf-plus, vgp)")
    ap.add_argument("--blocks", default="all")
    ap.add_argument("--nodes", type=int, default=4, help="prompt nodes per block (vpt, vgp)")
    ap.add_argument("--ways", default="5")
    ap.add_argument("--bank", default="100", help="test episodes per way (comma-separated, one per way)")
    ap.add_argument("--steps", default="0,1,5,10")
    ap.add_argument("--inits", default="random,fomaml,maml")
    ap.add_argument("--clusters", default="2,4,8", help="DAM-VP cluster counts (besides the single prompt)")
    ap.add_argument("--cluster-init", default="fomaml")
    ap.add_argument("--cluster-steps", default=None, help="adaptation steps for DAM-VP rows (default: --steps)")
    ap.add_argument("--cluster-from", default="scratch", choices=["scratch", "single"],
                    help="DAM-VP rows: meta-train the C prompts from the prompt as created (scratch), or start "
                         "every cluster from a copy of the single prompt meta-trained with --cluster-init (single; "
                         "that init must be in --inits) and meta-train them further with --cluster-meta")
    ap.add_argument("--cluster-meta", default=None, choices=["fomaml", "maml", "metasgd"],
                    help="--cluster-from single: the meta-learner of the per-cluster step (default --cluster-init); "
                         "metasgd gives every cluster its own learned step sizes")
    ap.add_argument("--meta-steps", type=int, default=40)
    ap.add_argument("--meta-batch", type=int, default=4)
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--inner-lr", type=float, default=0.1)
    ap.add_argument("--meta-lr", type=float, default=1e-2)
    ap.add_argument("--temperature", type=float, default=1.0, help="prototype matcher temperature")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experiment", default="meta-prompts")
    ap.add_argument("--no-track", action="store_true")
    ap.add_argument("--out", default=None,
                    help="parent folder (default benchmarks/results/meta_prompts; --smoke: a temporary one)")
    ap.add_argument("--name", default=None, help="subfolder of --out written (default: the dataset)")
    ap.add_argument("--append", action="store_true", help="add this run's rows to the results already there")
    ap.add_argument("--quick", action="store_true", help="tiny: test_vig on glyphs, 6 episodes, 2 meta-steps")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: a test_vig trained on a few glyphs episodes, 4 episodes, 1 meta-step, no tracking")
    if "--smoke" in argv:  # its settings are defaults: options given with --smoke still apply
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset, args.backbone, args.bank, args.meta_steps, args.steps = "glyphs", "test_vig", "6", 2, "0,2"
        args.clusters, args.meta_batch = "2", 2
    if args.smoke and args.backbone_from is None:
        args.backbone_from = str(_results.smoke_run(Path(tempfile.mkdtemp(prefix="meta_prompts-run-"))) / "best.pt")
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="meta_prompts-") if args.smoke else "benchmarks/results/meta_prompts"
    torch.set_num_threads(args.threads)
    out = Path(args.out) / (args.name or args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    runs, old_rows = _results.load_previous(out / "results.json", args.append)
    settings = {k: getattr(args, k) for k in ("dataset", "backbone", "prompt", "blocks", "nodes", "ways", "bank",
                                              "steps", "inits", "clusters", "cluster_init", "cluster_steps", "cluster_from", "cluster_meta",
                                              "meta_steps", "meta_batch", "inner_steps", "inner_lr", "meta_lr",
                                              "temperature", "seed")}
    run = _results.provenance(__file__, argv, args.backbone_from, outputs=[out], settings=settings)
    _results.check_append(out / "results.json", runs, run, SAME_FOR_APPEND)
    runs = [*runs, run]
    splits = load_splits(args.dataset, args.data_root, None)
    ways = [int(w) for w in args.ways.split(",")]
    sizes = [int(n) for n in args.bank.split(",")]
    sizes = sizes * len(ways) if len(sizes) == 1 else sizes
    banks = {w: EpisodeSampler(splits.test, w, 1, 15, seed=0).bank(n) for w, n in zip(ways, sizes)}
    steps = [int(s) for s in args.steps.split(",")]
    cluster_steps = steps if args.cluster_steps is None else [int(s) for s in args.cluster_steps.split(",")]
    configs = [(init, 1) for init in args.inits.split(",") if init]
    if args.cluster_from == "single" and args.clusters and (args.cluster_init, 1) not in configs:
        ap.error(f"--cluster-from single starts DAM-VP from the {args.cluster_init} single prompt: "
                 f"put {args.cluster_init} in --inits")
    configs += [(args.cluster_init, int(c)) for c in args.clusters.split(",") if c]
    rows = []
    print(f"{args.dataset}: backbone {args.backbone_from or 'untrained ' + args.backbone} (frozen), prompt "
          f"{args.prompt}; banks {dict(zip(ways, sizes))} episodes; meta-training {args.meta_steps} x "
          f"{args.meta_batch} tasks, {args.inner_steps} inner step(s) at lr {args.inner_lr}", flush=True)
    singles = {}  # init -> its meta-trained single prompt (the source of --cluster-from single)
    for init, clusters in configs:
        backbone = models.create_backbone(args.backbone, img_size=splits.train.image_shape[-1],
                                          in_chans=splits.train.image_shape[0])
        if args.backbone_from:
            load_backbone(backbone, args.backbone_from)
        freeze(backbone).eval()
        prompt = build(args, backbone, clusters, splits.train)
        method = init
        if clusters > 1 and args.cluster_from == "single":  # copies of the meta-trained single prompt
            prompt = prompts.damvp.ClusterPrompts.around(copy.deepcopy(singles[init]), prompt.centroids)
            method = args.cluster_meta or init
        # random init adapts exactly like the meta-learned ones: the same learner, loss and rate; the
        # model's own learner is meta-trained, so Meta-SGD adapts test episodes with its learned rates
        model = PromptedModel(backbone, prompt, matchers.create("prototype", temperature=args.temperature),
                              adapt="tune", meta_init="fomaml" if method == "random" else method,
                              inner_lr=args.inner_lr, seed=args.seed)
        t0 = time.perf_counter()
        if method != "random":
            losses = meta.train_learner(model.learner, backbone, tasks(splits.train, 5, 1, 5, args.seed),
                                        inner_steps=args.inner_steps, meta_batch=args.meta_batch,
                                        meta_lr=args.meta_lr, iterations=args.meta_steps, matcher=model.matcher)
            print(f"  {method} C={clusters}: meta loss {losses[0]:.3f} -> {sum(losses[-5:]) / len(losses[-5:]):.3f} "
                  f"(mean of last 5)", flush=True)
        meta_s = time.perf_counter() - t0
        model.eval()
        if clusters == 1:
            singles[init] = prompt
        if clusters > 1 and args.cluster_from == "single":
            init = f"{init} single, then {method} per cluster"
        trainable = sum(p.numel() for p in prompt.parameters())
        for way in ways:
            for s in (steps if clusters == 1 else cluster_steps):
                model.adapt_steps = s
                t0 = time.perf_counter()
                res = evaluate(model, splits.test, banks[way])
                sec = (time.perf_counter() - t0) / len(banks[way])
                row = {"dataset": args.dataset, "way": way, "init": init, "clusters": clusters, "steps": s,
                       "acc": res.mean, "ci95": res.ci95, "episodes": res.episodes, "bank_id": res.bank_id,
                       "trainable": trainable, "meta_train_s": meta_s, "sec_per_episode": sec, "run": len(runs),
                       "episode_accuracies": [round(a, 6) for a in res.accuracies.tolist()]}
                rows.append(row)
                print(f"{way:>2}-way  init {init:<7} C={clusters}  {s:>2} steps: {100 * res.mean:6.2f} +- "
                      f"{100 * res.ci95:5.2f}  ({res.episodes} eps, {sec:.2f} s/ep)", flush=True)
                tracker = make_tracker(not args.no_track, None, args.experiment)
                tracker.start(f"{args.dataset}-{init}-C{clusters}-{way}w1s-{s}steps",
                              {k: row[k] for k in ("dataset", "way", "init", "clusters", "steps", "episodes", "bank_id",
                                                   "trainable")} | {
                                  "prompt": args.prompt, "backbone_from": args.backbone_from, "meta_steps": args.meta_steps,
                                  "meta_batch": args.meta_batch, "inner_steps": args.inner_steps,
                                  "inner_lr": args.inner_lr},
                              tags={"command": run["command"]})
                tracker.log_metrics({"test_acc": res.mean, "test_ci95": res.ci95, "sec_per_episode": sec,
                                     "meta_train_s": meta_s}, step=s)
                tracker.log_text("\n".join(f"{a:.6f}" for a in res.accuracies.tolist()) + "\n",
                                 "test_episode_accuracies.txt")
                tracker.end("FINISHED")
                _results.write_json(out / "results.json", runs, _results.merge_rows(old_rows, rows, _key))
    rows = _results.merge_rows(old_rows, rows, _key)
    _results.write_json(out / "results.json", runs, rows)
    plot(rows, out / "accuracy_vs_steps.png", f"{args.dataset}, prompt {args.prompt}")
    (out / "results.md").write_text(table(rows, runs) + "\n")
    print(table(rows, runs))
    tracker = make_tracker(not args.no_track, None, args.experiment)
    tracker.start(f"{args.dataset}-summary", {"dataset": args.dataset, "prompt": args.prompt,
                                              "backbone_from": args.backbone_from},
                  tags={"command": run["command"]})
    for name in ("accuracy_vs_steps.png", "results.md", "results.json"):
        tracker.log_artifact(out / name)
    tracker.end("FINISHED")


if __name__ == "__main__":
    main()
