"""The service process's garbage collector (shared.http.tune_gc, called by serve): startup's objects frozen once
the lifespan has started, the youngest generation collected every GC_GEN0_THRESHOLD allocations."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shared.http import GC_GEN0_THRESHOLD, tune_gc


async def test_startup_objects_are_frozen_after_the_lifespan_started_and_gen0_is_rarer():
    seen: dict[str, int] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        seen["frozen_during_startup"] = gc.get_freeze_count()
        app.state.built = [object() for _ in range(10)]  # what a service's startup builds
        yield

    app = FastAPI(lifespan=lifespan)
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        tune_gc(app)
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *threshold[1:])
        async with app.router.lifespan_context(app):
            assert seen["frozen_during_startup"] == 0  # the service's own startup ran first
            assert gc.get_freeze_count() > 0  # then what it built was frozen, before the first request
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
