"""Settings from the environment: a daemon's timing dataclasses
(``NodesConf``, ``MasterConf``) take their defaults from the role's
limits.py and let ``<PREFIX><FIELD>`` variables override them, because the
daemons take no flags for these and real-process tests shorten them."""

from __future__ import annotations

import dataclasses
import errno
import os

from cistern.core.errors import CisternError


def from_env(cls, prefix: str, environ=os.environ):
    """An instance of the dataclass ``cls`` with each field overridden by
    ``<prefix><FIELD NAME IN CAPITALS>`` when set (an int field takes an
    integer, any other a number). A bad value is CisternError(EINVAL) with
    a one-line message naming the variable."""
    conf = cls()
    for field in dataclasses.fields(cls):
        name = f"{prefix}{field.name.upper()}"
        raw = environ.get(name)
        if not raw:
            continue
        integer = field.type in ("int", int)
        try:
            setattr(conf, field.name, int(raw) if integer else float(raw))
        except ValueError:
            raise CisternError(errno.EINVAL, f"{name}={raw!r} is not {'an integer' if integer else 'a number'}") from None
    return conf
