"""The one folder replacement every command uses: the new folder goes in by rename, the old one is put back when the
move fails, and what an interrupted swap leaves is recognised by its recovery."""
from __future__ import annotations

import os

import pytest

from nnunet_noisylabels.common import safe_fs


def _folder(path, **files):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_replace_folder_moves_the_new_folder_in_and_removes_the_old(tmp_path):
    target = _folder(tmp_path / "labelsTr", a="old")
    new = _folder(tmp_path / "new", a="new")
    safe_fs.replace_folder(new, target)
    assert (target / "a").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelsTr"]  # nothing left aside


def test_replace_folder_puts_the_old_folder_back_when_the_move_fails(tmp_path, monkeypatch):
    target = _folder(tmp_path / "out", a="old")
    new = _folder(tmp_path / "new", a="new")
    real_rename, calls = os.rename, []

    def failing(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError("simulated failure")
        real_rename(a, b)

    monkeypatch.setattr(safe_fs.os, "rename", failing)
    with pytest.raises(OSError, match="simulated"):
        safe_fs.replace_folder(new, target, tmp_path / ".out.aside")
    monkeypatch.undo()
    assert calls[0] == tmp_path / ".out.aside"  # the given aside name was used
    assert (target / "a").read_text() == "old" and (new / "a").read_text() == "new"
    assert not (tmp_path / ".out.aside").exists()


def test_a_swap_interrupted_between_the_renames_is_restored(tmp_path, monkeypatch):
    """If the process dies after the old folder went aside, the default aside name is one the recovery finds."""
    target = _folder(tmp_path / "labelsTr", a="old")
    new = _folder(tmp_path / "labelsTr.tmp-0123abcd", a="new")
    real_rename = os.rename

    def die_after_first(a, b):
        real_rename(a, b)
        raise KeyboardInterrupt  # stands for the process being killed right after the first rename

    monkeypatch.setattr(safe_fs.os, "rename", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        safe_fs.replace_folder(new, target)
    monkeypatch.undo()
    assert not target.exists()
    done = safe_fs.restore_interrupted_swap(tmp_path, "labelsTr")
    assert done and (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelsTr"]
