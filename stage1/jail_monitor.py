"""The FreeBSD app monitor: a host process that runs an app's handlers and the app, each through
the helper that attaches to the app's jail (jail_attach.py) and execs with the plan's credentials.

Started by jail.py in a fresh interpreter; it detaches (so a new supervisor can adopt it), reports
``pid``/``ready`` on its report pipe like the Linux monitor, and writes the app's status file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from jetpack.stage2.enter import helper_launcher
from jetpack.stage2.executor import Executor, Output, RotatingLog, write_status
from jetpack.stage2.plan import ExecPlan
from jetpack.stage2.status import ExitStatus


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    except OSError:
        pass


def main(argv: list[str]) -> int:
    launch_path, report_fd, go_fd = argv[0], int(argv[1]), int(argv[2])
    launch = json.loads(Path(launch_path).read_text())
    plan = ExecPlan.from_json(launch["plan"])
    status_fd = os.open(launch["status_path"], os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                        0o640)
    pid = os.fork()
    if pid:
        _report(report_fd, f"pid {pid}")
        return 0
    code = 127
    try:
        stdio = launch.get("stdio")
        if stdio is None:
            log_dir = os.open(launch["log_dir"], os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
            output = Output.to_log(RotatingLog(log_dir, launch["log_name"],
                                               launch["log_max_bytes"]))
        else:
            output = Output(stdio["stdin"], stdio["stdout"], stdio["stderr"])
        launcher = helper_launcher(launch["helper"], {"attach": launch["attach"],
                                                      "jid": launch["jid"]})
        executor = Executor(plan, launcher, output)
        _report(report_fd, "ready")
        os.close(report_fd)
        if not os.read(go_fd, 1):
            write_status(status_fd, ExitStatus(code=127, failed="cancelled"))
            return 127
        os.close(go_fd)
        status = executor.run()
        write_status(status_fd, status)
        code = status.code if status.code is not None else 128 + (status.signal or 0)
    finally:
        os._exit(code)  # never return into the caller's stack in a forked child


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
