"""Accuracy of every matcher on the same test banks, with one trained backbone, as one MLflow experiment.

The backbone is a trained run (``fewshot train``): its best weights embed the images and each
matcher scores the episodes. The banks are drawn with the fixed ``--bank-seed`` from the run's
dataset, one per (way, shot), so every matcher sees identical episodes; each (matcher, way, shot)
becomes one MLflow run of ``--experiment`` (its per-episode accuracies are an artifact), and the
table is printed as Markdown and written to ``--out``.

The backbone was trained with the prototype matcher; the other matchers are applied to the same
embeddings at test time (node-level matchers read the node features ``[n, nodes, dim]``).

Usage:
    python benchmarks/matcher_accuracy.py --run-dir runs/<omniglot vig run> \\
        --ways 5,20 --shots 1,5 --episodes 2000 --experiment matchers-omniglot
    python benchmarks/matcher_accuracy.py --run-dir runs/<run> --quick      # 50 episodes, 5-way only
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matchers  # noqa: E402
from fewshot.evaluate_run import evaluate_run, load_run_config  # noqa: E402


def _ints(text: str) -> list:
    return [int(v) for v in text.split(",") if v]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="a trained run folder (runs/<name>)")
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
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/matcher_accuracy.md")
    p.add_argument("--quick", action="store_true", help="50 episodes, 5-way only")
    args = p.parse_args(argv)
    if args.quick:
        args.episodes, args.ways = 50, "5"
    caps = dict(item.split("=") for item in args.max_episodes.split(",") if item)
    base = load_run_config(Path(args.run_dir))
    rows = []
    for way in _ints(args.ways):
        for shot in _ints(args.shots):
            for name in args.matchers.split(","):
                episodes = min(args.episodes, int(caps.get(f"{name}@{way}", caps.get(name, args.episodes))))
                config = dataclasses.replace(base, matcher=name, way=way, shot=shot, eval_episodes=episodes,
                                             bank_seed=args.bank_seed, experiment=args.experiment,
                                             tracking_uri=args.tracking_uri, threads=args.threads,
                                             temperature=None, track=True)
                r = evaluate_run(Path(args.run_dir), config, progress=False)
                rows.append({"matcher": name, "way": way, "shot": shot, **r})
                print(json.dumps({k: rows[-1][k] for k in ("matcher", "way", "shot", "test_acc", "test_ci95",
                                                           "test_episodes", "test_bank_id", "eval_seconds")}),
                      flush=True)
    lines = [f"Backbone: `{args.run_dir}` ({base.dataset}, {base.backbone or 'default'}), bank seed {args.bank_seed}",
             "", "| matcher | way | shot | accuracy % | 95% CI | episodes | bank | eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['matcher']} | {r['way']} | {r['shot']} | {100 * r['test_acc']:.2f} | "
                     f"{100 * r['test_ci95']:.2f} | {r['test_episodes']} | {r['test_bank_id']} | {r['eval_seconds']:.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
