"""Reading pickles that someone else may have made, without running their code.

A pickle is a program: unpickling calls whatever classes it names. Files in a runs folder, a checkpoint
or a downloaded dataset may come from anyone, so every pickle the package reads goes through this module,
which admits only what the format needs (an allowlist), never a list of refused names.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path


class UnsafePickleError(ValueError):
    """A pickle names a class outside the allowlist: it was not loaded (nothing in it ran)."""


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes build (dict, list, tuple, str, bytes, numbers, bool, None)."""

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(f"it names {module}.{name}, and only plain values (dicts, lists, strings, numbers) "
                                f"are read from this file")


def load_plain(source: Path | bytes) -> object:
    """Unpickle ``source`` (a path or the bytes) when it holds plain values only; otherwise raise
    UnsafePickleError before anything it names is imported or called."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    return _PlainUnpickler(io.BytesIO(data)).load()
