"""Path arguments: what the client sends for what the user wrote, and which
bad arguments it refuses before any round trip (exactly as ``os`` would)."""

import errno
import os
import pathlib

import pytest

from cistern.client import paths
from cistern.client.plans import Call, Plans
from cistern.core.errors import CisternError
from cistern.metadata import limits
from cistern.metadata.model import Op


@pytest.mark.parametrize("given, wire, dir_only", [
    ("/", b"/", False),
    ("//", b"/", False),
    ("/a", b"/a", False),
    ("a", b"/a", False),                      # no cwd: relative means from the root
    ("a/b", b"/a/b", False),
    ("/a//b///c", b"/a/b/c", False),
    ("/a/", b"/a/", True),                    # the state machine applies the kernel's slash rules
    ("a//", b"/a/", True),
    ("/a/./b/../c", b"/a/./b/../c", False),   # dots are the state machine's (symlinks matter)
    (b"/x\xffy", b"/x\xffy", False),           # any byte but NUL and /
    ("/caf\u00e9", "/caf\u00e9".encode(), False),
    ("/bad\udcff", b"/bad\xff", False),       # surrogateescape, as os.fsencode
])
def test_parse_makes_absolute_collapsed_wire_paths(given, wire, dir_only):
    t = paths.parse(given)
    assert (t.wire, t.dir_only) == (wire, dir_only)
    assert t.given == given


def test_result_type_follows_the_argument_type_like_os():
    assert paths.parse("/a").as_bytes is False
    assert paths.parse(b"/a").as_bytes is True
    assert paths.parse(pathlib.PurePosixPath("/a")).as_bytes is False
    assert paths.decode_like("/x", b"caf\xc3\xa9") == "caf\u00e9"
    assert paths.decode_like(b"/x", b"caf\xc3\xa9") == b"caf\xc3\xa9"
    assert paths.decode_like("/x", b"\xff") == "\udcff"


def test_pathlike_is_reported_as_its_fspath_like_os():
    t = paths.parse(pathlib.PurePosixPath("/a/b"))
    assert t.given == "/a/b" and t.wire == b"/a/b"


def test_empty_path_is_enoent_like_os():
    with pytest.raises(FileNotFoundError) as exc:
        paths.parse("")
    assert exc.value.errno == errno.ENOENT and exc.value.filename == ""
    with pytest.raises(FileNotFoundError):
        os.stat("")   # the behaviour we copy


def test_embedded_nul_is_valueerror_like_os():
    with pytest.raises(ValueError):
        paths.parse("/a\0b")
    with pytest.raises(ValueError):
        paths.parse(b"/a\0b")
    with pytest.raises(ValueError):
        os.stat("/a\0b")


@pytest.mark.parametrize("bad", [3, 3.5, None, ["/a"]])
def test_non_paths_are_typeerror_like_os(bad):
    with pytest.raises(TypeError):
        paths.parse(bad)


def test_long_component_and_long_path_are_enametoolong_before_any_round_trip():
    name = "x" * (limits.name_length_max_bytes + 1)
    with pytest.raises(OSError) as exc:
        paths.parse("/d/" + name)
    assert exc.value.errno == errno.ENAMETOOLONG and exc.value.filename == "/d/" + name
    paths.parse("/d/" + "x" * limits.name_length_max_bytes)   # exactly NAME_MAX is fine
    long_path = "/" + "d/" * (limits.path_length_max_bytes // 2)
    with pytest.raises(OSError) as exc:
        paths.parse(long_path)
    assert exc.value.errno == errno.ENAMETOOLONG
    paths.parse("/" + "d" * 200 + ("/" + "d" * 200) * 18)     # 3819 bytes: fine


def test_split_walks_up_like_os_makedirs():
    assert paths.split("/a/b/c") == ("/a/b", "c")
    assert paths.split("/a/b/") == ("/a", "b")
    assert paths.split("a") == ("", "a")
    assert paths.split(b"/a/b") == (b"/a", b"b")
    assert paths.join("/a", b"b") == "/a/b"
    assert paths.join(b"/a/", b"b") == b"/a/b"


# -- what the plans send for a path (fed by hand, no backend) -----------------


class _Face:
    umask = 0o022


def _first_call(plan) -> Call:
    return next(plan)


def test_mkdir_sends_the_wire_path_and_applies_the_umask():
    call = _first_call(Plans.mkdir(_Face(), "a//b/", 0o777))
    assert (call.code, call.args, call.filename) == (Op.MKDIR, (b"/a/b/", 0o755), "a//b/")


def test_lstat_keeps_the_trailing_slash_for_the_state_machine():
    call = _first_call(Plans.lstat(_Face(), "/link//"))
    assert call.code == Op.GETATTR and call.args == (b"/link/", False)


def test_create_with_trailing_slash_is_eisdir_without_a_round_trip():
    with pytest.raises(IsADirectoryError) as exc:
        _first_call(Plans.create(_Face(), "/x/"))
    assert exc.value.filename == "/x/"


def test_lchown_resolves_the_link_itself_then_sets_by_inode():
    plan = Plans.lchown(_Face(), "/l", 5, -1)
    call = next(plan)
    assert call.code == Op.GETATTR and call.args == (b"/l", False)
    call = plan.send([42, 0o120777, 1, 0, 0, 1, 0, 0, 0, 1, 1])
    assert call.code == Op.SETATTR and call.args == (42, {"uid": 5})


def test_errors_thrown_into_a_plan_keep_os_filenames():
    call = _first_call(Plans.rename(_Face(), "a", b"b"))
    error = call.oserror(CisternError(errno.ENOENT, "no such entry"))
    assert isinstance(error, FileNotFoundError)
    assert (error.filename, error.filename2) == ("a", b"b")


def test_symlink_target_is_stored_verbatim():
    call = _first_call(Plans.symlink(_Face(), "../t//x/", "l"))
    assert call.code == Op.SYMLINK and call.args == (b"/l", b"../t//x/")
    assert (call.filename, call.filename2) == ("../t//x/", "l")   # os names (src, dst)
