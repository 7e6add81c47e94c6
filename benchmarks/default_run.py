"""The README's first command measured: `fewshot train --way 5 --shot 1` (the method) against
`fewshot train --way 5 --shot 1 --backbone conv4` (the Conv-4 ProtoNet, the default before the method
was), each timed from start to test result, paired on their common 2000-episode test bank, per seed.

    python benchmarks/default_run.py --seeds 0 --threads 2 --out benchmarks/results/default_run

One training process at a time (both on the same threads), so the wall times compare. Writes
``<out>.md`` and ``<out>.json`` with the command and commit in the header. A run folder that already holds
a result.json from the same settings is reused, its wall time read from the timing file written beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))

import _results  # noqa: E402

METHODS = {"method": [], "conv4": ["--backbone", "conv4"]}
"""What the two commands add to `fewshot train --way 5 --shot 1` (nothing: the default)."""


def _train(name: str, seed: int, threads: int, runs_dir: Path) -> dict:
    run_dir = runs_dir / f"seed{seed}" / name
    timing = run_dir / "timing.json"
    if (run_dir / "result.json").exists() and timing.exists():  # trained before: reused, with its own commit
        return {**json.loads((run_dir / "result.json").read_text()), **json.loads(timing.read_text())}
    exe = Path(sys.executable).parent / "fewshot"
    cmd = [str(exe), "train", "--way", "5", "--shot", "1", *METHODS[name], "--seed", str(seed), "--threads",
           str(threads), "--no-track", "--no-progress", "--json", "--run-dir", str(run_dir)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = {"wall_s": round(wall, 1), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
         "max_rss_mib": round(after.ru_maxrss / 1024), "load_before": round(os.getloadavg()[0], 2)}
    timing.write_text(json.dumps(t))
    (run_dir / "COMMIT").write_text(_results.commit() + "\n")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), **t}


def _trained_at(run_dir: Path) -> str:
    """The commit a run folder was trained at (its COMMIT file), which a reused run keeps."""
    path = Path(run_dir) / "COMMIT"
    return path.read_text().strip() if path.exists() else "unknown"


def _config(run_dir: Path) -> dict:
    """The settings a run trained with (its config.yaml, every default filled)."""
    import yaml

    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def _accs(run_dir: str) -> list:
    return [float(x) for x in (Path(run_dir) / "test_episode_accuracies.txt").read_text().split()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0", help="Comma-separated training seeds.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs-dir", default="runs/default-run")
    ap.add_argument("--out", default="benchmarks/results/default_run")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    out = Path(args.out)
    run = _results.provenance(__file__, argv, outputs=[out.with_suffix(".md"), out.with_suffix(".json")])
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        res = {name: _train(name, seed, args.threads, ROOT / args.runs_dir) for name in METHODS}
        a, b = res["method"], res["conv4"]
        if a["test_bank_id"] != b["test_bank_id"]:
            raise SystemExit(f"seed {seed}: the two runs were scored on different banks")
        rows.append({"seed": seed, **{f"{k}_{n}": res[n][k] for n in METHODS
                                      for k in ("test_acc", "test_ci95", "wall_s", "cpu_s", "max_rss_mib", "backbone",
                                                "best_val_acc")},
                     **{f"run_dir_{n}": _results.shown_path(ROOT / res[n]["run_dir"]) for n in METHODS},
                     **{f"trained_at_{n}": _trained_at(ROOT / res[n]["run_dir"]) for n in METHODS},
                     "bank": a["test_bank_id"], "episodes": a["test_episodes"],
                     "paired": _results.paired(_accs(a["run_dir"]), _accs(b["run_dir"]))})
    lines = _results.markdown_header("The default run: the method against the Conv-4 ProtoNet", [run])
    cfg = {n: _config(ROOT / res[n]["run_dir"]) for n in METHODS}  # the last seed's; every seed's are alike
    m, c = cfg["method"], cfg["conv4"]
    aug = {n: "no augmentation" if x["augment"] == "none" else f"{x['augment']} augmentation" for n, x in cfg.items()}
    lines += ["Both `fewshot train --way 5 --shot 1` on glyphs (the built-in data): the first with nothing else "
              f"(the method: {m['backbone']}, {m['matcher'].upper()}, {aug['method']}, "
              f"{m['train_query'] or m['query']} query images per class in training episodes), the second with "
              f"`--backbone conv4` ({c['matcher']} matcher, {aug['conv4']}, "
              f"{c['train_query'] or c['query']} training queries per class: the default before). "
              f"{m['episodes']} training episodes, validation every {m['val_every']} on {m['val_episodes']} "
              f"validation episodes, the best checkpoint scored on the {m['eval_episodes']}-episode test bank of "
              f"bank seed {m['bank_seed']} ({m['way']}-way {m['shot']}-shot, {m['query']} queries per class). Wall "
              "time: the whole command, start to test result, one after the other on the same threads.", "",
              "| seed | bank | method (vig_small_c4_28 + DN4) | Conv-4 ProtoNet | difference (method - Conv-4) "
              "| method wall | Conv-4 wall | method peak RSS | trained at |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["paired"]
        lines.append(f"| {r['seed']} | {r['bank']} | {100 * r['test_acc_method']:.2f} +- {100 * r['test_ci95_method']:.2f} "
                     f"| {100 * r['test_acc_conv4']:.2f} +- {100 * r['test_ci95_conv4']:.2f} "
                     f"| {100 * p['mean_diff']:+.2f} +- {100 * p['diff_ci95']:.2f} (t p={p['t_p']:.2g}, "
                     f"W p={p['wilcoxon_p']:.2g}) | {r['wall_s_method']:.0f} s | {r['wall_s_conv4']:.0f} s "
                     f"| {r['max_rss_mib_method']} MiB | {r['trained_at_method']} / {r['trained_at_conv4']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _results.write_json(out.with_suffix(".json"), [run], rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
