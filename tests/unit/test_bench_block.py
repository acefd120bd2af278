"""bench/block_bench.py helpers the data benchmark relies on."""

from cistern.bench.block_bench import block_files, evict


def test_evict_skips_a_block_file_deleted_after_it_was_listed(tmp_path):
    # The nodes delete an earlier round's blocks while the next round lists
    # and evicts: a data_bench run died on FileNotFoundError.
    blocks = tmp_path / "blocks" / "ab"
    blocks.mkdir(parents=True)
    (blocks / "kept").write_bytes(b"x" * 8192)
    (blocks / "gone").write_bytes(b"y")
    listed = block_files(str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in listed) == ["gone", "kept"]
    (blocks / "gone").unlink()
    evict(listed)
    assert (blocks / "kept").read_bytes() == b"x" * 8192


def test_the_replicas_disk_ceiling_writes_every_byte_and_leaves_nothing(tmp_path, monkeypatch):
    import os

    from cistern.bench import block_bench

    MiB = 1 << 20
    written = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(block_bench.os, "pwrite", lambda fd, data, at: written.append(len(data)) or
                        real_pwrite(fd, data, at))
    target = tmp_path / "odirect"
    seconds = block_bench.direct_replicas(str(target), 5 * MiB, os.urandom(MiB), writers=3, file_bytes=MiB)
    assert seconds > 0 and sum(written) == 5 * MiB      # five 1 MiB files over three writers
    assert not target.exists()


def test_the_replicas_ceiling_line_shows_the_share_the_client_used(capsys):
    from cistern.bench.block_bench import print_replica_ceiling

    total = 100_000_000
    # The disk wrote 100 MB in 0.1 s (1,000 MB/s); the client 100 MB in 1 s, x3 replicas: 300 MB/s.
    print_replica_ceiling([0.1, 0.2, 0.05], [(1.0, 9, 9), (2.0, 9, 9), (0.5, 9, 9)], total)
    line = capsys.readouterr().out
    assert "1000" in line and "300 MB/s, 30% of it" in line


def test_the_write_cpu_line_names_each_process_group_per_mib(capsys):
    from cistern.bench.block_bench import print_write_cpu

    MiB = 1 << 20
    # Two rounds of 100 MiB: (client, nodes) CPU seconds 0.05 + 0.4 and 0.07 + 0.5.
    print_write_cpu([(0.05, 0.4), (0.07, 0.5)], 100 * MiB, names=("client", "nodes"))
    line = capsys.readouterr().out
    assert "client  0.60, nodes  4.50; all  5.10 (4.50, 5.70)" in line and "metads" not in line
    print_write_cpu([(0.1, 0.4, 0.05)], 100 * MiB)        # data_bench's three groups
    assert "client  1.00, nodes  4.00, metads  0.50; all  5.50" in capsys.readouterr().out
