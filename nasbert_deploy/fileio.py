"""Files in and out: atomic writing (nothing half-written if we fail or are interrupted), output paths checked
before any work (`check_output`), and inputs read as one typed error instead of a traceback (`read_input_text`,
`read_input_json`; each kind of input file has one loader built on these)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import InputError, NasBertDeployError, OutputError

OUTPUT_KINDS = ("file", "dir")

@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The final file gets the usual permissions of a new file (0o666 minus the umask), not mkstemp's 0o600.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` (which must not be a file).

    On failure the temporary directory is removed and `path` is left as it was.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputError(f"output path {target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output(
    path: str | os.PathLike[str], kind: str = "file", force: bool = False, option: str = "--out", reuse: bool = False
) -> Path:
    """Fail before any work if `path` cannot become the output: `OutputError` in one line saying what to do.

    `kind` 'file' or 'dir'. An existing output of the right kind is refused unless `force` (it would be
    replaced), except a folder with `reuse` (written into: a run that resumes there). The nearest existing
    folder is asked for a new file (made and removed at once), which also catches read-only file systems and
    pseudo file systems such as /proc that `os.access` reports writable to root. Writes nothing that stays.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind {kind!r}; valid: {', '.join(OUTPUT_KINDS)}")
    target = Path(path)
    what = f"{option} {target}"
    if str(target).strip() in ("", "."):
        raise OutputError(f"{option}: give a {'file' if kind == 'file' else 'folder'} path")
    if target.exists() or target.is_symlink():
        if kind == "file" and target.is_dir():
            raise OutputError(f"{what} is a folder; give a file path")
        if kind == "dir" and not target.is_dir():
            raise OutputError(f"{what} exists and is not a folder; give a folder path")
        if kind == "file" and not target.is_file():
            raise OutputError(f"{what} exists and is not a regular file; give a file path")
        taken = kind == "file" or (not reuse and any(target.iterdir()))
        if taken and not force:
            raise OutputError(f"{what} exists{'' if kind == 'file' else ' and is not empty'}; pass --force to replace it, "
                              "or choose another path")
    _check_writable(target.parent, what)
    if kind == "dir" and target.is_dir():
        _check_writable(target, what)
    return target


def _check_writable(folder: Path, what: str) -> None:
    """The nearest existing ancestor of `folder` is a folder that accepts a new file."""
    anc = folder  # as given (relative paths stay relative in the message)
    while not (anc.exists() or anc.is_symlink()) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"cannot write {what}: {anc} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".nasbert-write-test-", dir=anc)
    except OSError as exc:
        raise OutputError(f"cannot write {what}: {anc} does not accept new files ({exc.strerror}); "
                          "choose a writable path") from None
    os.close(fd)
    os.unlink(probe)


def read_input_text(
    path: str | os.PathLike[str], what: str, error: type[NasBertDeployError] = InputError, hint: str = ""
) -> str:
    """The UTF-8 text of a file the user handed in; `error` (one line naming `what` and the path) when it is
    missing, a folder, unreadable, binary (a NUL byte) or not UTF-8. `hint` ends the message (what a valid file looks like)."""
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist{tail}") from None
    except IsADirectoryError:
        raise error(f"{what} {p} is a folder, not a file{tail}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or exc}{tail}") from None
    nul = data.find(b"\x00")  # valid UTF-8, yet no text file holds one: a binary file (an archive, weights)
    if nul >= 0:
        raise error(f"{what} {p} is binary, not text (a NUL byte at {nul}){tail}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p} is not UTF-8 text (byte {exc.start}){tail}") from None


def read_input_json(
    path: str | os.PathLike[str], what: str, error: type[NasBertDeployError] = InputError, hint: str = ""
) -> Any:
    """A JSON file the user handed in (`read_input_text`, then JSON); `error` when it is not valid JSON."""
    text = read_input_text(path, what, error, hint)
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        where = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
        raise error(f"{what} {path} is not valid JSON ({where}){f'; {hint}' if hint else ''}") from None
    except RecursionError:
        raise error(f"{what} {path} nests too deeply to be {what}") from None


def read_input_lines(
    path: str | os.PathLike[str], what: str, error: type[NasBertDeployError] = InputError, min_words: int = 1
) -> list[str]:
    """The one loader of text corpora (training corpus, held-out text, calibration text): the stripped lines of a
    UTF-8 file with at least `min_words` words each; `error` if it cannot be read or has no such line."""
    hint = "give a UTF-8 text file with one paragraph per line"
    text = read_input_text(path, what, error, hint)
    lines = [ln.strip() for ln in text.splitlines() if len(ln.split()) >= min_words]
    if not lines:
        raise error(f"{what} {path} has no paragraph of at least {min_words} word(s); {hint}")
    return lines


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB chunks (weight files are large)."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def exclusive_lock(path: str | os.PathLike[str], on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock on `path` (POSIX `flock`; released when the process ends, even killed), calling
    `on_wait` once when another process holds it. Without `fcntl` (Windows) runs are not coordinated."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with Path(path).open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
