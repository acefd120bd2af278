"""The ``cistern`` command: parses arguments, dispatches to one subcommand
module, and turns every expected failure into one line on stderr and a
non-zero exit. Exit codes: 0 success, 1 the operation failed, 2 bad usage,
130 interrupted."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from cistern.blockstore import tuning
from cistern.core import procs
from cistern.core.errors import CisternError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Commands whose process streams block data as a client: they take the
# node processes' malloc tuning (blockstore/tuning.py; about a third of a
# reading client's CPU was allocator churn without it).
BULK_DATA_COMMANDS = frozenset({"mount", "fs", "run", "bench"})


class _Parser(argparse.ArgumentParser):
    """argparse that prints one usage line and exits 2, as it does, but with
    the full command name in the message."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n(see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from cistern.cli import bench, demo, fs, fsck, meta, mount, node, run, status, up

    parser = _Parser(prog="cistern", description="Cistern: a storage-first distributed file service.")
    parser.add_argument("--log-level", default=os.environ.get("CISTERN_LOG", "WARNING"),
                        help="logging level for daemons and tools (default: WARNING)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for module in (up, meta, node, status, fs, fsck, run, demo, bench, mount):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    procs.die_with_parent_if_asked()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in BULK_DATA_COMMANDS:
        tuning.tune_malloc()
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except CisternError as e:
        print(f"cistern {args.command}: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        print(f"cistern {args.command}: {_describe_oserror(e)}", file=sys.stderr)
        return EXIT_FAILED


def _describe_oserror(e: OSError) -> str:
    reason = e.strerror or os.strerror(e.errno or errno.EIO)
    names = [n for n in (e.filename, e.filename2) if n is not None]
    names = [os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in names]
    return f"{' -> '.join(names)}: {reason}" if names else reason


if __name__ == "__main__":
    sys.exit(main())
