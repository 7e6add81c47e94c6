"""Backbone weights from a file: the authors' ViG checkpoints and fewshot's own, onto our models.

Two layouts of the same Vision GNN exist:

* **official**: the authors' code (huawei-noah/Efficient-AI-Backbones, ``vig_pytorch/``) keeps the
  blocks in one ``backbone`` sequence, ``backbone.{i}.0`` the Grapher (``fc1``,
  ``graph_conv.gconv.nn.{0,1}``, ``fc2``, and for the pyramid ViG a fixed ``relative_pos``) and
  ``backbone.{i}.1`` the FFN (``fc1``, ``fc2``); the pyramid ViG puts its downsampling layers
  (``backbone.{i}.conv.{0,1}``) in the same sequence. The head is ``prediction.{0,1,4}``
  (1x1 conv, BatchNorm2d, activation, dropout, 1x1 conv). Released files are a bare state dict
  or a dict holding one under ``state_dict`` / ``model`` (an EMA copy is preferred when present).
* **fewshot**: our modules' own names (``blocks.{i}.grapher.fc_in``, ``stages.{s}.blocks.{j}...``),
  either bare, inside an episodic checkpoint (``{"model": {"backbone.<key>": ...}}``, e.g.
  ``best.pt``) or a pre-training checkpoint (``{"backbone": {...}}``).

:func:`load_backbone_weights` reads a file with ``torch.load(weights_only=True)``, tells which of
the two it holds, maps the official layout through the model family's ``checkpoint_filter_fn``
and loads only when every key and shape fits: a failure leaves the backbone untouched.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BackboneCheckpointError", "CheckpointReadError", "read_checkpoint", "unwrap_state_dict", "is_official_layout",
    "split_official_block_key", "strip_fewshot_prefix", "official_head_key", "identity_batchnorm", "resize_pos_embed",
    "adapt_first_conv",
    "check_fits", "load_backbone_weights", "build_pretrained", "guess_backbone",
]

_log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

_OFFICIAL_BLOCK_KEY = re.compile(r"^backbone\.(\d+)\.([01])\.(.+)$")
_OFFICIAL_BLOCK_PARTS = (  # (official suffix of backbone.{i}.{0|1}., ours under the block)
    ("0", "fc1.", "grapher.fc_in."),
    ("0", "graph_conv.gconv.nn.0.", "grapher.graph_conv.conv."),
    ("0", "graph_conv.gconv.nn.1.", "grapher.graph_conv.norm."),
    ("0", "fc2.", "grapher.fc_out."),
    ("0", "relative_pos", "grapher.relative_pos"),
    ("1", "fc1.", "ffn.fc1."),
    ("1", "fc2.", "ffn.fc2."),
)
_OFFICIAL_HEAD = (("prediction.0.", "head.pre_fc."), ("prediction.1.", "head.norm."), ("prediction.4.", "head.fc."))
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # pickle protocol >= 2: torch's legacy (non-zip) format starts with it


class BackboneCheckpointError(ValueError):
    """A weights file is unreadable, unsafe, or does not fit the backbone; nothing was loaded."""


class CheckpointReadError(BackboneCheckpointError):
    """A file that ``torch.load(weights_only=True)`` cannot read (raised by :func:`read_checkpoint`).

    Attributes:
        path: the file, as given.
        kind: ``"missing"``, ``"unreadable"``, ``"empty"``, ``"text"``, ``"not_torch"``,
            ``"truncated"`` or ``"unsafe"`` (pickled Python objects that weights-only loading refuses).
        reason: what is wrong, one line without the path (callers word their own line around it).
    """

    def __init__(self, path, kind: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.kind, self.reason = os.fspath(path), kind, reason


def read_checkpoint(path: str | os.PathLike) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``: the project's one reader of ``.pt``
    files (training and transfer checkpoints, backbone weights), so no code in a file is ever run.

    Whatever torch raises (its weights-only unpickler raises ``IndexError``, ``EOFError``, ``OSError``,
    ``RuntimeError``, ``UnpicklingError``, ... on foreign bytes) becomes one
    :class:`CheckpointReadError` line naming the file and saying what it looks like instead: missing,
    empty, text, a zip archive that is no torch file, truncated or corrupt, or pickled Python objects.
    """
    if not os.path.exists(path):
        raise CheckpointReadError(path, "missing", "no such file")
    if os.path.isdir(path):
        raise CheckpointReadError(path, "unreadable", "a folder, not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise CheckpointReadError(path, "unreadable", f"cannot be opened ({e.strerror or type(e).__name__})") from None
    if not head:
        raise CheckpointReadError(path, "empty", "the file is empty (0 bytes), not a file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, RecursionError):
        raise
    except Exception as e:  # torch's weights-only unpickler raises many kinds on foreign bytes
        raise _diagnose(path, head, e) from None


def _diagnose(path, head: bytes, error: Exception) -> CheckpointReadError:
    """What the file is, from its first bytes and torch's error."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f"a pickled {found.group(1)} object" if found else "pickled Python objects"
        return CheckpointReadError(path, "unsafe", (
            f"holds {what}, which torch.load(weights_only=True) refuses to unpickle; load it once where you "
            "trust it and re-save the tensors alone: torch.save(model.state_dict(), 'weights.pth')"))
    corrupt = CheckpointReadError(path, "truncated", f"truncated or corrupt ({_first_sentence(text, error)}); "
                                                     "copy or download it again")
    if head.startswith(_ZIP_MAGIC):  # torch's format since 1.6 is a zip archive holding <name>/data.pkl
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return corrupt
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return CheckpointReadError(path, "not_torch", f"a zip archive of {len(names)} file(s) without torch's "
                                                          "data.pkl, not a file written by torch.save")
        return corrupt
    if head.startswith(_PICKLE_PROTO):  # a pickle, as torch's legacy format and plain pickle.dump write
        return corrupt
    sample = _as_text(head)
    if sample is not None:
        return CheckpointReadError(path, "text", f"text, not a file written by torch.save (it begins {sample!r})")
    return CheckpointReadError(path, "not_torch", f"not a file written by torch.save ({_first_sentence(text, error)})")


def _as_text(head: bytes):
    """The first line of ``head`` (at most 40 characters) when it reads as text, else None."""
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the sample
            return None
        decoded = head[:e.start].decode("utf-8")
    if "\x00" in decoded or sum(c.isprintable() or c.isspace() for c in decoded) < 0.95 * len(decoded):
        return None
    first = decoded.strip().splitlines()[0] if decoded.strip() else ""
    return first[:40] + ("..." if len(first) > 40 else "")


def _first_sentence(text: str, error: Exception) -> str:
    """The first line of torch's message, up to its first full stop (its messages run to many lines)."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = line.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> Tuple[StateDict, str]:
    """The state dict inside a loaded checkpoint and where it came from.

    Returns:
        ``(state, container)``: ``container`` is ``"fewshot episodic checkpoint"`` (``model`` entry
        with ``backbone.*`` keys, prefix stripped), ``"fewshot pre-training checkpoint"``
        (``backbone`` entry), ``"<key> entry"`` (``state_dict_ema``, ``model_ema``, ``state_dict``,
        ``model``) or ``"bare state dict"``. A DistributedDataParallel ``module.`` prefix is stripped.
    """
    if not isinstance(obj, dict):
        raise BackboneCheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    if isinstance(obj.get("model"), dict) and any(k.startswith("backbone.") for k in obj["model"]):
        state = {k[len("backbone."):]: v for k, v in obj["model"].items() if k.startswith("backbone.")}
        container = "fewshot episodic checkpoint"
    elif _is_tensor_dict(obj.get("backbone")):
        state, container = obj["backbone"], "fewshot pre-training checkpoint"
    else:
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if _is_tensor_dict(obj.get(key)):
                state, container = obj[key], f"'{key}' entry"
                break
        else:
            state, container = obj, "bare state dict"
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BackboneCheckpointError(
            f"{source}: no tensors found (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, container


def is_official_layout(state: StateDict) -> bool:
    """True for the authors' layout: Grapher/FFN keys under ``backbone.{i}.{0|1}`` and no ``blocks.``/``stages.`` keys."""
    return any(_OFFICIAL_BLOCK_KEY.match(k) for k in state) and not any(
        k.startswith(("blocks.", "stages.")) for k in state)


def split_official_block_key(key: str) -> Optional[Tuple[int, str]]:
    """``backbone.{i}.{0|1}.<rest>`` of the official layout -> ``(i, our key relative to the block)``;
    None for any other key (stem, position embedding, downsampling, head) or an unknown suffix."""
    m = _OFFICIAL_BLOCK_KEY.match(key)
    if m is None:
        return None
    index, part, rest = int(m.group(1)), m.group(2), m.group(3)
    for p, theirs, ours in _OFFICIAL_BLOCK_PARTS:
        if part == p and rest.startswith(theirs):
            return index, ours + rest[len(theirs):]
    return None


def strip_fewshot_prefix(state: StateDict) -> StateDict:
    """Our own layout saved as part of a larger model (``backbone.<key>``): the backbone's keys alone."""
    if not is_official_layout(state) and any(k.startswith("backbone.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def official_head_key(key: str, value: torch.Tensor, model: nn.Module) -> Optional[Tuple[str, torch.Tensor]]:
    """Map ``prediction.{0,1,4}.*`` onto our MLP head (1x1 conv weights flattened to linear weights).

    Returns None when the model has no such head (``num_classes == 0``): the classifier is dropped.
    """
    if not isinstance(getattr(model, "head", None), nn.Sequential):
        return None
    for theirs, ours in _OFFICIAL_HEAD:
        if key.startswith(theirs):
            if value.dim() == 4:
                value = value.flatten(1)
            return ours + key[len(theirs):], value
    return None


def identity_batchnorm(norm: nn.Module, prefix: str) -> StateDict:
    """State of a BatchNorm that is the identity in eval mode: weight 1, bias 0, running mean 0,
    running variance ``1 - eps`` (so ``sqrt(var + eps) == 1``)."""
    ref = norm.running_mean
    return {
        f"{prefix}weight": torch.ones_like(norm.weight),
        f"{prefix}bias": torch.zeros_like(norm.bias),
        f"{prefix}running_mean": torch.zeros_like(ref),
        f"{prefix}running_var": torch.full_like(norm.running_var, 1.0 - norm.eps),
        f"{prefix}num_batches_tracked": torch.zeros_like(norm.num_batches_tracked),
    }


def resize_pos_embed(pos: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """``[1, D, h, w]`` -> ``[1, D, *grid]``, bilinear: the same resizing the models apply at run time."""
    if tuple(pos.shape[-2:]) == tuple(grid):
        return pos
    return F.interpolate(pos, size=grid, mode="bilinear", align_corners=False)


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An RGB first-conv weight ``[O, 3, kh, kw]`` for ``in_chans`` inputs (timm's ``adapt_input_conv``:
    summed for one channel, repeated and rescaled for more); unchanged when it already fits."""
    if weight.shape[1] == in_chans or weight.device.type == "meta":
        return weight if weight.shape[1] == in_chans else weight.new_empty(weight.shape[0], in_chans, *weight.shape[2:])
    from timm.models import adapt_input_conv

    _log.info("first convolution adapted from %d to %d input channels", weight.shape[1], in_chans)
    return adapt_input_conv(in_chans, weight)


def map_official_state(state: StateDict, model: nn.Module,
                       block_key: Callable[[str, torch.Tensor], Optional[Tuple[str, torch.Tensor]]]) -> StateDict:
    """What the isotropic and pyramid filters share: ``block_key(key, value)`` maps a family's block keys
    (None for any other key); the rest is the authors' head ``prediction.*`` -> ``head.*`` (dropped without a
    classifier), ``pos_embed`` resized to the model's grid, the first stem convolution adapted to its input
    channels, any other key unchanged (a strict load then names the unknown ones), and our final BatchNorm,
    which their models lack, set to an eval-mode identity."""
    out = {}
    for key, value in state.items():
        mapped = block_key(key, value)
        if mapped is None and key.startswith("prediction."):
            mapped = official_head_key(key, value, model)
            if mapped is None:
                continue
        elif mapped is None and key == "pos_embed":
            mapped = key, resize_pos_embed(value, model.grid_size)
        elif mapped is None and key == "stem.convs.0.weight":
            mapped = key, adapt_first_conv(value, model.stem.convs[0].in_channels)
        out.update([mapped or (key, value)])
    if isinstance(model.norm, nn.modules.batchnorm._BatchNorm):
        out.update(identity_batchnorm(model.norm, "norm."))
    return out


def check_fits(state: StateDict, model: nn.Module) -> Tuple[List[str], List[str], List[str]]:
    """``(missing, unexpected, wrong_shape)`` keys of ``state`` against ``model.state_dict()``;
    wrong_shape entries read ``key: file [..] vs model [..]``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
             for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return missing, unexpected, wrong


def _family_filter(model: nn.Module):
    """The ``checkpoint_filter_fn`` of the module defining the model's class (timm's convention), or None."""
    import sys

    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _candidates() -> Iterable[str]:
    import timm

    return [n for n in timm.list_models(module=["vig", "pvig", "conv4"])]


def guess_backbone(state: StateDict) -> Tuple[Optional[str], int, int]:
    """The registered fewshot backbone whose keys and shapes best match ``state`` (built on the meta
    device): ``(name, matching keys, keys in state)``; name None when nothing matches at all."""
    import timm

    names = list(_candidates())
    pyramid = any(k.startswith("stages.") or k.endswith("relative_pos") for k in state)
    isotropic = any(k.startswith("blocks.") for k in state) or (is_official_layout(state) and not pyramid)
    if pyramid or isotropic:  # only build the family the keys point to
        names = [n for n in names if n.startswith(("pvig", "test_pvig")) == pyramid and n != "conv4"]
    else:  # no ViG key: only a backbone sharing a top-level module name can fit
        import timm

        with torch.device("meta"):
            conv4_tops = {k.split(".")[0] for k in timm.create_model("conv4", num_classes=0).state_dict()}
        tops = {k.split(".")[0] for k in state}
        if not tops & (conv4_tops | {"stem", "pos_embed", "norm", "head"}):
            return None, 0, len(state)
    best, best_score = None, 0
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, num_classes=0)
        except Exception:  # a variant that cannot be built bare is simply no candidate
            continue
        mapped = state
        flt = _family_filter(model)
        if flt is not None and is_official_layout(state):
            try:
                mapped = flt(dict(state), model)
            except (ValueError, KeyError, RuntimeError):
                continue
        own = model.state_dict()
        score = sum(1 for k, v in mapped.items() if k in own and tuple(v.shape) == tuple(own[k].shape))
        if score > best_score:
            best, best_score = name, score
    return best, best_score, len(state)


def _describe(keys: List[str], limit: int = 4) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, name: Optional[str] = None) -> str:
    """Load a weights file into ``model``, all or nothing.

    Accepts the authors' ViG / pyramid ViG files (bare or under ``state_dict`` / ``model``) and
    fewshot's ``best.pt``, pre-training checkpoints and bare state dicts; detects which it got and
    logs it. The authors' layout goes through the family's ``checkpoint_filter_fn`` (classifier
    dropped when the model has none; our final BatchNorm set to an eval-mode identity).

    Args:
        model: the backbone to fill.
        path: the file.
        name: the backbone's name, for messages.

    Returns:
        the detected layout, ``"official"`` or ``"fewshot"``.

    Raises:
        BackboneCheckpointError: unreadable, truncated or unsafe file, or keys / shapes that do not
            fit (naming the backbone the file seems to fit and the keys that differ). The model is
            left untouched.
    """
    path = os.fspath(path)
    name = name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    state, container = unwrap_state_dict(read_checkpoint(path), path)
    layout = "official" if is_official_layout(state) else "fewshot"
    if layout == "official":
        flt = _family_filter(model)
        if flt is None:
            raise BackboneCheckpointError(
                f"{path}: holds the authors' ViG layout ({container}), which does not fit {name}: "
                "use a ViG backbone such as vig_ti_224_gelu or pvig_ti_224_gelu")
        try:
            mapped = flt(dict(state), model)
        except (ValueError, KeyError) as e:
            raise BackboneCheckpointError(f"{path}: the authors' ViG layout does not fit {name}: {e}") from None
    else:
        mapped = state
    missing, unexpected, wrong = check_fits(mapped, model)
    if missing or unexpected or wrong:
        guess, score, total = guess_backbone(state)
        if guess is None:
            layout, seems = "unrecognised", "it fits no fewshot backbone (another model family?)"
        elif guess == name:
            seems = f"it is closest to {name} itself ({score} of {total} keys match)"
        else:
            seems = f"it seems to fit {guess} ({score} of {total} keys match): pass --backbone {guess}"
        parts = [f"{len(wrong)} of another shape ({_describe(wrong, 2)})" if wrong else "",
                 f"{len(missing)} missing ({_describe(missing, 3)})" if missing else "",
                 f"{len(unexpected)} unexpected ({_describe(unexpected, 3)})" if unexpected else ""]
        raise BackboneCheckpointError(
            f"{path} ({layout} layout, {container}) does not fit {name}: {seems}; keys that do not match: "
            f"{'; '.join(p for p in parts if p)}")
    model.load_state_dict(mapped, strict=True)
    _log.info("loaded %s into %s from %s: %s layout (%s), %d tensors", path, name, path, layout, container, len(mapped))
    return layout


def build_pretrained(model_cls, variant: str, filter_fn, **kwargs) -> nn.Module:
    """``build_model_with_cfg(..., pretrained=True)`` through ``filter_fn``, with one clear line for
    each failure: no network (naming the file to download and how to pass it), a missing,
    truncated or unsafe file, weights that do not fit. The authors' models have no normalisation after
    the last block, so the model is built without ours (``final_norm=False``) unless asked otherwise."""
    import urllib.error

    from timm.models import build_model_with_cfg
    from timm.models._registry import get_pretrained_cfg

    kwargs.setdefault("final_norm", False)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    cfg = get_pretrained_cfg(variant)
    url = overlay.get("url", cfg.url if cfg is not None else "")
    file = overlay.get("file")
    filename = os.path.basename(url) if url else f"{variant}.pth"
    how = (f"download {url or 'the weights'} and pass the file: timm.create_model({variant!r}, pretrained=True, "
           f"pretrained_cfg_overlay=dict(file='path/to/{filename}')), or fewshot --backbone {variant} "
           f"--backbone-from path/to/{filename}")
    if file is not None:
        read_checkpoint(file)  # one clear line for a missing, truncated or unsafe file
    elif not url:
        raise ValueError(f"no pretrained weights exist for {variant!r}: fewshot trains it from scratch; to load "
                         f"weights of your own pass pretrained_cfg_overlay=dict(file='path/to/weights.pth')")
    try:
        return build_model_with_cfg(model_cls, variant, True, pretrained_filter_fn=filter_fn, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise RuntimeError(f"cannot download the weights of {variant!r} ({getattr(e, 'reason', e)}); {how}") from None
    except RuntimeError as e:
        if "state_dict" not in str(e):
            raise
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])
        raise RuntimeError(f"{file or url}: the weights do not fit {variant}: {detail}") from None
