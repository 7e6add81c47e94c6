"""Accuracy of every matcher on the same test banks, with one trained backbone, paired against the prototype.

The backbone is a trained run (``fewshot train``): its best weights embed the images and each
matcher scores the episodes. The banks are drawn with the fixed ``--bank-seed`` from the run's
dataset, one per (way, shot), so every matcher sees identical episodes; each (matcher, way, shot)
is scored by ``fewshot.evaluate_run.evaluate_run`` (one MLflow run of ``--experiment`` unless
``--no-track``; its per-episode accuracies are stored in ``<run>/eval-best-<bank>``).

The backbone was trained with the prototype matcher; the other matchers are applied to the same
embeddings at test time (node-level matchers read the node features ``[n, nodes, dim]``). A
matcher capped by ``--max-episodes`` scores the first n episodes of the bank (episode i is a
function of the seed and i only), and is paired with the prototype's first n.

Writes ``--out`` (Markdown: the provenance header, the accuracy table and the paired table, every
difference and p-value from ``fewshot.compare.paired_test``) and the same rows with their
per-episode accuracies as JSON beside it (``.json``); ``--append`` adds this run's rows to that
JSON (a row made again replaces the older one) and rewrites both.

Usage:
    python benchmarks/matcher_accuracy.py --run-dir runs/<omniglot vig run> \\
        --ways 5,20 --shots 1,5 --episodes 2000 --experiment matchers-omniglot
    python benchmarks/matcher_accuracy.py --run-dir runs/<run> --quick      # 50 episodes, 5-way only
    python benchmarks/matcher_accuracy.py --smoke --out /tmp/m.md           # seconds: a tiny test_vig on glyphs
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before benchmarks/: its matchers.py is a script
sys.path.insert(1, str(Path(__file__).resolve().parent))

import _results  # noqa: E402
import matchers  # noqa: E402
from fewshot.compare import load_run  # noqa: E402
from fewshot.evaluate_run import evaluate_run, load_run_config  # noqa: E402

BASELINE = "prototype"


def _ints(text: str) -> list:
    return [int(v) for v in text.split(",") if v]


def _key(row: dict) -> tuple:
    return row["matcher"], row["way"], row["shot"]


def markdown(runs: list, rows: list) -> str:
    """The whole results file: header, accuracy table, paired table against the prototype matcher."""
    many = len(runs) > 1
    lines = _results.markdown_header("Matcher accuracy with one trained backbone", runs)
    lines += ["| matcher | way | shot | accuracy % | 95% CI | episodes | bank | eval s |" + (" run |" if many else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if many else "")]
    for r in rows:
        lines.append(f"| {r['matcher']} | {r['way']} | {r['shot']} | {100 * r['test_acc']:.2f} | "
                     f"{100 * r['test_ci95']:.2f} | {r['test_episodes']} | {r['test_bank_id']} | {r['eval_seconds']:.0f} |"
                     + (f" {r['run']} |" if many else ""))
    lines += ["", f"Paired against the {BASELINE} matcher on the same episodes (its first n where a matcher was "
              "capped); difference in points +- 95% CI, paired t-test and Wilcoxon signed-rank p "
              "(`fewshot.compare.paired_test`):", "",
              f"| setting | matcher | n | matcher % | {BASELINE} % (same n) | difference (t p, W p) |",
              "|---|---|---|---|---|---|"]
    base = {(r["way"], r["shot"]): r for r in rows if r["matcher"] == BASELINE}
    for r in rows:
        b = base.get((r["way"], r["shot"]))
        if r["matcher"] == BASELINE or b is None:
            continue
        n = len(r["episode_accuracies"])
        if len(b["episode_accuracies"]) < n:
            continue  # the prototype scored fewer episodes: nothing to pair with
        mine, theirs = r["episode_accuracies"], b["episode_accuracies"][:n]
        lines.append(f"| {r['way']}w{r['shot']}s | {r['matcher']} | {n} | {100 * sum(mine) / n:.2f} | "
                     f"{100 * sum(theirs) / n:.2f} | {_results.paired_cell(mine, theirs)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", help="a trained run folder (runs/<name>); --smoke trains a tiny one")
    p.add_argument("--matchers", default=",".join(matchers.list_matchers()))
    p.add_argument("--ways", default="5,20")
    p.add_argument("--shots", default="1,5")
    p.add_argument("--episodes", type=int, default=2000, help="episodes per bank")
    p.add_argument("--max-episodes", default="",
                   help="cap for slow matchers, 'name=n' or 'name@way=n' (e.g. 'hungarian@20=300'): "
                        "it scores the FIRST n episodes of the same bank")
    p.add_argument("--bank-seed", type=int, default=0)
    p.add_argument("--experiment", default="matchers")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-track", action="store_true", help="no MLflow runs")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="Markdown file (default benchmarks/results/matcher_accuracy.md; "
                                               "with --smoke a temporary folder)")
    p.add_argument("--append", action="store_true", help="add this run's rows to the JSON beside --out")
    p.add_argument("--quick", action="store_true", help="50 episodes, 5-way only")
    p.add_argument("--smoke", action="store_true",
                   help="seconds: a test_vig trained for a few glyphs episodes, 5-way 1-shot, 6 episodes, no tracking")
    args = p.parse_args(argv)
    if args.quick:
        args.episodes, args.ways = 50, "5"
    if args.smoke:
        args.episodes, args.ways, args.shots, args.no_track = 6, "5", "1", True
        args.max_episodes = args.max_episodes or "hungarian=4"
    if args.out is None:
        args.out = (Path(tempfile.mkdtemp(prefix="matcher_accuracy-")) / "matcher_accuracy.md" if args.smoke
                    else "benchmarks/results/matcher_accuracy.md")
    if args.run_dir is None:
        if not args.smoke:
            p.error("--run-dir is required (or --smoke)")
        args.run_dir = str(_results.smoke_run(Path(tempfile.mkdtemp(prefix="matcher_accuracy-run-"))))
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    runs, old_rows = _results.load_previous(json_path, args.append)
    caps = dict(item.split("=") for item in args.max_episodes.split(",") if item)
    base = load_run_config(Path(args.run_dir))
    run = _results.provenance(__file__, argv, Path(args.run_dir) / "best.pt", outputs=[out, json_path],
                              backbone=f"{base.backbone or 'default'} trained on {base.dataset}",
                              bank_seed=args.bank_seed)
    runs = [*runs, run]
    rows = []
    for way in _ints(args.ways):
        for shot in _ints(args.shots):
            for name in args.matchers.split(","):
                episodes = min(args.episodes, int(caps.get(f"{name}@{way}", caps.get(name, args.episodes))))
                config = dataclasses.replace(base, matcher=name, way=way, shot=shot, eval_episodes=episodes,
                                             bank_seed=args.bank_seed, experiment=args.experiment,
                                             tracking_uri=args.tracking_uri, threads=args.threads,
                                             temperature=None, track=not args.no_track)
                r = evaluate_run(Path(args.run_dir), config, progress=False)
                accs = load_run(r["eval_dir"]).accuracies.tolist()
                rows.append({"matcher": name, "way": way, "shot": shot, "run": len(runs),
                             **{k: r[k] for k in ("test_acc", "test_ci95", "test_episodes", "test_bank_id",
                                                  "eval_seconds")},
                             "episode_accuracies": accs})
                print(json.dumps({k: rows[-1][k] for k in ("matcher", "way", "shot", "test_acc", "test_ci95",
                                                           "test_episodes", "test_bank_id", "eval_seconds")}),
                      flush=True)
    rows = _results.merge_rows(old_rows, rows, _key)
    text = markdown(runs, rows)
    _results.write_json(json_path, runs, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
