"""File-system steps that never lose a user's file: folder swaps by rename, carrying over what is not ours.

The commands replace whole folders (``labelsTr/``, ``noise_maps/``) by writing the new content into a temporary
folder beside them and swapping it in with two renames, so a folder is always either fully old or fully new. What
the old folder holds that the command did not write (a user's notes, a backup copy, a sub folder, a label with
another file ending) is hard-linked into the new folder before the swap: the same files, with their content and
metadata, stay where the user put them.

Folders given to these helpers are never followed through symbolic links: a link where the command writes is
refused up front (:func:`refuse_symlinks`), since a rename would replace the link and a delete would reach files
elsewhere.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable


class UnsafeLayoutError(ValueError):
    """A folder the command would write is laid out so that writing could lose or hide a user's file."""


def refuse_symlinks(paths: Iterable[Path], fix: str) -> None:
    """Raise :class:`UnsafeLayoutError` for the first of ``paths`` that is a symbolic link; ``fix`` says what to do."""
    for p in paths:
        if Path(p).is_symlink():
            raise UnsafeLayoutError(f"{p} is a symbolic link (to {os.readlink(p)}). This command replaces that "
                                    f"folder by renames and does not write through links. {fix}")


def _link_or_copy_file(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def carry_over(old: Path, new: Path) -> list[str]:
    """Hard-link (or copy, across file systems) every entry of ``old`` whose name ``new`` does not hold into ``new``.

    Sub folders are recreated with their files linked; symbolic links are recreated as links. Returns the names
    carried over (sorted).
    """
    old, new = Path(old), Path(new)
    taken = {p.name for p in new.iterdir()}
    carried = []
    for p in sorted(old.iterdir()):
        if p.name in taken:
            continue
        dst = new / p.name
        if p.is_symlink():
            os.symlink(os.readlink(p), dst)
        elif p.is_dir():
            shutil.copytree(p, dst, symlinks=True, copy_function=_link_or_copy_file)
        else:
            _link_or_copy_file(str(p), str(dst))
        carried.append(p.name)
    return carried


def swap_in_folder(tmp_folder: Path, target: Path) -> list[str]:
    """Replace ``target`` by ``tmp_folder`` with two renames on the same file system; return what was carried over.

    Entries of ``target`` that ``tmp_folder`` does not hold are carried over first (:func:`carry_over`), so the
    swap replaces only what the command wrote. Between the two renames the old folder sits at
    ``target.old-XXXXXXXX``; :func:`restore_interrupted_swap` puts it back if the process dies right there.
    """
    tmp_folder, target = Path(tmp_folder), Path(target)
    refuse_symlinks([target], "Replace the link by the folder itself.")
    carried = carry_over(target, tmp_folder) if target.is_dir() else []
    replace_folder(tmp_folder, target)
    return carried


def replace_folder(new: Path, target: Path, aside: Path | None = None) -> None:
    """Put the finished folder ``new`` at ``target`` by rename (same file system; ``target``, if any, a real folder).

    An existing ``target`` is renamed to ``aside`` first (default ``target.old-XXXXXXXX``, the name
    :func:`restore_interrupted_swap` knows; callers with their own recovery pass theirs), put back if the second
    rename fails, and deleted once ``new`` is in place: at no moment is there a half-written ``target``.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    aside = Path(aside) if aside is not None else target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside)


def temp_sibling(parent: Path, name: str) -> Path:
    """A new temporary folder ``parent/name.tmp-XXXXXXXX`` (mode as ``mkdir`` gives it, umask respected)."""
    p = Path(parent) / f"{name}.tmp-{uuid.uuid4().hex[:8]}"
    p.mkdir()
    return p


def stale_siblings(parent: Path, name: str, kind: str) -> list[Path]:
    """Folders ``parent/name.<kind>-XXXXXXXX`` (``kind``: 'tmp' or 'old') that an interrupted run of ours left.

    Only real folders with exactly our naming scheme are returned, never links or anything else.
    """
    pattern = re.compile(rf"{re.escape(name)}\.{kind}-[0-9a-f]{{8}}")
    parent = Path(parent)
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def restore_interrupted_swap(parent: Path, name: str) -> list[str]:
    """Undo what an interrupted :func:`swap_in_folder` or write into ``name.tmp-*`` left; returns what was done.

    A missing ``name`` comes back from its newest ``name.old-*`` (the process died between the two renames); the
    other ``.old-*`` folders (the new folder is in place, the old one was being deleted) and every ``.tmp-*``
    folder (never swapped in) are removed.
    """
    parent = Path(parent)
    return undo_interrupted_replace(parent / name, stale_siblings(parent, name, "old"),
                                    stale_siblings(parent, name, "tmp"))


def undo_interrupted_replace(target: Path, olds: list[Path], leftovers: list[Path]) -> list[str]:
    """Recovery after an interrupted :func:`replace_folder`, for any naming scheme; returns what was done.

    ``olds`` are the folders ``target`` was renamed to, ``leftovers`` the temporary folders never swapped in (both
    already matched by the caller's own naming scheme). A missing ``target`` comes back from the newest of ``olds``;
    the rest of both lists is removed.
    """
    target = Path(target)
    done = []
    olds = sorted(olds, key=lambda p: p.lstat().st_mtime)
    if not target.exists() and not target.is_symlink() and olds:
        os.rename(olds[-1], target)
        done.append(f"restored {target.name}/ from {olds[-1].name}")
        olds = olds[:-1]
    for p in olds + list(leftovers):
        shutil.rmtree(p)
        done.append(f"removed {p.name}")
    return done
