"""Reading torch.distributed.checkpoint (DCP) folders that may come from anyone, without running their code.

DCP's own reader unpickles ``.metadata`` with ``pickle.load``, and its default load planner unpickles every
non-tensor entry (optimizer step counts, learning rates, betas) with ``torch.load(weights_only=False)``: a
crafted folder runs code through either. Here ``.metadata`` is read by safe_pickle's allowlist, every
storage entry must name a regular file of the folder itself, and non-tensor entries are read by the
weights-only unpickler (tensors already are, by DCP). ``load`` is the package's only way into a DCP
folder; it imports DCP, so checkpoint.py imports this module only when a sharded checkpoint is used.
"""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    StorageMeta,
    TensorStorageMetadata,
)

from nanogpt_runner.safe_pickle import UnsafePickleError, load_dcp_metadata, weights_only_refusal


class WeightsOnlyPlanner(dcp.DefaultLoadPlanner):
    """DCP's default planner, except that non-tensor entries are unpickled by the weights-only unpickler."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for a forbidden global; anything else is damage
            raise UnsafePickleError(f"entry {read_item.dest_index.fqn} is not plain data "
                                    f"({weights_only_refusal(err)})") from err
        # The default planner places the value where the state dict expects it, but unpickles with
        # weights_only=False; it is handed our own serialization of what the safe unpickler built.
        checked = io.BytesIO()
        torch.save(obj, checked)
        checked.seek(0)
        super().load_bytes(read_item, checked)


class AllowlistReader(dcp.FileSystemReader):
    """A FileSystemReader whose metadata is read through the allowlist and checked against the folder,
    and which reads data only for a WeightsOnlyPlanner."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        folder = Path(self.path)
        metadata = load_dcp_metadata(_regular_file(Path(self._get_metadata_path(kwargs.get("rank"))), folder))
        _check_entries(metadata, folder)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan, planner):
        if not isinstance(planner, WeightsOnlyPlanner):
            raise TypeError("AllowlistReader reads data only for a WeightsOnlyPlanner (DCP's default planner "
                            "unpickles non-tensor entries with weights_only=False)")
        return super().read_data(plan, planner)


def _regular_file(path: Path, folder: Path) -> Path:
    """``path`` when it is a regular file (not a link, FIFO or device); UnsafePickleError otherwise."""
    try:
        is_regular = stat.S_ISREG(os.lstat(path).st_mode)
    except OSError as err:
        raise UnsafePickleError(f"{path.name} is missing from {folder} ({err.strerror})") from err
    if not is_regular:
        raise UnsafePickleError(f"{path.name} in {folder} is not a regular file")
    return path


def _check_entries(metadata: Metadata, folder: Path) -> None:
    """Every entry must be a tensor or bytes entry stored in a plain file of ``folder`` at a valid range:
    the allowlist decides which classes exist, this decides that they point only inside the checkpoint."""
    entries, storage = metadata.state_dict_metadata, metadata.storage_data
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise UnsafePickleError("its entry tables are not dictionaries")
    for key, entry in entries.items():
        if not isinstance(key, str) or not isinstance(entry, (TensorStorageMetadata, BytesStorageMetadata)):
            raise UnsafePickleError(f"entry {key!r} is not a tensor or bytes entry")
    checked: set[str] = set()
    for info in storage.values():
        if not isinstance(info, _StorageInfo):
            raise UnsafePickleError("a storage entry is not a file range")
        name = info.relative_path
        if not isinstance(name, str) or name != Path(name).name or name in ("", ".", ".."):
            raise UnsafePickleError(f"a storage entry names {name!r}, which is not a file of the checkpoint folder")
        if info.transform_descriptors:
            raise UnsafePickleError(f"a storage entry asks for transforms {info.transform_descriptors!r}, which "
                                    f"nanogpt-runner never writes")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (info.offset, info.length)):
            raise UnsafePickleError(f"a storage entry in {name} has an invalid byte range")
        if name not in checked:
            _regular_file(folder / name, folder)
            checked.add(name)


def load(state: dict, path: Path) -> None:
    """``dcp.load(state)`` from the folder ``path`` in place, through the allowlist; UnsafePickleError
    (nothing from the folder having run) when the folder holds anything DCP does not write."""
    reader = AllowlistReader(str(path))
    reader.read_metadata()  # refused here, in words: inside dcp.load a failed read becomes a bare AssertionError
    try:
        dcp.load(state, storage_reader=reader, planner=WeightsOnlyPlanner())
    except CheckpointException as err:  # DCP gathers each rank's exception; an unsafe file is the one to name
        unsafe = [exc for exc, _ in err.failures.values() if isinstance(exc, UnsafePickleError)]
        if unsafe:
            raise unsafe[0] from err
        raise


def empty_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Uninitialised tensors shaped as the folder's entries under ``prefix`` (the prefix dropped), for ``load``
    to fill: how a model is read without building it first. The shapes come from the folder, so they are
    bounded by its size (a stored tensor takes at least its bytes) before anything is allocated."""
    folder = Path(path)
    metadata = AllowlistReader(str(folder)).read_metadata()
    entries = {k: v for k, v in metadata.state_dict_metadata.items() if k.startswith(prefix)}
    not_tensors = [k for k, v in entries.items() if not isinstance(v, TensorStorageMetadata)]
    if not_tensors:
        raise UnsafePickleError(f"entries {', '.join(not_tensors[:3])} should be tensors")
    stored = sum((folder / name).stat().st_size for name in {i.relative_path for i in metadata.storage_data.values()})
    needed = sum(math.prod(v.size) * v.properties.dtype.itemsize for v in entries.values())
    if needed > stored:
        raise UnsafePickleError(f"its metadata describes {needed:,} bytes of tensors but its files hold {stored:,}")
    return {k[len(prefix):]: torch.empty(v.size, dtype=v.properties.dtype) for k, v in entries.items()}
