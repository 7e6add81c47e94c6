"""The visual-prompt papers' transfer table for a ViG trained here: methods x datasets, top-1 test accuracy.

For one source backbone (``--backbone-from``, e.g. a ``fewshot train`` run's best.pt) every method of
``--methods`` (``linear``, ``head``, ``full`` and the prompts ``vpt``, ``vpt-shallow``, ``gpf``,
``gpf-plus``, ``vgp``, ``svgp``, ``add``, ``modify``, ``delete``, ``soft-delete``, ``graph``) is adapted by ``fewshot transfer``
on every dataset of ``--datasets`` (the episodic datasets' test classes, ``--train-per-class``
images of each class to train on, the rest to test; ``omniglot`` is omniglot-minimal, read from
``--omniglot-root``), with the same schedule for all. Each (dataset, method) is one ``fewshot
transfer`` run folder under ``--runs-dir`` (a finished one is reused when its settings, source weights'
sha256 and code version match, a killed one of the same resumes), and one MLflow run unless ``--no-track``.

Output (``--out``): ``transfer.json`` (the runs that made it: command, commit, machine, backbone
checkpoint with its sha256, every setting; and one row per cell) and ``transfer.md``, rewritten from
the JSON: the table (rows: methods; columns: datasets, their average, trainable parameters apart from
the classifier, which every method trains), then McNemar's test of every method against
``linear`` (the frozen backbone) and against ``vgp`` on each dataset (``fewshot.compare.mcnemar``:
difference in points and the exact p-value), and the time per run. ``--append`` merges the rows of
another run of the script (same backbone checkpoint and schedule required).

Usage:
    python benchmarks/transfer.py --smoke --out /tmp/transfer      # ~1 min: test_vig trained on glyphs
    python benchmarks/transfer.py --backbone vig_small_28 --backbone-from runs/<run>/best.pt \\
        --datasets glyphs,digits,omniglot --omniglot-root ../shared/data/omniglot --epochs 20 --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before benchmarks/: its matchers.py is a script
sys.path.insert(1, str(Path(__file__).resolve().parent))

import _results  # noqa: E402

METHODS = ("linear", "head", "full", "vpt", "vpt-shallow", "gpf", "gpf-plus", "vgp", "svgp", "provp", "provp-ref", "add", "modify", "delete", "soft-delete", "graph")
DATASETS = ("glyphs", "digits", "omniglot")
SCHEDULE = ("backbone", "train_per_class", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
            "warmup_epochs", "label_smoothing", "augment", "seed", "full_lr")
"""Settings every row of one table shares (``--append`` refuses a run that differs in one)."""
SMOKE = {"backbone": "test_vig", "datasets": "glyphs,digits", "methods": "linear,gpf,vgp", "train_per_class": 2,
         "epochs": 1, "warmup_epochs": 0, "no_track": True}
"""--smoke's defaults; the backbone is a test_vig trained for a few glyphs episodes (``_results.smoke_run``)."""


def parse_list(text: str, valid, what: str) -> list:
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in valid]
    if unknown or not items:
        raise SystemExit(f"unknown {what} {', '.join(unknown) or '(none given)'}; valid: {', '.join(valid)}")
    return items


def run_cell(args, dataset: str, method: str) -> dict:
    """One ``fewshot transfer`` run, reused (:class:`_results.ResultCache`, ``<runs-dir>/cache.json``) when one
    with the same settings, from the same source weights (sha256), by the same code version is finished; a
    killed run of the same key continues from its ``last.pt``, any other starts afresh."""
    from fewshot.transfer import RESULT_FILE, TransferConfig, transfer

    config = TransferConfig(
        dataset=dataset, data_root=args.omniglot_root if dataset == "omniglot" else None, backbone=args.backbone,
        backbone_from=args.backbone_from, adapt=method, train_per_class=args.train_per_class, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.full_lr if method == "full" else args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        augment=args.augment, seed=args.seed, threads=args.threads, run_dir=str(Path(args.runs_dir) / dataset / method),
        track=not args.no_track, tracking_uri=args.tracking_uri, experiment=args.experiment)
    cache = _results.ResultCache(Path(args.runs_dir) / "cache.json", marker=RESULT_FILE)
    key = cache.key(config.settings(), args.backbone_from, args.code)
    hit = cache.get(key)
    if hit:
        print(f"  {dataset} {method}: reusing {hit}", flush=True)
        return json.loads((Path(hit) / RESULT_FILE).read_text())
    folder, started = Path(config.run_dir), Path(config.run_dir) / "cache_key.json"
    killed = (folder / "last.pt").is_file() and not (folder / RESULT_FILE).is_file()
    resume = killed and started.is_file() and started.read_text() == key  # a killed run of this very key continues
    folder.mkdir(parents=True, exist_ok=True)
    started.write_text(key)
    result = transfer(config, resume=resume, progress=False)
    cache.put(key, folder)
    return result


def classifier_params(result: dict, dim: int) -> int:
    return result["num_classes"] * dim + result["num_classes"]


def table(rows: list, datasets: list, methods: list) -> list:
    """Markdown lines: accuracy table, then McNemar against linear and against vgp."""
    cell = {(r["dataset"], r["method"]): r for r in rows}
    lines = ["| method | " + " | ".join(datasets) + " | average | trainable params (+ classifier) |",
             "|---|" + "---|" * (len(datasets) + 2)]
    for m in methods:
        accs = [cell[(d, m)]["test_acc"] if (d, m) in cell else None for d in datasets]
        shown = [f"{100 * a:.2f}" if a is not None else "-" for a in accs]
        avg = f"{100 * sum(accs) / len(accs):.2f}" if None not in accs else "-"
        params = {cell[(d, m)]["params_apart_from_classifier"] for d in datasets if (d, m) in cell}
        lines.append(f"| {m} | " + " | ".join(shown) + f" | {avg} | {', '.join(f'{p:,}' for p in sorted(params))} |")
    for ref in ("linear", "vgp"):
        if ref not in methods:
            continue
        lines += ["", f"McNemar's test against `{ref}` on the same test images (difference in points, exact p):", "",
                  "| method | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
        for m in methods:
            if m == ref:
                continue
            cells = []
            for d in datasets:
                a, b = cell.get((d, m)), cell.get((d, ref))
                cells.append(f"{100 * a['vs'][ref]['mean_diff']:+.2f} (p={a['vs'][ref]['mcnemar_p']:.2g})"
                             if a and b and ref in a.get("vs", {}) else "-")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time per run (s, training and test): "
              + "; ".join(f"{r['dataset']}/{r['method']} {r['wall_seconds']:.0f}" for r in rows), ""]
    return lines


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vig_small_28")
    ap.add_argument("--backbone-from", default=None, help="source backbone weights (runs/<run>/best.pt)")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--omniglot-root", default="../shared/data/omniglot", help="folder of the omniglot-minimal zips")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--train-per-class", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    ap.add_argument("--lr", type=float, default=1e-2, help="learning rate of the classifier and prompt methods")
    ap.add_argument("--full-lr", type=float, default=1e-3, help="learning rate of full fine-tuning")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--augment", default="none", choices=["none", "affine", "elastic"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experiment", default="transfer-table")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store of the runs (default: fewshot's, ./mlruns)")
    ap.add_argument("--no-track", action="store_true")
    ap.add_argument("--runs-dir", default=None, help="run folders (default runs/transfer-table; --smoke: temporary)")
    ap.add_argument("--out", default=None, help="folder of transfer.md / transfer.json (default "
                                                "benchmarks/results/transfer; --smoke: temporary)")
    ap.add_argument("--append", action="store_true", help="add this run's rows to the results already there")
    ap.add_argument("--smoke", action="store_true", help="~1 min: test_vig trained on glyphs, 3 methods, 2 datasets")
    if "--smoke" in argv:  # its settings are defaults: options given with --smoke still apply
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    datasets = parse_list(args.datasets, DATASETS, "dataset")
    methods = parse_list(args.methods, METHODS, "method")
    if args.smoke and args.backbone_from is None:
        args.backbone_from = str(_results.smoke_run(Path(tempfile.mkdtemp(prefix="transfer-src-"))) / "best.pt")
    if args.backbone_from is None:
        raise SystemExit("--backbone-from is required (the source backbone, e.g. runs/<run>/best.pt of fewshot train)")
    args.runs_dir = args.runs_dir or (tempfile.mkdtemp(prefix="transfer-runs-") if args.smoke else "runs/transfer-table")
    out = Path(args.out or (tempfile.mkdtemp(prefix="transfer-") if args.smoke else "benchmarks/results/transfer"))
    out.mkdir(parents=True, exist_ok=True)

    import models
    from fewshot.compare import mcnemar

    args.code = _results.code_version([out])  # once, before any run: what the cache keys on
    runs, old_rows = _results.load_previous(out / "transfer.json", args.append)
    settings = {k: getattr(args, k) for k in SCHEDULE}
    run = _results.provenance(__file__, argv, args.backbone_from, outputs=[out], settings=settings)
    _results.check_append(out / "transfer.json", runs, run, SCHEDULE)
    runs = [*runs, run]
    dim = models.create_backbone(args.backbone).num_features
    rows = []
    for dataset in datasets:
        results = {}
        for method in methods:
            res = run_cell(args, dataset, method)
            results[method] = res
            print(f"  {dataset} {method}: top-1 {100 * res['test_acc']:.2f} % ({res['trainable_params']:,} trainable, "
                  f"{res['wall_seconds']:.0f} s)", flush=True)
        correct = {m: [int(x) for x in (Path(r["run_dir"]) / "test_image_correct.txt").read_text().split()]
                   for m, r in results.items()}
        for method, res in results.items():
            vs = {ref: mcnemar(correct[method], correct[ref]) for ref in ("linear", "vgp")
                  if ref in results and ref != method}
            rows.append({"dataset": dataset, "method": method, "test_acc": res["test_acc"],
                         "test_images": res["test_images"], "num_classes": res["num_classes"],
                         "trainable_params": res["trainable_params"],
                         "params_apart_from_classifier": res["trainable_params"] - classifier_params(res, dim),
                         "wall_seconds": res["wall_seconds"], "run_dir": _results.shown_path(res["run_dir"]),
                         "test_set_id": res["test_set_id"], "vs": vs, "run": len(runs)})
    rows = _results.merge_rows(old_rows, rows, key=lambda r: (r["dataset"], r["method"]))
    _results.write_json(out / "transfer.json", runs, rows)
    all_datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    all_methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    text = _results.markdown_header(f"Transfer: {args.backbone} source backbone, top-1 test accuracy (%)", runs)
    text += [f"Each dataset's test classes, {args.train_per_class} training images per class, the rest test images; "
             f"{args.epochs} epochs, {args.optimizer} (lr {args.lr}, full fine-tuning {args.full_lr}), warm-up "
             f"{args.warmup_epochs} epochs then cosine, batch {args.batch_size}, augment {args.augment}.", ""]
    text += table(rows, all_datasets, all_methods)
    (out / "transfer.md").write_text("\n".join(text))
    print(f"wrote {out / 'transfer.md'} and {out / 'transfer.json'}")


if __name__ == "__main__":
    main()
