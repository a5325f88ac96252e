"""A hand-edited reference.json (leaderboard/reference.py): every odd value is one UserError naming
the file and row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtab_lily.errors import UserError
from vtab_lily.leaderboard.reference import REFERENCE_FILE, load_reference


@pytest.mark.parametrize("edit, named", [
    (lambda row: row.update(per_task=[70.1, 80.2]), r"rows\[0\]: 'per_task' must be an object"),
    (lambda row: row.update(match=["rank", 8]), r"rows\[0\]: 'match' must be an object"),
    (lambda row: row.update(group_means={"Natural": 500, "Specialized": 80, "Structured": 60}),
     r"rows\[0\].group_means: 'Natural' must be an accuracy in percent \(0 to 100\), got 500"),
    (lambda row: row.update(group_means={"Natural": -1, "Specialized": 80, "Structured": 60}),
     "'Natural' must be an accuracy in percent"),
    (lambda row: row.update(group_means={"Natural": float("nan"), "Specialized": 80, "Structured": 60}),
     "'Natural' must be a number, got nan"),
    (lambda row: row.update(group_means={"Natural": "80.1", "Specialized": 80, "Structured": 60}),
     "'Natural' must be a number, got '80.1'"),
    (lambda row: row.update(average=645), "'average' must be an accuracy in percent"),
])
def test_a_hand_edited_reference_row_is_a_user_error_naming_the_file(tmp_path: Path, edit, named) -> None:
    """Odd values in reference.json (a list where an object goes, accuracies out of 0..100, NaN,
    strings) are one UserError naming the file and row, never an AttributeError or a silent row."""
    data = json.loads(REFERENCE_FILE.read_text())
    data["rows"] = [next(r for r in data["rows"] if r["id"] == "mambapeft-addscan")]
    edit(data["rows"][0])
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=named) as err:
        load_reference(str(path))
    assert str(path) in str(err.value)


def test_a_reference_file_whose_rows_are_no_list_of_objects_is_a_user_error(tmp_path: Path) -> None:
    data = json.loads(REFERENCE_FILE.read_text())
    for rows, named in (({}, "'rows' a list"), (["a row"], r"rows\[0\]: a row must be an object")):
        path = tmp_path / f"reference-{len(rows)}-{type(rows).__name__}.json"
        path.write_text(json.dumps({**data, "rows": rows}))
        with pytest.raises(UserError, match=named):
            load_reference(str(path))
