"""Query images per second of ``FewShotClassifier`` / ``fewshot predict``: the support set embedded once, against
the naive way that re-embeds the support set for every query (the episodic forward, one query at a time).

For each number of classes (``--ways``, ``--shot`` support images each, glyphs test images at the model's size):

* **support once**: ``clf.fit(support)`` (timed separately: ``fit ms``), then ``clf.predict(queries)`` on
  ``--queries`` query images in batches of ``--batch-size``; rate = queries / seconds of ``predict``;
* **naive**: ``model(support_images, support_labels, query[i:i+1])`` for each of ``--naive-queries`` queries, the
  forward ``fewshot eval`` runs per episode, so every query pays for embedding the whole support set again;
* **per batch**: the same forward on batches of ``--batch-size`` of the ``--queries`` queries (the support set
  re-embedded once per batch), which separates the gain of embedding the support once from that of batching.

Both modes run in one process on the same model and images, alternating rep by rep (``--reps``; the median
is reported), with ``--threads`` torch threads. The model is shipped weights (``--weights``, default the first
shipped ViG), a trained run (``--run-dir``), or an untrained seeded ``--backbone`` with ``--matcher`` (speed does
not depend on the weights). The table goes to ``--out`` (default ``benchmarks/results/predict_speed.md``) under a
header naming the command, the commit and the machine; the JSON beside it holds every timed rep.
``--smoke`` times an untrained ``test_vig`` on tiny settings into a temporary folder.

Example:
    nice -n 10 python benchmarks/predict_speed.py --threads 2
"""
from __future__ import annotations

import argparse
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

import _results  # noqa: E402

DEFAULT_WEIGHTS = ("vig_small_c4_28.omniglot_minimal", "vig_small_c4_28.glyphs")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help=f"shipped weights [default: the first shipped of {', '.join(DEFAULT_WEIGHTS)}]")
    src.add_argument("--run-dir", help="a fewshot train run folder (its best.pt)")
    src.add_argument("--backbone", help="an untrained backbone, seeded (speed only)")
    p.add_argument("--matcher", help="matcher name (default: the model's own; with --backbone: dn4)")
    p.add_argument("--ways", default="5,20", help="comma-separated numbers of classes [default: 5,20]")
    p.add_argument("--shot", type=int, default=1, help="support images per class [default: 1]")
    p.add_argument("--queries", type=int, default=200, help="query images predicted per rep, support once [default: 200]")
    p.add_argument("--naive-queries", type=int, default=20, help="queries per rep the naive way [default: 20]")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass [default: 64]")
    p.add_argument("--reps", type=int, default=3, help="timed reps per mode, after one warm-up [default: 3]")
    p.add_argument("--threads", type=int, default=2, help="torch threads [default: 2]")
    p.add_argument("--out", help="Markdown table to write [default: benchmarks/results/predict_speed.md]")
    p.add_argument("--smoke", action="store_true", help="untrained test_vig, ways 2,3, a few queries, one rep")
    args = p.parse_args(argv)
    if args.smoke:
        args.backbone, args.weights, args.run_dir = "test_vig", None, None
        args.ways, args.queries, args.naive_queries, args.reps = "2,3", 8, 3, 1
        args.out = args.out or str(Path(tempfile.mkdtemp(prefix="predict-speed-")) / "predict_speed.md")
    args.out = Path(args.out or REPO / "benchmarks" / "results" / "predict_speed.md")
    args.ways = [int(w) for w in args.ways.split(",") if w.strip()]
    for name in ("shot", "queries", "naive_queries", "batch_size", "reps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.ways or min(args.ways) < 2:
        p.error("--ways needs numbers of classes of at least 2")
    return args


def make_classifier(args):
    """``(FewShotClassifier, description of the model for the header)``."""
    from fewshot import Config, FewShotClassifier
    from fewshot.model import build_model

    if args.backbone:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model(Config(backbone=args.backbone, matcher=args.matcher or "dn4"), 28, 1)
        return (FewShotClassifier(model=model, img_size=28, in_chans=1, batch_size=args.batch_size),
                {"model": f"untrained {args.backbone} (seed 0)"})
    if args.run_dir:
        clf = FewShotClassifier.from_run(args.run_dir, matcher=args.matcher)
        described = {"model": f"run {args.run_dir}", "checkpoint": _results.checkpoint_info(Path(args.run_dir) / "best.pt")}
    else:
        from fewshot.pretrained import list_pretrained

        name = args.weights or next((n for n in DEFAULT_WEIGHTS if n in list_pretrained()), None)
        if name is None:
            raise SystemExit(f"none of the shipped weights {', '.join(DEFAULT_WEIGHTS)} is available; give --weights, "
                             f"--run-dir or --backbone")
        clf = FewShotClassifier.from_pretrained(name, matcher=args.matcher)
        described = {"model": f"shipped weights {name}"}
    return clf.set_params(batch_size=args.batch_size), described


def images(way: int, shot: int, count: int, img_size: int, in_chans: int) -> tuple:
    """``(support [way*shot, C, S, S] uint8, support_labels [way*shot], queries [count, C, S, S] uint8)`` from the
    glyphs test split, queries cycling over the same classes' other images."""
    from episodes import load_splits
    from fewshot.image_input import to_model_images

    test = load_splits("glyphs", None, None).test
    support, labels, queries = [], [], []
    for c in range(way):
        idx = test.indices_of(c).tolist()
        support += idx[:shot]
        labels += [c] * shot
        queries += idx[shot:]
    queries = [queries[i % len(queries)] for i in range(count)]
    as_model = lambda ix: to_model_images([test.images[i] for i in ix], img_size, in_chans, invert=False)  # noqa: E731
    return as_model(support), torch.tensor(labels), as_model(queries)


def time_once(clf, support, labels, queries) -> tuple:
    """``(fit seconds, predict seconds)`` of embedding the support once and predicting every query."""
    t0 = time.perf_counter()
    clf.fit(support, labels)
    t1 = time.perf_counter()
    clf.predict(queries)
    return t1 - t0, time.perf_counter() - t1


@torch.inference_mode()
def time_forward(model, support, labels, queries, batch: int) -> float:
    """Seconds of the episodic forward on ``batch`` queries at a time (the support embedded again every time)."""
    t0 = time.perf_counter()
    for i in range(0, len(queries), batch):
        model(support, labels, queries[i:i + batch]).argmax(-1)
    return time.perf_counter() - t0


def measure(args, clf, way: int) -> dict:
    source = clf._source()
    count = max(args.queries, args.naive_queries)
    support, labels, queries = images(way, args.shot, count, source.img_size, source.in_chans)
    once_q, naive_q = queries[:args.queries], queries[:args.naive_queries]
    clf.fit(support, labels)
    model = clf.model_
    time_once(clf, support, labels, once_q[:args.batch_size])      # warm-up
    time_forward(model, support, labels, naive_q[:2], 1)
    fit_s, predict_s, naive_s, batch_s = [], [], [], []
    for _ in range(args.reps):                                     # the modes alternate
        f, p = time_once(clf, support, labels, once_q)
        fit_s.append(f), predict_s.append(p)
        naive_s.append(time_forward(model, support, labels, naive_q, 1))
        batch_s.append(time_forward(model, support, labels, once_q, args.batch_size))
    once_rate = len(once_q) / statistics.median(predict_s)
    naive_rate = len(naive_q) / statistics.median(naive_s)
    batch_rate = len(once_q) / statistics.median(batch_s)
    return {"way": way, "shot": args.shot, "queries": len(once_q), "naive_queries": len(naive_q),
            "fit_ms": 1000 * statistics.median(fit_s), "once_per_s": once_rate, "naive_per_s": naive_rate,
            "per_batch_per_s": batch_rate, "speedup": once_rate / naive_rate, "fit_s": fit_s, "predict_s": predict_s,
            "naive_s": naive_s, "per_batch_s": batch_s}


def table(rows) -> list:
    lines = ["| classes | support images | fit (embed the support) ms | queries/s, support once | "
             "queries/s, naive (support re-embedded per query) | speed-up over naive | "
             "queries/s, support re-embedded per batch |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['way']} | {r['way'] * r['shot']} | {r['fit_ms']:.1f} | {r['once_per_s']:.1f} | "
                     f"{r['naive_per_s']:.1f} | {r['speedup']:.1f}x | {r['per_batch_per_s']:.1f} |")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    clf, described = make_classifier(args)
    run = _results.provenance(__file__, sys.argv[1:] if argv is None else argv, outputs=[args.out, args.out.with_suffix(".json")],
                              threads=args.threads, **{k: v for k, v in described.items() if k != "checkpoint"},
                              matcher=clf._scorer().matcher.__class__.__name__)
    if "checkpoint" in described:
        run["checkpoint"] = described["checkpoint"]
    rows = []
    for way in args.ways:
        rows.append(measure(args, clf, way))
        r = rows[-1]
        print(f"{way:3d} classes: {r['once_per_s']:8.1f} queries/s support once, {r['naive_per_s']:8.1f} naive "
              f"({r['speedup']:.1f}x), {r['per_batch_per_s']:8.1f} per batch, fit {r['fit_ms']:.1f} ms", file=sys.stderr)
    note = (f"{args.shot} support image(s) per class; support once: `clf.predict` of {args.queries} queries in batches "
            f"of {args.batch_size} after `clf.fit`; naive: the episodic forward of {args.naive_queries} queries one at "
            f"a time; per batch: the episodic forward on the {args.queries} queries {args.batch_size} at a time; median of {args.reps} alternating reps after a warm-up, {args.threads} torch thread(s).")
    lines = _results.markdown_header("Query images per second of fewshot predict / FewShotClassifier", [run])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines + table(rows) + ["", note, ""]))
    _results.write_json(args.out.with_suffix(".json"), [run], rows)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
