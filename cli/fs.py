"""``cistern fs``: file operations on the cluster, like ``hdfs dfs``.

Each subcommand reports a failure as one line, ``cistern fs CMD: PATH:
reason``, and exits 1; it keeps going over the remaining paths first, as
coreutils do."""

from __future__ import annotations

import json
import os
import stat as stat_module
import sys
import time



def register(commands) -> None:
    p = commands.add_parser("fs", help="file operations: ls, mkdir, touch, stat, rm, mv, put, get, cat")
    p.add_argument("--cluster", default=None, help="cluster.json path or comma-separated metadata addresses")
    sub = p.add_subparsers(dest="fs_command", metavar="FS_COMMAND", parser_class=type(p))
    sub.required = True

    ls = sub.add_parser("ls", help="list directories")
    ls.add_argument("-l", action="store_true", help="long format")
    ls.add_argument("-d", action="store_true", help="list directories themselves, not their contents")
    ls.add_argument("paths", nargs="*", default=["/"])
    ls.set_defaults(run=_run(ls_one))

    mkdir = sub.add_parser("mkdir", help="make directories")
    mkdir.add_argument("-p", action="store_true", help="make parents as needed; no error if it exists")
    mkdir.add_argument("paths", nargs="+")
    mkdir.set_defaults(run=_run(mkdir_one))

    touch = sub.add_parser("touch", help="create empty files or set their times to now")
    touch.add_argument("paths", nargs="+")
    touch.set_defaults(run=_run(touch_one))

    st = sub.add_parser("stat", help="show inode attributes")
    st.add_argument("--json", action="store_true", help="one JSON object per path")
    st.add_argument("paths", nargs="+")
    st.set_defaults(run=_run(stat_one))

    rm = sub.add_parser("rm", help="remove files (and directories with -r)")
    rm.add_argument("-r", action="store_true", help="remove directories and their contents")
    rm.add_argument("-f", action="store_true", help="ignore missing paths")
    rm.add_argument("paths", nargs="+")
    rm.set_defaults(run=_run(rm_one))

    mv = sub.add_parser("mv", help="rename SRC to DST (atomic)")
    mv.add_argument("paths", nargs=2, metavar="PATH")
    mv.set_defaults(run=_run_mv)

    put = sub.add_parser("put", help="copy a local file (or - for standard input) to PATH")
    put.add_argument("--replication", type=int, default=None, help="replication factor of the new file")
    put.add_argument("local", metavar="LOCAL|-")
    put.add_argument("path", metavar="PATH")
    put.set_defaults(run=_run_put)

    get = sub.add_parser("get", help="copy PATH to a local file (or - for standard output)")
    get.add_argument("path", metavar="PATH")
    get.add_argument("local", metavar="LOCAL|-")
    get.set_defaults(run=_run_get)

    cat = sub.add_parser("cat", help="write files to standard output")
    cat.add_argument("paths", nargs="+")
    cat.set_defaults(run=_run_cat)


def _connect(args):
    from cistern.client import connect

    return connect(args.cluster)


def _run(one):
    """A subcommand over many paths: each failure is one line; exit 1 if any."""

    def run(args) -> int:
        failed = False
        with _connect(args) as client:
            for path in args.paths:
                try:
                    one(client, args, path)
                except OSError as e:
                    failed = True
                    _complain(args, path, e)
        return 1 if failed else 0

    return run


def _run_mv(args) -> int:
    src, dst = args.paths
    with _connect(args) as client:
        try:
            client.rename(src, dst)
        except OSError as e:
            _complain(args, f"{src} -> {dst}", e)
            return 1
    return 0


copy_piece_bytes = 4 << 20     # put/get/cat move this much per read and write


def _copy(src, dst) -> None:
    while True:
        piece = src.read(copy_piece_bytes)
        if not piece:
            return
        dst.write(piece)


def _run_put(args) -> int:
    """Local file or stdin -> PATH, published in one commit at close."""
    with _connect(args) as client:
        try:
            local = sys.stdin.buffer if args.local == "-" else open(args.local, "rb")
        except OSError as e:
            _data_complain(args, args.local, e)
            return 1
        try:
            with local, client.open(args.path, "wb", replication=args.replication) as f:
                _copy(local, f)
        except OSError as e:
            _data_complain(args, args.path if e.filename in (None, args.path) else e.filename, e)
            return 1
    return 0


def _run_get(args) -> int:
    """PATH -> local file (written to a temporary name, then renamed) or stdout."""
    with _connect(args) as client:
        try:
            with client.open(args.path, "rb") as f:
                if args.local == "-":
                    _copy(f, sys.stdout.buffer)
                    sys.stdout.buffer.flush()
                    return 0
                tmp = f"{args.local}.cistern-get.{os.getpid()}"
                try:
                    with open(tmp, "wb") as out:
                        _copy(f, out)
                    os.replace(tmp, args.local)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
        except OSError as e:
            _data_complain(args, args.path if e.filename in (None, args.path) else e.filename, e)
            return 1
    return 0


def _run_cat(args) -> int:
    """Each file in turn to stdout; a failure is one line, and the rest go on."""
    failed = False
    with _connect(args) as client:
        for path in args.paths:
            try:
                with client.open(path, "rb") as f:
                    _copy(f, sys.stdout.buffer)
            except OSError as e:
                failed = True
                sys.stdout.buffer.flush()
                _data_complain(args, path, e)
    sys.stdout.buffer.flush()
    return 1 if failed else 0


def _data_complain(args, path: str, e: OSError) -> None:
    """One line; the bare strerror when the message only repeats the name."""
    text = os.strerror(e.errno) if e.errno else str(e)
    reason = e.strerror or text
    if reason.endswith(text):
        reason = text
    print(f"cistern fs {args.fs_command}: {path}: {' '.join(reason.split())}", file=sys.stderr)


def _complain(args, path: str, e: OSError) -> None:
    reason = e.strerror or os.strerror(e.errno)
    print(f"cistern fs {args.fs_command}: {path}: {reason}", file=sys.stderr)


def ls_one(client, args, path: str) -> None:
    st = client.stat(path)
    if args.d or not stat_module.S_ISDIR(st.st_mode):
        print(_long(path, client.lstat(path), client, path) if args.l else path)
        return
    if len(args.paths) > 1:
        print(f"{path}:")
    for entry in sorted(client.scandir(path), key=lambda e: e.name):
        print(_long(entry.name, entry.stat(follow_symlinks=False), client, entry.path) if args.l else entry.name)


def _long(name: str, st, client, path: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
    line = (f"{stat_module.filemode(st.st_mode)} {st.st_nlink:>3} {st.st_uid:>5} {st.st_gid:>5} "
            f"{st.st_size:>12} {when} {name}")
    if stat_module.S_ISLNK(st.st_mode):
        line += f" -> {client.readlink(path)}"
    return line


def mkdir_one(client, args, path: str) -> None:
    if args.p:
        client.makedirs(path, exist_ok=True)
    else:
        client.mkdir(path)


def touch_one(client, args, path: str) -> None:
    client.touch(path)


def stat_one(client, args, path: str) -> None:
    st = client.lstat(path)
    fields = {
        "path": path, "type": _kind(st.st_mode), "mode": oct(stat_module.S_IMODE(st.st_mode)),
        "ino": st.st_ino, "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
        "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
    }
    if args.json:
        print(json.dumps(fields))
        return
    for key, value in fields.items():
        print(f"{key + ':':<10}{value}")


def _kind(mode: int) -> str:
    if stat_module.S_ISDIR(mode):
        return "directory"
    if stat_module.S_ISLNK(mode):
        return "symlink"
    return "file"


def rm_one(client, args, path: str) -> None:
    try:
        st = client.lstat(path)
    except FileNotFoundError:
        if args.f:
            return
        raise
    if not stat_module.S_ISDIR(st.st_mode):
        client.remove(path)
        return
    if not args.r:
        raise IsADirectoryError(21, "Is a directory (use -r)", path)
    for top, dirs, files in client.walk(path, topdown=False):
        for name in files:
            client.remove(_join(top, name))
        for name in dirs:
            full = _join(top, name)
            if stat_module.S_ISLNK(client.lstat(full).st_mode):
                client.remove(full)
            else:
                client.rmdir(full)
    client.rmdir(path)


def _join(top, name):
    return top.rstrip("/") + "/" + name if isinstance(top, str) else top.rstrip(b"/") + b"/" + name

