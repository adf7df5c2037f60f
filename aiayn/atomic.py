"""Writing directories and files so that a reader sees the old version or the new one, never half,
and so that nothing aiayn did not write is ever removed.

Every directory aiayn writes (prepared data, model directories, checkpoints, exports) is built in a
temporary directory beside its final name and swapped in whole. It carries a small listing,
``.aiayn-written``, of the files aiayn put there. Replacing an existing directory is allowed only when
it is recognisably aiayn's (that listing, or — for directories written before it existed — an aiayn
``config.json`` / ``manifest.json`` and only files of the names aiayn writes) *and* the caller says so
(``overwrite=True``, the CLI's ``--overwrite``); a user's folder, or a run directory given where a
model directory belongs, is refused with a clear error.

Temporary directories are named ``.NAME.tmp-PID-…`` and ``.NAME.old-PID-…``: one left behind by a
killed process (its PID no longer alive) is removed the next time the same directory is written, and a
previous version caught in the middle of a swap is put back first.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LISTING = ".aiayn-written"

# What aiayn wrote into directories made before the listing existed (models/ shipped in git, old runs).
_LEGACY = {
    "model directory": ("config.json", "aiayn-model/",
                        ["config.json", "model.safetensors", "spm.model", "chars.json", "trainer_state.pt"]),
    "data directory": ("manifest.json", "aiayn-data/", ["manifest.json", "spm.model", "chars.json", "*.npy", "*.txt.jsonl"]),
}
RUN_FILES = ["config.yaml", "log.jsonl", "tb", "checkpoints", "best", "curves.png"]


class OutputError(ValueError):
    """An output location aiayn refuses to write to, and why."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphans(final: Path, kind: str) -> list[Path]:
    """``.NAME.KIND-PID-…`` siblings of ``final`` whose process is gone."""
    found = []
    for p in final.parent.glob(f".{final.name}.{kind}-*"):
        try:
            pid = int(p.name[len(f".{final.name}.{kind}-"):].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            found.append(p)
    return found


def recover(final: str | Path) -> None:
    """Undo what a killed writer of ``final`` left: put back a previous version caught mid-swap, remove
    half-written temporary directories. Only aiayn's own temporary names are touched."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    for old in _orphans(final, "old"):
        saved = old / final.name
        if saved.exists() and not final.exists():
            os.replace(saved, final)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in _orphans(final, "tmp"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _listing(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / LISTING).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def owned_files(directory: Path, what: str | None = None) -> set[str] | None:
    """The names aiayn wrote into ``directory`` as a ``what`` ("model directory", "data directory",
    "export directory"; None: any of them), or None when it is not recognisably that."""
    data = _listing(directory)
    if data is not None:
        if what is not None and data.get("what", what) != what:
            return None
        return {LISTING, *map(str, data["files"])}
    for kind, (marker, fmt, patterns) in _LEGACY.items():
        if what is not None and kind != what:
            continue
        try:
            config = json.loads((directory / marker).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(config, dict) and str(config.get("format", "")).startswith(fmt):
            return {p.name for p in directory.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)}
    return None


def claim_run_directory(out: str | Path) -> Path:
    """Make ``out`` a training run directory, or check that it already is one aiayn made.

    Training writes only the names in ``RUN_FILES`` (config.yaml, log.jsonl, tb/, checkpoints/, best/)
    into its run directory and leaves everything else there alone (the prepared data, say, as in
    ``runs/NAME/data``). So a directory is claimed (marked with a ``.aiayn-written`` listing) when each of
    those names it already holds is aiayn's: an aiayn run's config.yaml and log, TensorBoard events,
    checkpoints and models aiayn wrote. One that is not (a user's own config.yaml, say) is refused.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; choose another train.out")
    out.mkdir(parents=True, exist_ok=True)
    data = _listing(out)
    if data is not None and data.get("what") == "run directory":
        return out
    foreign = [name for name in RUN_FILES if (out / name).exists() and not _is_run_file(out / name)]
    if foreign:
        raise OutputError(f"{out}: holds {', '.join(foreign)} that aiayn did not write; refusing to write over "
                          "it: choose another train.out")
    write_json_atomic(out / LISTING, {"what": "run directory", "files": RUN_FILES})
    return out


def _is_run_file(path: Path) -> bool:
    """Whether ``path``, one of ``RUN_FILES``, looks as aiayn training writes it."""
    try:
        if path.name == "config.yaml":
            import yaml

            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
            return isinstance(cfg, dict) and {"model", "train"} <= set(cfg)
        if path.name == "log.jsonl":
            first = path.read_text(encoding="utf-8").split("\n", 1)[0]
            return not first or {"kind", "step"} <= set(json.loads(first))
        if path.name == "tb":
            return path.is_dir() and all(p.name.startswith("events.out.tfevents.") for p in path.iterdir())
        if path.name == "checkpoints":
            return path.is_dir() and all(
                p.name == "latest.json" or p.name.startswith(".") or owned_files(p, "model directory") is not None
                for p in path.iterdir())
        if path.name == "best":
            return owned_files(path, "model directory") is not None
        return path.suffix == ".png"  # curves.png, drawn by `aiayn viz curves`
    except Exception:  # unreadable: not ours
        return False


def check_replaceable(final: str | Path, overwrite: bool, what: str = "directory") -> None:
    """Raise :class:`OutputError` unless writing ``final`` destroys nothing that aiayn did not write.

    A missing or empty directory is always fine. An aiayn directory needs ``overwrite``. Anything else
    (a file, a user's folder, an aiayn directory holding files someone added) is refused.
    """
    final = Path(final)
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir():
        raise OutputError(f"{final}: exists and is not a directory; choose another output {what}")
    entries = sorted(p.name for p in final.iterdir())
    if not entries:
        return
    owned = owned_files(final, what)
    if owned is None:
        shown = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
        raise OutputError(f"{final}: exists and was not written by aiayn (holds {shown}); "
                          f"refusing to replace it: choose another output {what}")
    foreign = [e for e in entries if e not in owned]
    if foreign:
        raise OutputError(f"{final}: holds files aiayn did not write ({', '.join(foreign[:5])}); refusing to replace it")
    if not overwrite:
        raise OutputError(f"{final}: already holds an aiayn {what}; pass --overwrite to replace it")


@contextmanager
def atomic_directory(final: str | Path, overwrite: bool = False, what: str = "directory") -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; when the block ends without an error, swap it in.

    ``final`` must be absent, empty, or (with ``overwrite``) a directory aiayn wrote; see
    :func:`check_replaceable`. An interrupted or failed write leaves ``final`` as it was and removes
    the temporary directory.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    check_replaceable(final, overwrite, what)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / LISTING).write_text(json.dumps({"what": what, "files": files}) + "\n", encoding="utf-8")
        umask = _umask()
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp/mkstemp make private files: give them the usual modes
        for f in tmp.iterdir():
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        _fsync_tree(tmp)
        check_replaceable(final, overwrite, what)  # again: something may have appeared meanwhile
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_tree(directory: Path) -> None:
    """Flush the files' contents to disk before the rename makes them visible (a power cut after the
    rename must not leave empty files under the final name)."""
    for f in directory.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace the file ``path`` with ``text`` so that a reader sees the old content or the new."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace the file ``path`` with ``data`` so that a reader sees the old content or the new."""
    path = Path(path)
    recover(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes a private file: give it the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
