"""Run configuration: one frozen dataclass, read from CLI options and an optional YAML file.

YAML is read with ``yaml.safe_load`` (no Python tags) and unknown keys are an error that lists
them, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

__all__ = ["Config", "ConfigError", "load_yaml", "merge", "ADAPT_MODES"]

ADAPT_MODES = ("amortised", "tune", "head", "full", "linear")
"""Ways a frozen backbone is adapted per episode (see :mod:`fewshot.prompting`)."""


BOOKKEEPING = frozenset({"run_dir", "experiment", "tracking_uri", "track", "threads", "device", "cache"})
"""Config fields that do not change results (left out of the digest and of resume checks)."""


class ConfigError(ValueError):
    """A configuration value or file is unusable; the message says which and why."""


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Field names are the CLI option names with ``_`` for ``-``."""

    # data
    dataset: str = "glyphs"
    data_root: Optional[str] = None
    img_size: Optional[int] = None          # None: the dataset's own size
    cache: bool = False                     # keep decoded tensors next to the data
    # episodes
    way: int = 5
    shot: int = 1
    query: int = 15
    train_way: Optional[int] = None         # None: same as way
    train_shot: Optional[int] = None        # None: same as shot
    train_query: Optional[int] = None       # None: same as query
    # model
    backbone: Optional[str] = None          # None: conv4 (fast); vig_small_28 / vig_small_84 for ViG
    matcher: str = "prototype"
    metric: str = "euclidean"
    temperature: Optional[float] = None     # None: the matcher's own default
    prompt: str = "none"
    meta_init: str = "none"                 # none | maml | fomaml | metasgd (prompts.meta, learn2learn)
    inner_steps: int = 1                    # meta-training: SGD steps on the support loss per task
    inner_lr: float = 0.1                   # their learning rate (also the test-time one of a meta prompt)
    meta_batch: int = 4                     # tasks per outer (meta) step
    clusters: int = 4                       # damvp: C prompts, one per k-means cluster
    cluster_prompt: str = "vpt"             # damvp: the fixed prompt copied per cluster
    prompt_blocks: str = "all"              # "all" or comma-separated block indices, e.g. "0,2"
    prompt_nodes: int = 4                   # M prompt nodes per prompted block (add, vpt, vgp, graph)
    prompt_rank: int = 8                    # VGP's rank r
    prompt_keep: float = 0.75               # fraction of patch nodes kept by delete / graph
    adapt: str = "amortised"                # amortised | tune | head | full | linear (fewshot.prompting)
    adapt_steps: int = 10                   # T tuning steps per test episode (tune, head, full); 0: none
    adapt_lr: float = 1e-2                  # Adam lr of those steps
    backbone_from: Optional[str] = None     # checkpoint whose backbone is loaded and frozen
    # optimisation
    episodes: int = 600
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    # evaluation and selection
    eval_episodes: int = 2000
    val_episodes: int = 200
    val_every: int = 200
    # bookkeeping
    seed: int = 0
    bank_seed: int = 0                      # test/val banks: the same for every run compared
    device: str = "auto"
    checkpoint_every: int = 50
    run_dir: Optional[str] = None           # None: runs/<derived name>
    experiment: str = "fewshot"
    tracking_uri: Optional[str] = None      # None: sqlite store in ./mlruns
    track: bool = True
    threads: Optional[int] = None

    def __post_init__(self):
        positive = ("way", "shot", "query", "episodes", "eval_episodes", "checkpoint_every", "val_every")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.way < 2:
            raise ConfigError(f"way must be at least 2, got {self.way}")
        for name in ("train_way", "train_shot", "train_query", "img_size", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be a positive integer or unset, got {v!r}")
        if self.train_way is not None and self.train_way < 2:
            raise ConfigError(f"train_way must be at least 2, got {self.train_way}")
        if self.val_episodes < 0:
            raise ConfigError(f"val_episodes must be >= 0 (0 disables validation), got {self.val_episodes}")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        self._check_prompting()
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def _check_prompting(self) -> None:
        if self.adapt not in ADAPT_MODES:
            raise ConfigError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {self.adapt!r}")
        spec = str(self.prompt_blocks).strip().lower()
        if spec != "all" and not all(p.strip().isdigit() for p in spec.split(",")):
            raise ConfigError(f"prompt_blocks must be 'all' or comma-separated block indices such as 0,2, "
                              f"got {self.prompt_blocks!r}")
        for name in ("prompt_nodes", "prompt_rank", "inner_steps", "meta_batch", "clusters", "adapt_steps"):
            v = getattr(self, name)
            low = 0 if name == "adapt_steps" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        if not 0 < self.prompt_keep <= 1:
            raise ConfigError(f"prompt_keep must be in (0, 1], got {self.prompt_keep}")
        if not self.adapt_lr > 0:
            raise ConfigError(f"adapt_lr must be > 0, got {self.adapt_lr}")
        if self.adapt in ("head", "full", "linear") and self.prompt != "none":
            raise ConfigError(f"--adapt {self.adapt} is a baseline on the bare backbone; use it with --prompt none")
        self._check_meta()

    def _check_meta(self) -> None:
        from prompts.meta import META_INITS  # the learn2learn algorithms; learn2learn itself loads lazily

        if self.meta_init not in META_INITS:
            raise ConfigError(f"meta_init must be one of {', '.join(META_INITS)}, got {self.meta_init!r}")
        if not self.inner_lr > 0:
            raise ConfigError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.meta_init == "none":
            given = [f"--{n.replace('_', '-')}" for n in ("inner_steps", "inner_lr", "meta_batch")
                     if getattr(self, n) != getattr(Config, n)]
            if given:
                raise ConfigError(f"{', '.join(given)} only apply with --meta-init maml|fomaml|metasgd")
            return
        if self.prompt == "none":
            raise ConfigError(f"--meta-init {self.meta_init} meta-learns a prompt's initialisation: give --prompt "
                              "(e.g. vpt, gpf, vgp, damvp)")
        if self.adapt != "tune":
            raise ConfigError(f"--meta-init {self.meta_init} adapts the prompt to each test episode: use --adapt tune "
                              "(--adapt-steps sets the test-time steps, --inner-lr their learning rate)")
        if self.adapt_lr != Config.adapt_lr:
            raise ConfigError("a meta-learned prompt adapts with the learning rate it was meta-trained for: "
                              "set --inner-lr, not --adapt-lr")

    @property
    def prompted(self) -> bool:
        """True when the run builds a PromptedModel (frozen backbone) instead of an EpisodicModel."""
        return self.prompt != "none" or self.adapt != "amortised" or self.backbone_from is not None

    # ----- derived values -----------------------------------------------------------------
    @property
    def effective_train_way(self) -> int:
        return self.train_way or self.way

    @property
    def effective_train_shot(self) -> int:
        return self.train_shot or self.shot

    @property
    def effective_train_query(self) -> int:
        return self.train_query or self.query

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Hash of the settings that change results (not the bookkeeping ones)."""
        d = {k: v for k, v in self.to_dict().items() if k not in BOOKKEEPING}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def differences(self, saved: Mapping[str, Any]) -> list:
        """Settings that change results and differ from ``saved`` (a run's stored ``to_dict()``), as
        ``"name: saved -> now"``. A field ``saved`` lacks (added to Config after it was written)
        counts as its default, so old runs still resume."""
        out = []
        for name, f in _FIELDS.items():
            then = saved.get(name, f.default)
            now = getattr(self, name)
            if name not in BOOKKEEPING and then != now and not (isinstance(now, tuple) and list(now) == then):
                out.append(f"{name}: {then!r} -> {now!r}")
        return out

    def default_run_name(self, backbone: str) -> str:
        return f"{self.dataset}-{backbone}-{self.way}w{self.shot}s-seed{self.seed}-{self.digest()}"

    def replace(self, **changes) -> "Config":
        return merge(self, changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def merge(base: Config, changes: Mapping[str, Any]) -> Config:
    """A new Config with ``changes`` applied; unknown keys raise :class:`ConfigError` listing them."""
    norm = {str(k).replace("-", "_"): v for k, v in changes.items()}
    unknown = sorted(k for k in norm if k not in _FIELDS)
    if unknown:
        hints = [f"{k} (did you mean {c[0]}?)" if (c := difflib.get_close_matches(k, list(_FIELDS), n=1)) else k
                 for k in unknown]
        raise ConfigError(f"unknown configuration keys: {', '.join(hints)}; valid keys: {', '.join(_FIELDS)}")
    try:
        return dataclasses.replace(base, **norm)
    except TypeError as e:
        raise ConfigError(str(e)) from e


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping of config keys with safe loading (Python tags are refused)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid (safe) YAML: {str(e).splitlines()[0]}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values, got {type(data).__name__}")
    try:
        merge(Config(), data)  # validate keys and values early, naming the file on error
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return data
