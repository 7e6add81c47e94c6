"""Evaluation throughput of Conv-4 ProtoNet: our embed-once path against easyfsl's per-episode loop.

Both score the same EpisodeBank of omniglot-minimal's test split with the same Conv-4 weights
(``models.conv4``, untrained, seeded) and the same number of torch threads; easyfsl's
``PrototypicalNetworks`` wraps our backbone and is called once per episode, as its own evaluation
loop does. ``same episodes`` counts the episodes whose accuracies are identical: easyfsl ranks by
the Euclidean distance and we by its square, so they can differ only at float near-ties (2 of
2000 5-way 1-shot episodes with the untrained Conv-4, one query each).

easyfsl is not a dependency: ``bash benchmarks/setup_easyfsl.sh`` installs it (without its
dependencies) into ``benchmarks/.easyfsl``, which this script puts on ``sys.path``.

The table goes to stdout and, with ``--out``, to that file, headed by the command, commit, date
and machine (``benchmarks/_results.py``): the file is the script's whole output.

Usage:
    python benchmarks/throughput.py --quick --out benchmarks/results/throughput_quick.txt   # 200 episodes per bank
    python benchmarks/throughput.py --episodes 2000    # default
    python benchmarks/throughput.py --settings 5x1     # one setting
    python benchmarks/throughput.py --smoke --out /tmp/t.txt   # seconds: glyphs, 4 episodes (easyfsl optional)
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks" / ".easyfsl"))
sys.path.insert(2, str(ROOT / "benchmarks"))

import _results  # noqa: E402

from episodes import EpisodeSampler, load_splits  # noqa: E402
from fewshot.evaluation import evaluate  # noqa: E402
from fewshot.model import EpisodicModel, to_input  # noqa: E402
from matchers import PrototypeMatcher  # noqa: E402
from models import create_backbone  # noqa: E402


def easyfsl_eval(backbone, images, bank) -> torch.Tensor:
    """easyfsl's loop: per episode, process_support_set then forward on the queries."""
    from easyfsl.methods import PrototypicalNetworks

    net = PrototypicalNetworks(backbone).eval()
    accs = torch.empty(len(bank))
    with torch.no_grad():
        for i in range(len(bank)):
            ep = bank[i]
            net.process_support_set(to_input(images.images[ep.support]), ep.support_labels)
            pred = net(to_input(images.images[ep.query])).argmax(-1)
            accs[i] = (pred == ep.query_labels).float().mean()
    return accs


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 episodes per bank")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: glyphs, 4 episodes per bank; without easyfsl its columns read '-'")
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default="5x1,20x5", help="way x shot settings, comma-separated")
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    ap.add_argument("--out", default=None, help="also write the output (with its provenance header) to this file")
    args = ap.parse_args(argv)
    episodes = 4 if args.smoke else 200 if args.quick else args.episodes
    if args.smoke:
        args.dataset, args.data_root = "glyphs", None
    torch.set_num_threads(args.threads)
    try:
        import easyfsl  # noqa: F401
        have_easyfsl = True
    except ImportError:
        if not args.smoke:
            sys.exit("easyfsl not found: run `bash benchmarks/setup_easyfsl.sh` first")
        have_easyfsl = False
    lines = _results.text_header([_results.provenance(__file__, argv, None, backbone="Conv-4, seeded (torch.manual_seed(0))")])

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    images = load_splits(args.dataset, args.data_root, 28).test
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_chans=images.images.shape[1]).eval()
    model = EpisodicModel(backbone, PrototypeMatcher())
    say(f"CPU: {_results.cpu_model()}, torch {torch.__version__}, threads {args.threads}, {episodes} episodes/bank, "
        f"{args.dataset} test split" + ("" if have_easyfsl else "; easyfsl not installed"))
    say(f"{'setting':<16}{'distinct imgs':>14}{'ours ep/s':>11}{'easyfsl ep/s':>14}{'ratio':>8}{'same episodes':>15}")
    for way, shot in (tuple(int(v) for v in item.split("x")) for item in args.settings.split(",")):
        bank = EpisodeSampler(images, way, shot, 15, seed=0).bank(episodes)
        distinct = torch.unique(torch.cat([bank.support.flatten(), bank.query.flatten()])).numel()
        t = time.perf_counter()
        ours = evaluate(model, images, bank, per_episode=False).accuracies
        t_ours = time.perf_counter() - t
        if have_easyfsl:
            t = time.perf_counter()
            theirs = easyfsl_eval(backbone, images, bank)
            t_theirs = time.perf_counter() - t
            # easyfsl scores with the plain Euclidean distance and we with its square: the same argmax
            # except at float near-ties, so a rare episode may differ by one query; count them
            same = f"{int((ours == theirs).sum())} of {len(bank)}"
            theirs_cells = f"{episodes / t_theirs:>14.1f}{t_theirs / t_ours:>7.1f}x"
        else:
            same, theirs_cells = "-", f"{'-':>14}{'-':>8}"
        say(f"{f'{way}-way {shot}-shot':<16}{distinct:>14}{episodes / t_ours:>11.1f}{theirs_cells}{same:>15}")
    say(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
