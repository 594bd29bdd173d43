"""``python -m bench [area ...]``: run the benchmarks of the areas named, or all of them."""
from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def areas() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name not in ("common",)
                  and not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    chosen = argv or areas()
    unknown = set(chosen) - set(areas())
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(areas())}")
        return 2
    for area in chosen:
        print(f"\n== bench {area} ==", flush=True)
        started = time.monotonic()
        run = importlib.import_module(f"bench.{area}").main
        result = run()
        if inspect.iscoroutine(result):
            asyncio.run(result)
        print(f"== bench {area}: {time.monotonic() - started:.1f} s ==", flush=True)
    from bench.common import AIMS, aims_table

    if AIMS:  # every aim measured in this run, each with its raw figure from the same run
        print(f"\n== aims ==\n{aims_table(AIMS)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
