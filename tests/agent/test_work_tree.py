"""What a checkout writes and removes (agent/work_tree.py), on a real folder: only what
changed since the record, and whatever a job changed, replaced or put in the way."""

import os

from agent.work_tree import LINK, TREE, plan, read_record, record_of, write_record

BLOB = "100644"
ENTRIES = [
    (BLOB, "a1", "README"),
    (TREE, "t1", "src"),
    (BLOB, "b1", "src/main.c"),
    (BLOB, "c1", "src/util.c"),
    (LINK, "l1", "link"),
    ("160000", "s1", "vendor/lib"),
]


def checked_out(tmp_path):
    (tmp_path / "src").mkdir()
    for path in ("README", "src/main.c", "src/util.c"):
        (tmp_path / path).write_text(path)
    os.symlink("README", tmp_path / "link")
    return record_of(tmp_path, ENTRIES)


def test_without_a_record_everything_is_written(tmp_path):
    (tmp_path / "README").mkdir()  # a folder where a file goes
    result = plan(tmp_path, ENTRIES, None)
    assert result.everything
    assert result.write == ["README", "src/main.c", "src/util.c", "link"]
    assert result.remove == ["README"]


def test_an_untouched_checkout_writes_nothing(tmp_path):
    record = checked_out(tmp_path)
    assert sorted(record) == ["README", "link", "src/main.c", "src/util.c"]
    result = plan(tmp_path, ENTRIES, record)
    assert (result.write, result.remove, result.everything) == ([], [], False)


def test_what_a_job_or_the_commit_changed_is_written_again(tmp_path):
    record = checked_out(tmp_path)
    (tmp_path / "src" / "main.c").write_text("forged")  # same inode, new ctime
    os.chmod(tmp_path / "src" / "util.c", 0o755)  # only its mode
    (tmp_path / "link").unlink()
    (tmp_path / "link").write_text("a file for a link")
    entries = [(BLOB, "a2", "README"), *ENTRIES[1:]]  # the commit changed README
    result = plan(tmp_path, entries, record)
    assert result.write == ["README", "link", "src/main.c", "src/util.c"]
    assert result.remove == []


def test_a_folder_replaced_by_a_link_is_removed_and_refilled(tmp_path):
    record = checked_out(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "src").rename(elsewhere)  # the same files, same inodes and ctimes
    os.symlink(elsewhere, tmp_path / "src")
    result = plan(tmp_path, ENTRIES, record)
    assert result.remove == ["src"]
    assert result.write == ["src/main.c", "src/util.c"]


def test_the_record_round_trips_and_a_bad_one_counts_as_none(tmp_path):
    record = checked_out(tmp_path)
    write_record(tmp_path / "record.json", record)
    assert read_record(tmp_path / "record.json") == record
    (tmp_path / "record.json").write_text("{not json")
    assert read_record(tmp_path / "record.json") is None
    assert read_record(tmp_path / "missing.json") is None


def test_the_next_record_keeps_what_was_found_unchanged_and_reads_what_was_written(tmp_path):
    record = checked_out(tmp_path)
    (tmp_path / "src" / "main.c").write_text("forged")
    result = plan(tmp_path, ENTRIES, record)
    assert sorted(result.unchanged) == ["README", "link", "src/util.c"]
    assert result.unchanged["README"] == record["README"]
    (tmp_path / "src" / "main.c").unlink()  # what the checkout then writes: a new inode
    (tmp_path / "src" / "main.c").write_text("src/main.c")
    fresh = record_of(tmp_path, ENTRIES, result.unchanged)
    assert {p: v for p, v in fresh.items() if p != "src/main.c"} == result.unchanged
    st = os.lstat(tmp_path / "src" / "main.c")
    assert fresh["src/main.c"] == ["b1", st.st_ino, st.st_ctime_ns]
    assert plan(tmp_path, ENTRIES, fresh).write == []  # the next checkout writes nothing
