"""systemd's notify protocol, spoken by the supervisor itself.

``READY=1`` once storage and the services are up, ``STATUS=`` a line ``systemctl status``
shows, ``STOPPING=1`` on SIGTERM, and ``WATCHDOG=1`` from the event loop: a loop that
hangs stops pinging, and systemd (``WatchdogSec=``) kills and restarts the service.
Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket


def notify(**fields: str | int) -> bool:
    """Send ``KEY=value`` lines (``notify(READY=1, STATUS="...")``); False outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between two pings (half of ``WatchdogSec``), if systemd watches us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


async def keep_watchdog_fed(interval: float) -> None:
    """Ping from the event loop itself: only a loop that runs keeps the service alive."""
    while True:
        notify(WATCHDOG=1)
        await asyncio.sleep(interval)
