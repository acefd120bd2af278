"""apply() and read() are total: any decoded argument list, however
malformed, gets an errno (never an exception, never the last-resort EIO),
and the namespace invariants hold afterwards."""

import os
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from cistern.metadata import model
from cistern.metadata.model import Op
from cistern.metadata.testing import NamespaceHarness

_paths = st.sampled_from([b"/", b"/d", b"/d/f", b"/d/l", b"/x", b"/d/", b"/d/..", b"", b"rel", b"/d/f/x"])
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=20), _paths,
    st.sampled_from([model.TIME_NOW, 0o644, 1, 2, 3, b"user.a", b"trusted.b", b"w1"]),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(["mode", "size", "uid", "atime", "x"]), inner,
                                                 max_size=3)), max_leaves=12)
_creds = st.one_of(st.just([0, 0, []]), st.just([1000, 1000, [1000]]), _values)
_codes = st.one_of(st.sampled_from(list(Op)), st.integers(min_value=-5, max_value=1200))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(_codes, _creds, st.lists(_values, max_size=6)), min_size=1, max_size=8),
       time_ns=st.one_of(st.integers(min_value=0, max_value=2 ** 62), _values))
def test_any_arguments_get_an_errno_and_keep_invariants(ops, time_ns):
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as path:
        h = NamespaceHarness(path)
        try:
            h.ok(Op.MKDIR, b"/d", 0o777)
            h.ok(Op.CREATE, b"/d/f", 0o666, True)
            h.ok(Op.SYMLINK, b"/d/l", b"f")
            for code, cred, args in ops:
                if isinstance(code, int) and code in model.READ_OPS:
                    with h.store.env.begin() as txn:
                        result = h.ns.read(txn, code, [cred, *args])
                else:
                    # write_raw asserts no internal error and checks invariants.
                    result = h.write_raw(code, [cred, *args], time_ns=time_ns)
                assert isinstance(result, tuple) and len(result) == 3
                assert isinstance(result[0], int) and isinstance(result[1], str) and "\n" not in result[1]
                assert "internal error" not in result[1], result
                assert (result[0] == 0) == (result[1] == "")
        finally:
            h.close()
