"""A plain script (a cron job, a one-off): no event loop, no `async def`.

    aiotask worker -A examples.web_tasks:app &     # in another terminal
    python -m examples.script 2 3

`add.delay(...)` sends on aiotask's own loop thread (see docs/sync.md) and returns a
SyncResult whose `get()` blocks. Connections close when the script exits.
"""

from __future__ import annotations

import sys

from examples.web_tasks import add, app


def main(argv: list[str]) -> int:
    x, y = (int(a) for a in argv[:2]) if len(argv) >= 2 else (2, 3)
    r = add.delay(x, y)
    print(f"sent {r.id}")
    print(f"{x} + {y} = {r.get(timeout=30)} ({r.state})")
    # Sending by name, without importing the task, with a per-call option:
    later = app.send_task_sync("examples.add", args=(x, 10), countdown=1)
    print(f"{x} + 10 = {later.get(timeout=30)} (sent by name, ran 1 s later)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
