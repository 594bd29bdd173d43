"""The benchmarks' aims table (bench/common.py) and the writer of docs/benchmarks.md's head (bench/_report.py): the
pure parts — rows, ratios, pass/fail, the Markdown, the page kept below the marker — without running a benchmark."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench import __main__ as bench_main
from bench import _report
from bench.common import AIMS, CURRENT_AREA, Aim, aim, aims_markdown, aims_table, ratio_of, single_write_met


@pytest.fixture(autouse=True)
def _no_rows_left():
    del AIMS[:]
    CURRENT_AREA[0] = "funding"
    yield
    del AIMS[:]
    CURRENT_AREA[0] = ""


def test_a_rate_row_has_figure_raw_ratio_and_its_area():
    row = aim("funding payment, 50 clients", 250.0, 80.25, 1000.0, 12.5, "≥ 1,000/s, p99 ≤ 50 ms", False, "3.1")
    assert row.cells() == (
        "funding payment, 50 clients",
        "250/s",
        "80.2",
        "1,000/s",
        "12.5",
        "0.25",
        "≥ 1,000/s, p99 ≤ 50 ms",
        "FAIL",
        "3.1",
    )
    assert row.area == "funding" and [row] == AIMS


def test_a_time_rows_ratio_is_raw_time_over_time_and_texts_can_be_given():
    row = aim(
        "import", 40.0, None, 1.0, None, "< 20 s", False, "2.0", " s", figure="40.0 s, RSS 210 MiB", raw="COPY 1.00 s"
    )
    assert (row.figure, row.raw, row.ratio, row.p99) == ("40.0 s, RSS 210 MiB", "COPY 1.00 s", "0.03", "")
    assert aim("x", 10.0, None, None, None, "< 10 s", False, "1").ratio == ""  # no raw named: no ratio


@pytest.mark.parametrize(
    "value, raw, unit, expected",
    [
        (500.0, 1000.0, "/s", "0.50"),
        (20.0, 2.0, " s", "0.10"),
        (0.0, 5.0, "/s", ""),
        (5.0, None, "/s", ""),
        (float("nan"), 5.0, "/s", ""),
    ],
)
def test_ratio_is_the_share_of_raw_speed(value, raw, unit, expected):
    assert ratio_of(value, raw, unit) == expected


@pytest.mark.parametrize(
    "rate, p99, others, met",
    [
        (1000.0, 50.0, None, True),
        (999.9, 10.0, None, False),
        (5000.0, 50.1, None, False),
        (1500.0, 20.0, {500: 1}, False),
        (1500.0, 20.0, {}, True),
    ],
)
def test_single_write_aim_needs_rate_latency_and_no_other_answer(rate, p99, others, met):
    assert single_write_met(rate, p99, others) is met


def test_tables_print_every_column_and_pass_or_fail():
    rows = [
        aim("a | b", 1200.0, 40.0, 2400.0, 20.0, "≥ 1,000/s", True, "1.0"),
        aim("c", 3.0, None, None, None, "< 1 s", False, "9.9", " s"),
    ]
    text = aims_table(rows).splitlines()
    assert text[0].split()[:2] == ["aim", "figure"] and "PASS" in text[2] and "FAIL" in text[3]
    md = aims_markdown(rows).splitlines()
    assert md[0] == "| area | aim | figure | p99 ms | raw same run | raw p99 ms | ratio | target | met | load |"
    assert md[2] == "| funding | a \\| b | 1,200/s | 40.0 | 2,400/s | 20.0 | 0.50 | ≥ 1,000/s | PASS | 1.0 |"
    assert md[3].endswith("| < 1 s | **FAIL** | 9.9 |")
    assert all(line.count(" | ") == md[0].count(" | ") for line in md if not line.startswith("|---"))


def test_a_smaller_run_is_neither_met_nor_failed():
    row = aim("import of 2,000", 3.0, None, 0.2, None, "< 20 s", True, "1.0", " s", sized=False)
    assert row.cells()[7] == "n/a: smaller run" and "| n/a: smaller run |" in aims_markdown([row])
    text = _report.latest_section(
        [row, aim("x", 1.0, None, None, None, "< 2 s", True, "1", " s")],
        [],
        host(),
        datetime(2026, 12, 8, tzinfo=UTC),
        datetime(2026, 12, 8, tzinfo=UTC),
        "python -m bench",
    )
    assert "1 of 1 aims met (1 more measured at a smaller size)" in text


def host() -> _report.Machine:
    return _report.Machine(2, "AMD EPYC 7B13", 23.5, "3.11.9", "4.3.1", "15.10", "Linux 6.1")


def test_machine_figures_from_proc_files():
    assert _report.cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert _report.cpu_model("") == "unknown model"
    assert _report.pg_version_of("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n") == "15.18"
    assert _report.ram_gib("MemTotal:       24641536 kB\nMemFree: 1 kB\n") == pytest.approx(23.5, abs=0.01)


def section() -> str:
    rows = [Aim("membership join", "900/s", "60.0", "1,000/s", "40.0", "0.90", "≥ 1,000/s", False, "2.0", "membership")]
    runs = [_report.AreaRun("membership", 125.0, 1.5, 2.5), _report.AreaRun("notifier", 30.0, 2.0, 2.0, "failed: X")]
    return _report.latest_section(
        rows,
        runs,
        host(),
        datetime(2026, 12, 8, 1, 2, tzinfo=UTC),
        datetime(2026, 12, 8, 1, 40, tzinfo=UTC),
        "python -m bench",
    )


def test_the_latest_section_has_date_machine_load_aims_and_areas():
    text = section()
    assert text.startswith("## Latest measurement\n")
    assert "**2026-12-08 01:02–01:40 UTC**" in text and "`python -m bench` (3 min)" in text
    assert "2 cores (AMD EPYC 7B13), 24 GiB RAM, Linux 6.1; Python 3.11.9, Kafka 4.3.1, PostgreSQL 15.10" in text
    assert "0 of 1 aims met" in text
    assert (
        "| membership | membership join | 900/s | 60.0 | 1,000/s | 40.0 | 0.90 | ≥ 1,000/s | **FAIL** | 2.0 |" in text
    )
    assert "| membership | 125 s | 1.5–2.5 | ok |" in text and "| notifier | 30 s | 2.0–2.0 | failed: X |" in text


def test_the_doc_writer_replaces_a_diary_and_keeps_notes_below_its_marker(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Measured figures\n\n| area | figure |\n|---|---|\n| old | diary row |\n", encoding="utf-8")
    _report.write_doc(page, section())
    first = page.read_text(encoding="utf-8")
    assert "diary row" not in first and "## Latest measurement" in first and "(../README.md)" in first
    assert first.index("## Latest measurement") < first.index(_report.GENERATED_END) < first.index("[membership.md]")

    page.write_text(
        first.replace("## Reading the figures", "## Notes by hand\n\nkept.\n\n## Reading the figures"), encoding="utf-8"
    )
    _report.write_doc(page, section().replace("0 of 1", "1 of 1"))
    second = page.read_text(encoding="utf-8")
    assert "1 of 1 aims met" in second and "0 of 1" not in second
    assert "## Notes by hand\n\nkept." in second and second.count(_report.GENERATED_END) == 1
    assert second.count("## Latest measurement") == 1


def test_the_command_line_takes_doc_and_areas(monkeypatch):
    monkeypatch.delenv("CHANGAI_BENCH_DOC", raising=False)
    assert bench_main.parse(["--doc", "docs/benchmarks.md", "funding", "intake"]) == (
        ["funding", "intake"],
        "docs/benchmarks.md",
    )
    assert bench_main.parse(["--doc=x.md"]) == ([], "x.md")
    monkeypatch.setenv("CHANGAI_BENCH_DOC", "y.md")
    assert bench_main.parse([]) == ([], "y.md")
    assert bench_main.areas()[0] == "platform" and bench_main.areas()[-1] == "replay"
    assert "common" not in bench_main.areas() and "_report" not in bench_main.areas()
