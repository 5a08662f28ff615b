"""Output files: checked before any work, written atomically after it.

``check_writable`` runs while the arguments are validated, so a run is never thrown away
at the end because its report or plot cannot be written. ``atomic_path`` then writes to a
temporary file in the target directory and renames it onto the target (``os.replace``),
so a failure or an interruption leaves no partial file and the previous file intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from .errors import UserError


def check_writable(path: str, option: str) -> str:
    """``path`` if a file can be created (or replaced) there, else a ``UserError``."""
    if os.path.isdir(path):
        raise UserError(f"{option} {path}: is a directory; expected a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"{option} {path}: directory {directory} does not exist")
    try:  # the real test: permissions, read-only file systems, quotas
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".dawin-fast-check-"):
            pass
    except OSError as err:
        raise UserError(f"{option} {path}: cannot write in {directory} "
                        f"({err.strerror or err})") from None
    return path


def check_distinct(paths: dict[str, str | None], inputs: dict[str, list[str]]) -> None:
    """No two outputs on one file, and no output on top of an input file."""
    seen: dict[str, str] = {}
    for option, path in paths.items():
        if not path:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise UserError(f"{option} {path}: same file as {seen[real]}")
        seen[real] = option
        for input_option, input_paths in inputs.items():
            if any(os.path.realpath(p) == real for p in input_paths if p):
                raise UserError(f"{option} {path}: would overwrite the {input_option} file")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path``; renamed onto ``path`` if the block succeeds,
    removed if it raises. The extension is kept (matplotlib picks the format from it)."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.",
                               suffix=os.path.splitext(base)[1])
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is a normal file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> bool:
    """Write ``text`` atomically; True if it replaced an existing file."""
    existed = os.path.exists(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return existed
