"""fewshot: few-shot episodic learning with Vision GNN backbones, graph prompts and plug-in matchers.

The engine lives here (config, training, evaluation, checkpoints, tracking, CLI); data in
:mod:`episodes`, backbones in :mod:`models`, prompts in :mod:`prompts`, matchers in :mod:`matchers`.
:class:`FewShotClassifier` (``from fewshot import FewShotClassifier``) applies a trained model to one's
own images; it is imported on first use, so ``import fewshot`` loads neither torch nor scikit-learn.
"""
from .config import Config, ConfigError

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "FewShotClassifier", "__version__"]



def __getattr__(name: str):
    """Imports :class:`FewShotClassifier` (torch, scikit-learn) when it is first asked for."""
    if name == "FewShotClassifier":
        from .classifier import FewShotClassifier

        globals()[name] = FewShotClassifier
        return FewShotClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"FewShotClassifier"})
