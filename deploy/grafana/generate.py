"""Regenerate the dashboards: ``python deploy/grafana/generate.py [--check]``.

The generator lives in ``services/projection/dashboards.py`` (next to the metrics it
queries); this script is a shortcut to it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.projection.dashboards import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
