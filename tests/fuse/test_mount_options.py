"""The mount's pure parts: option parsing and the attribute cache."""

from __future__ import annotations

import time

import pytest

from cistern.core.errors import CisternError
from cistern.fuse.mount import DEFAULT_FUSE_OPTIONS, _unescape, parse_options
from cistern.fuse.operations import AttrCache


class A:
    """A stand-in for model.Attr with the fields the cache uses."""

    def __init__(self, ino, nlink=1, mtime_ns=0, ctime_ns=0):
        self.ino, self.nlink, self.mtime_ns, self.ctime_ns = ino, nlink, mtime_ns, ctime_ns

    def _replace(self, **kw):
        out = A(self.ino, self.nlink, self.mtime_ns, self.ctime_ns)
        out.__dict__.update(kw)
        return out


def test_defaults_and_overrides():
    fuse_options, own = parse_options([])
    assert fuse_options == DEFAULT_FUSE_OPTIONS
    assert own == {"timeout": 30.0, "attr_cache": 1.0, "block_size": None, "read_ahead_kb": 4096,
                   "statahead": 16384, "async_create": 1, "linearizable_attrs": False}
    fuse_options, own = parse_options(["allow_other,ro", "attr_timeout=2.5,entry_timeout=0",
                                       "timeout=5,block_size=1048576", "no_default_permissions"])
    assert fuse_options["allow_other"] is True and fuse_options["ro"] is True
    assert fuse_options["attr_timeout"] == 2.5 and fuse_options["entry_timeout"] == 0.0
    assert "default_permissions" not in fuse_options
    assert own["timeout"] == 5.0 and own["block_size"] == 1 << 20
    assert own["attr_cache"] == 2.5     # follows attr_timeout unless given
    assert parse_options(["attr_cache=0"])[1]["attr_cache"] == 0.0
    assert parse_options(["linearizable_attrs"])[1]["linearizable_attrs"] is True
    assert parse_options(["async_create=0"])[1]["async_create"] == 0
    for bad in ("async_create=2", "async_create=yes", "async_create=-1"):
        with pytest.raises(CisternError):
            parse_options([bad])


@pytest.mark.parametrize("bad", ["timeout=soon", "timeout=0", "block_size=-1", "attr_timeout=x",
                                 "foreground", "debug"])
def test_bad_options_are_one_line_errors(bad):
    with pytest.raises(CisternError) as e:
        parse_options([bad])
    assert "\n" not in e.value.message


def test_mountinfo_escapes_are_undone():
    assert _unescape(rb"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"


def test_attr_cache_is_per_caller_expires_and_forgets_by_name_and_inode():
    cache = AttrCache(ttl_s=0.2)
    me, other = (1000, 1000, ()), (0, 0, ())
    cache.put(me, "/a", A(5))
    cache.put(me, "/hard", A(5))
    assert cache.get(me, "/a").ino == 5 and cache.get(other, "/a") is None
    cache.forget_ino(5)
    assert cache.get(me, "/a") is None and cache.get(me, "/hard") is None
    cache.put(me, "/d", A(2, nlink=2, mtime_ns=1, ctime_ns=1))
    cache.child_made("/d/sub", A(9, ctime_ns=77), nlink_delta=1)
    parent = cache.get(me, "/d")
    assert (parent.nlink, parent.mtime_ns, parent.ctime_ns) == (3, 77, 77)
    cache.forget("/d")
    assert cache.get(me, "/d") is None
    cache.put(me, "/x", A(3))
    time.sleep(0.25)
    assert cache.get(me, "/x") is None
    off = AttrCache(ttl_s=0)
    off.put(me, "/y", A(4))
    assert off.get(me, "/y") is None


def test_an_answer_asked_for_before_a_forget_is_not_cached():
    cache = AttrCache(ttl_s=10)
    me = (0, 0, ())
    epoch = cache.epoch
    cache.forget_ino(7)                   # this mount committed a change meanwhile
    cache.put(me, "/f", A(7), epoch)      # the older answer arrives
    assert cache.get(me, "/f") is None
    epoch = cache.epoch
    cache.put(me, "/f", A(7), epoch)
    assert cache.get(me, "/f").ino == 7
