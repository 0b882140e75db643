"""Reading pickles that someone else may have made, without running their code.

A pickle is a program: unpickling calls whatever classes it names. Files in a runs folder, a checkpoint
or a downloaded dataset may come from anyone, so every pickle the package reads goes through this module,
which admits only what the format needs (an allowlist), never a list of refused names.
"""

from __future__ import annotations

import io
import pickle
from functools import cache
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


class _DcpMetadataUnpickler(pickle.Unpickler):
    """Builds what torch.distributed.checkpoint writes into ``.metadata``: its metadata dataclasses, torch
    sizes, dtypes and layouts, paths, and plain values; any other name is refused before it is imported."""

    def find_class(self, module: str, name: str):
        found = _dcp_metadata_classes().get((module, name))
        if found is None:
            raise UnsafePickleError(f"it names {module}.{name}, which torch.distributed.checkpoint does not write "
                                    f"into checkpoint metadata")
        return found


@cache
def _dcp_metadata_classes() -> dict[tuple[str, str], object]:
    """(module, name) -> object for every global DCP's ``.metadata`` refers to (found by logging what real
    sharded checkpoints of each layout ask for). Imported here, on first use: the viewer never gets here."""
    import pathlib

    import torch
    import torch.distributed.checkpoint.metadata as dcp_metadata
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.serialization import _get_layout

    metadata_classes = ("Metadata", "StorageMeta", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
                        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")
    allowed = {(dcp_metadata.__name__, name): getattr(dcp_metadata, name) for name in metadata_classes}
    allowed |= {("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
    allowed |= {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
        ("torch", "Size"): torch.Size,
        ("torch.serialization", "_get_layout"): _get_layout,  # layout name -> torch layout (a lookup, no code)
        # StorageMeta.checkpoint_id: where it was saved (on Linux or Windows), kept as a path never opened
        # (the pure classes too: metadata read here and saved again names them)
        ("pathlib", "PosixPath"): pathlib.PurePosixPath,
        ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
        ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
        ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
    }
    return allowed


def load_dcp_metadata(source: Path | bytes):
    """A torch.distributed.checkpoint ``Metadata`` from a ``.metadata`` file (or its bytes); UnsafePickleError
    when the file names anything DCP does not write, or is not a Metadata."""
    from torch.distributed.checkpoint.metadata import Metadata

    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    try:
        metadata = _DcpMetadataUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # a truncated or malformed pickle: what it is does not matter, it is not metadata
        raise UnsafePickleError(f"it is not readable checkpoint metadata ({type(err).__name__}: {err})") from err
    if not isinstance(metadata, Metadata):
        raise UnsafePickleError(f"it holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


def weights_only_refusal(err: Exception) -> str:
    """The part of a ``torch.load(weights_only=True)`` error that says what was refused (torch's own first
    line suggests retrying with weights_only=False, which is exactly what must not be done here)."""
    for line in str(err).splitlines():
        if line.startswith("WeightsUnpickler error:"):
            return line.removeprefix("WeightsUnpickler error:").strip()
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
