"""The systemd readiness protocol (sd_notify): one datagram to ``$NOTIFY_SOCKET``, no library.

The supervisor sends ``READY=1`` once its control socket serves, ``RELOADING=1`` then ``READY=1``
around a SIGHUP reload and ``STOPPING=1`` when its graceful stop begins (docs/service.md).
"""

from __future__ import annotations

import os
import socket

from jetpack.errors import SupervisorError

# How long a send may wait when the service manager's queue is full; it reads promptly.
SEND_TIMEOUT = 5.0


def notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` (``KEY=VALUE`` lines) to the service manager.

    True once it is sent; False when no service manager asked for it (``$NOTIFY_SOCKET`` unset,
    as under rc.d or in a terminal). Raises ``SupervisorError`` when the socket named cannot take
    it. A blocking call (a local datagram, normally instant): from trio, use
    ``trio.to_thread.run_sync``.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        # Linux abstract namespace, spelled with a leading "@" by systemd.
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        raise SupervisorError(
            f"NOTIFY_SOCKET={address!r}: only unix socket paths and @abstract names are supported"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(target)
            sock.sendall(message.encode())
        except OSError as error:
            raise SupervisorError(
                f"cannot notify the service manager at {address}: {error.strerror or error}"
            ) from error
    return True
