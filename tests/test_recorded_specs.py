"""Old run folders stay recognised: the method label, method hash, config hash and deviations the
runner gives a broad set of command lines are the ones recorded from a known-good commit
(``tests/data/recorded_specs.json``, made by ``tests/record_specs.py``; read its docstring before
regenerating it)."""

from __future__ import annotations

import json

from record_specs import OUT, record  # noqa: E402 - tests/ is on the path


def test_recorded_command_lines_keep_their_names_and_hashes():
    recorded = json.loads(OUT.read_text(encoding="utf-8"))
    assert len(recorded) > 60 and sum("method_hash" in r for r in recorded) > 50  # a broad set, mostly accepted
    now = record()
    assert [r["argv"] for r in now] == [r["argv"] for r in recorded], "record_specs.cases() changed: regenerate"
    changed = [f"{' '.join(old['argv'])}:\n  recorded {old}\n  now      {new}"
               for old, new in zip(recorded, now) if old != new]
    assert not changed, "run names changed (old run folders would not be found):\n" + "\n".join(changed)
