"""Wake long-polls when an attachment's state changes, from Postgres LISTEN/NOTIFY.

One listening connection per process (app.listen), shared by every waiting request; the
trigger in migration 0002 notifies on commit of any state change, whichever process made it.
The same connection carries the other channels the process waits on (``extra_channels``:
the event feed's).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from uuid import UUID

from app.listen import Notifications

CHANNEL = "stowage_attachment_state"


class StateWatcher(Notifications):
    def __init__(self, dsn: str, extra_channels: Iterable[str] = ()) -> None:
        super().__init__(dsn, (CHANNEL, *extra_channels))

    @contextlib.contextmanager
    def subscribe(self, att_id: UUID) -> Iterator[asyncio.Future[None]]:
        with self.subscribe_to(CHANNEL, att_id) as fut:
            yield fut
