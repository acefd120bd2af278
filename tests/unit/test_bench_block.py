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
