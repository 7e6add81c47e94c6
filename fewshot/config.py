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
from collections.abc import Mapping
from typing import Any, Optional, Sequence, Tuple, Union

import yaml

__all__ = ["Config", "ConfigError", "OptionMap", "load_yaml", "merge", "setting", "COMPONENTS", "METHOD",
           "legacy_settings"]


BACKBONE_FIXED = frozenset({"img_size", "in_chans", "num_classes", "pretrained"})
"""Backbone constructor arguments that ``backbone_opts`` cannot set: the data and the model fix them."""

BOOKKEEPING = frozenset({"run_dir", "experiment", "tracking_uri", "track", "threads", "device", "cache"})
"""Config fields that do not change results (left out of the digest and of resume checks)."""


class ConfigError(ValueError):
    """A configuration value or file is unusable; the message says which and why."""


class ComponentOptionError(ConfigError):
    """A matcher's or prompt's option that its class does not take (or not with that value)."""


class OptionMap(Mapping):
    """An immutable, hashable ``{name: scalar}`` mapping: a component's options inside the frozen Config.

    Compares equal to a dict with the same items; ``dict(m)`` gives a plain copy for YAML and JSON.
    """

    __slots__ = ("_data", "_key")

    def __init__(self, items: Any = ()):
        data = dict(items or {})
        self._data, self._key = data, tuple(sorted(data.items(), key=lambda kv: kv[0]))

    def __getitem__(self, name):
        return self._data[name]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return repr(self._data)


def setting(default: Any, help: str, *, train_only: bool = False, choices: Union[str, Sequence[str], None] = None,
            path: Optional[str] = None, shorthand: Optional[Tuple[str, str]] = None,
            options_of: Optional[str] = None) -> Any:
    """A Config field and what makes it a command-line option of ``fewshot train`` / ``eval``.

    Args:
        default: the field's default.
        help: the option's help text (the default is appended when it is not None).
        train_only: only ``fewshot train`` gets the option.
        choices: valid values: a tuple, or ``"module:attribute"`` naming a list or a function returning
            one (e.g. ``"matchers:list_matchers"``), imported only when the option is used.
        path: ``"file"``, ``"dir"`` or ``"any"``: the option takes a path.
        shorthand: ``(component, option)``: the field is a shorthand for ``--<component>-opt option=...``
            (e.g. ``metric`` for the matcher's ``metric``).
        options_of: ``"matcher"`` / ``"prompt"`` / ``"backbone"``: the field holds that component's options
            (``--matcher-opt NAME=VALUE``, repeatable).
    """
    meta = {"help": help, "train_only": train_only, "choices": choices, "path": path, "shorthand": shorthand,
            "options_of": options_of}
    return field(default=default, metadata=meta)


METHOD = {"backbone": "vig_small_c4_28", "matcher": "dn4", "augment": "affine", "train_query": 5}
"""What a run that names no backbone trains: the toolkit's method (the ViG on a Conv-4-style stem, DN4,
affine augmentation, 5 query images per class in training episodes; evaluation keeps ``--query``).
Naming a backbone (e.g. ``--backbone conv4``) gives that backbone with the prototype matcher, no augmentation
and ``--query`` training queries unless ``--matcher`` / ``--augment`` / ``--train-query`` say otherwise; a
prompted run (frozen backbone) also defaults to the prototype matcher."""

# kind -> (package, constructor arguments that are not options)
COMPONENTS = {"matcher": ("matchers", ()), "prompt": ("prompts", ("backbone",))}


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Field names are the CLI option names with ``_`` for ``-``."""

    # data
    dataset: str = setting("glyphs", "Dataset (`fewshot data list` shows them).", choices="episodes:list_datasets")
    data_root: Optional[str] = setting(None, "File or folder the dataset is read from.", path="any")
    img_size: Optional[int] = setting(None, "Resize images to this size (default: the dataset's).")
    cache: bool = setting(False, "Keep decoded images next to the data.")
    val_per_alphabet: Optional[int] = setting(None, "omniglot-minimal: characters of every training alphabet held out "
                                              "as the val split (unrotated; the rest train with their rotations) "
                                              "[default: 3, the 15-class split].", train_only=True)
    # episodes
    way: int = setting(5, "Classes per episode.")
    shot: int = setting(1, "Support images per class.")
    query: int = setting(15, "Query images per class.")
    train_way: Optional[int] = setting(None, "Classes per training episode (default: --way).", train_only=True)
    train_shot: Optional[int] = setting(None, "Support images per class in training (default: --shot).", train_only=True)
    train_query: Optional[int] = setting(None, "Query images per class in training [default: "
                                        f"{METHOD['train_query']} for the default backbone, else --query].",
                                        train_only=True)
    episode_groups: str = setting("none", "Where an episode's classes come from: none (the whole split) or alphabet "
                                  "(one Omniglot alphabet per episode, Lake et al. 2015); training, validation and "
                                  "test episodes alike.", choices="episodes.sampler:EPISODE_GROUPS")
    train_episode_groups: Optional[str] = setting(None, "Where a training episode's classes come from (default: "
                                                  "--episode-groups): alphabet trains on harder, same-alphabet "
                                                  "episodes while validation and test keep --episode-groups.",
                                                  train_only=True, choices="episodes.sampler:EPISODE_GROUPS")
    # model
    backbone: Optional[str] = setting(None, "timm name of the backbone, e.g. conv4, vig_small_28 [default: the method: "
                                      f"{METHOD['backbone']} with --matcher {METHOD['matcher']} and --augment "
                                      f"{METHOD['augment']}; a named backbone defaults to the prototype matcher, no "
                                      "augmentation].")
    backbone_opts: OptionMap = setting(OptionMap(), "An argument of the backbone's constructor as NAME=VALUE, repeatable "
                                       "(e.g. num_knn=5 or drop_path_rate=0.1 for a ViG; VALUE read as a YAML "
                                       "scalar). Stored with the run, so eval and predict rebuild the same backbone.",
                                       options_of="backbone")
    node_filter: str = setting("none", "Nodes kept in the ViG's graph and pooling: none (all), ink (drop blank "
                               "background patches, read from the image).", choices=("none", "ink"))
    support_views: int = setting(0, "Extra embeddings of every support image with random node subsets deleted "
                                 "(a ViG with a pooled matcher); 0: off.")
    view_keep: float = setting(0.75, "Fraction of nodes each support view keeps.")
    support_augment: int = setting(0, "Scoring: N affine copies of every support image join its class's support "
                                   "set (the same copies for the same image; training episodes unchanged); 0: off.")
    matcher: Optional[str] = setting(None, "How queries are scored (`fewshot matchers` lists them and their options) "
                                     f"[default: {METHOD['matcher']} for the default backbone, else prototype].",
                           choices="matchers:list_matchers")
    matcher_opts: OptionMap = setting(OptionMap(), "An option of the matcher as NAME=VALUE, repeatable "
                                      "(`fewshot matchers` lists them).", options_of="matcher")
    metric: str = setting("euclidean", "Distance of the prototype / k-NN matcher (= --matcher-opt metric=...).",
                          choices=("euclidean", "cosine"), shorthand=("matcher", "metric"))
    temperature: Optional[float] = setting(None, "Logits are divided by it (= --matcher-opt temperature=...) "
                                           "[default: the matcher's own: 1 for prototype, 0.1 for patch-voting and "
                                           "hungarian].", shorthand=("matcher", "temperature"))
    prompt: str = setting("none", "Graph prompt (`fewshot prompts` lists them and their options).",
                          choices="prompts:list_prompts")
    prompt_opts: OptionMap = setting(OptionMap(), "An option of the prompt as NAME=VALUE, repeatable "
                                     "(`fewshot prompts` lists them).", options_of="prompt")
    meta_init: str = setting("none", "Meta-learn the prompt's initialisation with learn2learn (MAML, first-order MAML, "
                             "Meta-SGD); test episodes adapt it on the support set (needs --adapt tune).",
                             choices="prompts:list_meta_inits")
    inner_steps: int = setting(1, "Meta-training: adaptation steps per task.")
    inner_lr: float = setting(0.1, "Inner-loop SGD learning rate (also at test time).")
    meta_batch: int = setting(4, "Tasks per meta (outer) step.")
    clusters: int = setting(4, "DAM-VP (--prompt damvp): prompts, one per k-means feature cluster "
                            "(= --prompt-opt clusters=...).", shorthand=("prompt", "clusters"))
    cluster_prompt: str = setting("vpt", "DAM-VP: the fixed prompt copied per cluster (= --prompt-opt base=...).",
                                  choices="prompts:list_prompts", shorthand=("prompt", "base"))
    prompt_blocks: str = setting("all", "Blocks to prompt: 'all' or indices such as 0,2 (= --prompt-opt blocks=...).",
                                 shorthand=("prompt", "blocks"))
    prompt_nodes: int = setting(4, "Prompt nodes per prompted block (add, vpt, vgp, graph; = --prompt-opt "
                                "num_nodes=...).", shorthand=("prompt", "num_nodes"))
    prompt_rank: int = setting(8, "Rank r of VGP's low-rank prompts (= --prompt-opt rank=...).",
                               shorthand=("prompt", "rank"))
    prompt_keep: float = setting(0.75, "Fraction of patch nodes kept by delete / graph (= --prompt-opt keep=...).",
                                 shorthand=("prompt", "keep"))
    adapt: str = setting("amortised", "Per-episode adaptation: amortised (prompt as is / generated), tune (T Adam "
                         "steps on the prompt), head, full (tune last block+norm / all backbone), linear "
                         "(logistic-regression probe).", choices="fewshot.adaptation:list_adaptations")
    adapt_steps: int = setting(10, "Tuning steps per test episode (0: none).")
    adapt_lr: float = setting(1e-2, "Learning rate of the tuning steps.")
    backbone_from: Optional[str] = setting(None, "Checkpoint (runs/<run>/best.pt) whose backbone is loaded and frozen.",
                                           path="file")
    # optimisation (training only)
    episodes: int = setting(600, "Training episodes.", train_only=True)
    lr: float = setting(1e-3, "Adam learning rate (cosine schedule).", train_only=True)
    weight_decay: float = setting(0.0, "Adam weight decay.", train_only=True)
    grad_clip: float = setting(5.0, "Gradient norm clip (0: off).", train_only=True)
    augment: Optional[str] = setting(None, "Augmentation of training episodes (episodes.augment) [default: "
                                     f"{METHOD['augment']} for the default backbone, else none].", train_only=True,
                           choices="episodes.augment:AUGMENT_POLICIES")
    pretrain_epochs: int = setting(0, "Whole-class classification epochs over the training classes before episodic "
                                   "training (0: off).", train_only=True)
    pretrain_batch: int = setting(128, "Mini-batch size of the classification stage.", train_only=True)
    # evaluation and selection
    eval_episodes: int = setting(2000, "Episodes in the test bank.")
    val_episodes: int = setting(200, "Validation episodes for model selection (0: off).", train_only=True)
    val_every: int = setting(200, "Validate every this many episodes.", train_only=True)
    # bookkeeping
    seed: int = setting(0, "Training seed.")
    bank_seed: int = setting(0, "Seed of the test/val banks (keep it fixed to compare runs).")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    checkpoint_every: int = setting(50, "Checkpoint every this many episodes.", train_only=True)
    run_dir: Optional[str] = setting(None, "Folder for checkpoints and results (default: runs/<name>).", path="dir")
    experiment: str = setting("fewshot", "MLflow experiment.")
    tracking_uri: Optional[str] = setting(None, "MLflow store (default: sqlite store in ./mlruns; a file:// store is "
                                          "accepted with a warning).")
    track: bool = setting(True, "Log to MLflow.")
    threads: Optional[int] = setting(None, "torch CPU threads (default: torch's choice).")

    def __post_init__(self):
        self._resolve_method()
        for kind in COMPONENTS:
            self._normalise_options(kind)
        self._normalise_backbone_options()
        positive = ("way", "shot", "query", "episodes", "eval_episodes", "checkpoint_every", "val_every")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.way < 2:
            raise ConfigError(f"way must be at least 2, got {self.way}")
        for name in ("train_way", "train_shot", "train_query", "img_size", "threads", "val_per_alphabet"):
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
        from episodes.augment import AUGMENT_POLICIES
        from episodes.sampler import EPISODE_GROUPS

        for name in ("episode_groups", "train_episode_groups"):
            value = getattr(self, name)
            if value not in EPISODE_GROUPS and not (name == "train_episode_groups" and value is None):
                raise ConfigError(f"{name} must be one of {', '.join(EPISODE_GROUPS)}, got {value!r}")

        if self.augment not in AUGMENT_POLICIES:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENT_POLICIES)}, got {self.augment!r}")
        if not isinstance(self.pretrain_epochs, int) or isinstance(self.pretrain_epochs, bool) or self.pretrain_epochs < 0:
            raise ConfigError(f"pretrain_epochs must be an integer >= 0, got {self.pretrain_epochs!r}")
        if not isinstance(self.pretrain_batch, int) or isinstance(self.pretrain_batch, bool) or self.pretrain_batch < 2:
            raise ConfigError(f"pretrain_batch must be an integer >= 2, got {self.pretrain_batch!r}")
        self._check_prompting()
        for kind in COMPONENTS:  # converted values are kept, so "3" and 3 give the same Config
            object.__setattr__(self, f"{kind}_opts", OptionMap(self._resolve_options(kind)[1]))
        if isinstance(self.support_views, bool) or not isinstance(self.support_views, int) or self.support_views < 0:
            raise ConfigError(f"support_views must be an integer >= 0, got {self.support_views!r}")
        if isinstance(self.support_augment, bool) or not isinstance(self.support_augment, int) \
                or self.support_augment < 0:
            raise ConfigError(f"support_augment must be an integer >= 0, got {self.support_augment!r}")
        if self.support_augment and self.prompted:
            raise ConfigError("--support-augment applies to a plain episodic model, not a prompted one")
        if not 0 < self.view_keep <= 1:
            raise ConfigError(f"view_keep must be in (0, 1], got {self.view_keep!r}")
        if self.support_views and self.prompted:
            raise ConfigError("--support-views applies to a plain episodic model, not a prompted one")
        if self.node_filter != "none" and self.prompted:
            raise ConfigError("--node-filter applies to a plain episodic model; a prompted model (--prompt / --adapt / "
                              "--backbone-from) deletes nodes with --prompt delete instead")
        if self.pretrain_epochs and self.prompted:
            raise ConfigError("--pretrain-epochs trains the whole backbone as a classifier; it does not apply to a "
                              "frozen, prompted backbone (--prompt / --adapt / --backbone-from)")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def _resolve_method(self) -> None:
        """Fill the defaults that depend on the backbone (:data:`METHOD`), so a saved config names them."""
        plain = self.backbone is None and not self.prompted
        auto = tuple(name for name in METHOD if getattr(self, name) is None)
        object.__setattr__(self, "_auto", auto)  # filled here, not given: merge() fills them anew
        if self.backbone is None:
            object.__setattr__(self, "backbone", METHOD["backbone"])
        if self.matcher is None:
            object.__setattr__(self, "matcher", METHOD["matcher"] if plain else "prototype")
        if self.augment is None:
            object.__setattr__(self, "augment", METHOD["augment"] if plain else "none")
        if self.train_query is None and plain:  # otherwise unset: training uses --query
            object.__setattr__(self, "train_query", METHOD["train_query"])

    def _check_prompting(self) -> None:
        from .adaptation import list_adaptations  # the registered strategies (fewshot/adaptation.py)

        if self.adapt not in list_adaptations():
            raise ConfigError(f"adapt must be one of {', '.join(list_adaptations())}, got {self.adapt!r}")
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

    def _normalise_backbone_options(self) -> None:
        """``backbone_opts`` checked as a component's options are, a string value read as a YAML scalar
        (``"5"`` -> 5, ``"0.1"`` -> 0.1, ``"true"`` -> True), the arguments the data fixes refused."""
        self._normalise_options("backbone")
        fixed = sorted(set(self.backbone_opts) & BACKBONE_FIXED)
        if fixed:
            raise ConfigError(f"backbone_opts: {', '.join(fixed)} cannot be set as a backbone option (the images "
                              "fix img_size and in_chans, the matcher num_classes; use --img-size for the size)")
        values = {}
        for name, value in self.backbone_opts.items():
            if isinstance(value, str):
                try:
                    value = yaml.safe_load(value) if value.strip() else value
                except yaml.YAMLError:
                    pass
                if not isinstance(value, (bool, int, float, str)) and value is not None:
                    value = self.backbone_opts[name]  # a list or mapping in YAML syntax stays the text given
            values[name] = value
        object.__setattr__(self, "backbone_opts", OptionMap(values))

    def _normalise_options(self, kind: str) -> None:
        name = f"{kind}_opts"
        value = getattr(self, name)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping of {kind} option names to values, got {value!r}")
        for k, v in value.items():
            if not isinstance(k, str) or not k.isidentifier():
                raise ConfigError(f"{name}: option names must be identifiers, got {k!r}")
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise ConfigError(f"{name}: the value of {k} must be one number, string or true/false, got {v!r}")
        object.__setattr__(self, name, OptionMap(value))

    def component_class(self, kind: str) -> type:
        """The registered class of the ``kind`` component (``"matcher"`` or ``"prompt"``) this config names."""
        import importlib

        return importlib.import_module(COMPONENTS[kind][0]).get(getattr(self, kind))

    def component_options(self, kind: str) -> dict:
        """Keyword arguments for the ``kind`` component (``"matcher"`` or ``"prompt"``), checked and converted
        against its constructor: the shorthand fields (``metric``, ``prompt_nodes``, ...) that differ from
        their defaults, then ``<kind>_opts``. Options left out keep the class's own defaults."""
        return self._resolve_options(kind)[0]

    def _resolve_options(self, kind: str) -> tuple:
        from registry import OptionError, class_options, convert_options

        name, skip = getattr(self, kind), COMPONENTS[kind][1]
        where = f"{kind} {name!r}"
        try:
            cls = self.component_class(kind)
            options = class_options(cls, skip=skip)
            given = {}
            for f in _SHORTHANDS[kind]:
                option, value = f.metadata["shorthand"][1], getattr(self, f.name)
                if value is None or value == f.default:
                    continue
                flag = "--" + f.name.replace("_", "-")
                if option not in options:
                    raise ComponentOptionError(f"{where} has no option {flag} ({option!r}, given {value!r}); "
                                      f"its options: {', '.join(options) or 'none'}")
                given[option] = (flag, options[option].convert(value, where))
            explicit = convert_options(cls, getattr(self, f"{kind}_opts"), where, skip=skip)
        except OptionError as e:
            raise ComponentOptionError(str(e)) from None
        except ComponentOptionError:
            raise
        except ValueError as e:  # unknown component name
            raise ComponentOptionError(str(e)) from None
        for option, value in explicit.items():
            if option in given and given[option][1] != value:
                flag, short = given[option]
                raise ComponentOptionError(f"{where}: {flag} {short!r} and --{kind}-opt {option}={value!r} "
                                           "disagree; give one")
        merged = {option: value for option, (_, value) in given.items()}
        merged.update(explicit)
        return merged, explicit

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

    @property
    def effective_train_episode_groups(self) -> str:
        return self.train_episode_groups or self.episode_groups

    def to_dict(self) -> dict:
        """Plain values (option mappings as dicts), for YAML, JSON and MLflow."""
        return {f.name: dict(getattr(self, f.name)) if isinstance(getattr(self, f.name), OptionMap)
                else getattr(self, f.name) for f in dataclasses.fields(self)}

    def digest(self) -> str:
        """Hash of the settings that change results (not the bookkeeping ones). Empty option mappings
        are left out, so runs without component options keep the digest they had before those fields."""
        d = {k: v for k, v in self.to_dict().items()
             if k not in BOOKKEEPING and not (isinstance(v, dict) and not v)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def differences(self, saved: Mapping[str, Any]) -> list:
        """Settings that change results and differ from ``saved`` (a run's stored ``to_dict()``), as
        ``"name: saved -> now"``. A field ``saved`` lacks (added to Config after it was written)
        counts as its default, so old runs still resume."""
        out = []
        saved = legacy_settings(saved)
        for name, f in _FIELDS.items():
            then = saved.get(name, f.default)
            now = getattr(self, name)
            if name == "train_query":  # unset means --query: compared as the count that trained
                then, now = then or saved.get("query", _FIELDS["query"].default), self.effective_train_query
            if name not in BOOKKEEPING and then != now and not (isinstance(now, tuple) and list(now) == then):
                out.append(f"{name}: {then!r} -> {now!r}")
        return out

    def default_run_name(self, backbone: str) -> str:
        return f"{self.dataset}-{backbone}-{self.way}w{self.shot}s-seed{self.seed}-{self.digest()}"

    def replace(self, **changes) -> "Config":
        return merge(self, changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_SHORTHANDS = {kind: [f for f in _FIELDS.values() if (f.metadata.get("shorthand") or ("",))[0] == kind]
               for kind in COMPONENTS}


def legacy_settings(saved: Mapping[str, Any]) -> dict:
    """A stored run config as today's fields read it: runs saved before the method became the default
    (:data:`METHOD`) stored ``backbone: null`` for Conv-4, the default then. (A stored ``train_query: null``
    needs nothing: a stored config names its backbone, so the method's own query count is not filled in.)"""
    saved = dict(saved)
    if "backbone" in saved and saved["backbone"] is None:
        saved["backbone"] = "conv4"
    return saved


def merge(base: Config, changes: Mapping[str, Any]) -> Config:
    """A new Config with ``changes`` applied; unknown keys raise :class:`ConfigError` listing them."""
    norm = {str(k).replace("-", "_"): v for k, v in changes.items()}
    unknown = sorted(k for k in norm if k not in _FIELDS)
    if unknown:
        hints = [f"{k} (did you mean {c[0]}?)" if (c := difflib.get_close_matches(k, list(_FIELDS), n=1)) else k
                 for k in unknown]
        raise ConfigError(f"unknown configuration keys: {', '.join(hints)}; valid keys: {', '.join(_FIELDS)}")
    refill = {name: None for name in getattr(base, "_auto", ()) if name not in norm}  # e.g. --backbone conv4
    try:
        return dataclasses.replace(base, **refill, **norm)
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
    except ComponentOptionError:
        pass  # checked once the command line is merged too: it may name another matcher or prompt
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return data
