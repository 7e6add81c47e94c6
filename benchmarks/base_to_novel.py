"""Base-to-novel generalisation of fixed prompts on a frozen ViG (the setting ProVP was built for).

CoOp's base-to-new protocol on omniglot-minimal's test alphabets: each test alphabet's characters are
split in two halves at random (seeded, per alphabet), *base* and *novel*. Every prompt is meta-trained
episodically (``--meta-episodes`` ``--meta-way``-way 1-shot episodes, Adam at ``--lr``, the backbone
frozen) on ``--base-train-per-class`` images of each base character only, plus its extra loss term
(``Prompt.regulariser``: ProVP-Ref's contrastive feature re-formation). Then it is scored, as it is
(amortised), on two fixed episode banks (``--way``-way ``--shot``-shot, ``--query`` queries per class):

- *base*: the base characters' other images, never seen in meta-training;
- *novel*: the novel characters, never seen at all.

Each (method, split) is one folder ``--runs-dir/<split>/<method>`` holding ``result.json`` and
``test_episode_accuracies.txt`` (so ``fewshot compare`` pairs any of them), and the results file
(``--out``: ``results.json``, ``results.md`` with the provenance header) gives base and novel
accuracy, their harmonic mean, and the paired differences episode by episode
(``fewshot.compare.paired_test``) against VGP, VPT deep and no prompt on the same banks.

Usage:
    python benchmarks/base_to_novel.py --smoke                       # seconds: test_vig trained on glyphs
    python benchmarks/base_to_novel.py --backbone-from runs/<omniglot run>/best.pt --meta-episodes 300 \\
        --bank 600 --out benchmarks/results/base_to_novel --runs-dir runs/base-to-novel
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before benchmarks/: its prompts.py is a script
sys.path.insert(1, str(Path(__file__).resolve().parent))

import _results  # noqa: E402

# label -> (prompt, prompt options); the four ProVP rows are the 2 x 2 of progressive (alpha) x re-formation
METHODS = {
    "none": ("none", {}),
    "VPT deep": ("vpt", {}),
    "VGP": ("vgp", {}),
    "ProVP": ("provp", {}),
    "ProVP-Ref": ("provp-ref", {}),
    "VPT deep + Ref": ("provp-ref", {"alpha": 0.0}),
    "ProVP-Ref (temperature 0.1)": ("provp-ref", {"temperature": 0.1}),
    "ProVP (alpha 0.01)": ("provp", {"alpha": 0.01}),
    "ProVP (alpha 1)": ("provp", {"alpha": 1.0}),
    "ProVP-Ref (alpha 1)": ("provp-ref", {"alpha": 1.0}),
}
REFERENCES = ("VGP", "VPT deep", "none")
SPLITS = ("base", "novel")
SAME_FOR_APPEND = ("dataset", "backbone", "way", "shot", "query", "bank", "base_train_per_class", "split_seed",
                   "temperature", "meta_episodes", "meta_way", "lr", "seed")
SMOKE = {"dataset": "glyphs", "data_root": None, "backbone": "test_vig", "bank": 6, "meta_episodes": 2,
         "query": 2, "base_train_per_class": 4, "methods": "none,VPT deep,VGP,ProVP,ProVP-Ref"}
"""--smoke's defaults; the backbone is a test_vig trained for a few glyphs episodes (``_results.smoke_run``)."""


def group_of(class_name: str) -> str:
    """The alphabet of ``Alphabet/character01`` (the whole name when it has no ``/``: one group)."""
    return class_name.split("/")[0] if "/" in class_name else ""


def split_classes(test, seed: int):
    """``(base, novel)`` class indices of ``test``: each group's (alphabet's) classes in a seeded random
    order, the first ceil(n/2) base and the rest novel."""
    g = torch.Generator().manual_seed(seed)
    groups = {}
    for c, name in enumerate(test.class_names):
        groups.setdefault(group_of(name), []).append(c)
    base, novel = [], []
    for name in sorted(groups):
        members = groups[name]
        order = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
        half = (len(order) + 1) // 2
        base += order[:half]
        novel += order[half:]
    return sorted(base), sorted(novel)


def split_images(images, per_class: int, seed: int, names):
    """``(train, held_out)`` ImageSets of ``images``: ``per_class`` images of each class drawn (seeded) for
    training, the others held out."""
    from episodes import ImageSet

    g = torch.Generator().manual_seed(seed + 1)
    train_idx, held_idx = [], []
    for c in range(images.num_classes):
        idx = images.indices_of(c)
        if idx.numel() <= per_class:
            raise SystemExit(f"--base-train-per-class {per_class}: class {images.class_names[c]!r} has only "
                             f"{idx.numel()} images, none would be left to score base accuracy on")
        order = idx[torch.randperm(idx.numel(), generator=g)]
        train_idx.append(order[:per_class])
        held_idx.append(order[per_class:])
    make = lambda ix, name: ImageSet(images.images[torch.cat(ix)], images.labels[torch.cat(ix)],  # noqa: E731
                                     images.class_names, name=name)
    return make(train_idx, names[0]), make(held_idx, names[1])


def meta_train(model, train_set, way: int, episodes: int, lr: float, seed: int) -> None:
    """Episodic training of the prompt (backbone frozen): ``way``-way 1-shot 5-query episodes of
    ``train_set``, query cross-entropy plus the prompt's regulariser, Adam, gradients clipped at 5."""
    from episodes import EpisodeSampler

    params = [p for p in model.parameters() if p.requires_grad]
    if not params or episodes == 0:
        return
    sampler = EpisodeSampler(train_set, way, 1, min(5, int(train_set.class_sizes().min()) - 1), seed=seed)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for i in range(episodes):
        ep = sampler[i]
        logits = model(train_set.images[ep.support], ep.support_labels, train_set.images[ep.query])
        loss = F.cross_entropy(logits, ep.query_labels) + model.regulariser().to(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    model.eval()


def trained_temperature(checkpoint) -> float:
    """The prototype temperature the backbone's fewshot run trained with (its ``config.yaml``), else 1."""
    import yaml

    cfg = Path(checkpoint).with_name("config.yaml")
    saved = yaml.safe_load(cfg.read_text()) if cfg.is_file() else None
    if not isinstance(saved, dict):
        return 1.0
    value = (saved.get("matcher_opts") or {}).get("temperature", saved.get("temperature"))
    return float(value) if value is not None else 1.0


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def table(rows, runs) -> str:
    """Markdown: provenance header, then base / novel / HM per method, then the paired differences."""
    lines = _results.markdown_header("Base-to-novel: fixed prompts on a frozen ViG", runs)
    by = {(r["method"], r["split"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    many = len(runs) > 1
    lines += ["| method | base acc % | novel acc % | HM | trainable | meta-train s |" + (" run |" if many else ""),
              "|---|---|---|---|---|---|" + ("---|" if many else "")]
    for m in methods:
        b, n = by.get((m, "base")), by.get((m, "novel"))
        cell = lambda r: f"{100 * r['acc']:.2f} +- {100 * r['ci95']:.2f}" if r else "-"  # noqa: E731
        hm = f"{100 * harmonic(b['acc'], n['acc']):.2f}" if b and n else "-"
        r = b or n
        lines.append(f"| {m} | {cell(b)} | {cell(n)} | {hm} | {r['trainable']} | {r['meta_train_s']:.0f} |"
                     + (f" {r['run']} |" if many else ""))
    for split in SPLITS:
        refs = [ref for ref in REFERENCES if (ref, split) in by]
        if not refs:
            continue
        lines += ["", f"Paired differences on the {split} bank, episode by episode (points, +- 95% CI, t-test and "
                  "Wilcoxon p):", "", "| method | " + " | ".join(f"vs {ref}" for ref in refs) + " |",
                  "|---|" + "---|" * len(refs)]
        for m in methods:
            r = by.get((m, split))
            if r is None:
                continue
            cells = [_results.paired_cell(r["episode_accuracies"], by[(ref, split)]["episode_accuracies"])
                     if ref != m else "-" for ref in refs]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone-from", default=None, help="the frozen backbone (runs/<omniglot run>/best.pt)")
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--data-root", default="../shared/data/omniglot")
    ap.add_argument("--backbone", default="vig_small_28", help="the architecture of --backbone-from")
    ap.add_argument("--methods", default=",".join(list(METHODS)[:6]), help=f"comma-separated labels: {', '.join(METHODS)}")
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--query", type=int, default=9, help="per class; the held-out base images bound shot + query")
    ap.add_argument("--bank", type=int, default=600, help="episodes in each of the base and novel banks")
    ap.add_argument("--base-train-per-class", type=int, default=10,
                    help="images of each base class to meta-train on; the others score base accuracy")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the base / novel split of each alphabet")
    ap.add_argument("--meta-episodes", type=int, default=300)
    ap.add_argument("--meta-way", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=None,
                    help="prototype matcher temperature (default: the one the backbone's run trained with, from the "
                         "config.yaml beside --backbone-from, else the matcher's own 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs-dir", default=None, help="per-(method, split) folders (default runs/base-to-novel)")
    ap.add_argument("--out", default=None, help="folder of results.md / results.json "
                                                "(default benchmarks/results/base_to_novel)")
    ap.add_argument("--append", action="store_true", help="add this run's rows to the results already in --out")
    ap.add_argument("--smoke", action="store_true", help="seconds: test_vig trained on glyphs, tiny banks")
    if "--smoke" in argv:
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in METHODS]
    if unknown or not wanted:
        ap.error(f"unknown methods {unknown or '(none given)'}; valid: {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    if args.smoke and args.backbone_from is None:
        args.backbone_from = str(_results.smoke_run(Path(tempfile.mkdtemp(prefix="b2n-run-"))) / "best.pt")
    if args.backbone_from is None:
        ap.error("--backbone-from is required (the frozen backbone, e.g. runs/<omniglot run>/best.pt)")
    if args.temperature is None:
        args.temperature = trained_temperature(args.backbone_from)
    out = Path(args.out or (tempfile.mkdtemp(prefix="b2n-") if args.smoke else "benchmarks/results/base_to_novel"))
    runs_dir = Path(args.runs_dir or (tempfile.mkdtemp(prefix="b2n-runs-") if args.smoke else "runs/base-to-novel"))
    out.mkdir(parents=True, exist_ok=True)

    import matchers
    import models
    import prompts
    from episodes import EpisodeSampler, load_splits
    from fewshot.compare import write_scores
    from fewshot.evaluation import evaluate, summarise
    from fewshot.model import count_parameters
    from fewshot.prompting import PromptedModel, load_backbone

    old_runs, old_rows = _results.load_previous(out / "results.json", args.append)
    settings = {k: getattr(args, k) for k in SAME_FOR_APPEND}
    run = _results.provenance(__file__, argv, args.backbone_from, outputs=[out], settings=settings)
    for i, old in enumerate(old_runs, 1):
        differ = [k for k in SAME_FOR_APPEND if old["settings"].get(k) != settings[k]]
        if (old.get("checkpoint") or {}).get("sha256") != (run["checkpoint"] or {}).get("sha256"):
            differ.append("backbone checkpoint (sha256)")
        if differ:
            sys.exit(f"--append: run {i} in {out / 'results.json'} differs in {', '.join(differ)}; "
                     "rows of different set-ups do not belong in one table")
    runs = [*old_runs, run]

    test = load_splits(args.dataset, args.data_root, None).test
    base_cls, novel_cls = split_classes(test, args.split_seed)
    base_all = test.subset(base_cls, name=f"{test.name} base")
    base_train, base_held = split_images(base_all, args.base_train_per_class, args.split_seed,
                                         (f"{test.name} base (training images)", f"{test.name} base (held out)"))
    novel = test.subset(novel_cls, name=f"{test.name} novel")
    scored = {"base": base_held, "novel": novel}
    banks = {s: EpisodeSampler(scored[s], args.way, args.shot, args.query, seed=args.seed).bank(args.bank)
             for s in SPLITS}
    print(f"base {len(base_cls)} classes ({len(base_train)} training images, {len(base_held)} held out), "
          f"novel {len(novel_cls)} classes; banks of {args.bank} {args.way}-way {args.shot}-shot episodes; "
          f"meta-training {args.meta_episodes} {args.meta_way}-way 1-shot episodes", flush=True)
    rows = []
    for label in wanted:
        name, opts = METHODS[label]
        torch.manual_seed(args.seed)
        c, h, _ = test.image_shape
        backbone = load_backbone(models.create_backbone(args.backbone, img_size=h, in_chans=c), args.backbone_from)
        model = PromptedModel(backbone, prompts.create(name, backbone, **opts),
                              matchers.create("prototype", temperature=args.temperature), seed=args.seed)
        t0 = time.perf_counter()
        meta_train(model, base_train, args.meta_way, args.meta_episodes, args.lr, args.seed)
        meta_s = time.perf_counter() - t0
        trainable = count_parameters(model)["trainable"]
        for split in SPLITS:
            accs = evaluate(model, scored[split], banks[split]).accuracies
            mean, ci = summarise(accs)
            folder = runs_dir / split / label.replace(" ", "_").replace("(", "").replace(")", "")
            result = {"kind": "base-to-novel", "method": label, "prompt": name, "prompt_options": opts,
                      "split": split, "test_acc": mean, "test_ci95": ci, "test_episodes": len(accs),
                      "test_bank_id": banks[split].bank_id, "test_way": args.way, "test_shot": args.shot,
                      "classes": (base_cls if split == "base" else novel_cls), "backbone_from": args.backbone_from,
                      "meta_episodes": args.meta_episodes, "trainable_params": trainable}
            write_scores(folder, accs.tolist(), result)
            rows.append({"method": label, "prompt": name, "options": opts, "split": split, "acc": mean, "ci95": ci,
                         "episodes": len(accs), "bank_id": banks[split].bank_id, "trainable": trainable,
                         "meta_train_s": meta_s, "run_dir": _results.shown_path(folder), "run": len(runs),
                         "episode_accuracies": [round(a, 6) for a in accs.tolist()]})
            print(f"  {label:<28} {split:<5} {100 * mean:6.2f} +- {100 * ci:5.2f}  ({trainable} trainable, "
                  f"meta-training {meta_s:.0f} s) -> {folder}", flush=True)
    rows = _results.merge_rows(old_rows, rows, key=lambda r: (r["method"], r["split"]))
    _results.write_json(out / "results.json", runs, rows,
                        split={"base": [test.class_names[c] for c in base_cls],
                               "novel": [test.class_names[c] for c in novel_cls]})
    (out / "results.md").write_text(table(rows, runs))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    print(json.dumps({r["method"] + "/" + r["split"]: round(100 * r["acc"], 2) for r in rows}))


if __name__ == "__main__":
    main()
