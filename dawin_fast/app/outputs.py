"""Output files: checked before any work, written atomically after it.

``check_writable`` runs while the arguments are validated, so a run is never thrown away
at the end because its report or plot cannot be written: the name must be a regular file
or a new name (never a device, a pipe or a directory), its directory must exist and be
writable, and the name must fit the file system. ``atomic_path`` then writes to a short
temporary name in the target's directory and renames it onto the target (``os.replace``),
so a failure or an interruption leaves no partial file and the previous file intact. A
symlinked target is written through: the link stays and its target is replaced. A
replaced file keeps its permission bits (and, where allowed, its owner).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator

from .errors import UserError

# Temporary names: ".dawin-fast-" + mkstemp's 8 characters + the extension (at most this
# long), so that any valid target name has a valid temporary name (names <= 255 bytes).
_MAX_SUFFIX = 16


def _name_max(directory: str) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable(path: str, option: str) -> str:
    """``path`` if a file can be created (or replaced) there, else a ``UserError``."""
    if not path:
        raise UserError(f"{option}: empty file name; expected a file name")
    if path.endswith((os.sep, "/")):
        raise UserError(f"{option} {path}: ends in '/', so it names a directory; expected "
                        f"a file name")
    if os.path.isdir(path):
        raise UserError(f"{option} {path}: is a directory; expected a file name")
    target = os.path.realpath(path)  # a symlink is written through, at its target
    if os.path.lexists(target):
        mode = os.stat(target).st_mode if os.path.exists(target) else 0
        if not stat.S_ISREG(mode):
            raise UserError(f"{option} {path}: exists and is not a regular file "
                            f"({_kind(mode)}); expected a new name or a file to replace")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        what = (f"{directory} is not a directory" if os.path.exists(directory)
                else f"directory {directory} does not exist")
        raise UserError(f"{option} {path}: {what}")
    name = os.path.basename(target)
    if len(os.fsencode(name)) > _name_max(directory):
        raise UserError(f"{option} {path}: file name is {len(os.fsencode(name))} bytes; "
                        f"this file system allows {_name_max(directory)}")
    try:  # the real test: permissions, read-only file systems, quotas
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".dawin-fast-check-"):
            pass
    except OSError as err:
        raise UserError(f"{option} {path}: cannot write in {directory} "
                        f"({err.strerror or err})") from None
    return path


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "a broken link" if mode == 0 else "not a regular file"


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


def _keep_attributes(tmp: str, target: str) -> None:
    """``tmp`` gets ``target``'s permission bits (and owner, where we may), or a normal
    new file's (mkstemp makes 0600)."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        os.chmod(tmp, 0o666 & ~_umask())
        return
    with contextlib.suppress(PermissionError):  # only root may give a file away
        if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            os.chown(tmp, old.st_uid, old.st_gid)
    os.chmod(tmp, stat.S_IMODE(old.st_mode))


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path``'s target; renamed onto it if the block succeeds,
    removed if it raises. The extension is kept (matplotlib picks the format from it).
    An ``OSError`` while writing (disk full, quota) becomes a ``UserError`` naming
    ``path``."""
    target = os.path.realpath(path)
    if os.path.exists(target) and not os.path.isfile(target):  # never replace a device
        raise UserError(f"cannot write {path}: exists and is not a regular file")
    directory = os.path.dirname(target)
    suffix = os.path.splitext(target)[1]
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dawin-fast-",
                                   suffix=suffix if len(suffix) <= _MAX_SUFFIX else "")
        os.close(fd)
        yield tmp
        _keep_attributes(tmp, target)
        os.replace(tmp, target)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path}: {err.strerror or err}") from err
        raise


def write_text(path: str, text: str) -> bool:
    """Write ``text`` atomically; True if it replaced an existing file."""
    existed = os.path.exists(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return existed
