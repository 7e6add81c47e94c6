"""Weights trained by fewshot and shipped inside the package, as timm pretrained tags.

Each shipped file is ``models/weights/<architecture>.<tag>.safetensors`` (the backbone's state dict in
our own key layout) with ``<architecture>.<tag>.json`` beside it: the command and commit that trained
it, its sha256, its test accuracy and the run's settings (dataset, matcher, image size). The JSON files
are read when :mod:`models` is imported, so every shipped file is a timm pretrained tag and

    >>> import models, timm
    >>> backbone = timm.create_model("vig_small_c4_28.omniglot_minimal", pretrained=True)  # doctest: +SKIP

works offline. ``scripts/ship_weights.py`` trains and regenerates them; ``fewshot.pretrained`` builds the
whole few-shot model (backbone and matcher) from a name.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["WEIGHTS_DIR", "shipped_names", "shipped_info", "shipped_cfgs", "shipped_file", "sha256_of",
           "ShippedWeightsError"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ShippedWeightsError(ValueError):
    """A shipped name that does not exist, or a shipped file that is missing or altered."""


def _infos() -> Dict[str, dict]:
    out = {}
    for path in sorted(WEIGHTS_DIR.glob("*.json")):
        info = json.loads(path.read_text())
        out[path.stem] = info
    return out


def shipped_names(architecture: Optional[str] = None) -> List[str]:
    """``architecture.tag`` names of the shipped weights (of one architecture when given)."""
    return [n for n in _infos() if architecture is None or n.split(".", 1)[0] == architecture]


def shipped_info(name: str) -> dict:
    """The provenance record of shipped weights ``name`` (``architecture.tag``)."""
    infos = _infos()
    if name not in infos:
        import difflib

        close = difflib.get_close_matches(name, list(infos), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ShippedWeightsError(f"no shipped weights named {name!r}: fewshot ships {', '.join(infos) or 'none'}{hint}")
    return infos[name]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_file(name: str, verify: bool = True) -> Path:
    """Path of ``name``'s safetensors file, its sha256 checked against the record when ``verify``."""
    info = shipped_info(name)
    path = WEIGHTS_DIR / info["file"]
    if not path.is_file():
        raise ShippedWeightsError(f"{path}: the shipped weights file of {name!r} is missing from the installation")
    if verify and sha256_of(path) != info["sha256"]:
        raise ShippedWeightsError(f"{path}: sha256 differs from the one recorded in {name}.json; the file was "
                                  "altered or truncated (reinstall, or regenerate with scripts/ship_weights.py)")
    return path


def shipped_cfgs(architecture: str, base: dict) -> dict:
    """``{"architecture.tag": cfg}`` for timm's ``generate_default_cfgs``: ``base`` (the architecture's
    own config) with ``file`` set to the shipped safetensors file and the recorded input size."""
    out = {}
    for name in shipped_names(architecture):
        info = shipped_info(name)
        size = (int(info["in_chans"]), int(info["img_size"]), int(info["img_size"]))
        out[name] = {**base, "file": str(WEIGHTS_DIR / info["file"]), "input_size": size,
                     "hf_hub_id": None, "url": "", "license": "mit"}
    return out


def is_shipped_tag(variant: str, kwargs: dict) -> bool:
    """True when a timm entrypoint was called for one of our shipped tags (timm passes the tag as
    ``pretrained_cfg``)."""
    tag = kwargs.get("pretrained_cfg")
    return isinstance(tag, str) and f"{variant}.{tag}" in shipped_names(variant)


def build_shipped(model_cls, variant: str, filter_fn, **kwargs):
    """``build_model_with_cfg(..., pretrained=True)`` for a shipped tag, its file's sha256 checked first.
    Our weights include the final normalisation (unlike the authors' releases), so the model keeps it."""
    from timm.models import build_model_with_cfg

    shipped_file(f"{variant}.{kwargs['pretrained_cfg']}")
    return build_model_with_cfg(model_cls, variant, True, pretrained_filter_fn=filter_fn, **kwargs)


def build_own(model_cls, variant: str, pretrained: bool = False, **kwargs):
    """``build_model_with_cfg`` for a family whose only weights are fewshot's own (Conv-4, Conv-64F): a shipped
    tag loads its file; ``pretrained=True`` without one is refused, naming the shipped tags."""
    from timm.models import build_model_with_cfg

    if pretrained and is_shipped_tag(variant, kwargs):
        return build_shipped(model_cls, variant, None, **kwargs)
    if pretrained:
        raise ValueError(f"no pretrained weights exist for {variant!r}; the shipped ones are "
                         f"{', '.join(shipped_names(variant)) or 'none'} (timm.create_model('<name>', pretrained=True))")
    return build_model_with_cfg(model_cls, variant, False, **kwargs)


def own_cfg(first_conv: str, in_chans: int = 1, img_size: int = 28) -> dict:
    """timm's pretrained config of a small grayscale family trained here: no classifier, inputs scaled to -1..1."""
    return {"url": "", "num_classes": 0, "input_size": (in_chans, img_size, img_size), "pool_size": None,
            "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.5,) * in_chans, "std": (0.5,) * in_chans,
            "first_conv": first_conv, "classifier": "head", "license": "mit"}
