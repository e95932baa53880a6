"""Atomic writes: a file or a whole directory is either the old one or the new one, never half of each.

Both work the same way: write a temporary sibling (same directory, so the rename
never crosses a file system), flush it to disk, then rename it into place. The
temporary names, for a target ``<name>``:

- a file: ``<name>.<8 hex><suffix>``, removed again if anything fails;
- a directory: ``<name>.tmp-<8 hex>`` while it is written and ``<name>.old-<8 hex>``
  for the replaced directory between the two renames of :meth:`DirectorySwap.commit`
  (with ``hidden=True`` both get a leading ``.``).

A process killed (kill -9, power loss) before the first rename leaves a ``.tmp-``
directory; one killed between the two renames leaves the old directory only under
its ``.old-`` name: :func:`recover_interrupted_swap` brings it back.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from types import TracebackType

# ``<name>.tmp-<tag>``: a directory being written by DirectorySwap, or left by a killed one.
UNFINISHED_DIR = re.compile(r".+\.tmp-[0-9a-f]{8}")


def new_tag() -> str:
    """8 random hex digits that tell apart the temporary names of concurrent writers."""
    return uuid.uuid4().hex[:8]


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Flush every file under ``path`` and every directory's entries to disk."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


@contextlib.contextmanager
def replacing_file(path: str, *, suffix: str = ".tmp") -> Iterator[str]:
    """``with replacing_file(path) as tmp:`` write ``tmp``; at the end of the block it replaces ``path``.

    ``tmp`` is a new empty file beside ``path`` (created exclusively, with the mode a
    plain ``open`` gives). When the block ends without an exception, ``tmp`` is flushed
    to disk and renamed over ``path``; in every case no temporary file is left.
    ``suffix`` ends the temporary name (``.tmp.png`` lets matplotlib infer the format).
    Raises ``OSError`` as the file system does (a missing parent directory included).
    """
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f"{os.path.basename(path)}.{new_tag()}{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`replacing_file`)."""
    with replacing_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def swap_names(path: str, tag: str, *, hidden: bool = False) -> tuple[str, str]:
    """The (temporary, old) sibling names of directory ``path`` for a swap tagged ``tag``."""
    parent, base = os.path.split(os.path.normpath(path))
    dot = "." if hidden else ""
    return os.path.join(parent, f"{dot}{base}.tmp-{tag}"), os.path.join(parent, f"{dot}{base}.old-{tag}")


class DirectorySwap:
    """Replace directory ``path`` as a whole: fill :attr:`staging`, then :meth:`commit`.

    ::

        with DirectorySwap(path) as swap:
            write_files_into(swap.staging)
            swap.commit()

    :meth:`commit` flushes the staging tree to disk and swaps it in with two renames
    (``path`` to :attr:`old`, :attr:`staging` to ``path``). :meth:`rollback` undoes a
    commit (puts the old directory back, or removes the new one if there was none).
    Leaving the block removes the staging directory, and the old one once ``path``
    exists again: if a rename failed in between, the old one is the only copy and stays.
    ``hidden=True`` starts the temporary names with a dot.
    """

    def __init__(self, path: str, *, hidden: bool = False) -> None:
        self.path = os.path.normpath(path)
        self.staging, self.old = swap_names(self.path, new_tag(), hidden=hidden)
        self.replaced = False  # whether commit() moved an existing directory to `old`

    def __enter__(self) -> DirectorySwap:
        return self

    def commit(self) -> None:
        fsync_tree(self.staging)
        if os.path.exists(self.path):
            os.rename(self.path, self.old)
            self.replaced = True
        os.rename(self.staging, self.path)
        fsync_dir(os.path.dirname(self.path) or ".")

    def rollback(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self.replaced:
            os.rename(self.old, self.path)
            self.replaced = False

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if os.path.isdir(self.path):  # otherwise `old` is the only copy left
            shutil.rmtree(self.old, ignore_errors=True)


def recover_interrupted_swap(path: str) -> None:
    """Bring back directory ``path`` if a :class:`DirectorySwap` was killed between its two renames."""
    path = os.path.normpath(path)
    if os.path.exists(path):
        return
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return
    base = os.path.basename(path)
    olds = sorted(n for n in os.listdir(parent) if n.startswith(base + ".old-"))
    if olds:
        os.rename(os.path.join(parent, olds[-1]), path)
