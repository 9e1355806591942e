from __future__ import annotations

from throttler.cli import main

raise SystemExit(main())
