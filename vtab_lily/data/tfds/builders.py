"""A built TFDS dataset on disk: ``<data_dir>/<name>[/<config>]/<version>/``.

``dataset_info.json`` (written by every TFDS version that VTAB-1K users have: 1.x-4.x) gives
the splits and, per split, ``shardLengths``; the shards are
``<name>-<split>.tfrecord-<i:05d>-of-<n:05d>`` unless the split's ``filepathTemplate`` says
otherwise. Everything is checked before any record is read: a missing shard, a shard count
that disagrees with dataset_info.json, a file format other than tfrecord.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UserError
from .tfrecord import count_records

INFO_FILE = "dataset_info.json"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class SplitInfo:
    name: str
    shard_lengths: tuple[int, ...]
    template: str = DEFAULT_TEMPLATE

    @property
    def num_examples(self) -> int:
        return sum(self.shard_lengths)


@dataclass
class BuiltDataset:
    root: Path  # the version folder
    name: str
    version: str
    file_format: str
    splits: dict[str, SplitInfo] = field(default_factory=dict)

    @property
    def info_path(self) -> Path:
        return self.root / INFO_FILE

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise UserError(f"{self.info_path}: no split {name!r} (it has: "
                            f"{', '.join(sorted(self.splits)) or 'none'})")
        return self.splits[name]

    def shard_paths(self, split: str) -> list[Path]:
        info = self.split(split)
        n = len(info.shard_lengths)
        digits = max(5, len(str(n)))
        paths = []
        for i in range(n):
            idx, total = f"{i:0{digits}d}", f"{n:0{digits}d}"
            rel = info.template.format(DATASET=self.name, SPLIT=split, FILEFORMAT=self.file_format,
                                       SHARD_INDEX=idx, NUM_SHARDS=total,
                                       SHARD_X_OF_Y=f"{idx}-of-{total}")
            path = self.root / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise UserError(f"{self.info_path}: filepathTemplate {info.template!r} leaves "
                                "the dataset folder")
            paths.append(path)
        return paths

    def check_shards(self, split: str) -> list[Path]:
        """The split's shard paths, after checking that exactly those files are there."""
        paths = self.shard_paths(split)
        n = len(paths)
        if self.split(split).template == DEFAULT_TEMPLATE:
            prefix = f"{self.name}-{split}.{self.file_format}-"
            pattern = re.compile(re.escape(prefix) + r"(\d+)-of-(\d+)$")
            others = sorted(p.name for p in self.root.glob(prefix + "*")
                            if (m := pattern.match(p.name)) and int(m.group(2)) != n)
            if others:
                raise UserError(f"{self.root / others[0]}: shard count disagrees with "
                                f"{INFO_FILE}, which lists {n} shard(s) for split {split!r} "
                                f"({len(others)} file(s) of another build are in the folder)")
        lengths = self.split(split).shard_lengths
        missing = [p for p, n in zip(paths, lengths) if n and not p.is_file()]  # empty: not read
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise UserError(f"{missing[0]}: shard file is missing{more} ({INFO_FILE} lists {n} "
                            f"shard(s) for split {split!r}; the build is incomplete)")
        return paths


TEMPLATE_FIELDS = ("DATASET", "SPLIT", "FILEFORMAT", "SHARD_INDEX", "NUM_SHARDS", "SHARD_X_OF_Y")


def _check_template(template: str, where: str) -> str:
    """``template`` when it uses TFDS's named fields only (no positional field, attribute or
    index, no stray brace); else a UserError naming the file."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        unknown = [name for name in fields if name not in TEMPLATE_FIELDS]
        if not unknown:
            template.format(**{name: "0" for name in TEMPLATE_FIELDS})  # a bad format spec fails here
    except (ValueError, TypeError) as err:  # a stray brace, a bad format spec
        why = f"not a valid template ({err})"
    else:
        if not unknown:
            return template
        bad = unknown[0]
        why = ("a positional field {" + bad + "} (only named fields are known)" if bad == "" or bad.isdigit()
               else f"unknown field {{{bad}}} (known: {', '.join(TEMPLATE_FIELDS)})")
    raise UserError(f"{where}.filepathTemplate {template!r}: {why}")


def _int(value, where: str) -> int:
    try:
        out = int(value)  # protobuf JSON writes int64 as strings
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected an integer, got {value!r}") from None
    if out < 0:
        raise UserError(f"{where}: negative count {out}")
    return out


def read_dataset(root: str | Path) -> BuiltDataset:
    """Read ``<root>/dataset_info.json`` of one built version folder."""
    root = Path(root)
    path = root / INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing (not a built TFDS dataset folder)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    if not isinstance(info, dict) or not isinstance(info.get("splits"), list):
        raise UserError(f"{path}: no 'splits' list (not a TFDS dataset_info.json)")
    name = info.get("name") or root.parent.name
    file_format = info.get("fileFormat") or "tfrecord"
    if file_format != "tfrecord":
        raise UserError(f"{path}: shards are stored as {file_format!r}; only 'tfrecord' can be "
                        "read (rebuild with tfds file_format='tfrecord', the default)")
    ds = BuiltDataset(root=root, name=str(name), version=str(info.get("version") or root.name),
                      file_format=file_format)
    for i, entry in enumerate(info["splits"]):
        where = f"{path}: splits[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"{where}: a split without a name")
        split = entry["name"]
        template = _check_template(str(entry.get("filepathTemplate") or DEFAULT_TEMPLATE), where)
        lengths = entry.get("shardLengths")
        if lengths is None:  # TFDS before ~1.1 wrote only numShards: count the records
            if "numShards" not in entry:
                raise UserError(f"{where}: neither shardLengths nor numShards for split {split!r}")
            shards = _int(entry["numShards"], f"{where}.numShards")
            ds.splits[split] = SplitInfo(split, (0,) * shards, template)
            lengths = [count_records(p) for p in ds.shard_paths(split)]
        if not isinstance(lengths, list):
            raise UserError(f"{where}.shardLengths: expected a list")
        ds.splits[split] = SplitInfo(split, tuple(_int(v, f"{where}.shardLengths") for v in lengths),
                                     template)
    return ds


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def built_versions(folder: Path) -> list[str]:
    """Version folders with a dataset_info.json (TFDS builds into ``*.incomplete*`` first)."""
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir()
             if VERSION_RE.match(p.name) and (p / INFO_FILE).is_file()]
    return sorted(found, key=version_key)
