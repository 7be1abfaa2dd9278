"""The long fuzzing run of one target of tests/fuzz_targets.py; what breaks is written to a
crashers directory (each input once per distinct failure).

Not a test. Run as root (the ACI target sets owners), from the repository:
    PYTHONPATH=. python bench/fuzz.py --target aci --seconds 300 [--engine atheris]
Targets: aci, manifest, config, discovery, mds, api. Engines: ``atheris`` (coverage-guided,
libFuzzer; seeded from tests/fuzz_corpus/TARGET, its growing corpus kept in the work
directory, never in the repository) or ``hypothesis`` (structured inputs, random seeds, every
failure recorded and the run continued). The default is atheris for the byte-shaped targets
(aci, manifest, config) and hypothesis for the structured ones (discovery, mds, api).
A crasher replays with ``--replay FILE``; turn each into a test_fuzz_regression_... test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

BYTE_TARGETS = ("aci", "manifest", "config")


def as_bytes(value: Any) -> bytes:
    """A structured input in the form ``check_bytes`` reads back."""
    import fuzz_targets as ft

    if isinstance(value, bytes):
        return value
    if isinstance(value, ft.AciInput):
        return value.to_bytes()
    if isinstance(value, tuple) and isinstance(value[0], ft.AsgiInput):
        value = value[0]
    if isinstance(value, ft.AsgiInput):
        obj = asdict(value)
        obj["query"] = value.query.decode("latin-1")
        obj["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in value.headers]
        obj["messages"] = [{**m, **({"body": m["body"].decode("latin-1")}
                                    if isinstance(m.get("body"), bytes) else {})}
                           for m in value.messages if not isinstance(m.get("bytes"), bytes)]
        return json.dumps(obj, indent=1).encode()
    if isinstance(value, list) and all(isinstance(p, ft.Page) for p in value):
        return json.dumps([{"status": p.status, "body": p.body.decode("utf-8", "replace"),
                            "content_type": p.content_type, "location": p.location}
                           for p in value], indent=1).encode()
    return repr(value).encode()


class Recorder:
    """Distinct failures (exception type and first line), each input written once."""

    def __init__(self, crashers: Path) -> None:
        self.crashers = crashers
        self.seen: dict[str, int] = {}
        self.runs = 0

    def record(self, value: Any, exc: BaseException) -> None:
        key = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] > 1:
            return
        data = as_bytes(value)
        name = hashlib.sha1(data).hexdigest()[:16]  # a file name, not security
        self.crashers.mkdir(parents=True, exist_ok=True)
        (self.crashers / f"crash-{name}").write_bytes(data)
        (self.crashers / f"crash-{name}.txt").write_text(
            f"{key}\n\n{repr(value)[:4000]}\n\n"
            + "".join(traceback.format_exception(exc)))
        print(f"NEW FAILURE {key} -> {self.crashers / f'crash-{name}'}", flush=True)


def run_hypothesis(target: Any, seconds: float, recorder: Recorder) -> None:
    from hypothesis import HealthCheck, given, settings

    deadline = time.monotonic() + seconds
    seed = 0
    while time.monotonic() < deadline:
        seed += 1

        @settings(max_examples=100, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck), print_blob=False)
        @given(target.strategy())
        def one(value: Any) -> None:
            if time.monotonic() > deadline:
                return
            recorder.runs += 1
            try:
                target.check(value)
            except Exception as exc:  # noqa: BLE001  # every failure is recorded, run goes on
                recorder.record(value, exc)

        one()
        print(f"{recorder.runs} inputs, {len(recorder.seen)} distinct failures", flush=True)


def run_atheris(target: Any, name: str, seconds: float, recorder: Recorder, work: Path
                ) -> None:
    import atheris
    import fuzz_targets as ft

    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in (ft.CORPUS / name).iterdir():
        shutil.copy(seed, corpus / seed.name)

    def one(data: bytes) -> None:
        recorder.runs += 1
        try:
            target.check_bytes(data)
        except Exception as exc:  # noqa: BLE001  # recorded; libFuzzer goes on
            recorder.record(data, exc)

    atheris.Setup([sys.argv[0], str(corpus), f"-max_total_time={int(seconds)}",
                   f"-artifact_prefix={recorder.crashers}/", "-rss_limit_mb=2048",
                   "-timeout=30", "-print_final_stats=1"], one)
    try:
        atheris.Fuzz()
    except SystemExit:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True,
                        choices=["aci", "manifest", "config", "discovery", "mds", "api"])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--engine", choices=["atheris", "hypothesis"])
    parser.add_argument("--crashers", type=Path, default=Path("/tmp/jetpack-fuzz/crashers"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jetpack-fuzz"))
    parser.add_argument("--replay", type=Path, help="check one saved input and exit")
    args = parser.parse_args()
    engine = args.engine or ("atheris" if args.target in BYTE_TARGETS else "hypothesis")
    if engine == "atheris" and args.replay is None:
        import atheris

        # coverage of jetpack and tarfile only: instrumenting everything takes minutes
        with atheris.instrument_imports(include=["jetpack", "tarfile"]):
            import fuzz_targets as ft
    else:
        import fuzz_targets as ft
    base = ft.temporary_base()
    try:
        target = ft.make_targets(base)[args.target]
        if args.replay is not None:
            target.check_bytes(args.replay.read_bytes())
            print("no property broken")
            return
        from hypothesis import configuration

        configuration.set_hypothesis_home_dir(str(args.workdir / "hypothesis"))  # not the tree
        recorder = Recorder(args.crashers / args.target)
        recorder.crashers.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if engine == "atheris":
            run_atheris(target, args.target, args.seconds, recorder, args.workdir / args.target)
        else:
            run_hypothesis(target, args.seconds, recorder)
        print(f"\n{args.target} ({engine}): {recorder.runs} inputs in "
              f"{time.monotonic() - started:.0f} s, {len(recorder.seen)} distinct failures")
        for key, count in sorted(recorder.seen.items()):
            print(f"  {count:6d}  {key}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
