"""The API in one uvicorn process (as ``throttler serve --workers 1`` runs it), profiled.

``python -m bench.profserve --port P --out DIR``: SIGUSR1 starts a cProfile session, SIGUSR2
stops it and writes ``DIR/profile-<n>.prof`` (n = 1, 2, ...). Only the main thread is
profiled, which is where uvicorn runs the event loop and the whole app.
"""

from __future__ import annotations

import argparse
import cProfile
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profserve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    profiles: list[cProfile.Profile] = []  # the session running, if any
    written = [0]

    def start(signum: int, frame: FrameType | None) -> None:
        profile = cProfile.Profile()
        profiles[:] = [profile]
        profile.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        for profile in profiles:
            profile.disable()
            written[0] += 1
            partial = out / f"profile-{written[0]}.tmp"
            profile.dump_stats(partial)
            partial.rename(out / f"profile-{written[0]}.prof")  # appears whole
        profiles.clear()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)

    import uvicorn

    # The same options as throttler.cli._serve uses for one process.
    uvicorn.run(
        "throttler.cli:app_factory",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
