"""Block data-path throughput: N MiB written and read through ``BlockClient``
with 3 replicas (three real blockd processes, fsync on), against the same
bytes written directly to node 1's disk with dd-style 1 MiB writes plus fsync
and read back, in one run.

    .venv/bin/python -m cistern.bench.block_bench --mib 256 [--inflight 1] [--block-mib 4] [--rounds 3]

Prints MB/s both ways and the ratio (issue 3 targets: writes >= 30% and reads
>= 60% of the direct-disk figure), and the CPU the writes cost per MiB, this
(client) process's and the three nodes', as ``data_bench`` does: on a shared
2-core host the two benchmarks are compared by it, not by MB/s alone. Each side is read twice: first from the
disk (its pages evicted with fadvise, no root needed), then from the page
cache. Block reads stream over the nodes' transfer ports (gRPC is the
fallback; see blockstore/transfer.py).
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

MiB = 1024 * 1024


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes_cpu_s(pids) -> float:
    """CPU seconds the processes ``pids`` have used so far, together."""
    return sum(process_cpu_s(pid) for pid in pids)


def print_write_cpu(cpus: list, total_bytes: int, names=("client", "nodes", "metads")) -> None:
    """CPU ms per MiB written, median of the rounds (each round's CPU
    seconds per process group, in the order of ``names``): each group's
    and their sum, and every round's sum."""
    mib = total_bytes / MiB
    per = [[c * 1e3 / mib for c in r] for r in cpus]
    sums = [sum(r) for r in per]
    groups = ", ".join(f"{name} {statistics.median(r[i] for r in per):5.2f}" for i, name in enumerate(names))
    print(f"  CPU ms/MiB, {'write':13}: {groups}; "
          f"all {statistics.median(sums):5.2f} ({', '.join(f'{s:.2f}' for s in sums)})")


def evict(paths) -> None:
    """Drop the files' pages from the page cache (they are clean after
    fsync), so the next read comes from the disk; no root needed. A file
    gone meanwhile is skipped: the nodes delete an earlier round's blocks
    while the next round runs (a run died on one)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def block_files(data_dir: str) -> list[str]:
    root = os.path.join(data_dir, "blocks")
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def timed_read(path: str) -> float:
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, MiB):
            pass
    finally:
        os.close(fd)
    return time.perf_counter() - started


def direct_disk(path: str, total_bytes: int, payload: bytes) -> tuple[float, float, float]:
    """dd-style: write total_bytes in 1 MiB writes, fsync; read back in 1 MiB
    reads from the disk (pages evicted first) and from the page cache;
    (write_s, cold_read_s, warm_read_s)."""
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset in range(0, total_bytes, MiB):
            os.write(fd, payload[offset % len(payload):offset % len(payload) + MiB])
        os.fsync(fd)
    finally:
        os.close(fd)
    write_s = time.perf_counter() - started
    evict([path])
    cold_s = timed_read(path)
    warm_s = timed_read(path)
    os.unlink(path)
    return write_s, cold_s, warm_s


def direct_replicas(directory: str, total_bytes: int, payload: bytes, *, writers: int = 3,
                    file_bytes: int = 4 * MiB) -> float:
    """Seconds to write ``total_bytes`` as ``file_bytes`` files from
    ``writers`` threads at once, each file with O_DIRECT in 1 MiB writes
    and fsynced: what the nodes' block writes ask of the disk (one node per
    writer, no network, no checksums), so ``replicas x`` the client's write
    rate against it shows how much of the disk the replicated writes use.
    ``payload`` holds at least ``file_bytes``. Falls back to buffered
    writes where O_DIRECT is refused (tmpfs). The files are removed."""
    os.makedirs(directory, exist_ok=True)
    files_n = -(-total_bytes // file_bytes)
    failures = []

    def writer(k: int) -> None:
        buf = mmap.mmap(-1, file_bytes)          # page-aligned, as O_DIRECT needs
        buf[:] = payload[:file_bytes]
        view = memoryview(buf)
        try:
            for i in range(k, files_n, writers):
                path = os.path.join(directory, f"{k}.{i}")
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
                except OSError:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    for at in range(0, file_bytes, MiB):
                        os.pwrite(fd, view[at:at + MiB], at)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            failures.append(e)
        finally:
            view.release()
            buf.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    shutil.rmtree(directory, ignore_errors=True)
    if failures:
        raise failures[0]
    return elapsed


def print_replica_ceiling(ceilings: list, measured: list, total_bytes: int, replicas: int = 3) -> None:
    """The line after ``print_against_disk``: the disk's rate for the
    replicas' writes (``direct_replicas`` seconds per round) and the share
    of it the client's writes used (``replicas`` x its rate; ``measured``:
    the rounds' ``(write_s, ...)``), medians of the rounds."""
    mb = total_bytes / 1e6
    ceiling = mb / statistics.median(ceilings)
    used = replicas * mb / statistics.median(r[0] for r in measured)
    print(f"  {'disk, O_DIRECT 4 MiB files x' + str(replicas) + ' writers':36} {ceiling:8.0f}"
          f"   ({replicas} replicas x the client's write: {used:.0f} MB/s, {used / ceiling:.0%} of it)")


def through_blocks(cluster, total_bytes: int, block_bytes: int, payload: bytes, inflight: int):
    """Write every block down a 3-node pipeline, then read each back from its
    first replica, from the disk (its block files evicted first) and again
    from the page cache; (write_s, cold_read_s, warm_read_s) and the
    (client, nodes) CPU seconds the write cost."""
    from cistern.blockstore.client import BlockClient

    client = BlockClient()
    targets = cluster.addresses[:3]
    ids = [os.urandom(16) for _ in range(total_bytes // block_bytes)]
    blocks = [payload[(i * block_bytes) % len(payload):(i * block_bytes) % len(payload) + block_bytes]
              for i in range(len(ids))]

    def write(i):
        stored = client.write_block(targets, ids[i], blocks[i])
        assert stored == targets, stored

    def read(i):
        assert len(client.read_block(targets[0], ids[i])) == block_bytes

    node_pids = [node["pid"] for node in cluster.nodes]
    with ThreadPoolExecutor(inflight) as pool:
        before = (time.process_time(), processes_cpu_s(node_pids))
        started = time.perf_counter()
        list(pool.map(write, range(len(ids))))
        write_s = time.perf_counter() - started
        write_cpu = tuple(b - a for a, b in zip(before, (time.process_time(), processes_cpu_s(node_pids))))
        read_s = []
        evict(block_files(cluster.nodes[0]["data"]))
        for _ in range(2):
            started = time.perf_counter()
            list(pool.map(read, range(len(ids))))
            read_s.append(time.perf_counter() - started)
    assert client.read_block(targets[2], ids[-1]) == blocks[-1]
    client.close()
    return (write_s, read_s[0], read_s[1]), write_cpu


def print_against_disk(title: str, label: str, disks: list, measured: list, total_bytes: int) -> None:
    """The table both data benchmarks print: MB/s of write, read from disk
    and cached read, direct disk against ``label``, medians of the rounds'
    ``(write_s, read_s, cached_s)`` timings, and their ratio."""
    disk = [statistics.median(r[i] for r in disks) for i in range(3)]
    got = [statistics.median(r[i] for r in measured) for i in range(3)]
    mb = total_bytes / 1e6
    print(f"{title}; MB/s, median of {len(disks)} rounds")
    print(f"  {'':36} {'write':>8} {'read (disk)':>12} {'read (cached)':>14}")
    print(f"  {'direct disk, 1 MiB I/O + fsync':36} {mb / disk[0]:8.0f} {mb / disk[1]:12.0f} {mb / disk[2]:14.0f}")
    print(f"  {label:36} {mb / got[0]:8.0f} {mb / got[1]:12.0f} {mb / got[2]:14.0f}")
    print(f"  {'ratio':36} {disk[0] / got[0]:8.0%} {disk[1] / got[1]:12.0%} {disk[2] / got[2]:14.0%}"
          f"   (targets: write >= 30%, read >= 60%)")


def main(argv=None) -> int:
    from cistern.blockstore.testing import NodeCluster

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=512, help="bytes to move, in MiB (default 512)")
    p.add_argument("--block-mib", type=int, default=4, help="block size in MiB (default 4)")
    p.add_argument("--inflight", type=int, default=1, help="blocks written/read concurrently (default 1)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate direct and block rounds this many times; medians are shown (default 3)")
    p.add_argument("--dir", default=None, help="where the nodes keep their data (default: a temp dir)")
    args = p.parse_args(argv)
    block_bytes = args.block_mib * MiB
    total = (args.mib * MiB // block_bytes) * block_bytes
    assert total > 0, "--mib must be at least one block"
    payload = os.urandom(64 * MiB + block_bytes)   # distinct blocks without generating N MiB of randomness
    workdir = tempfile.mkdtemp(prefix="block_bench.", dir=args.dir)
    try:
        with NodeCluster(workdir, n=3, block_size_bytes=block_bytes, log_level="WARNING",
                         extra_args=["--no-scrub"]) as cluster:
            disks, blks, ceilings, write_cpus = [], [], [], []
            for _ in range(args.rounds):
                # Alternating rounds share whatever else the machine is doing.
                disks.append(direct_disk(os.path.join(cluster.nodes[0]["data"], "dd.bin"), total, payload))
                ceilings.append(direct_replicas(os.path.join(cluster.nodes[0]["data"], "odirect"), total, payload,
                                                file_bytes=block_bytes))
                timings, write_cpu = through_blocks(cluster, total, block_bytes, payload, args.inflight)
                blks.append(timings)
                write_cpus.append(write_cpu)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_against_disk(f"{args.mib} MiB, {args.block_mib} MiB blocks, 3 replicas on one machine's disk, "
                       f"{args.inflight} block(s) in flight", "BlockClient, 3-node pipeline", disks, blks, total)
    print_replica_ceiling(ceilings, blks, total)
    print_write_cpu(write_cpus, total, names=("client", "nodes"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
