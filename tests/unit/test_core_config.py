"""cistern.core.config.from_env: daemon timings from CISTERN_* variables."""

import dataclasses

import pytest

from cistern.core.config import from_env
from cistern.core.errors import CisternError


@dataclasses.dataclass
class Conf:
    interval_s: float = 1.0
    per_pass: int = 8


def test_variables_override_defaults_with_the_fields_type():
    assert from_env(Conf, "X_", {}) == Conf()
    conf = from_env(Conf, "X_", {"X_INTERVAL_S": "0.25", "X_PER_PASS": "3", "X_OTHER": "9"})
    assert conf == Conf(0.25, 3) and type(conf.per_pass) is int


@pytest.mark.parametrize("env", [{"X_INTERVAL_S": "soon"}, {"X_PER_PASS": "2.5"}])
def test_a_bad_value_is_a_one_line_error_naming_the_variable(env):
    with pytest.raises(CisternError) as e:
        from_env(Conf, "X_", env)
    name = next(iter(env))
    assert name in e.value.message and "\n" not in e.value.message
