"""A pod that cannot start, end to end with the real runtime: ``start``, ``run`` and
``restart`` exit 1 with the reason, the pod is recorded failed, and the supervisor goes on."""

from __future__ import annotations

import shutil

from podhost import Host


def test_vanished_host_volume_fails_start_and_run_with_the_reason(host: Host) -> None:
    source = host.tmp / "data-source"
    source.mkdir()
    (source / "hello").write_text("from the host\n")
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--name", "orphan", "-v",
                  f"data,kind=host,source={source}", "-m", "data:/data",
                  "--exec", "/bin/cat /data/hello").stdout.split()[-1]
    shutil.rmtree(source)  # after prepare: only the start can notice

    for command in ("start", "run", "restart"):
        out = host.jp(command, pod, check=False)
        assert out.returncode == 1, (command, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert lines[0].startswith("jetpack: pod orphan failed to start: "), (command, lines)
        assert str(source) in lines[0], (command, lines)
        assert "Traceback" not in out.stderr
        assert host.pod(pod)["state"] == "failed"
        failed = [e for e in host.events(pod) if e["type"] == "pod.failed"]
        assert str(source) in str(failed[-1]["reason"])
        assert "\n" not in str(failed[-1]["reason"])

    # the supervisor still serves: another pod starts, runs and exits normally
    out = host.jp("run", "--rm", "example.com/busybox", "--exec", "/bin/sh -c 'echo fine'",
                  check=False)
    assert (out.returncode, out.stdout.strip()) == (0, "fine"), out.stderr
    assert host.daemon is not None
    assert host.daemon.poll() is None
