"""Graph prompts for a frozen ViG against VPT / GPF / GPF-plus / VGP / linear probe / fine-tuning.

For every setting (N-way 1-shot on omniglot's test classes, one fixed episode bank per setting,
bank seed 0 as ``fewshot train``) and every method:

1. the ViG backbone is loaded from ``--backbone-from`` (a ProtoNet run's best.pt) and frozen;
2. methods with prompt parameters are meta-trained episodically on the base (train) classes for
   ``--meta-episodes`` episodes (Adam, lr ``--lr``), backbone frozen - the amortised path (once,
   shared by every way);
3. fixed prompts (episode-independent embeddings) are scored on the whole bank (``--bank``); the
   per-episode methods (support-conditioned prompts, test-time tuning, linear probe) on its first
   n episodes (``--sub-bank``); every method is also reported on those same first n episodes;
4. accuracy +- 95% CI, trainable / frozen parameters and seconds per test episode are printed,
   logged to one MLflow experiment (one run per method and setting, unless ``--no-track``), and a
   plot of accuracy against trainable parameters (PNG) is written and logged;
5. every method is paired with ``none`` (the frozen backbone as it is) on the same first n
   episodes by ``fewshot.compare.paired_test``: difference +- 95% CI, t-test and Wilcoxon p.

``--out`` receives ``results.json`` (the runs that made it and every row with its per-episode
accuracies), ``results.md`` (a provenance header naming each run's command, commit, date and
backbone checkpoint with its sha256, then the table) and ``accuracy_vs_params.png``, all three
rewritten from the JSON. ``--append`` adds this run's rows to the JSON already in ``--out`` (a
method and way made again replace the older row; the backbone checkpoint, dataset, bank and
temperature must be the same) instead of starting a new file.

Usage:
    python benchmarks/prompts.py --quick                       # tiny: checks the pipeline
    python benchmarks/prompts.py --smoke --out /tmp/p          # seconds: test_vig trained on glyphs
    python benchmarks/prompts.py --ways 5,20 --bank 2000 --sub-bank 100,30 --meta-episodes 60
    python benchmarks/prompts.py --ways 5,20 --sub-bank 40,10 --methods "full fine-tuning (lr 1e-4)" --append
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before benchmarks/: its matchers.py is a script
sys.path.insert(1, str(Path(__file__).resolve().parent))

import _results  # noqa: E402
import matchers  # noqa: E402
import models  # noqa: E402
import prompts  # noqa: E402
from episodes import EpisodeSampler, load_splits  # noqa: E402
from fewshot.evaluation import evaluate, summarise  # noqa: E402
from fewshot.model import count_parameters  # noqa: E402
from fewshot.prompting import PromptedModel, load_backbone  # noqa: E402
from fewshot.tracking import make_tracker  # noqa: E402

# (label, prompt, adapt, prompt options, PromptedModel options over the command line's) - amortised
# rows first, tuned rows last
METHODS = [
    ("none", "none", "amortised", {}, {}),
    ("add", "add", "amortised", {}, {}),
    ("modify", "modify", "amortised", {}, {}),
    ("delete", "delete", "amortised", {}, {}),
    ("soft-delete", "soft-delete", "amortised", {}, {}),
    ("graph (all three)", "graph", "amortised", {}, {}),
    ("VPT deep", "vpt", "amortised", {}, {}),
    ("GPF", "gpf", "amortised", {}, {}),
    ("GPF-plus", "gpf-plus", "amortised", {}, {}),
    ("VGP", "vgp", "amortised", {}, {}),
    ("linear probe", "none", "linear", {}, {}),
    ("VGP + tune", "vgp", "tune", {}, {}),
    ("full fine-tuning", "none", "full", {}, {}),
    ("add + tune", "add", "tune", {}, {}),
    ("head-only tune", "none", "head", {}, {}),
    ("VPT shallow", "vpt-shallow", "amortised", {}, {}),
    ("GPF + tune", "gpf", "tune", {}, {}),
    # --adapt-lr 1e-2 wrecks the backbone when every parameter is tuned: 10 Adam steps at 1e-4
    ("full fine-tuning (lr 1e-4)", "none", "full", {}, {"adapt_lr": 1e-4}),
    ("svgp", "svgp", "amortised", {}, {}),
    ("svgp (output-conditioned)", "svgp", "amortised", {"condition_on": "output"}, {}),
    ("svgp from VGP", "svgp", "amortised", {}, {}),
    ("VGP (2x meta-episodes)", "vgp", "amortised", {}, {}),
    ("ProVP", "provp", "amortised", {}, {}),
    ("ProVP-Ref", "provp-ref", "amortised", {}, {}),
]
LABELS = [m[0] for m in METHODS]
WARM_FROM = {"svgp from VGP": "VGP"}
"""Rows whose prompt starts from another row's meta-trained prompt (``SupportVGP.warm_start``), then is
meta-trained for ``--meta-episodes`` more: twice the episodes, which ``VGP (2x meta-episodes)`` matches."""
META_FACTOR = {"VGP (2x meta-episodes)": 2}
CHEAP = ("amortised",)
SMOKE = {"dataset": "glyphs", "data_root": None, "backbone": "test_vig", "ways": "5", "bank": 6, "sub_bank": "3",
         "meta_episodes": 2, "adapt_steps": 1, "no_track": True,
         "methods": "none,GPF,VGP,linear probe,VGP + tune,full fine-tuning (lr 1e-4)"}
"""--smoke's defaults; the backbone is a test_vig trained for a few glyphs episodes (``_results.smoke_run``)."""
SAME_FOR_APPEND = ("dataset", "backbone", "bank", "temperature", "seed")
"""Settings every run merged into one file by --append must share (with the checkpoint's sha256)."""


def newest_backbone() -> str:
    found = sorted(Path("runs").glob("*omniglot*vig_small_28*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit("no runs/*omniglot*vig_small_28*/best.pt: train one or pass --backbone-from")
    return str(found[-1])


def meta_train(model: PromptedModel, train_set, way: int, episodes: int, lr: float, seed: int) -> None:
    """Episodic meta-training of the prompt (backbone frozen) on the base classes, 1-shot, 5 queries."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or episodes == 0:
        return
    sampler = EpisodeSampler(train_set, way, 1, 5, seed=seed)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for i in range(episodes):
        ep = sampler[i]
        logits = model(train_set.images[ep.support], ep.support_labels, train_set.images[ep.query])
        loss = F.cross_entropy(logits, ep.query_labels) + model.prompt.regulariser()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    model.eval()


@torch.inference_mode()
def score(model: PromptedModel, test_set, bank, n: int):
    """Accuracy per episode ``[n]`` on the first n bank episodes, and seconds per episode."""
    model.eval()
    accs = torch.empty(n)
    t0 = time.perf_counter()
    for i in range(n):
        ep = bank[i]
        logits = model(test_set.images[ep.support], ep.support_labels, test_set.images[ep.query])
        accs[i] = (logits.argmax(-1) == ep.query_labels).float().mean()
    return accs, (time.perf_counter() - t0) / n


def plot(rows, path: Path, dataset: str = "omniglot") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ways = sorted({r["way"] for r in rows})
    fig, axes = plt.subplots(1, len(ways), figsize=(6.5 * len(ways), 4.8), squeeze=False)
    for ax, way in zip(axes[0], ways):
        for r in (r for r in rows if r["way"] == way):
            x = max(r["trainable"], 1)
            ax.errorbar(x, 100 * r["sub_acc"], yerr=100 * r["sub_ci95"], fmt="o" if r["adapt"] in CHEAP else "s",
                        capsize=3)
            ax.annotate(r["method"], (x, 100 * r["sub_acc"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log; 1 = none)")
        ax.set_ylabel("accuracy % (+- 95% CI)")
        n = min(r["sub_episodes"] for r in rows if r["way"] == way)
        ax.set_title(f"{dataset} {way}-way 1-shot, first {n} bank episodes (o amortised, s tuned)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows, runs=()) -> str:
    """The results file: provenance header, then a Markdown table of the rows: accuracy on the first
    n episodes, the paired differences with ``none`` and with ``VGP`` on every episode both rows were
    scored on (the whole bank when both were, else the first n), and the whole bank where the method
    was run on it."""
    many = len(runs) > 1
    lines = _results.markdown_header("Graph prompts on a frozen ViG", runs) if runs else []
    lines += ["| way | method | adapt | acc % first n (n) | paired diff vs none (t p, W p) over episodes | "
              "paired diff vs VGP (t p, W p) over episodes | acc % whole bank (episodes) | trainable | frozen | "
              "s/episode |" + (" run |" if many else ""),
              "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if many else "")]
    refs = {(r["method"], r["way"]): r for r in rows if r["method"] in ("none", "VGP")}
    for r in rows:
        diffs = []
        for ref in ("none", "VGP"):
            b = refs.get((ref, r["way"]))
            if b is None or b is r:
                diffs.append("-")
                continue
            n = min(len(r["episode_accuracies"]), len(b["episode_accuracies"]))
            diffs.append(_results.paired_cell(r["episode_accuracies"][:n], b["episode_accuracies"][:n]) + f" over {n}")
        whole = (f"{100 * r['acc']:.2f} +- {100 * r['ci95']:.2f} ({r['episodes']})"
                 if r["episodes"] > r["sub_episodes"] else "-")
        lines.append(f"| {r['way']} | {r['method']} | {r['adapt']} | {100 * r['sub_acc']:.2f} +- "
                     f"{100 * r['sub_ci95']:.2f} ({r['sub_episodes']}) | {' | '.join(diffs)} | {whole} | "
                     f"{r['trainable']} | {r['frozen']} | {r['sec_per_episode']:.3f} |" + (f" {r['run']} |" if many else ""))
    return "\n".join(lines)


def _key(row: dict) -> tuple:
    return row["method"], row["way"]


def _save(out: Path, runs: list, rows: list) -> None:
    _results.write_json(out / "results.json", runs, rows)
    plot(rows, out / "accuracy_vs_params.png", runs[-1]["settings"]["dataset"] if runs else "omniglot")
    (out / "results.md").write_text(table(rows, runs) + "\n")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone-from", default=None, help="default: newest runs/*omniglot*vig_small_28*/best.pt")
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--data-root", default="../shared/data/omniglot")
    ap.add_argument("--backbone", default="vig_small_28", help="the architecture of --backbone-from")
    ap.add_argument("--ways", default="5,20")
    ap.add_argument("--bank", type=int, default=2000, help="bank size; amortised methods use all of it")
    ap.add_argument("--sub-bank", default="100,30",
                    help="first n bank episodes (per way, comma-separated) for the per-episode methods "
                         "(support-conditioned and tuned); every method is also reported on these n")
    ap.add_argument("--meta-episodes", type=int, default=150)
    ap.add_argument("--amortised-whole-bank", action="store_true",
                    help="score the support-conditioned amortised methods on the whole bank too (default: first n)")
    ap.add_argument("--meta-way", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--adapt-steps", type=int, default=10)
    ap.add_argument("--adapt-lr", type=float, default=1e-2, help="tuning rate (a method may fix its own)")
    ap.add_argument("--blocks", default="all")
    ap.add_argument("--temperature", type=float, default=10.0,
                    help="prototype matcher temperature (the vig_small_28 backbones are trained with 10)")
    ap.add_argument("--methods", default=None, help=f"comma-separated labels (default: all): {', '.join(LABELS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experiment", default="prompts-omniglot")
    ap.add_argument("--no-track", action="store_true")
    ap.add_argument("--out", default=None, help="folder (default benchmarks/results/prompts; --smoke: a temporary one)")
    ap.add_argument("--append", action="store_true", help="add this run's rows to the results already in --out")
    ap.add_argument("--quick", action="store_true", help="tiny run: 20 / 4 episodes, 5 meta-episodes, 5-way")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: a test_vig trained on a few glyphs episodes, 6 / 2 episodes, 2 meta-episodes, "
                         "a few methods, no tracking")
    if "--smoke" in argv:  # its settings are defaults: options given with --smoke still apply
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    if args.quick:
        args.bank, args.sub_bank, args.meta_episodes, args.ways, args.adapt_steps = 20, "4", 5, "5", 3
    if args.smoke:
        if args.backbone_from is None:
            args.backbone_from = str(_results.smoke_run(Path(tempfile.mkdtemp(prefix="prompts-run-"))) / "best.pt")
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="prompts-") if args.smoke else "benchmarks/results/prompts"
    wanted = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(wanted or ()) - set(LABELS))
    if unknown:
        ap.error(f"unknown methods {unknown}; the script knows {LABELS}")
    torch.set_num_threads(1)
    ckpt = args.backbone_from or newest_backbone()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, old_rows = _results.load_previous(out / "results.json", args.append)
    settings = {k: getattr(args, k) for k in ("dataset", "backbone", "ways", "bank", "sub_bank", "meta_episodes",
                                              "meta_way", "lr", "adapt_steps", "adapt_lr", "blocks", "temperature",
                                              "seed", "amortised_whole_bank")}
    run = _results.provenance(__file__, argv, ckpt, outputs=[out], settings=settings)
    _results.check_append(out / "results.json", runs, run, SAME_FOR_APPEND)
    runs = [*runs, run]
    splits = load_splits(args.dataset, args.data_root, None)
    tracker_args = (not args.no_track, None, args.experiment)
    rows = []
    print(f"backbone {ckpt} (frozen); bank {args.bank} episodes (fixed prompts), first {args.sub_bank} "
          f"(support-conditioned and tuned methods); "
          f"meta-training {args.meta_episodes} episodes {args.meta_way}-way 1-shot", flush=True)
    ways = [int(w) for w in args.ways.split(",")]
    subs = [int(n) for n in str(args.sub_bank).split(",")]
    if len(subs) == 1:
        subs = subs * len(ways)
    banks = {w: EpisodeSampler(splits.test, w, 1, 15, seed=0).bank(args.bank) for w in ways}
    def build(label):
        """The method's PromptedModel, meta-trained (from its ``WARM_FROM`` row's prompt when it has one),
        its tuning settings and the meta-training episodes it had."""
        prompt_name, adapt, opts, fixed = METHODS[LABELS.index(label)][1:]
        torch.manual_seed(args.seed)
        backbone = load_backbone(models.create_backbone(args.backbone, img_size=splits.train.image_shape[-1],
                                                        in_chans=splits.train.image_shape[0]), ckpt)
        options = dict(opts)
        if "blocks" in prompts.accepted_options(prompt_name) and prompt_name != "vpt-shallow":
            options["blocks"] = args.blocks
        prompt = prompts.create(prompt_name, backbone, **options)
        tuning = {"adapt_steps": args.adapt_steps, "adapt_lr": args.adapt_lr, **fixed}
        model = PromptedModel(backbone, prompt, matchers.create("prototype", temperature=args.temperature),
                              adapt=adapt, seed=args.seed, **tuning)
        own = args.meta_episodes * META_FACTOR.get(label, 1)
        before = 0
        if label in WARM_FROM:
            source, _, before = build(WARM_FROM[label])
            prompt.warm_start(source.prompt.state_dict())
        meta_train(model, splits.train, args.meta_way, own, args.lr, args.seed)
        return model, tuning, before + own

    for label, prompt_name, adapt, opts, fixed in METHODS:
        if wanted is not None and label not in wanted:
            continue
        t0 = time.perf_counter()
        model, tuning, meta_episodes = build(label)
        meta_s = time.perf_counter() - t0
        backbone, prompt = model.backbone, model.prompt
        counts = count_parameters(model)
        if adapt in ("tune", "head", "full"):  # what the per-episode tuning changes
            tuned = sum(p.numel() for p in model.tunable(backbone, prompt))
            counts = {"trainable": tuned, "frozen": sum(p.numel() for p in model.parameters()) - tuned}
        print(f"{label}: {counts['trainable']} trainable, {counts['frozen']} frozen parameters; "
              f"meta-training {meta_s:.0f} s", flush=True)
        for way, sub in zip(ways, subs):
            bank = banks[way]
            if adapt == "linear":
                counts = {"trainable": way * (backbone.embed_dim + 1), "frozen": counts["frozen"]}
            if model.episode_independent:  # embed every bank image once, score all episodes
                t0 = time.perf_counter()
                accs = evaluate(model, splits.test, bank).accuracies
                sec = (time.perf_counter() - t0) / len(bank)
            else:  # episode by episode: the first n, or the whole bank for amortised ones with --amortised-whole-bank
                whole = args.amortised_whole_bank and adapt in CHEAP
                accs, sec = score(model, splits.test, bank, len(bank) if whole else min(sub, len(bank)))
            n = min(sub, len(bank))
            mean, ci = summarise(accs)
            sub_mean, sub_ci = summarise(accs[:n])
            row = {"method": label, "prompt": prompt_name, "adapt": adapt, "way": way, "episodes": len(accs),
                   "acc": mean, "ci95": ci, "sub_episodes": n, "sub_acc": sub_mean, "sub_ci95": sub_ci,
                   "trainable": counts["trainable"], "frozen": counts["frozen"],
                   "sec_per_episode": sec, "meta_train_s": meta_s, "meta_episodes": meta_episodes,
                   "bank_id": bank.bank_id, "run": len(runs),
                   "adapt_steps": tuning["adapt_steps"], "adapt_lr": tuning["adapt_lr"],
                   "episode_accuracies": [round(a, 6) for a in accs.tolist()]}
            rows.append(row)
            print(f"{way:>2}-way  {label:<20} first {n}: {100 * sub_mean:6.2f} +- {100 * sub_ci:5.2f}   "
                  f"all {len(accs)}: {100 * mean:6.2f} +- {100 * ci:5.2f}  trainable {counts['trainable']:>7}  "
                  f"{sec:.3f} s/ep", flush=True)
            tracker = make_tracker(*tracker_args)
            tracker.start(f"{label}-{way}w1s", {**{k: row[k] for k in ("method", "prompt", "adapt", "way", "episodes",
                                                                        "sub_episodes", "bank_id")},
                                                "trainable_params": counts["trainable"],
                                                "frozen_params": counts["frozen"], "backbone_from": ckpt,
                                                "meta_episodes": meta_episodes, **tuning, "blocks": args.blocks,
                                                "temperature": args.temperature},
                          tags={"command": run["command"]})
            tracker.log_metrics({"test_acc": mean, "test_ci95": ci, "sub_acc": sub_mean, "sub_ci95": sub_ci,
                                 "sec_per_episode": sec, "meta_train_s": meta_s}, step=0)
            tracker.log_text("\n".join(f"{a:.6f}" for a in accs.tolist()) + "\n", "test_episode_accuracies.txt")
            tracker.end("FINISHED")
            _save(out, runs, _results.merge_rows(old_rows, rows, _key))  # what is done survives a kill
    rows = _results.merge_rows(old_rows, rows, _key)
    _save(out, runs, rows)
    tracker = make_tracker(*tracker_args)
    tracker.start("summary", {"ways": args.ways, "bank": args.bank, "sub_bank": args.sub_bank,
                              "backbone_from": ckpt, "meta_episodes": args.meta_episodes},
                  tags={"command": run["command"]})
    for name in ("accuracy_vs_params.png", "results.json", "results.md"):
        tracker.log_artifact(out / name)
    tracker.end("FINISHED")
    print(table(rows, runs))
    print(f"wrote {out / 'results.json'}, results.md and {out / 'accuracy_vs_params.png'}")


if __name__ == "__main__":
    main()
