"""How the query API splits its Redis reads into script calls: each call's size is bounded
(keys, HyperLogLog work), whatever the request asks for."""

from __future__ import annotations

from contracts.keys import SiteKeys
from query_api.redis_reads import MAX_HLL_WORK, MAX_KEYS_PER_CALL, MERGE_COST, Packer

KEYS = SiteKeys("s")


def work(reads: list[list[object]]) -> int:
    return sum(len(r) - 1 if r[0] == "pfcount" else (len(r) - 2) * MERGE_COST
               if r[0] == "merge" else 1 if r[0] == "take" else 0 for r in reads)


def test_a_small_union_is_one_pfcount_and_a_large_one_is_merged_then_taken() -> None:
    packer = Packer()
    small = [f"k{i}" for i in range(MAX_HLL_WORK)]
    batch, at = packer.add_union(KEYS, small)
    assert batch.reads[at][0] == "pfcount" and len(packer.batches) == 1

    packer = Packer()
    large = [f"k{i}" for i in range(30)]
    batch, at = packer.add_union(KEYS, large)
    ops = [r for b in packer.batches for r in b.reads]
    assert [r[0] for r in ops] == ["merge"] * -(-30 // (MAX_HLL_WORK // MERGE_COST)) + ["take"]
    scratch = {b.keys[int(str(r[1])) - 2] for b in packer.batches for r in b.reads}
    assert len(scratch) == 1 and next(iter(scratch)).startswith("pv:{s}:g0:scratch:")
    merged = [b.keys[int(str(i)) - 2] for b in packer.batches for r in b.reads
              if r[0] == "merge" for i in r[2:]]
    assert merged == large  # every source, once, in order
    assert batch.reads[at][0] == "take"


def test_no_call_exceeds_its_bounds_however_many_unions_a_request_has() -> None:
    packer = Packer()
    for page in range(100):  # a /stats of 100 pages over 30 days, and over 7
        packer.add_union(KEYS, [f"uvp:d{d}:p{page}" for d in range(30)])
        packer.add_union(KEYS, [f"uvp:d{d}:p{page}" for d in range(7)])
    for batch in packer.batches:
        assert len(batch.keys) <= MAX_KEYS_PER_CALL
        assert work(batch.reads) <= MAX_HLL_WORK
