"""``fewshot predict``: classify image files among the classes of a support folder, with shipped weights or a
trained run. A thin shell over :class:`fewshot.classifier.FewShotClassifier` (imports neither torch nor the
engine until it runs, so ``fewshot --help`` stays fast)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from .cli_options import parse_pairs

__all__ = ["predict_cmd"]


def _pairs(ctx, param, values):
    return parse_pairs(ctx, param, values) or {}


def _support_files(support: Path) -> dict:
    """``{class name: [image files]}`` of a folder of class folders, at least two of them."""
    from episodes.folder import read_class_folders

    classes = read_class_folders(support)  # DataError for a missing folder, an empty class folder, no class folder
    if len(classes) < 2:
        raise ValueError(f"{support}: only one class folder ({next(iter(classes))}); prediction needs at least 2 "
                         f"classes, each a folder of images")
    return classes


def _query_files(queries, query_dir) -> list:
    from episodes.decode import IMAGE_SUFFIXES, list_image_files

    if query_dir is None:
        return [Path(q) for q in queries]
    files = list_image_files(query_dir)
    if not files:
        raise ValueError(f"{query_dir}: no image files ({' '.join(IMAGE_SUFFIXES)}) in the query folder")
    return files


@click.command("predict")
@click.option("--weights", metavar="NAME", help="Shipped weights, e.g. vig_small_c4_28.omniglot_minimal (names: fewshot weights).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder of a fewshot train run.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), help="Which weights of --run-dir  [default: best]")
@click.option("--support", required=True, type=click.Path(path_type=Path),
              help="Folder of class folders (SUPPORT/<class>/<images>), at least 2 classes of at least 1 image.")
@click.option("--query", "queries", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Image to classify (repeatable).")
@click.option("--query-dir", type=click.Path(path_type=Path), help="Classify every image below this folder.")
@click.option("--top-k", type=click.IntRange(min=1), default=2, show_default=True,
              help="Classes shown per query, best first (2: the prediction and the runner-up).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV rows on stdout (the per-class count goes to stderr).")
@click.option("--matcher", help="Score with this matcher instead of the model's own (names: fewshot matchers).")
@click.option("--matcher-opt", "matcher_opts", multiple=True, metavar="NAME=VALUE", callback=_pairs,
              help="Option of the matcher (repeatable; see fewshot matchers).")
@click.option("--invert", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="Invert images to bright-on-dark: auto does so for grayscale models when the border is bright.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images embedded per forward pass.")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads.")
def predict_cmd(weights, run_dir, checkpoint, support, queries, query_dir, top_k, as_json, as_csv, matcher,
                matcher_opts, invert, batch_size, threads):
    """Classify images among the classes of --support (one folder of images per class).

    Each image is converted and resized to what the model takes; the support images are embedded
    once. One line per query: its path, the predicted class and its score, the runner-up and its score
    (--top-k N: the N best), a score being the class probability (softmax of the matcher's logits); then
    how many queries each class got.

    \b
    Example:
        fewshot predict --weights vig_small_c4_28.omniglot_minimal --support my_classes/ --query-dir new/
        fewshot predict --run-dir runs/<run> --support my_classes/ --query a.png --query b.png --top-k 3 --json
    """
    if (weights is None) == (run_dir is None):
        raise click.UsageError("give exactly one of --weights NAME (shipped weights) or --run-dir DIR (a trained run)")
    if checkpoint is not None and run_dir is None:
        raise click.UsageError("--checkpoint chooses among the weights of --run-dir; shipped --weights have one")
    if bool(queries) == (query_dir is not None):
        raise click.UsageError("give the images to classify with --query PATH (repeatable) or --query-dir DIR, not both")
    if as_json and as_csv:
        raise click.UsageError("--json and --csv are exclusive")
    if threads:
        import torch

        torch.set_num_threads(threads)
    from .classifier import FewShotClassifier

    classes = _support_files(support)
    files = _query_files(queries, query_dir)
    if top_k > len(classes):
        raise click.UsageError(f"--top-k {top_k} is more than the {len(classes)} classes of {support}")
    options = dict(matcher=matcher, matcher_opts=matcher_opts or None,
                   invert={"auto": "auto", "yes": True, "no": False}[invert], batch_size=batch_size)
    if weights is not None:
        clf = FewShotClassifier(weights=weights, **options)
    else:
        clf = FewShotClassifier(run_dir=run_dir, checkpoint=checkpoint or "best", **options)
    clf.fit([f for fs in classes.values() for f in fs], [c for c, fs in classes.items() for _ in fs])
    proba = clf.predict_proba(files)
    order = proba.argsort(1, kind="stable")[:, ::-1][:, :top_k]
    names = [str(c) for c in clf.classes_]
    rows = [{"path": str(f), "top": [{"class": names[j], "score": float(proba[i, j])} for j in order[i]]}
            for i, f in enumerate(files)]
    counts = {name: 0 for name in names}
    for row in rows:
        counts[row["top"][0]["class"]] += 1
    _print(rows, counts, clf, weights, run_dir, as_json, as_csv, top_k)


def _print(rows, counts, clf, weights, run_dir, as_json, as_csv, top_k):
    if as_json:
        click.echo(json.dumps({"weights": weights, "run_dir": None if run_dir is None else str(run_dir),
                               "matcher": getattr(clf.matcher_, "registry_name", type(clf.matcher_).__name__),
                               "classes": list(counts), "predictions": [{**r, "class": r["top"][0]["class"],
                                                                         "score": r["top"][0]["score"]} for r in rows],
                               "counts": counts}, sort_keys=True))
        return
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path"] + [f"{what}_{k}" for k in range(1, top_k + 1) for what in ("class", "score")])
        for r in rows:
            writer.writerow([r["path"]] + [v for t in r["top"] for v in (t["class"], f"{t['score']:.4f}")])
        click.echo(out.getvalue(), nl=False)
    else:
        for r in rows:
            best, rest = r["top"][0], r["top"][1:]
            line = f"{r['path']}: {best['class']} {best['score']:.4f}"
            if rest:
                line += "; " + ("runner-up " if len(rest) == 1 else "then ") + \
                    ", ".join(f"{t['class']} {t['score']:.4f}" for t in rest)
            click.echo(line)
    width = max(len(c) for c in counts)
    click.echo(f"queries per predicted class ({len(rows)} in all):", err=as_csv)
    for name, n in counts.items():
        click.echo(f"  {name:<{width}}  {n}", err=as_csv)
