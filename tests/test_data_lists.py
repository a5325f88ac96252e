"""List-file parsing: good lines, CRLF, whitespace, every bad case with file:line, split sizes."""

import warnings

import pytest

from vtab_lily.data import SplitSizeWarning, parse_list, read_list
from vtab_lily.data.testing import write_task
from vtab_lily.errors import UserError
from vtab_lily.tasks import Task, get_task

TINY = Task("tiny", "Natural", num_classes=3, test_size=4)


def write_test_list(root, text: bytes | str, task=TINY):
    folder = root / task.name
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "test.txt"
    file.write_bytes(text.encode() if isinstance(text, str) else text)
    return file


def test_good_lines_crlf_trailing_whitespace_bom_and_blank_lines(tmp_path):
    file = write_test_list(tmp_path, b"\xef\xbb\xbfimages/test/0.jpg 0\r\n"
                                     b"images/test/1.jpg\t2   \r\n\r\n"
                                     b"  ./images/test/2.jpg 1\n"
                                     b"images/test/3.jpg 0")
    split_list, problems = parse_list(file, file.parent, 3)
    assert problems == []
    assert [(e.path, e.label, e.line) for e in split_list.entries] == [
        ("images/test/0.jpg", 0, 1), ("images/test/1.jpg", 2, 2),
        ("images/test/2.jpg", 1, 4), ("images/test/3.jpg", 0, 5)]
    assert split_list.image_path(split_list.entries[2]) == file.parent / "images/test/2.jpg"
    assert len(read_list(tmp_path, TINY, "test")) == 4


BAD_LINES = [
    ("images/a.jpg", "malformed line"),
    ("images/a.jpg 1 x", "label 'x' is not an integer"),
    ("images/a.jpg x", "label 'x' is not an integer"),
    ("images/a.jpg 1.0", "label '1.0' is not an integer"),
    ("images/a.jpg 1_0", "label '1_0' is not an integer"),
    ("images/a.jpg -1", "label -1 outside [0, 3)"),
    ("images/a.jpg 3", "label 3 outside [0, 3)"),
    ("../other/a.jpg 0", "leaves the task folder"),
    ("images/../../a.jpg 0", "leaves the task folder"),
    ("/etc/passwd 0", "absolute path"),
    ("C:\\data\\a.jpg 0", "absolute path"),
    ("images/first.jpg 0", "duplicate entry 'images/first.jpg' (first on line 1)"),
    ("./images/first.jpg 1", "duplicate entry 'images/first.jpg' (first on line 1)"),
]


@pytest.mark.parametrize("bad_line, message", BAD_LINES)
def test_each_bad_line_is_rejected_with_file_and_line(tmp_path, bad_line, message):
    file = write_test_list(tmp_path, f"images/first.jpg 0\nimages/second.jpg 1\n{bad_line}\nimages/last.jpg 2\n")
    _, problems = parse_list(file, file.parent, 3)
    assert len(problems) == 1
    assert problems[0].startswith(f"{file}:3: ")
    assert message in problems[0]
    with pytest.raises(UserError) as err:
        read_list(tmp_path, TINY, "test")
    assert f"{file}:3: " in str(err.value) and message in str(err.value)


def test_all_problems_are_reported_not_just_the_first(tmp_path):
    file = write_test_list(tmp_path, "a.jpg 0\nb.jpg 9\nc.jpg\n/d.jpg 0\n")
    _, problems = parse_list(file, file.parent, 3)
    assert [p.split(": ")[0] for p in problems] == [f"{file}:2", f"{file}:3", f"{file}:4"]


def test_invalid_utf8_names_the_line(tmp_path):
    file = write_test_list(tmp_path, b"a.jpg 0\nb\xff.jpg 1\n")
    _, problems = parse_list(file, file.parent, 3)
    assert problems and problems[0].startswith(f"{file}:2: not valid UTF-8")


def test_class_count_comes_from_the_registry_not_the_labels(tmp_path):
    eurosat = get_task("eurosat")  # 10 classes
    file = write_test_list(tmp_path, "a.jpg 0\nb.jpg 0\nc.jpg 9\n", eurosat)
    split_list, problems = parse_list(file, file.parent, eurosat.num_classes)
    assert problems == [] and split_list.labels == [0, 0, 9]  # 9 is fine though only 2 labels appear
    file.write_text("a.jpg 0\nb.jpg 10\n")
    _, problems = parse_list(file, file.parent, eurosat.num_classes)
    assert problems == [f"{file}:2: label 10 outside [0, 10) for this task"]


def test_missing_root_task_folder_list_file_and_empty_list(tmp_path):
    with pytest.raises(UserError, match=f"data root {tmp_path / 'nowhere'} does not exist"):
        read_list(tmp_path / "nowhere", TINY, "test")
    with pytest.raises(UserError, match=f"task folder {tmp_path / 'tiny'} does not exist"):
        read_list(tmp_path, TINY, "test")
    (tmp_path / "tiny").mkdir()
    with pytest.raises(UserError, match=f"list file {tmp_path / 'tiny' / 'val200.txt'} does not exist"):
        read_list(tmp_path, TINY, "val200")
    for empty in ("", "\n  \r\n\n"):
        write_test_list(tmp_path, empty)
        with pytest.raises(UserError, match="test.txt: list file is empty"):
            read_list(tmp_path, TINY, "test")


def test_unknown_split_suggests_a_name(tmp_path):
    with pytest.raises(UserError, match="unknown split 'train800val20'.*did you mean 'train800val200'"):
        read_list(tmp_path, TINY, "train800val20")


def test_wrong_train_split_size_is_an_error(tmp_path):
    write_task(tmp_path, "tiny", 3, test_size=4, train_sizes={"train800": 799, "val200": 2})
    with pytest.raises(UserError, match="train800.txt: 799 entries, expected 800 for tiny/train800"):
        read_list(tmp_path, TINY, "train800")
    with pytest.raises(UserError, match="val200.txt: 2 entries, expected 200"):
        read_list(tmp_path, TINY, "val200")
    with pytest.raises(UserError, match="expected 1000"):
        read_list(tmp_path, TINY, "train800val200")


def test_wrong_test_split_size_only_warns(tmp_path):
    write_test_list(tmp_path, "a.jpg 0\nb.jpg 1\n")  # TINY expects 4
    with pytest.warns(SplitSizeWarning, match="test.txt: 2 entries, expected 4 for tiny/test"):
        split_list = read_list(tmp_path, TINY, "test")
    assert len(split_list) == 2
    write_test_list(tmp_path, "a.jpg 0\nb.jpg 1\nc.jpg 2\nd.jpg 0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right size must not warn
        read_list(tmp_path, TINY, "test")


def test_a_file_name_with_spaces_is_a_path_and_the_label_is_the_last_field(tmp_path):
    file = write_test_list(tmp_path, "images/my cat.jpg 2\nimages/two  spaces here.png\t1\r\n  images/plain.jpg 0  \n")
    parsed, problems = parse_list(file, file.parent, 3)
    assert problems == []
    assert [(e.path, e.label) for e in parsed.entries] == [
        ("images/my cat.jpg", 2), ("images/two  spaces here.png", 1), ("images/plain.jpg", 0)]
