"""Training-step speed and peak memory of our ViG against the authors' code, same weights, one run.

For each model the authors' implementation (``--official-dir``: the ``vig_pytorch`` folder of
huawei-noah/Efficient-AI-Backbones, never part of this repository) is built with random weights,
the same weights are loaded into ours through ``checkpoint_filter_fn`` (ours then put in its
``memory_format``, as ``fewshot.model.build_model`` does for training), and the two are checked to
give the same logits (eval mode, float32, ``--check-tol`` relative) before anything is timed. Then:

* **step s**: one training step, forward + ``logits.square().mean()`` + backward, train mode, on a
  ``[--batch, 3, 224, 224]`` batch; median of ``--reps`` steps after one warm-up; ours and theirs
  alternate step by step (interleaved) so machine noise hits both alike;
* **k-NN share**: the part of our forward spent building the graphs (the ``knn_graph`` /
  ``knn_to_keys`` calls, timed by wrapping them), from one extra forward;
* **peak MiB**: on CUDA ``torch.cuda.max_memory_allocated`` over one step; on CPU the rise of the
  process's peak resident memory (VmHWM, reset just before) during one step over the resident
  memory before it, in a fresh subprocess that builds only that model (Linux).

The small-image variants (``vig_small_28``, ``pvig_small_28``, ...) have no counterpart in the
authors' code (it is fixed to 224x224 inputs), so they get our figures only.

The table goes to ``--out`` (default ``benchmarks/results/vig_speed.md``) under a header that
records the command, the commit and the machine; the rows, with every timed step, go to the JSON
beside it. ``--smoke`` times ``test_vig`` for ``--reps`` steps (seconds) into a temporary folder.

Example:
    python benchmarks/vig_speed.py --official-dir /tmp/official/vig_pytorch --batch 8 --reps 3
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
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

OFFICIAL = {"vig_ti_224_gelu", "vig_s_224_gelu", "vig_b_224_gelu", "pvig_ti_224_gelu", "pvig_s_224_gelu",
            "pvig_m_224_gelu", "pvig_b_224_gelu"}


def load_official(official_dir: str):
    """Import the authors' ``vig`` and ``pyramid_vig`` modules with shims for current numpy/timm,
    without letting them register their names in timm (ours keep theirs)."""
    import numpy as np
    import timm.models.registry as registry

    if not (Path(official_dir) / "vig.py").is_file() or not (Path(official_dir) / "gcn_lib").is_dir():
        sys.exit(f"error: --official-dir {official_dir} must be the vig_pytorch folder (vig.py, pyramid_vig.py, gcn_lib/)")
    if not hasattr(np, "float"):  # their position embedding still uses the removed alias
        np.float = float
    saved = registry.register_model
    registry.register_model = lambda fn: fn
    sys.path.insert(0, official_dir)
    try:
        import pyramid_vig
        import vig
    finally:
        registry.register_model = saved
        sys.path.remove(official_dir)
    return vig, pyramid_vig


def build_pair(name: str, official_dir: str, device: str):
    """(theirs, ours) with the same random weights, or (None, ours) for our small variants."""
    import timm

    import models  # noqa: F401  (registers ours)

    torch.manual_seed(0)
    if name not in OFFICIAL:
        return None, _as_trained(timm.create_model(name)).to(device)
    vig, pyramid_vig = load_official(official_dir)
    module = pyramid_vig if name.startswith("pvig") else vig
    with contextlib.redirect_stdout(io.StringIO()):  # their constructors print
        theirs = getattr(module, name)()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"vig_speed_{name}_{os.getpid()}.pth"
    torch.save(theirs.state_dict(), path)
    try:
        ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    finally:
        path.unlink()
    return theirs.to(device), _as_trained(ours).to(device)


def _as_trained(model):
    """Ours in its preferred ``memory_format`` (the ViG's stem channels-last), as ``fewshot.model.build_model``
    puts it for training; the pyramid ViG has none and stays as built."""
    fmt = getattr(model, "memory_format", None)
    return model if fmt is None else model.to(memory_format=fmt)


def check_same(theirs, ours, device, tol):
    """Relative max difference of the logits in float64, eval mode (in float32 the two distance
    formulas round differently, so near-tied neighbours can flip and the outputs drift apart)."""
    import copy

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    theirs, ours = copy.deepcopy(theirs).double().eval(), copy.deepcopy(ours).double().eval()
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    rel = ((a - b).abs().max() / a.abs().max()).item()
    if rel > tol:
        sys.exit(f"error: outputs differ ({rel:.2e} relative > {tol}); the comparison would be meaningless")
    return rel


def step(model, x):
    model.train()
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def knn_share(model, x):
    """Fraction of one training-mode forward spent in the k-NN graph functions."""
    from models import pvig, vig

    spent = [0.0]

    def wrap(fn):
        def timed_fn(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            spent[0] += time.perf_counter() - t
            return out
        return timed_fn

    originals = vig.knn_graph, pvig.knn_to_keys
    vig.knn_graph, pvig.knn_to_keys = wrap(originals[0]), wrap(originals[1])
    try:
        model.train()
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        total = time.perf_counter() - t
    finally:
        vig.knn_graph, pvig.knn_to_keys = originals
    return spent[0] / total


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory(name, which, args) -> float:
    """Peak memory (MiB) of one training step of ``which`` ('ours' / 'theirs'), in a fresh process on CPU."""
    if args.device == "cuda":
        theirs, ours = build_pair(name, args.official_dir, "cuda")
        model = ours if which == "ours" else theirs
        x = torch.randn(args.batch, model_in_chans(name), *model_size(name), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(model, x)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    out = subprocess.run([sys.executable, __file__, "--memory-child", name, which, "--batch", str(args.batch),
                          "--official-dir", args.official_dir or ""], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if out.returncode:
        sys.exit(f"error: memory measurement of {which} {name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])


def memory_child(name, which, batch, official_dir):
    """Build only the measured model, reset the kernel's peak-RSS mark (``/proc/self/clear_refs``),
    run one step, print VmHWM minus the resident memory before the step, in MiB."""
    if which == "theirs":
        vig, pyramid_vig = load_official(official_dir)
        with contextlib.redirect_stdout(io.StringIO()):
            model = getattr(pyramid_vig if name.startswith("pvig") else vig, name)()
    else:
        import timm

        import models  # noqa: F401

        model = _as_trained(timm.create_model(name))
    x = torch.randn(batch, model_in_chans(name), *model_size(name))
    before = _rss_mib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step(model, x)
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    print(max(0.0, hwm - before))


def model_size(name):
    import timm

    import models  # noqa: F401  (our pretrained_cfg gives the input size)

    return timm.models.get_pretrained_cfg(name).input_size[1:]


def model_in_chans(name):
    import timm

    import models  # noqa: F401

    return timm.models.get_pretrained_cfg(name).input_size[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-dir", help="the vig_pytorch folder of huawei-noah/Efficient-AI-Backbones")
    p.add_argument("--models", default="vig_ti_224_gelu,pvig_ti_224_gelu,vig_small_28,pvig_small_28,pvig_small_84")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--check-tol", type=float, default=1e-4)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", default=None, help="Markdown file (default benchmarks/results/vig_speed.md; with --smoke "
                                               "a temporary folder); the JSON rows go beside it")
    p.add_argument("--smoke", action="store_true", help="seconds: test_vig, batch 2, --reps steps, no memory")
    p.add_argument("--memory-child", nargs=2, metavar=("NAME", "WHICH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(*args.memory_child, args.batch, args.official_dir)
    if args.smoke:
        args.models, args.batch, args.no_memory = "test_vig", 2, True  # --reps as given (default 3)
    if args.out is None:
        args.out = (Path(tempfile.mkdtemp(prefix="vig_speed-")) / "vig_speed.md" if args.smoke
                    else REPO / "benchmarks/results/vig_speed.md")
    run = _results.provenance(__file__, sys.argv[1:] if argv is None else argv, checkpoint=None,
                              official_code=args.official_dir or "not given (our figures only)")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if any(n in OFFICIAL for n in names) and not args.official_dir:
        sys.exit("error: --official-dir is needed to compare against the authors' code "
                 "(or list only small variants in --models)")
    rows = []
    for name in names:
        theirs, ours = build_pair(name, args.official_dir, args.device)
        rel = check_same(theirs, ours, args.device, args.check_tol) if theirs is not None else None
        x = torch.randn(args.batch, model_in_chans(name), *model_size(name), device=args.device)
        pair = [("ours", ours)] + ([("theirs", theirs)] if theirs is not None else [])
        for _, m in pair:  # warm-up
            step(m, x)
        times = {k: [] for k, _ in pair}
        for _ in range(args.reps):  # interleaved
            for k, m in pair:
                times[k].append(timed(lambda: step(m, x), args.device))
        row = {"model": name, "batch": args.batch, "device": args.device, "threads": args.threads,
               "same_logits_rel": rel, "ours_s": statistics.median(times["ours"]),
               "knn_share": knn_share(ours, x), "ours_steps_s": times["ours"]}
        if theirs is not None:
            row["theirs_s"] = statistics.median(times["theirs"])
            row["theirs_steps_s"] = times["theirs"]
            row["speedup"] = row["theirs_s"] / row["ours_s"]
        if not args.no_memory:
            row["ours_mib"] = peak_memory(name, "ours", args)
            if theirs is not None:
                row["theirs_mib"] = peak_memory(name, "theirs", args)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_steps_s")}), file=sys.stderr)
    text = markdown(run, rows, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    _results.write_json(out.with_suffix(".json"), [run], rows)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.json')}")


def markdown(run: dict, rows: list, args) -> str:
    lines = _results.markdown_header("ViG training step: ours against the authors' code", [run])
    lines += [f"Training step (forward, `logits.square().mean()`, backward; train mode) on a batch of "
              f"{args.batch}, {args.device}, {args.threads} thread(s): median of {args.reps} steps after a warm-up, "
              "ours and theirs interleaved step by step, the same random weights (checked equal in float64 "
              "before timing: `same logits`).", "",
              "| model | batch | ours s/step | theirs s/step | speed-up | same logits (rel.) | k-NN share (ours) "
              "| ours MiB | theirs MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda k, fmt: (fmt.format(r[k]) if r.get(k) is not None else "-")  # noqa: E731
        lines.append(f"| {r['model']} | {r['batch']} | {f('ours_s', '{:.3f}')} | {f('theirs_s', '{:.3f}')} | "
                     f"{f('speedup', '{:.2f}x')} | {f('same_logits_rel', '{:.1e}')} | {f('knn_share', '{:.0%}')} | "
                     f"{f('ours_mib', '{:.0f}')} | {f('theirs_mib', '{:.0f}')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
