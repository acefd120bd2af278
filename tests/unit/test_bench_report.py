"""Report pieces: histogram percentiles, merging, the JSON shape checker,
ratios and the text table."""

import random

from cistern.bench import report


def test_histogram_percentiles_are_within_a_bucket_of_exact():
    rng = random.Random(4)
    values = [int(rng.lognormvariate(11, 1.0)) for _ in range(20000)]
    halves = [report.histogram(values[:7000]), report.histogram(values[7000:])]
    merged = report.merge(halves)
    assert sum(merged.values()) == len(values)
    exact = sorted(values)
    for q in (0.5, 0.99, 0.999):
        want = exact[int(q * len(exact)) - 1]
        got = report.percentile_ns(merged, q)
        assert abs(got - want) / want < 0.03, (q, got, want)
    assert report.percentile_ns({}, 0.5) is None


def phase(name="stat", ops=10, rate=100.0, errors=0, timed=True):
    part = {"ops": ops, "errors": errors, "first_error": "boom" if errors else None, "start_ns": 0,
            "end_ns": int(ops / rate * 1e9), "hist": report.histogram([1000] * ops), "sum_ns": 1000 * ops,
            "max_ns": 1000}
    return report.phase_record(name, [part], ops, None, timed)


def result(target, role, phases):
    return {"target": target, "role": role, "sweep_value": None, "clients": 1, "files_per_client": 10,
            "inflight": 1, "fs_type": None, "interrupted": False, "phases": phases}


def test_phase_record_sums_parts_and_rates():
    p = phase(ops=50, rate=200.0)
    assert p["ops"] == 50 and abs(p["ops_per_s"] - 200.0) < 1 and p["latency_us"]["p50"] > 0.9


def test_validate_reports_missing_extra_and_mistyped_fields():
    doc = {"schema": "x"}
    problems = report.validate(doc)
    assert any("$.results: missing" in p for p in problems)
    bad = phase()
    bad["ops"] = "10"
    bad["extra"] = 1
    problems = report.validate(bad, report._PHASE)
    assert any(".ops: expected int" in p for p in problems) and any(".extra: unexpected" in p for p in problems)
    assert report.validate(phase(), report._PHASE) == []
    assert report.validate(True, int) != []       # a bool is not a count


def test_ratios_and_table_name_the_baseline_and_show_errors():
    results = [result("api", "main", [phase(rate=100.0), phase("readdir", rate=10.0, timed=False)]),
               result("path:/x", "compare", [phase(rate=400.0, errors=2)])]
    ratios = report.ratios(results)
    assert ratios == [{"phase": "stat", "target": "api", "baseline": "path:/x", "sweep_value": None,
                       "ratio": 0.25}]
    doc = {"results": results, "compare": ratios, "harness_vs_bare": [], "config": {"sweep": None}}
    text = report.table(doc)
    assert "api / path:/x: 0.250" in text and "(readdir)" in text and "first error: boom" in text
