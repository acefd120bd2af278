"""The asyncio face of a ``Client``: ``client.aio``.

Every method of ``Client`` is here as a coroutine with the same arguments,
result, errors and guarantees (see ``cistern.client.api``). Each metadata
operation is submitted to the shared ``MetaClient`` and awaited with
``asyncio.wrap_future``, so one event-loop thread can keep thousands of
operations in flight and the metadata client sends them in shared batches::

    aio = client.aio
    await asyncio.gather(*(aio.mkdir(f"/d/{i}") for i in range(1000)))

``scandir`` returns a list of ``DirEntry`` after listing the whole
directory; an entry's ``stat()`` (and ``is_dir()`` on a symlink) is a
*blocking* call, so in async code prefer ``await aio.stat(entry.path)``.
``walk`` is an async generator. Nothing here holds the event loop while
waiting; callbacks only hop the reply onto the loop.
"""

from __future__ import annotations

import asyncio
import functools
import os

from cistern.core.errors import CisternError

from . import paths
from .plans import Plans

__all__ = ["AsyncClient"]


def _coroutine(plan):
    @functools.wraps(plan)
    async def method(self, *args, **kwargs):
        return await self._run(plan(self, *args, **kwargs))
    return method


class AsyncClient:
    """Coroutine forms of the ``Client`` methods (same contracts)."""

    def __init__(self, client):
        self.client = client

    @property
    def umask(self) -> int:
        return self.client.umask

    async def _run(self, plan):
        value = error = None
        while True:
            try:
                call = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                error = None
            try:
                value = await asyncio.wrap_future(self.client._submit(call))
            except CisternError as e:
                value, error = None, call.oserror(e)

    attr = _coroutine(Plans.attr)
    stat = _coroutine(Plans.stat)
    lstat = _coroutine(Plans.lstat)
    exists = _coroutine(Plans.exists)
    lexists = _coroutine(Plans.lexists)
    isdir = _coroutine(Plans.isdir)
    isfile = _coroutine(Plans.isfile)
    islink = _coroutine(Plans.islink)
    access = _coroutine(Plans.access)
    listdir = _coroutine(Plans.listdir)
    readdir = _coroutine(Plans.readdir)
    readdir_page = _coroutine(Plans.readdir_page)
    readlink = _coroutine(Plans.readlink)
    getxattr = _coroutine(Plans.getxattr)
    listxattr = _coroutine(Plans.listxattr)
    statvfs = _coroutine(Plans.statvfs)
    statfs = statvfs
    mkdir = _coroutine(Plans.mkdir)
    mkdir_attr = _coroutine(Plans.mkdir_attr)
    makedirs = _coroutine(Plans.makedirs)
    create = _coroutine(Plans.create)
    touch = _coroutine(Plans.touch)
    symlink = _coroutine(Plans.symlink)
    symlink_attr = _coroutine(Plans.symlink_attr)
    link = _coroutine(Plans.link)
    unlink = _coroutine(Plans.unlink)
    remove = unlink
    rmdir = _coroutine(Plans.rmdir)
    removedirs = _coroutine(Plans.removedirs)
    rename = _coroutine(Plans.rename)
    replace = _coroutine(Plans.replace)
    rename2 = _coroutine(Plans.rename2)
    setattr = _coroutine(Plans.setattr)
    chmod = _coroutine(Plans.chmod)
    chown = _coroutine(Plans.chown)
    lchown = _coroutine(Plans.lchown)
    utime = _coroutine(Plans.utime)
    setxattr = _coroutine(Plans.setxattr)
    removexattr = _coroutine(Plans.removexattr)
    txn = _coroutine(Plans.txn)
    open = _coroutine(Plans.open)

    async def truncate(self, path, length) -> None:
        """``Client.truncate``. A grow that would bring back the tail of a
        block a shrink kept runs the blocking data path in a worker thread
        (``asyncio.to_thread``); every other size change is one awaited
        metadata operation."""
        if await self._run(Plans.grow_reveals_tail(self, path, length)):
            await asyncio.to_thread(self.client._truncate_through_data, path, length)
        else:
            await self._run(Plans.truncate(self, path, length))

    async def scandir(self, path="/") -> list:
        """``Client.scandir`` as a list of ``DirEntry`` (see the module
        docstring about their blocking ``stat``)."""
        from .api import DirEntry

        given = paths.fspath(path, "scandir")
        entries = await self.readdir(given)
        return [DirEntry(self.client, given, *entry) for entry in entries]

    async def walk(self, top="/", topdown=True, onerror=None, followlinks=False):
        """``Client.walk`` as an async generator (``async for``). Symlinks
        to directories are resolved with awaited stats, never blocking."""
        stack = [paths.fspath(top, "walk")]
        while stack:
            top = stack.pop()
            if isinstance(top, tuple):
                yield top
                continue
            try:
                entries = await self.scandir(top)
            except OSError as error:
                if onerror is not None:
                    onerror(error)
                continue
            dirs, nondirs, walk_dirs, links = [], [], [], set()
            listed = {entry.name for entry in entries}
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                if entry.is_symlink():
                    links.add(entry.name)
                    is_dir = await self.isdir(entry.path)
                (dirs if is_dir else nondirs).append(entry.name)
                if not topdown and is_dir and (followlinks or not entry.is_symlink()):
                    walk_dirs.append(entry.path)
            if topdown:
                yield top, dirs, nondirs
                for name in reversed(dirs):
                    new_path = os.path.join(top, name)
                    is_link = name in links if name in listed else await self.islink(new_path)
                    if followlinks or not is_link:
                        stack.append(new_path)
            else:
                stack.append((top, dirs, nondirs))
                stack.extend(reversed(walk_dirs))

    async def close(self) -> None:
        """Closes the underlying client (see ``Client.close``)."""
        self.client.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
