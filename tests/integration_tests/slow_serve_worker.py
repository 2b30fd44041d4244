"""`tmo-graph serve` whose services take a while to load (fakes, no model), to test the cold
start: requests that come while they load, and a load that fails.

python slow_serve_worker.py ok|fail DELAY_S MARKER_DIR -- SERVE ARGS...

The fake load writes ``MARKER_DIR/loading`` when it begins and ``MARKER_DIR/loaded`` when it
ends (``ok``); ``fail`` raises the error a missing model folder gives instead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tmo_graph.services  # noqa: E402
from tests.unit_tests.fakes import FakeLocal, fake_services  # noqa: E402
from tmo_graph.cli.app import app  # noqa: E402
from tmo_graph.errors import TmoGraphError  # noqa: E402
from tmo_graph.services import Services  # noqa: E402
from tmo_graph.settings import Settings  # noqa: E402

ANSWER = "hello from the slow fake"
FAILURE = TmoGraphError(
    "local.source /nowhere/model is not a model folder", "set local.source to a model folder"
)


def main(mode: str, delay_s: str, markers: str, *serve_args: str) -> None:
    folder = Path(markers)

    def slow_build(settings: Settings) -> Services:
        (folder / "loading").write_text("")
        time.sleep(float(delay_s))
        if mode == "fail":
            raise FAILURE
        services = fake_services(folder, FakeLocal([ANSWER]), settings=settings)
        (folder / "loaded").write_text("")
        return services

    tmo_graph.services.build_services = slow_build  # serve imports it when it loads
    sys.argv = ["tmo-graph", *serve_args]
    app()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*args[: args.index("--")], *args[args.index("--") + 1 :])
