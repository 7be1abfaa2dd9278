"""``status POD`` (alias ``inspect POD``): one pod in full, from the store (no supervisor
needed): its state and times, network, volumes, and each app's image, process, command and
mounts; ``--json`` for scripts."""

from __future__ import annotations

import json
from typing import Any

from jetpack.cli.context import Context
from jetpack.cli.podview import STATE_COLOURS, age


def pod_details(ctx: Context, ref: str) -> dict[str, Any]:
    """The pod named ``ref`` (UUID, unique prefix or name) as ``status POD --json`` prints it:
    ``list --json``'s object, with ``network``, ``volumes``, ``annotations``, ``limits`` and
    each app's ``image_name``, ``pid``, ``exec``, ``user``, ``group``, ``working_directory``,
    ``environment`` and ``mounts`` added."""
    from jetpack.store.pods import PodStore

    pod = PodStore(ctx.state).resolve(ref)
    options = pod.options.to_json()
    names = {row["id"]: row["name"] for row in ctx.state.query(
        "SELECT id, name FROM images WHERE id IN (SELECT image_id FROM apps WHERE pod_uuid = ?)",
        (pod.uuid,))}
    manifest = json.loads(pod.manifest)
    volumes = manifest.get("volumes") or []
    obj = pod.to_json_obj()
    obj["network"] = {"ip": pod.ip, "ports": options["ports"]}
    obj["volumes"] = volumes
    obj["annotations"] = options["sandbox"]["annotations"]
    obj["limits"] = options["limits"]
    obj["tty"] = options["tty"]
    apps = []
    for app, shown in zip(pod.apps, obj["apps"], strict=True):
        spec = json.loads(app.spec) if app.spec else {}
        apps.append(dict(
            shown,
            image_name=names.get(app.image_id),
            pid=app.pid if app.state == "running" else None,
            exec=spec.get("exec", []),
            user=spec.get("user"),
            group=spec.get("group"),
            working_directory=spec.get("working_directory"),
            environment=dict(spec.get("environment") or []),
            mounts=[{"volume": v, "path": p, "read_only": bool(ro)}
                    for v, p, ro in spec.get("mounts") or []],
        ))
    obj["apps"] = apps
    return obj


def show_pod(ctx: Context, ref: str, *, as_json: bool) -> int:
    import shlex

    pod = pod_details(ctx, ref)
    if as_json:
        ctx.print_json(pod)
        return 0
    created = ctx.state.query("SELECT created, started, exited FROM pods WHERE uuid = ?",
                              (pod["uuid"],))[0]
    ports = ", ".join(f"{p['name']}:{p['host_ip'] + ':' if p['host_ip'] else ''}"
                      f"{p['host_port']}->{p['pod_port']}/{p['protocol']}"
                      for p in pod["network"]["ports"])
    volumes = ", ".join(
        f"{v['name']} ({v['kind']}" + (f" {v['source']}" if v.get("source") else "")
        + (", read-only" if v.get("readOnly") else "") + ")"
        for v in pod["volumes"])
    lines: list[tuple[str, str, str | None]] = [
        ("uuid", pod["uuid"], None),
        ("name", pod["name"], None),
        ("state", pod["state"], STATE_COLOURS.get(pod["state"])),
        ("ip", pod["ip"] or "-", None),
        ("ports", ports or "-", None),
        ("volumes", volumes or "-", None),
        ("restart", pod["restart"], None),
        ("boot", f"yes (priority {pod['priority']})" if pod["boot"] else "no", None),
    ]
    for key in ("created", "started", "exited"):
        stamp = created[key]
        lines.append((key, "-" if stamp is None else f"{pod[key]} ({age(stamp)})", None))
    for key, value, colour in lines:
        print(f"{key:<10}{ctx.paint(value, colour)}")
    for app in pod["apps"]:
        status = app["state"]
        if app["exit_status"] is not None:
            status += f", exit status {app['exit_status']}"
        if app["signal"]:
            status += f", signal {app['signal']}"
        if app["pid"]:
            status += f", pid {app['pid']}"
        if app["restarts"]:
            status += f", {app['restarts']} restarts"
        mounts = ", ".join(f"{m['volume']} -> {m['path']}" + (" (ro)" if m["read_only"] else "")
                           for m in app["mounts"])
        print(f"app {ctx.paint(app['name'], 'bold')}")
        for key, value in (("image", f"{app['image_name'] or '?'} ({app['image'][:19]})"),
                           ("state", status),
                           ("exec", shlex.join(app["exec"]) or "-"),
                           ("user", f"{app['user']}:{app['group']}"),
                           ("workdir", app["working_directory"] or "/"),
                           ("mounts", mounts or "-")):
            print(f"  {key:<8}{value}")
    return 0
