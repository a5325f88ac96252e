"""Parse and check the NOAH list files (``<root>/<task>/<split>.txt``).

Each line is ``<relative path> <int label>``, the path relative to ``<root>/<task>``; the label
is the last field and everything before it is the path (file names may contain spaces).
Parsing never stops at the first problem: :func:`parse_list` returns every problem as a
``file:line: what`` string, so ``verify`` can report them all; :func:`read_list` raises
them as one :class:`UserError` for the loaders.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import UserError, unknown_name
from ..tasks import SPLITS, Task

MAX_SHOWN = 8  # problems quoted in one error message; the rest are counted


class SplitSizeWarning(UserWarning):
    """The test split has a different size than the registry expects (kitti versions differ)."""


@dataclass(frozen=True)
class ListEntry:
    path: str  # normalised POSIX path relative to the task folder
    label: int
    line: int  # 1-based line number in the list file


@dataclass(frozen=True)
class SplitList:
    """A parsed list file: where it is, its entries and the hash of its exact bytes."""

    file: Path
    task_dir: Path
    entries: tuple[ListEntry, ...]
    sha256: str

    def __len__(self) -> int:
        return len(self.entries)

    def where(self, entry: ListEntry) -> str:
        """``file:line`` of an entry, for error messages."""
        return f"{self.file}:{entry.line}"

    def image_path(self, entry: ListEntry) -> Path:
        return self.task_dir / entry.path

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]


_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _path_problem(path: str) -> str | None:
    """Why ``path`` may leave the task folder, or None. Symlinks inside it are allowed."""
    if path.startswith(("/", "\\")) or _WINDOWS_ABSOLUTE.match(path):
        return f"absolute path {path!r} (paths must be relative to the task folder)"
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        return f"path {path!r} leaves the task folder ('..')"
    return None


def entry_limit(task: Task, split: str) -> int:
    """More entries than this in one list file is not VTAB-1K (whose largest split, a dsprites
    test split, has 73,728; kitti releases differ by a few hundred): such a file is refused before
    any image is looked at, so a small crafted archive cannot make ``verify`` or a run do
    unbounded work."""
    return 10 * task.expected_size(split) + 1000


def parse_list(file: Path, task_dir: Path, num_classes: int,
               max_entries: int | None = None) -> tuple[SplitList, list[str]]:
    """Parse one list file; returns the valid entries and a list of ``file:line: problem``.

    Accepts CRLF line ends, a UTF-8 BOM, surrounding whitespace and blank lines. Rejects
    malformed lines, non-integer labels, labels outside ``[0, num_classes)``, paths that
    leave the task folder and duplicate paths. Does not open the images. A file with more
    than ``max_entries`` non-blank lines is one problem, and no entries.
    """
    raw = file.read_bytes()
    problems: list[str] = []
    if max_entries is not None and raw.count(b"\n") >= max_entries:  # cheap bound first, exact count if needed
        lines = sum(1 for line in raw.split(b"\n") if line.strip())
        if lines > max_entries:
            problem = f"{file}: {lines:,} entries, more than {max_entries:,}: not a VTAB-1K list file; refused unread"
            return SplitList(file, task_dir, (), hashlib.sha256(raw).hexdigest()), [problem]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        problems.append(f"{file}:{line}: not valid UTF-8 text ({err.reason})")
        text = raw.decode("utf-8-sig", errors="replace")
    entries: list[ListEntry] = []
    first_seen: dict[str, int] = {}
    # split("\n") rather than splitlines(): the latter also splits on \x0c, \x1c, ... and would
    # shift line numbers; a trailing \r (CRLF) goes with strip().
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        where = f"{file}:{number}"
        fields = stripped.rsplit(None, 1)  # the label is the last field; the path may hold spaces
        if len(fields) != 2:
            problems.append(f"{where}: malformed line {stripped!r}; expected '<relative path> <int label>'")
            continue
        path, label_text = fields[0].rstrip(), fields[1]
        if not _INTEGER.fullmatch(label_text):  # int() would also take "1_0" and non-ASCII digits
            problems.append(f"{where}: label {label_text!r} is not an integer")
            continue
        label = int(label_text)
        if not 0 <= label < num_classes:
            problems.append(f"{where}: label {label} outside [0, {num_classes}) for this task")
            continue
        why = _path_problem(path)
        if why:
            problems.append(f"{where}: {why}")
            continue
        path = str(PurePosixPath(path))
        if path in first_seen:
            problems.append(f"{where}: duplicate entry {path!r} (first on line {first_seen[path]})")
            continue
        first_seen[path] = number
        entries.append(ListEntry(path, label, number))
    if not entries and not problems:
        problems.append(f"{file}: list file is empty")
    split_list = SplitList(file, task_dir, tuple(entries), hashlib.sha256(raw).hexdigest())
    return split_list, problems


def format_problems(problems: list[str], what: str) -> str:
    """One message for many problems: a count, then the first few, one per line.

    A single problem is one line already naming file and line, so it is given as is.
    """
    if len(problems) == 1:
        return problems[0]
    shown = "\n  ".join(problems[:MAX_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return f"{len(problems)} problem(s) in {what}:\n  {shown}{more}"


def check_root(root: str | Path) -> Path:
    """``root`` as a Path; a clear error when it is not an existing folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder (see data/README.md)")
    return root


def task_dir(root: str | Path, task: Task) -> Path:
    """``<root>/<task>``, with a clear error when the root or the task folder is missing."""
    folder = check_root(root) / task.name
    if not folder.is_dir():
        raise UserError(f"task folder {folder} does not exist (task {task.name!r} is missing from {root})")
    return folder


def list_file(root: str | Path, task: Task, split: str) -> Path:
    """Path of the list file of ``split``; errors name the missing root, folder or file."""
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    file = task_dir(root, task) / f"{split}.txt"
    if not file.is_file():
        raise UserError(f"list file {file} does not exist")
    return file


def size_problem(task: Task, split: str, n: int, file: Path) -> str | None:
    """A message when a split does not have the expected number of entries, else None."""
    expected = task.expected_size(split)
    if n == expected:
        return None
    return f"{file}: {n} entries, expected {expected} for {task.name}/{split}"


def read_list(root: str | Path, task: Task, split: str) -> SplitList:
    """Parse and check one split's list file; raise :class:`UserError` on any problem.

    A train split of the wrong size is an error; a test split of the wrong size only warns
    (:class:`SplitSizeWarning`), since e.g. kitti's test size differs between releases.
    """
    file = list_file(root, task, split)
    split_list, problems = parse_list(file, file.parent, task.num_classes, entry_limit(task, split))
    if problems:
        raise UserError(format_problems(problems, str(file)))
    mismatch = size_problem(task, split, len(split_list), file)
    if mismatch and split == "test":
        warnings.warn(mismatch, SplitSizeWarning, stacklevel=2)
    elif mismatch:
        raise UserError(mismatch)
    return split_list
