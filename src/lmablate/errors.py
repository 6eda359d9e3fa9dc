"""Errors that reach the user as one line: where (file, key) and what was expected."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable


class LmablateError(Exception):
    """Base class: an error the user can fix; printed as one line, never a traceback."""


class ConfigError(LmablateError, ValueError):
    """A study config (or run config) is invalid.

    ``str(err)`` is ``"<file>: <key>: <message>"`` (file and key left out when unknown), so the
    Snakefile, the CLI and the training script all print the same single line.
    """

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None):
        self.message = message
        self.key = key
        self.file = file
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [_printable(p) for p in (self.file, self.key) if p]  # a name may hold "\n"
        return ": ".join([*parts, self.message])

    def with_file(self, file: str | None) -> ConfigError:
        """The same error, located in ``file`` (keeps an inner file if one was already set)."""
        return ConfigError(self.message, key=self.key, file=self.file or file)

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key nested under ``prefix`` (e.g. ``sweep.variants.x``)."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return ConfigError(self.message, key=key, file=self.file)


def _printable(text: str) -> str:
    """``text`` with control characters escaped (``"a\\n"`` for a newline): one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class DataError(LmablateError):
    """A corpus, tokenizer or token store is missing, corrupt or unusable."""


class CheckpointError(LmablateError):
    """A checkpoint is missing, truncated or fails its checksum."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


# The optional imports of data preparation, training and evaluation, and the extra of
# pyproject.toml that installs each (tests/test_extras.py checks them against pyproject.toml).
EXTRAS = {"torch": "train", "tokenizers": "train", "safetensors": "train", "tqdm": "train",
          "huggingface_hub": "train", "lm_eval": "eval", "transformers": "eval"}


def missing_extra(err: BaseException, purpose: str = "this step") -> LmablateError | None:
    """The one-line error for an import of a module an extra installs that is not installed
    (``training needs torch: pip install 'lmablate[train]'``); None for any other error."""
    name = getattr(err, "name", None)
    if not isinstance(err, ModuleNotFoundError) or name not in EXTRAS:
        return None
    return LmablateError(f"{purpose} needs {name}: pip install 'lmablate[{EXTRAS[name]}]'")


def require(module: str, purpose: str) -> None:
    """Raise :func:`missing_extra`'s error when ``module`` is not installed (without importing
    it)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses it
        found = False
    if not found:
        raise missing_extra(ModuleNotFoundError(name=module), purpose)
