"""Reading NOAH-layout sources safely: zip and tar archives (any compression) and folders.

Every entry name is checked before anything is written: no absolute paths, drive letters,
``..`` components or NUL bytes, and no symlink, hardlink or device entries at all (one is
enough to refuse the whole source, naming the entry). Files are only ever created fresh
(``open(..., "xb")``) under a staging folder the caller owns, so nothing can be written
outside it or through a link. Entries map to tasks by their first folder (``cifar/...``) or,
one level down, by their second (``vtab-1k/cifar/...``); task aliases (``cifar100``,
``oxford_pet``) map to the registry's names; other entries (``__MACOSX/``, a README) are skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import UserError
from ..tasks import ALIASES, VTAB_TASKS

# What a damaged archive raises while being read (gzip: BadGzipFile is an OSError; truncated: EOFError).
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
_DRIVE = re.compile(r"^[A-Za-z]:")
_SKIPPED_NAMES = {".DS_Store", "Thumbs.db", "manifest.json"}  # ours is computed, never copied
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass(frozen=True)
class Entry:
    """One regular file of a source, mapped to a task."""

    task: str  # registry name
    folder: str  # the task's folder as named in the source, e.g. "vtab-1k/cifar100"
    rel: tuple[str, ...]  # path inside the task folder
    name: str  # the entry's name in the source, for messages
    open: Callable[[], BinaryIO]


def safe_parts(name: str, source: Path) -> tuple[str, ...]:
    """The entry's path components; a :class:`UserError` when it could leave the target."""
    if "\0" in name:
        raise UserError(f"{source}: entry {name!r} has a NUL byte in its name; refusing the archive")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise UserError(f"{source}: entry {name!r} is an absolute path; refusing the archive (nothing written)")
    parts = tuple(p for p in posix.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UserError(f"{source}: entry {name!r} leaves the target folder ('..'); refusing the archive "
                        "(nothing written outside it)")
    return parts


_TASK_NAMES = set(VTAB_TASKS) | set(ALIASES)


def map_entry(parts: tuple[str, ...]) -> tuple[str, str, tuple[str, ...]] | None:
    """``(task, folder as named, path inside it)`` or None for an entry outside any task folder."""
    for depth in (0, 1):
        if len(parts) > depth + 1 and parts[depth] in _TASK_NAMES:
            name = parts[depth]
            rel = parts[depth + 1 :]
            if rel[-1] in _SKIPPED_NAMES or rel[-1].startswith("._") or rel[0] == ".cache":
                return None
            return ALIASES.get(name, name), "/".join(parts[: depth + 1]), rel
    return None


def source_kind(path: Path) -> str:
    """"tfds", "folder", "zip" or "tar"; a :class:`UserError` for anything else."""
    if path.is_dir():
        if _has_dataset_info(path):
            return "tfds"
        shard = _find_shard(path)
        if shard is not None:
            raise UserError(f"--from {path}: holds TFDS shards ({shard}) but no dataset_info.json beside them: the "
                            "TFDS build is incomplete or that file was lost; build the dataset again")
        return "folder"
    if not path.exists():
        raise UserError(f"--from {path}: does not exist")
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise UserError(f"--from {path}: cannot read it ({err})") from None
    if head in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip whose end (the central directory) is missing
        raise UserError(f"--from {path}: the archive is damaged or truncated (a zip without its central "
                        "directory: an interrupted download?)")
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError as err:
        raise UserError(f"--from {path}: cannot read it ({err})") from None
    raise UserError(f"--from {path}: not a zip or tar archive, a NOAH-layout folder or a TFDS data folder")


def _has_dataset_info(path: Path, depth: int = 4) -> bool:
    """Whether a built TFDS folder (``<name>/<config>/<version>/dataset_info.json``) is below ``path``."""
    if (path / "dataset_info.json").is_file():
        return True
    if depth == 0:
        return False
    try:
        children = [c for c in path.iterdir() if c.is_dir() and not c.is_symlink() and not c.name.startswith(".")]
    except OSError:
        return False
    return any(_has_dataset_info(c, depth - 1) for c in children)


def _find_shard(path: Path, depth: int = 4) -> Path | None:
    """A TFDS shard file (``*.tfrecord-NNNNN-of-NNNNN``) at most ``depth`` folders below ``path``."""
    try:
        children = list(path.iterdir())
    except OSError:
        return None
    for child in children:
        if ".tfrecord-" in child.name and child.is_file():
            return child
    if depth == 0:
        return None
    for child in children:
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            found = _find_shard(child, depth - 1)
            if found is not None:
                return found
    return None


def _refuse_link(source: Path, name: str, what: str) -> UserError:
    return UserError(f"{source}: entry {name!r} is a {what}; links and special files are refused "
                     "(nothing is followed or created)")


def _zip_entries(source: Path) -> Iterator[tuple[str, Callable[[], BinaryIO] | None]]:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{source}: not a readable zip archive ({err})") from None
    with archive:
        infos = archive.infolist()
        for info in infos:  # check every name and type before anything is written
            safe_parts(info.filename, source)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise _refuse_link(source, info.filename, "symlink")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse_link(source, info.filename, "special file")
        for info in infos:
            yield info.filename, None if info.is_dir() else (lambda info=info: archive.open(info))


def _tar_entries(source: Path) -> Iterator[tuple[str, Callable[[], BinaryIO] | None]]:
    try:
        archive = tarfile.open(source, "r|*")  # streamed: a .tar.gz is read once, front to back
    except (tarfile.TarError, OSError) as err:
        raise UserError(f"{source}: not a readable tar archive ({err})") from None
    with archive:
        for member in archive:
            safe_parts(member.name, source)
            if member.issym() or member.islnk():
                raise _refuse_link(source, member.name, "symlink" if member.issym() else "hardlink")
            if not (member.isreg() or member.isdir()):
                raise _refuse_link(source, member.name, "special file")
            yield member.name, None if member.isdir() else (lambda m=member: archive.extractfile(m))
        _check_stream_ended(archive)


def _check_stream_ended(archive: tarfile.TarFile) -> None:
    """tarfile ends a streamed archive silently when it is cut inside a member header; a compressed
    archive must also have reached its end-of-stream marker, or it was cut (a truncated download)."""
    stream = archive.fileobj
    if stream.tell() < archive.offset + tarfile.BLOCKSIZE:  # the loop ended on no data, not on a zero block
        raise EOFError("the archive ends without its end-of-archive marker (cut at a block boundary)")
    while stream.read(1 << 20):  # what is left is the end-of-archive padding
        pass
    decompressor = getattr(stream, "cmp", None)
    if decompressor is not None and not getattr(decompressor, "eof", True):
        raise EOFError("the compressed stream ends before its end-of-stream marker")


def _folder_entries(source: Path) -> Iterator[tuple[str, Callable[[], BinaryIO] | None]]:
    # A task folder given itself (``--from downloads/cifar100``): its entries are named under it.
    prefix = f"{source.name}/" if source.name in _TASK_NAMES and (source / "train800.txt").is_file() else ""
    for folder, dirs, files in os.walk(source):
        here = Path(folder)
        for name in sorted(dirs + files):
            path = here / name
            rel = path.relative_to(source).as_posix()
            if path.is_symlink():
                raise _refuse_link(source, rel, "symlink")
            if name in files and not path.is_file():
                raise _refuse_link(source, rel, "special file")
        dirs[:] = sorted(d for d in dirs if d not in (".cache", ".staging"))
        for name in sorted(files):
            yield prefix + (here / name).relative_to(source).as_posix(), (lambda p=here / name: open(p, "rb"))


def entries(source: Path, kind: str) -> Iterator[Entry]:
    """The task files of a zip, tar or folder source, in the source's order."""
    raw = {"zip": _zip_entries, "tar": _tar_entries, "folder": _folder_entries}[kind](source)
    try:
        for name, opener in raw:
            if opener is None:
                continue
            mapped = map_entry(safe_parts(name, source))
            if mapped is not None:
                yield Entry(*mapped, name=name, open=opener)
    except _DAMAGED as err:
        raise UserError(f"{source}: the archive is damaged or truncated ({type(err).__name__}: {err})") from None


def task_folders(source: Path, kind: str) -> dict[str, set[str]]:
    """``{task: {folder as named, ...}}`` of a zip, tar or folder source, reading names only
    (a compressed tar is decompressed once for them)."""
    found: dict[str, set[str]] = {}
    for entry in entries(source, kind):
        found.setdefault(entry.task, set()).add(entry.folder)
    return found


def _same_content(path: Path, data: BinaryIO) -> bool:
    ours, theirs = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            ours.update(block)
    for block in iter(lambda: data.read(1 << 20), b""):
        theirs.update(block)
    return ours.digest() == theirs.digest()


def write_entry(entry: Entry, task_dir: Path, source: Path) -> None:
    """Copy one entry under ``task_dir`` (created fresh; a second identical copy is fine)."""
    target = task_dir.joinpath(*entry.rel)
    try:
        _make_parents(target, task_dir)
        with entry.open() as data:
            try:
                with open(target, "xb") as out:
                    shutil.copyfileobj(data, out, 1 << 20)
            except FileExistsError:
                if target.is_dir():
                    raise _clash(source, entry, target) from None
                if not _same_content(target, data):
                    raise UserError(f"{source}: entry {entry.name!r} appears twice with different content; "
                                    "refusing to overwrite") from None
    except (*_DAMAGED, RuntimeError) as err:  # RuntimeError: an encrypted zip entry
        if isinstance(err, OSError) and err.filename:  # our own write failed, not the archive
            raise
        raise UserError(f"{source}: entry {entry.name!r} cannot be read ({type(err).__name__}: {err})") from None
    except (NotADirectoryError, IsADirectoryError) as err:
        raise _clash(source, entry, err.filename) from None


def _clash(source: Path, entry: Entry, where) -> UserError:
    return UserError(f"{source}: entry {entry.name!r} clashes with another entry (a file and a folder of the "
                     f"same name: {where}); refusing the archive")


def _make_parents(target: Path, task_dir: Path) -> None:
    """The folders above ``target``; a file of the archive in the way is a clash, not a disk error."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        for folder in [target.parent, *target.parent.parents]:
            if folder == task_dir.parent:
                break
            if folder.exists() and not folder.is_dir():
                raise NotADirectoryError(err.errno, "a file of that name exists", str(folder)) from None
        raise
