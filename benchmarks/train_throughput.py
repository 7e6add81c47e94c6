"""Training throughput of a Conv-4 ProtoNet: our training loop against easyfsl's and the compute floor.

Episodes per second and peak resident memory of one Adam training step per episode on
omniglot-minimal's train split (28x28), 5-way 1-shot and 20-way 5-shot, 15 queries per class.
Every side trains the same model from the same initial weights (Conv-4 built by
``fewshot.model.build_model`` after ``torch.manual_seed(0)``, checked by a fingerprint of the
initial state), with Adam at lr 1e-3 and a constant learning rate, on the same number of threads:

* ``ours``: ``fewshot.training._train_loop`` itself, the loop ``fewshot train`` runs, on a run
  built by ``fewshot.training.prepare`` (the loader's cached uint8 image tensor, EpisodeSampler
  indices, ``_episode_batch``, ``EpisodicModel`` + ``PrototypeMatcher`` whose ``embed`` applies
  ``fewshot.model.to_input``, cross-entropy, Adam). Settings that would do extra work are off or
  neutral: no validation, no tracking, no gradient clipping (easyfsl's loop has none), a constant
  learning-rate schedule. Its remaining bookkeeping is measured with it: the per-step reseeding,
  two ``.item()`` calls, and one atomic checkpoint (``last.pt`` in a temporary folder) at the end
  of every call, i.e. once per round (its cost is measured separately and reported).
* ``easyfsl``: easyfsl 1.5.0's training path as its tutorial loop runs it: a ``FewShotDataset``
  over the same uint8 images (``__getitem__`` converts one image with ``to_input``), easyfsl's
  ``TaskSampler`` as the ``batch_sampler`` of a torch ``DataLoader`` with its
  ``episodic_collate_fn`` (``num_workers=0``, as ours samples in the main process too), and
  ``PrototypicalNetworks(backbone)``: ``zero_grad``, ``process_support_set``, forward on the
  queries, cross-entropy, ``backward``, ``step``, ``loss.item()``.
* ``floor``: the same model's forward + backward + Adam step on one episode pre-stacked and
  pre-converted to float in memory: no sampling, indexing or conversion.
* ``ours+channels_last``: ``ours`` with the model put in ``torch.channels_last`` memory format; since
  ``build_model`` applies Conv-4's ``memory_format`` (channels-last) this is the same as ``ours``, and
  its ratio to ``ours`` shows how far two identical sides differ in one run.
* ``ours+glibc_defaults``: ``ours`` with glibc's own malloc behaviour (``FEWSHOT_MALLOC=default``
  in its worker): what ``ours`` was before ``fewshot._malloc.tune_malloc``, which ``prepare`` (and
  the CLI) now call at start-up so that allocations of up to 32 MiB are reused from the heap instead
  of being mapped and zero-filled afresh every step. ``ours`` runs in the default environment (no
  variables set); the ratio ``ours / glibc_defaults`` and the page faults per episode of both are
  the before and after of that call.
* ``ours+compile`` (only with ``--compile``): ``ours`` with the model wrapped by ``torch.compile``
  (the untimed warm-up episodes include the compilation, with an empty inductor cache, so the
  warm-up seconds show the full compile time). The matcher's label check (``int(labels.max())``)
  breaks the graph in two; dynamo logs that warning.

Every side runs in the default environment; ``easyfsl`` and ``ours+glibc_defaults`` with glibc's
malloc defaults (``FEWSHOT_MALLOC=default``: their workers borrow ``prepare`` for the images and the
initial weights, and easyfsl's users do not get our start-up call), ``ours``, ``floor`` and
``ours+channels_last`` with the tuning ``prepare`` applies.

Each side runs in its own worker process (the script re-invokes itself with ``--side``), so its
peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the parent drives the workers in
rounds, one worker at a time, rotating the order (A,B,C / B,C,A / ...), so machine noise hits all
sides alike. Rates are episodes per second of the worker's CPU time (user + kernel, ``getrusage``),
so that other jobs on a shared machine cost wall time but not these figures, while page faults, whose
zero-filling is kernel time, still count; episodes per wall second and the CPU / wall share are
recorded beside them. A rate is the median over rounds; a ratio is the median over rounds of the
ratio within each round. Each round also records the worker's minor page faults and kernel CPU time:
large activations are fresh ``mmap`` pages every step, and zero-filling them is kernel time. Results go to ``--out`` (JSON) and a Markdown table is printed.

easyfsl is not a dependency: ``bash benchmarks/setup_easyfsl.sh`` installs it into
``benchmarks/.easyfsl``, which this script puts on ``sys.path``.

The JSON records the command, commit, date and machine (``provenance``, from
``benchmarks/_results.py``) beside the results, so the file is the script's whole output.

Usage:
    python benchmarks/train_throughput.py --smoke --out /tmp/t.json   # seconds: glyphs, 5-way 1-shot, 1 x 1 episode
    python benchmarks/train_throughput.py --quick               # 3 rounds x 15 episodes per side
    python benchmarks/train_throughput.py                       # 3 rounds x 100 episodes per side
    python benchmarks/train_throughput.py --compile --threads 2 # also torch.compile, 2 threads
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks" / ".easyfsl"))
sys.path.insert(2, str(ROOT / "benchmarks"))

import _results  # noqa: E402

from episodes import load_splits  # noqa: E402
from episodes.imageset import fingerprint_tensors  # noqa: E402
from fewshot.checkpoint import save_atomic  # noqa: E402
from fewshot.config import Config  # noqa: E402
from fewshot.model import to_input  # noqa: E402
from fewshot.tracking import NullTracker  # noqa: E402
from fewshot.training import _episode_batch, _state, _train_loop, prepare  # noqa: E402

SETTINGS = ((5, 1), (20, 5))
QUERY = 15
LR = 1e-3
SEED = 0
WARMUP = 3  # untimed episodes per worker before the first round (compilation, first-touch, allocator)
SIDES = ("ours", "easyfsl", "floor", "ours+channels_last", "ours+glibc_defaults")
COMPILE_SIDE = "ours+compile"
GLIBC_DEFAULTS = {"FEWSHOT_MALLOC": "default"}
"""Environment of the workers that keep glibc's malloc defaults (``fewshot._malloc.tune_malloc`` then
does nothing): easyfsl, as its users run it, and ``ours+glibc_defaults``, ours before the tuning."""
DEFAULT_MALLOC_SIDES = ("easyfsl", "ours+glibc_defaults")


# ----------------------------------------------------------------------------- shared helpers

def cpu_model() -> str:
    """The ``Model name`` line of ``lscpu`` (what throughput.py reports)."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "unknown")


def _rss_mib() -> float:
    """Current resident set size of this process (VmRSS), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _config(args, way: int, shot: int, run_dir: str) -> Config:
    """The run configuration every side shares (ours trains it with ``_train_loop``): Conv-4 and the
    prototype matcher named, since a run that names no backbone trains the method (``fewshot.config.METHOD``)."""
    return Config(dataset=args.dataset, data_root=args.data_root, backbone="conv4", matcher="prototype",
                  way=way, shot=shot, query=QUERY, lr=LR,
                  grad_clip=0.0, val_episodes=0, eval_episodes=1, checkpoint_every=10 ** 9, track=False,
                  device="cpu", threads=args.threads, seed=SEED, run_dir=run_dir)


# ----------------------------------------------------------------------------- the sides (run in workers)

class OursSide:
    """``fewshot.training._train_loop`` on a run from ``prepare``; ``variant`` '', 'channels_last' or 'compile'."""

    def __init__(self, args, way: int, shot: int, variant: str):
        self.tmp = tempfile.mkdtemp(prefix="train_throughput-")
        self.run = prepare(_config(args, way, shot, self.tmp))
        self.fingerprint = fingerprint_tensors(*self.run.model.state_dict().values())
        if variant == "channels_last":
            self.run.model = self.run.model.to(memory_format=torch.channels_last)
        elif variant == "compile":
            self.run.model = torch.compile(self.run.model)
        self.opt = torch.optim.Adam([p for p in self.run.model.parameters() if p.requires_grad], lr=LR)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0)  # constant lr, as easyfsl's loop
        self.step = 0

    def train(self, n: int) -> None:
        self.run.config = self.run.config.replace(episodes=self.step + n)  # _train_loop stops at config.episodes
        self.step = _train_loop(self.run, self.opt, self.sched, self.step, {"acc": -1.0, "step": -1},
                                NullTracker(), progress=False)

    def extra(self) -> dict:
        """Seconds of the one checkpoint ``_train_loop`` writes at the end of every round (median of 3)."""
        times = []
        for _ in range(3):
            t = time.perf_counter()
            save_atomic(_state(self.run, self.opt, self.sched, self.step, {"acc": -1.0, "step": -1}, None),
                        Path(self.tmp) / "last.pt")
            times.append(time.perf_counter() - t)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return {"checkpoint_s": statistics.median(times)}


class FloorSide:
    """Forward + backward + Adam step of the same model on one pre-stacked, pre-converted episode."""

    def __init__(self, args, way: int, shot: int):
        tmp = tempfile.mkdtemp(prefix="train_throughput-")
        run = prepare(_config(args, way, shot, tmp))
        shutil.rmtree(tmp, ignore_errors=True)
        self.model = run.model.train()
        self.fingerprint = fingerprint_tensors(*self.model.state_dict().values())
        s_img, self.s_lab, q_img, self.q_lab = _episode_batch(run, 0)
        self.s_img, self.q_img = to_input(s_img), to_input(q_img)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)

    def train(self, n: int) -> None:
        for _ in range(n):
            loss = F.cross_entropy(self.model(self.s_img, self.s_lab, self.q_img), self.q_lab)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def extra(self) -> dict:
        return {}


def _easyfsl_task_sampler():
    """easyfsl 1.5.0's ``TaskSampler``, shimmed for torch versions whose ``Sampler`` takes no arguments.

    ``TaskSampler.__init__`` calls ``super().__init__(data_source=None)``; since torch removed
    ``Sampler.__init__``'s ``data_source`` parameter that raises ``TypeError``. The shim only puts
    a class between ``TaskSampler`` and ``Sampler`` in the method resolution order whose
    ``__init__`` accepts (and drops) that argument; nothing else of easyfsl's sampler changes.
    """
    from easyfsl.samplers import TaskSampler
    from torch.utils.data import Sampler

    class _AcceptsDataSource(Sampler):
        def __init__(self, data_source=None):
            super().__init__()

    class CompatTaskSampler(TaskSampler, _AcceptsDataSource):
        """easyfsl's TaskSampler; MRO: CompatTaskSampler, TaskSampler, _AcceptsDataSource, Sampler."""

    return CompatTaskSampler


class EasyfslSide:
    """easyfsl's tutorial training loop: TaskSampler + DataLoader + PrototypicalNetworks."""

    def __init__(self, args, way: int, shot: int):
        from easyfsl.datasets import FewShotDataset
        from easyfsl.methods import PrototypicalNetworks
        from torch.utils.data import DataLoader

        class CachedImages(FewShotDataset):
            """The loader's uint8 images as an easyfsl dataset: one image (converted by to_input) per item."""

            def __init__(self, images):
                self.images, self.labels = images.images, images.labels.tolist()

            def __getitem__(self, item):
                return to_input(self.images[item]), self.labels[item]

            def __len__(self):
                return len(self.labels)

            def get_labels(self):
                return self.labels

        tmp = tempfile.mkdtemp(prefix="train_throughput-")
        run = prepare(_config(args, way, shot, tmp))  # same images and the same initial weights as ours
        shutil.rmtree(tmp, ignore_errors=True)
        backbone = run.model.backbone
        self.fingerprint = fingerprint_tensors(*run.model.state_dict().values())
        random.seed(SEED)  # easyfsl's TaskSampler draws with Python's global random
        dataset = CachedImages(run.splits.train)
        sampler = _easyfsl_task_sampler()(dataset, n_way=way, n_shot=shot, n_query=QUERY, n_tasks=10 ** 9)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0, collate_fn=sampler.episodic_collate_fn)
        self.batches = iter(loader)
        self.model = PrototypicalNetworks(backbone).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.losses: List[float] = []

    def train(self, n: int) -> None:
        for _ in range(n):
            support_images, support_labels, query_images, query_labels, _ = next(self.batches)
            self.opt.zero_grad()
            self.model.process_support_set(support_images, support_labels)
            scores = self.model(query_images)
            loss = F.cross_entropy(scores, query_labels)
            loss.backward()
            self.opt.step()
            self.losses.append(loss.item())

    def extra(self) -> dict:
        return {}


def make_side(name: str, args, way: int, shot: int):
    if name == "ours":
        return OursSide(args, way, shot, "")
    if name == "ours+glibc_defaults":  # the same code; the worker's environment differs (Worker)
        return OursSide(args, way, shot, "")
    if name == "ours+channels_last":
        return OursSide(args, way, shot, "channels_last")
    if name == COMPILE_SIDE:
        return OursSide(args, way, shot, "compile")
    if name == "floor":
        return FloorSide(args, way, shot)
    if name == "easyfsl":
        return EasyfslSide(args, way, shot)
    raise ValueError(f"unknown side {name!r}")


def worker(args) -> None:
    """One side in its own process: set up, warm up, then run ``run N`` commands read from stdin.

    Replies are one JSON line each on the original stdout; anything else printed goes to stderr.
    """
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        reply.write(json.dumps(obj) + "\n")

    torch.set_num_threads(args.threads)
    import_rss = _rss_mib()
    try:
        t = time.perf_counter()
        side = make_side(args.side, args, args.way, args.shot)
        setup_s = time.perf_counter() - t
        t = time.perf_counter()
        side.train(WARMUP)
        warmup_s = time.perf_counter() - t
    except Exception as e:  # reported, e.g. torch.compile without a working compiler
        send({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        return
    send({"ready": True, "fingerprint": side.fingerprint, "setup_s": setup_s, "warmup_s": warmup_s,
          "threads": torch.get_num_threads()})
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            try:
                before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                side.train(int(cmd[1]))
                seconds, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
                send({"seconds": seconds, "minflt": after.ru_minflt - before.ru_minflt,
                      "sys_s": after.ru_stime - before.ru_stime,
                      "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime})
            except Exception as e:
                send({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
                return
        elif cmd[0] == "quit":
            extra = side.extra()
            send({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
                  "import_rss_mib": import_rss, **extra})
            return


# ----------------------------------------------------------------------------- the parent

class Worker:
    """A side's worker process, driven line by line."""

    def __init__(self, name: str, args, way: int, shot: int):
        self.name = name
        cmd = [sys.executable, str(Path(__file__).resolve()), "--side", name, "--way", str(way), "--shot", str(shot),
               "--threads", str(args.threads), "--dataset", args.dataset]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        env = dict(os.environ)
        self.cache = None
        if name in DEFAULT_MALLOC_SIDES:
            env.update(GLIBC_DEFAULTS)
        if name == COMPILE_SIDE:  # an empty inductor cache: the warm-up then shows the full compile time
            self.cache = env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="train_throughput-inductor-")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"worker exited with status {self.proc.wait()} (see stderr)"}
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        return self._read()

    def close(self) -> dict:
        """Ask for the worker's final report (peak RSS, ...) and wait for it to exit."""
        try:
            out = {} if "error" in self.info else self.ask("quit")
            self.proc.stdin.close()
        except BrokenPipeError:  # the worker already exited after reporting an error
            out = {}
        self.proc.wait()
        if self.cache:
            shutil.rmtree(self.cache, ignore_errors=True)
        return out


def measure_setting(args, way: int, shot: int, sides: List[str], rounds: int, episodes: int) -> dict:
    """Interleaved rounds of every side on one (way, shot); per-side rates, RSS and the ratios."""
    workers: Dict[str, Worker] = {}
    result = {"way": way, "shot": shot, "query": QUERY, "sides": {}, "ratios": {}}
    for name in sides:  # one at a time: set-ups and warm-ups do not overlap
        w = Worker(name, args, way, shot)
        print(f"  {way}-way {shot}-shot {name}: {json.dumps({k: v for k, v in w.info.items() if k != 'traceback'})}",
              file=sys.stderr, flush=True)
        if "error" in w.info:
            result["sides"][name] = {"error": w.info["error"]}
            w.close()
            continue
        workers[name] = w
        result["sides"][name] = {**w.info, "rounds_s": [], "rounds_cpu_s": [], "rounds_minflt": [], "rounds_sys_s": []}
    live = list(workers)
    for r in range(rounds):
        if not live:
            break
        order = live[r % len(live):] + live[:r % len(live)]
        for name in order:
            out = workers[name].ask(f"run {episodes}")
            if "error" in out:
                result["sides"][name]["error"] = out["error"]
                live.remove(name)
                continue
            for key, field in (("rounds_s", "seconds"), ("rounds_cpu_s", "cpu_s"), ("rounds_minflt", "minflt"),
                               ("rounds_sys_s", "sys_s")):
                result["sides"][name][key].append(out[field])
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    for name, w in workers.items():
        result["sides"][name].update(w.close())
        rounds_s = result["sides"][name]["rounds_s"]
        if rounds_s:
            s = result["sides"][name]
            rates = [episodes / seconds for seconds in s["rounds_cpu_s"]]
            wall = [episodes / seconds for seconds in rounds_s]
            s.update(eps=statistics.median(rates), eps_min=min(rates), eps_max=max(rates),
                     eps_wall=statistics.median(wall), eps_wall_min=min(wall), eps_wall_max=max(wall),
                     cpu_share=statistics.median(c / t for c, t in zip(s["rounds_cpu_s"], rounds_s)),
                     episodes=episodes * len(rounds_s),
                     minflt_per_episode=statistics.median(f / episodes for f in s["rounds_minflt"]),
                     sys_share=statistics.median(k / t for k, t in zip(s["rounds_sys_s"], s["rounds_cpu_s"])))
    ok = {n: s["rounds_cpu_s"] for n, s in result["sides"].items() if s.get("rounds_s") and "error" not in s}

    def ratio(a: str, b: str):
        """Median over rounds of (episodes per CPU second of a) / (that of b) = median of (CPU s of b / CPU s of a)."""
        if a in ok and b in ok:
            return statistics.median(tb / ta for ta, tb in zip(ok[a], ok[b]))
        return None

    result["ratios"] = {"ours/easyfsl": ratio("ours", "easyfsl"), "ours/floor": ratio("ours", "floor"),
                        "channels_last/ours": ratio("ours+channels_last", "ours"),
                        "ours/glibc_defaults": ratio("ours", "ours+glibc_defaults"),
                        "glibc_defaults/easyfsl": ratio("ours+glibc_defaults", "easyfsl"),
                        "compile/ours": ratio(COMPILE_SIDE, "ours")}
    fps = {s["fingerprint"] for s in result["sides"].values() if "fingerprint" in s}
    result["same_initial_weights"] = len(fps) == 1
    return result


def markdown(results: List[dict]) -> str:
    """Two tables: per side (rate, spread, memory) and per setting (the ratios)."""
    lines = ["| setting | side | episodes / CPU s (median) | min-max over rounds | episodes / wall s | CPU / wall | "
             "peak RSS MiB | RSS above import MiB | page faults / episode | kernel share of CPU | warm-up s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        setting = f"{res['way']}-way {res['shot']}-shot"
        for name, s in res["sides"].items():
            if "eps" not in s:
                lines.append(f"| {setting} | {name} | failed: {s.get('error', '?')[:80]} | | | | | | | | |")
                continue
            lines.append(f"| {setting} | {name} | {s['eps']:.1f} | {s['eps_min']:.1f}-{s['eps_max']:.1f} | "
                         f"{s['eps_wall']:.1f} | {100 * s['cpu_share']:.0f}% | {s['maxrss_mib']:.0f} | {s['maxrss_mib'] - s['import_rss_mib']:.0f} | "
                         f"{s['minflt_per_episode']:,.0f} | {100 * s['sys_share']:.0f}% | {s['warmup_s']:.1f} |")
    fmt = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
    lines += ["", "| setting | ours / easyfsl | ours / floor | channels_last / ours | ours / glibc_defaults | "
              "glibc_defaults / easyfsl | compile / ours | same init | ours checkpoint s/round |",
              "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for res in results:
        r = res["ratios"]
        ckpt = res["sides"].get("ours", {}).get("checkpoint_s")
        lines.append(f"| {res['way']}-way {res['shot']}-shot | {fmt(r['ours/easyfsl'])} | {fmt(r['ours/floor'])} | "
                     f"{fmt(r['channels_last/ours'])} | {fmt(r['ours/glibc_defaults'])} | "
                     f"{fmt(r['glibc_defaults/easyfsl'])} | {fmt(r['compile/ours'])} | {res['same_initial_weights']} | "
                     f"{'-' if ckpt is None else f'{ckpt:.3f}'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=100, help="timed episodes per side per round (default 100)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--quick", action="store_true", help="15 episodes per side per round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every side (default 1)")
    ap.add_argument("--compile", action="store_true",
                    help="also measure ours under torch.compile (compiles for a minute or more on a small CPU)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "omniglot"),
                    help="omniglot-minimal zips (default ../shared/data/omniglot)")
    ap.add_argument("--out", default=None,
                    help="JSON results file (default benchmarks/results/train_throughput.json; --smoke: none)")
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--settings", default=",".join(f"{w}x{s}" for w, s in SETTINGS),
                    help="way x shot settings, comma-separated (default 5x1,20x5)")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: glyphs, 5-way 1-shot, 1 round x 1 episode, sides ours, floor and (if installed) easyfsl")
    # internal: the parent re-invokes this script as one side's worker
    ap.add_argument("--side", choices=SIDES + (COMPILE_SIDE,), help=argparse.SUPPRESS)
    ap.add_argument("--way", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--shot", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:
        return worker(args)
    if args.smoke:
        args.dataset, args.data_root, args.settings, args.rounds, args.episodes = "glyphs", None, "5x1", 1, 1
    episodes = 15 if args.quick else args.episodes
    if episodes < 1 or args.rounds < 1 or args.threads < 1:
        ap.error("--episodes, --rounds and --threads must be >= 1")
    sides = list(SIDES) + ([COMPILE_SIDE] if args.compile else [])
    if args.smoke:  # one worker per side is most of the time: the three that check the comparison
        sides = [s for s in sides if s in ("ours", "easyfsl", "floor")]
    try:
        import easyfsl  # noqa: F401
        easyfsl_version = easyfsl.__version__
    except ImportError:
        if not args.smoke:
            sys.exit("easyfsl not found: run `bash benchmarks/setup_easyfsl.sh` first")
        sides.remove("easyfsl")
        easyfsl_version = None
    settings = [tuple(int(v) for v in item.split("x")) for item in args.settings.split(",") if item]
    if args.out is None and not args.smoke:
        args.out = str(ROOT / "benchmarks" / "results" / "train_throughput.json")
    provenance = _results.provenance(__file__, argv)
    machine = {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "easyfsl": easyfsl_version,
               "load_average_at_start": os.getloadavg()}
    print(f"CPU: {machine['cpu']} ({machine['cpus']} CPUs), torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.rounds} rounds x {episodes} episodes per side, load average {machine['load_average_at_start']}",
          file=sys.stderr, flush=True)
    results = [measure_setting(args, way, shot, sides, args.rounds, episodes) for way, shot in settings]
    table = markdown(results)
    out = {"provenance": provenance, "dataset": args.dataset, "machine": machine, "rounds": args.rounds, "episodes_per_round": episodes, "warmup_episodes": WARMUP,
           "query": QUERY, "lr": LR, "glibc_defaults_env": GLIBC_DEFAULTS,
           "default_malloc_sides": list(DEFAULT_MALLOC_SIDES), "load_average_at_end": os.getloadavg(), "settings": results, "markdown": table}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nConv-4 ProtoNet training on {args.dataset} (28x28, {QUERY} queries/class), {machine['cpu']}, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds x {episodes} episodes per side; "
          f"torch {torch.__version__}; written to {args.out}\n")
    print(table)


if __name__ == "__main__":
    main()
