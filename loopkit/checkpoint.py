"""Checkpoint files: atomic writes and safe loads.

A write goes to a temporary file in the destination's folder, is flushed and fsynced, then
renamed over the destination: a crash at any point leaves either the old file or the new one,
never half of one. A load uses ``torch.load(weights_only=True)`` unless the caller opts out, so
a file holding pickled code cannot run it; a truncated or corrupt file gives an error naming it.

:class:`CheckpointIO` is the ``checkpoint_io`` slot: the object that writes and reads checkpoint
files. The default writes with :func:`atomic_save` and reads with :func:`safe_load`; a plugin
may write elsewhere (object storage) or otherwise. Which processes write is the strategy's call.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import typing as t
import zipfile
from pathlib import Path

import torch

from loopkit.plugins import Plugin

__all__ = [
    "CheckpointError",
    "CheckpointIO",
    "UnsafeCheckpointError",
    "atomic_save",
    "safe_load",
    "verify",
]


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read: missing, truncated, corrupt or unsafe."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects whose loading could run code, and the caller did not opt in."""


def atomic_save(obj: t.Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``obj`` to ``path`` so that readers only ever see a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file readable by its owner only; give it the mode a plain open()
        # would have (or the mode of the file it replaces).
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Read, not set: os.umask() can only be read by changing it, which races other threads.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_load(
    path: str | os.PathLike[str],
    *,
    weights_only: bool = True,
    map_location: t.Any = "cpu",
) -> t.Any:
    """Load a checkpoint written by :func:`atomic_save` or ``torch.save``.

    With ``weights_only=True`` (the default) only tensors, plain containers and types
    allow-listed with ``torch.serialization.add_safe_globals`` can be loaded; anything else is
    refused before any of it runs, with an error saying how to opt in.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if weights_only and "weights_only" in str(err) and _looks_like_torch_save(path):
            raise UnsafeCheckpointError(
                f"checkpoint {str(path)!r} holds objects that are not plain tensors or "
                f"containers, and loading them could run code. If you trust this file, load it "
                f"with weights_only=False, or allow its types with "
                f"torch.serialization.add_safe_globals([...]). Details: {_refusal(err)}"
            ) from err
        raise _corrupt(path, err) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise _corrupt(path, err) from err


def _looks_like_torch_save(path: Path) -> bool:
    # torch.save writes a zip archive, or (the legacy format) a pickle stream, which starts
    # with the PROTO opcode. Anything else is damage, not an object refused for safety.
    with contextlib.suppress(OSError), open(path, "rb") as f:
        head = f.read(4)
        return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
    return False


def verify(path: str | os.PathLike[str]) -> None:
    """Check every record of a checkpoint file against its CRC; raise :class:`CheckpointError`
    naming the file and the damaged record.

    ``torch.load`` does not check CRCs: a flipped bit in a tensor's bytes loads as a wrong
    value. This reads the whole file once. Files that are not zip archives (the legacy format,
    a sharded checkpoint's folder) are left to the loader.
    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            if all(info.CRC == 0 for info in archive.infolist() if info.file_size):
                return  # written with torch.serialization.set_crc32_options(False)
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise _corrupt(path, err) from err
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its record {bad!r} does not match the CRC "
            "written with it, so some of its values are damaged. Load an earlier checkpoint; "
            "loopkit writes checkpoints atomically, so this file was damaged after it was written"
        )


def _refusal(err: BaseException) -> str:
    # torch's message is long; the line naming the refused type is the one worth repeating.
    for line in str(err).splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.strip().split(" Please use", 1)[0]
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {str(path)!r} is truncated or corrupt ({path.stat().st_size} bytes) and "
        f"cannot be loaded: {type(err).__name__}: {_first_line(err)}. Load an earlier "
        "checkpoint; loopkit writes checkpoints atomically, so this file was not written by it "
        "or was damaged afterwards."
    )


class CheckpointIO(Plugin):
    """The ``checkpoint_io`` slot: writes and reads checkpoint files.

    Pass an instance (or a registered name) in ``Fabric(plugins=[...])`` to replace how files
    are written; ``Fabric.save`` calls :meth:`save_checkpoint` on the processes the strategy
    writes from, ``Fabric.load`` calls :meth:`load_checkpoint` on every process.
    """

    kind = "checkpoint_io"

    def save_checkpoint(self, checkpoint: dict[str, t.Any], path: Path) -> None:
        """Write ``checkpoint`` to ``path`` so that a crash leaves any previous file intact."""
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: Path, *, map_location: t.Any = "cpu", weights_only: bool = True
    ) -> t.Any:
        """Read what :meth:`save_checkpoint` wrote; refuse code-running pickles by default."""
        return safe_load(path, weights_only=weights_only, map_location=map_location)

    def remove_checkpoint(self, path: Path) -> None:
        """Delete the checkpoint at ``path`` (nothing happens when there is none)."""
        Path(path).unlink(missing_ok=True)
