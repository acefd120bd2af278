"""Data-path throughput: one large file written and read back sequentially
through the client (``Client.open``, 3 replicas, default 4 MiB blocks: three
real metad and three real node processes with fsync on), against the same
bytes written directly to node 1's disk with dd-style 1 MiB writes plus
fsync and read back in 1 MiB reads, in one run.

    .venv/bin/python -m cistern.bench.data_bench --mib 512 [--rounds 3] [--block-mib 4] [--local]
        [--no-malloc-tuning]

Prints MB/s both ways and the ratios (issue 3 targets: writes >= 30% and
reads >= 60% of the direct-disk figure); the disk's own rate for the three
replicas' writes (three threads writing 4 MiB files with O_DIRECT and an
fsync each, as the nodes do, measured in every round) and the share of it
the client's writes used (3 x its rate): the nodes share one disk, so the
write figure cannot pass a third of that rate; and the CPU each write and read
cost per MiB: this (client) process's, the three nodes' together and (for
writes: block allocations, block reports, the commit) the three metads'
together, which vary far less with the machine's load than MB/s do. Cold reads come from the disk
(pages evicted with fadvise, no root needed); cached reads from the page
cache. ``--local`` makes the client read node 1 first, as a task on that
node would, with short-circuit reads of its block files. Direct and client rounds alternate and medians are shown,
because the machine is shared. The benchmark process tunes its malloc as
node processes do (``blockstore.tuning.tune_malloc``) unless
``--no-malloc-tuning``: a process that streams large files should (gRPC's
megabyte messages otherwise churn through mmap/madvise and page faults).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from cistern.bench.block_bench import (block_files, direct_disk, direct_replicas, evict, print_against_disk,
                                       print_replica_ceiling, print_write_cpu, processes_cpu_s)

MiB = 1024 * 1024


def through_client(client, nodes, metads, path: str, total: int, payload: bytes, local_reader):
    """(write_s, cold_read_s, cached_read_s) of one file through the client;
    the (client, nodes, metads) CPU seconds the write cost (``metads``: the
    metadata replicas' pids); and per read (cold, cached) the (client,
    nodes) CPU seconds it cost."""
    node_pids = [node["pid"] for node in nodes]
    before = (time.process_time(), processes_cpu_s(node_pids), processes_cpu_s(metads))
    started = time.perf_counter()
    with client.open(path, "wb") as f:
        for offset in range(0, total, MiB):
            f.write(payload[offset % len(payload):offset % len(payload) + MiB])
    write_s = time.perf_counter() - started
    after = (time.process_time(), processes_cpu_s(node_pids), processes_cpu_s(metads))
    write_cpu = tuple(b - a for a, b in zip(before, after))
    for node in nodes:
        evict(block_files(node["data"]))
    reads, cpu = [], []
    for _ in range(2):
        nodes_cpu = processes_cpu_s(node_pids)
        client_cpu = time.process_time()
        started = time.perf_counter()
        got = 0
        with local_reader.open(path, "rb") as f:
            while piece := f.read(MiB):
                got += len(piece)
        reads.append(time.perf_counter() - started)
        cpu.append((time.process_time() - client_cpu,
                    processes_cpu_s(node_pids) - nodes_cpu))
        assert got == total, (got, total)
    client.remove(path)
    return (write_s, reads[0], reads[1]), write_cpu, cpu


def main(argv=None) -> int:
    from cistern.blockstore.testing import NodeCluster
    from cistern.client import connect
    from cistern.client.testing import wait_nodes_live
    from cistern.metadata.proc_testing import MetaCluster

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=512, help="file size in MiB (default 512)")
    p.add_argument("--block-mib", type=int, default=4, help="block size in MiB (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="alternating direct/client rounds; medians shown")
    p.add_argument("--local", action="store_true", help="the reader is local to node 1 (short-circuit reads)")
    p.add_argument("--dir", default=None, help="where the daemons keep their data (default: a temp dir)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave this (client) process's malloc thresholds as they are")
    args = p.parse_args(argv)
    from cistern.blockstore.tuning import tune_malloc

    tuned = not args.no_malloc_tuning and tune_malloc()
    block_bytes = args.block_mib * MiB
    total = args.mib * MiB
    payload = os.urandom(64 * MiB + MiB)
    workdir = tempfile.mkdtemp(prefix="data_bench.", dir=args.dir)
    meta = MetaCluster(os.path.join(workdir, "meta"), 3, log_level="WARNING")
    try:
        addresses = ",".join(meta.addresses)
        with NodeCluster(workdir, 3, block_size_bytes=block_bytes, log_level="WARNING",
                         extra_args=["--meta", addresses, "--no-scrub"]) as cluster:
            nodes = cluster.nodes
            with connect(addresses, block_size=block_bytes) as client, \
                    connect(addresses, node_id="n1" if args.local else None,
                            local_data_dir=nodes[0]["data"] if args.local else None) as reader:
                wait_nodes_live(client, [node["id"] for node in nodes], timeout_s=60.0)
                metads = [m["pid"] for m in meta.members]
                disks, clients, write_cpus, cpus, ceilings = [], [], [], [], []
                for r in range(args.rounds):
                    disks.append(direct_disk(os.path.join(nodes[0]["data"], "dd.bin"), total, payload))
                    ceilings.append(direct_replicas(os.path.join(nodes[0]["data"], "odirect"), total, payload,
                                                    file_bytes=block_bytes))
                    timings, write_cpu, cpu = through_client(client, nodes, metads, f"/bench-{r}", total,
                                                             payload, reader)
                    clients.append(timings)
                    write_cpus.append(write_cpu)
                    cpus.append(cpu)
    finally:
        meta.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print_against_disk(f"{args.mib} MiB file, {args.block_mib} MiB blocks, 3 replicas on one machine's disk"
                       f"{', reader local to node 1' if args.local else ''}"
                       f"{', client malloc tuned' if tuned else ', client malloc untuned'}",
                       "client open(), 1 MiB writes/reads",
                       disks, clients, total)
    print_replica_ceiling(ceilings, clients, total)
    print_write_cpu(write_cpus, total)
    print_read_cpu(cpus, total)
    return 0


def print_read_cpu(cpus: list, total_bytes: int) -> None:
    """CPU ms per MiB read through the client, this process's and the
    nodes', median of the rounds (each round's ``[(client_s, nodes_s) cold,
    (client_s, nodes_s) cached]``), and every round's client figure."""
    mib = total_bytes / MiB
    for i, name in enumerate(("read (disk)", "read (cached)")):
        client = [r[i][0] * 1e3 / mib for r in cpus]
        nodes = [r[i][1] * 1e3 / mib for r in cpus]
        print(f"  CPU ms/MiB, {name:13}: client {statistics.median(client):5.2f} "
              f"({', '.join(f'{c:.2f}' for c in client)}), nodes {statistics.median(nodes):5.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
