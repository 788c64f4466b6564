"""Checkpoint directories: atomic writes with a manifest, verification on load, the latest complete one;
and their parts: safetensors files read with their framing checked, the optimizer state without pickle.

A checkpoint is written as SQLite commits a transaction and accelerate saves its state: everything goes into
``NAME.tmp``, each file is fsynced, ``manifest.json`` (every file's size and sha256) is written last, the
directory is renamed to ``NAME`` and its parent fsynced. A crash at any instant leaves either no ``NAME`` or a
complete one, and the one before it untouched. ``NAME.tmp`` and ``NAME.old`` (a checkpoint being replaced) are
never loaded. Loading verifies the manifest first, so a truncated, altered or missing file is refused by name
instead of surfacing as a deep traceback or, worse, as a fresh default.

"Latest" is the highest complete iteration, read from the names ``iter_NNNNNN`` (and ``last-good``'s recorded
iteration), never from modification times: ``cp -r`` gives every directory a new mtime.

The manifest::

    {"format": "textenv-checkpoint/1",
     "files": {"trainer_state.json": {"size": 1234, "sha256": "9f86..."},
               "model/model.safetensors": {"size": 1048576, "sha256": "..."}, ...}}

Paths are relative to the checkpoint, with ``/``; the manifest does not list itself.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open

MANIFEST = "manifest.json"
FORMAT = "textenv-checkpoint/1"
STATE_FILE = "trainer_state.json"
"""The checkpoint's JSON state: counters, statistics, history, the agent's config and the run's definition."""
LAST_GOOD = "last-good"
"""The checkpoint written when training stops on an error (its iteration is the one recorded inside)."""
_ITERATION = re.compile(r"iter_(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file and what is wrong with it."""


class DiskFullError(OSError):
    """No space left while saving a checkpoint; the partial checkpoint has been removed."""


# ------------------------------------------------------------------ writing


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (the one writer of a checkpoint's own files, so a full
    disk surfaces as an ``OSError`` with ``errno.ENOSPC`` instead of a library's own message)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, value: Any) -> None:
    write_file(path, json.dumps(value, indent=1).encode())


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Make the checkpoint directory ``path`` with ``write(tmp)``, atomically, with a manifest.

    Args:
        path: the checkpoint directory; an existing one is replaced (through ``NAME.old``, removed after).
        write: fills the temporary directory it is given.

    Raises:
        DiskFullError: no space left; the temporary directory is removed, older checkpoints are untouched.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # a write of the same name that was cut short
        tmp.mkdir(parents=True)
        write(tmp)
        seal(tmp)
        _replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself is durable only once its directory is
    except BaseException as exc:  # Ctrl-C included: never leave a half-written checkpoint behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and _disk_full(exc, path.parent):
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on {_device_of(path.parent)} while saving {path}; the partial checkpoint was removed "
                "and the older checkpoints are untouched",
            ) from exc
        raise
    return path


def seal(directory: Path) -> None:
    """Write ``directory``'s manifest of the files in it as they are now, after fsyncing each of them and then
    the directories (so the manifest never lists data that is not on disk yet). :func:`write_atomically` calls
    it; by hand, it re-seals a checkpoint whose files were changed on purpose."""
    directory = Path(directory)
    files = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / MANIFEST):
        _check_structure(file)  # a library's writer that lost bytes without saying so
        files[file.relative_to(directory).as_posix()] = {"size": file.stat().st_size,
                                                         "sha256": _sha256(file, sync=True)}
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(sub)
    write_json(directory / MANIFEST, {"format": FORMAT, "files": files})
    _fsync_dir(directory)


def _replace(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` goes to ``NAME.old`` first (a directory cannot be
    renamed over a non-empty one). A crash between the two renames leaves ``NAME.old`` and ``NAME.tmp``, both
    complete and neither loaded: resuming takes the checkpoint before."""
    if not path.exists():
        os.rename(tmp, path)
        return
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(directory: Path) -> None:
    """Delete the ``*.tmp`` and ``*.old`` directories that writes cut short left in ``directory``."""
    for leftover in list(directory.glob("*.tmp")) + list(directory.glob("*.old")):
        shutil.rmtree(leftover, ignore_errors=True)


def _sha256(file: Path, *, sync: bool = False) -> str:
    with open(file, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        if sync:
            os.fsync(f.fileno())  # flushes the file's dirty pages, whoever wrote them
    return digest


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(exc: BaseException, where: Path) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk: ENOSPC/EDQUOT, the message Rust and C libraries
    give for it, or no space left at ``where``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(seen) for s in ("No space left on device", "os error 28", "StorageFull")):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return os.statvfs(where).f_bavail == 0
    except OSError:
        return False


def _device_of(path: Path) -> str:
    """The device holding ``path`` and where it is mounted, as /proc/self/mounts says (Linux), else the path."""
    try:
        target = os.path.realpath(path)
        best = ("", "")
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                device, mount = line.split()[:2]
                mount = mount.replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[1]):
                    best = (device, mount)
        if best[0]:
            return f"{best[0]} (mounted on {best[1]})"
    except OSError:
        pass
    return f"the device of {path}"


# ------------------------------------------------------------------ reading


def verify(path: str | Path) -> dict[str, Any]:
    """Check a checkpoint against its manifest: every listed file present, of its size and sha256, and no other.

    Returns:
        The manifest.

    Raises:
        CheckpointError: naming the file and what is wrong (missing, truncated, altered, not listed, no manifest).
    """
    path = Path(path)
    if path.name.endswith((".tmp", ".old")):
        raise CheckpointError(f"{path} is the temporary directory of a checkpoint write, never loaded; load the "
                              "checkpoint it was for, or the run directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing, so {path} is not a complete checkpoint (its write was cut "
                              "short, or an older textenv wrote it without a manifest); not loaded")
    manifest = read_json(manifest_path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path}: not a {FORMAT} manifest")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (the manifest lists it)")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(f"{file}: {size} bytes where the manifest says {expected['size']} "
                                  f"({'truncated or replaced' if size < expected['size'] else 'altered'})")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{file}: its sha256 differs from the manifest's (altered after it was written)")
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p != manifest_path):
        # Only what the manifest lists is loaded: a folder added later (a reference/, a model shard) never is.
        if file.relative_to(path).as_posix() not in files:
            raise CheckpointError(f"{file}: not in the manifest (added after the checkpoint was written); remove it "
                                  "to load the checkpoint as it was written")
    return manifest


def read_json(file: Path) -> Any:
    """A checkpoint's JSON file, or a CheckpointError naming it."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: not readable JSON ({exc})") from None


def _check_structure(file: Path) -> None:
    """A ``.safetensors`` file must be as long as its header says (a writer that lost bytes on a full disk
    without raising would otherwise be hashed into the manifest as if complete)."""
    if file.suffix != ".safetensors":
        return
    problem = safetensors_problem(file)
    if problem:
        raise OSError(errno.EIO, f"{file}: {problem} right after it was written")


def safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file's framing (header length, header JSON, data length), or None."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            return f"{size} bytes, shorter than its {header_len}-byte header says (truncated)"
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its header is not JSON"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        return f"{size} bytes where its header says {8 + header_len + end} (truncated or altered)"
    return None


def iteration_of(path: Path) -> int | None:
    """The iteration in a periodic checkpoint's name ``iter_NNNNNN``, else None."""
    match = _ITERATION.fullmatch(path.name)
    return int(match.group(1)) if match else None


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is meant as one checkpoint (rather than a run directory holding ``checkpoints/``)."""
    return any((path / name).exists() for name in (MANIFEST, STATE_FILE, "model"))


def latest(run_dir: str | Path) -> tuple[Path, list[str]]:
    """The run's newest complete checkpoint: the highest iteration among ``checkpoints/iter_NNNNNN`` and
    ``checkpoints/last-good`` that passes :func:`verify`.

    Returns:
        Its path, and one line per newer checkpoint that was damaged and skipped (``"NAME: what is wrong"``).

    Raises:
        FileNotFoundError: the run directory holds no checkpoint at all.
        CheckpointError: every checkpoint in it is damaged (the newest one's problem is named).
    """
    folder = Path(run_dir) / "checkpoints"
    names = folder.iterdir() if folder.is_dir() else ()
    candidates = [(n, 1, p) for p in names if (n := iteration_of(p)) is not None]
    skipped: list[str] = []
    last_good = folder / LAST_GOOD
    if last_good.is_dir():  # its iteration is recorded inside, so it is verified first
        try:
            verify(last_good)
            candidates.append((int(read_json(last_good / STATE_FILE)["num_iterations"]), 0, last_good))
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            skipped.append(f"{LAST_GOOD}: {exc}")
    if not candidates and not skipped:
        raise FileNotFoundError(f"no checkpoint in {run_dir} (looked for {MANIFEST} in it and in its checkpoints/)")
    for _, _, path in sorted(candidates, key=lambda c: c[:2], reverse=True):  # on a tie, iter_N over last-good
        try:
            verify(path)
        except CheckpointError as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        return path, skipped
    raise CheckpointError(f"no complete checkpoint in {run_dir}; the newest: {skipped[0]}")


# ------------------------------------------------------------------ the parts: tensors and optimizer state


def load_part(file: Path, read: Callable[[Path], Any]) -> Any:
    """``read(file)``, or a CheckpointError naming the file and what is wrong (never a deep traceback)."""
    if not file.exists():
        raise CheckpointError(f"{file}: missing")
    try:
        return read(file)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the library raises, the user needs the file's name
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{file}: cannot be loaded ({type(exc).__name__}{': ' + what if what else ''})") from exc


def check_safetensors(directory: Path) -> Path:
    """A transformers directory whose safetensors files are whole (a truncated one is named)."""
    for file in sorted(directory.rglob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            raise CheckpointError(f"{file}: {problem}")
    return directory


def read_safetensors(file: Path, device: torch.device | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata, after a check of its framing that names a truncated file."""
    problem = safetensors_problem(file)
    if problem:
        raise CheckpointError(f"{file}: {problem}")
    with safe_open(file, framework="pt", device=str(device)) as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}


def optimizer_bytes(state: dict[str, Any]) -> bytes:
    """An optimizer's ``state_dict()`` as safetensors: ``state.<param>.<name>`` tensors, the parameter
    groups and any non-tensor state as JSON metadata (no pickle: loading runs no code)."""
    tensors, scalars = {}, {}
    for param, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param}.{name}"] = value
    as_json = functools.partial(json.dumps, default=lambda v: v.item() if torch.is_tensor(v) else repr(v))
    return safetensors.torch.save(tensors, metadata={"param_groups": as_json(state["param_groups"]),
                                                     "scalars": as_json(scalars)})


def optimizer_state(file: Path, device: torch.device) -> dict[str, Any]:
    """What :func:`optimizer_bytes` wrote, as an optimizer's ``state_dict()``."""
    tensors, metadata = read_safetensors(file, device)
    groups = json.loads(metadata["param_groups"])
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, param, name = key.split(".", 2)
        state.setdefault(int(param), {})[name] = tensor
    for key, value in json.loads(metadata.get("scalars", "{}")).items():
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    return {"state": state, "param_groups": groups}
