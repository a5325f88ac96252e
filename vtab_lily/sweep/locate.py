"""Find the run directory of a trial without starting it.

The runner names a directory by the hash of its full config, which includes values it only
knows after building the model (the resolved adapter config, the weights file). So instead
of recomputing that hash, we resolve the trial's command line with the runner's own parser
and ``checked_config`` (cheap: no model, no data) and look for the run directory whose saved
``config.json`` agrees on every one of those options. The runner's own skip rule stays the
last word: a trial we failed to find is started, and the runner skips it if it is finished.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..errors import UserError
from ..rundir import CONFIG, LOCAL_KEYS, RESULT, json_normal


# Options that do not change what a run computes (the runner leaves them out of its hash).
# The runner also leaves out ``adapter_options`` because the resolved ``adapter_config`` it
# hashes carries them; we cannot resolve that without building the model, so we compare the
# options themselves. The weights file is compared by name, as the runner records it.
# ``report`` (--paper) only says which number a run prints: the same run either way.
IGNORED = (set(LOCAL_KEYS) | {"out", "data_root", "device", "tensorboard", "threads", "checkpoint", "report"}) \
    - {"adapter_options"}


class RunLocator:
    """``locator.config(argv)`` resolves a trial's options; ``locator.find(argv)`` its run directory."""

    def __init__(self) -> None:
        self._configs: dict[tuple[str, ...], dict] = {}

    def config(self, argv: list[str]) -> dict:
        """The runner's resolved config for ``python -m vtab_lily.run ARGV``; UserError if invalid."""
        key = tuple(argv)
        if key not in self._configs:
            from ..options import RunOptions
            from ..run import build_parser, checked_config

            parser = build_parser()

            def error(message: str) -> None:  # argparse would print usage and exit
                raise UserError(f"bad run options ({message}) in: python -m vtab_lily.run {shlex.join(argv)}")

            parser.error = error  # type: ignore[method-assign]
            # every check the runner makes before building a model, the adapter's declared bounds included
            self._configs[key] = checked_config(RunOptions(**vars(parser.parse_args(argv))))
        return self._configs[key]

    def find(self, argv: list[str]) -> Path | None:
        """The run directory for ``argv``: one with a result first (the newest), else any match."""
        config = self.config(argv)
        wanted = {k: json_normal(v) for k, v in config.items() if k not in IGNORED}
        if config.get("checkpoint"):  # the runner records the weights file's name
            wanted["pretrained"] = None if str(config["checkpoint"]).lower() == "none" else Path(config["checkpoint"]).name
        folder = Path(config["out"]) / config["backbone"] / config["adapter"] / str(config["task"])
        if not folder.is_dir():
            return None
        matches = []
        for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                saved = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):  # unreadable or hand-edited: not ours
                continue
            # A value the runner resolves only once the model is built (e.g. pre_logits: None =
            # the backbone's default) is written back resolved: None here matches any value.
            if isinstance(saved, dict) and all(v is None or json_normal(saved.get(k)) == v for k, v in wanted.items()):
                exact = sum(json_normal(saved.get(k)) == v for k, v in wanted.items())
                matches.append((exact, run_dir))
        finished = [(exact, _mtime(d / RESULT), d) for exact, d in matches if (d / RESULT).exists()]
        if finished:
            return max(finished, key=lambda m: m[:2])[2]
        return max(matches, key=lambda m: m[0])[1] if matches else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed since we looked
        return 0.0


_default = RunLocator()


def locate_run_dir(argv: list[str]) -> Path | None:
    return _default.find(argv)
