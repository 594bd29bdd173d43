"""``python -m bench [--doc PATH] [area ...]``: run the benchmarks of the areas named, or all of them; print each
area's elapsed time, then every aim measured (issues 18, 15, 16) with its raw baseline, ratio and PASS/FAIL.

``--doc docs/benchmarks.md`` (or ``CHANGAI_BENCH_DOC``) also writes that page's head from the run: date, machine,
load, the aims table. An area that fails is reported and the others still run (exit status 1).

The sizes are the issues' own; what bounds the whole run (≤ 45 minutes on a quiet 2-core machine) are the
time caps: ``CHANGAI_BENCH_NOTIFIER_MAX_S`` (each notifier fairness scenario's trickle, default 180 s),
``CHANGAI_BENCH_REPLAY_MAX_S`` (the full-scale demo, default 600 s), and each area's own settings.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The order `make bench` runs them: the short ones first, the whole-stack replay last.
ORDER = ("platform", "funding", "intake", "membership", "training", "projection", "notifier", "replay")


def areas() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name != "common" and not m.name.startswith("_")}
    # an area not in ORDER yet runs before the replay, which stays last (it starts the whole stack)
    return [a for a in ORDER[:-1] if a in found] + sorted(found - set(ORDER)) + [a for a in ORDER[-1:] if a in found]


def parse(argv: list[str]) -> tuple[list[str], str | None]:
    doc, chosen, rest = os.environ.get("CHANGAI_BENCH_DOC") or None, [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--doc":
            if not rest:
                raise SystemExit("--doc needs a path")
            doc = rest.pop(0)
        elif arg.startswith("--doc="):
            doc = arg.split("=", 1)[1]
        else:
            chosen.append(arg)
    return chosen, doc


def main(argv: list[str]) -> int:
    from bench import _report
    from bench.common import AIMS, CURRENT_AREA, aims_table

    chosen, doc = parse(argv)
    chosen = chosen or areas()
    unknown = set(chosen) - set(areas())
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(areas())}")
        return 2
    started_at = _report.now_utc()
    runs: list[_report.AreaRun] = []
    for area in chosen:
        print(f"\n== bench {area} == (load average {os.getloadavg()[0]:.1f})", flush=True)
        started, load0 = time.monotonic(), os.getloadavg()[0]
        CURRENT_AREA[0] = area
        error = ""
        try:
            result = importlib.import_module(f"bench.{area}").main()
            if inspect.iscoroutine(result):
                asyncio.run(result)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - one area's failure is reported; the others still run
            traceback.print_exc()
            error = f"failed: {exc.__class__.__name__}: {str(exc)[:160]}"
        runs.append(_report.AreaRun(area, time.monotonic() - started, load0, os.getloadavg()[0], error))
        print(f"== bench {area}: {runs[-1].seconds:.1f} s{' (' + error + ')' if error else ''} ==", flush=True)
    CURRENT_AREA[0] = ""
    print(
        f"\n== elapsed per area ==\n{_report.areas_table(runs)}\ntotal {sum(r.seconds for r in runs) / 60:.1f} min",
        flush=True,
    )
    if AIMS:  # every aim measured in this run, each with its raw figure from the same run
        print(f"\n== aims ==\n{aims_table(AIMS)}", flush=True)
    if doc:
        command = "python -m bench" + ("" if chosen == areas() else " " + " ".join(chosen))
        section = _report.latest_section(AIMS, runs, _report.machine(), started_at, _report.now_utc(), command)
        _report.write_doc(Path(doc), section)
        print(f"wrote the latest measurement to {doc}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
