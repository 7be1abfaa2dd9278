"""The appc schema against the conformance data (tests/data/appc, from appc/spec 0.8.11) and
property tests: round trips are stable and nothing but ValidationError ever escapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetpack.appc import (
    App,
    ImageManifest,
    Isolator,
    PodManifest,
    Quantity,
    parse_annotations,
    parse_environment,
    parse_labels,
    parse_mountpoint_arg,
    parse_volume_arg,
    validate_acidentifier,
    validate_acname,
    validate_date,
    validate_hash,
    validate_url,
    validate_uuid,
)
from jetpack.appc.image import Port
from jetpack.errors import ValidationError

DATA = Path(__file__).parent / "data" / "appc"
VECTORS = json.loads((DATA / "derived" / "go-test-vectors.json").read_text())


def roundtrip(cls: Any, text: str) -> Any:
    first = cls.from_json(text)
    serialized = first.to_json()
    second = cls.from_json(serialized)
    assert second == first
    assert second.to_json() == serialized
    return first


@pytest.mark.parametrize("name", ["image.json", "pod_runtime.json", "pod_template.json"])
def test_examples_parse_and_round_trip(name: str) -> None:
    cls = PodManifest if name.startswith("pod") else ImageManifest
    roundtrip(cls, (DATA / "examples" / name).read_text())


def test_spec_examples_parse_and_round_trip() -> None:
    image = roundtrip(ImageManifest, (DATA / "spec-examples" / "aci.md-image-manifest.json")
                      .read_text())
    assert image.app is not None
    assert image.labels["os"] == "linux"
    pod = roundtrip(PodManifest, (DATA / "spec-examples" / "pods.md-pod-manifest.json")
                    .read_text())
    assert pod.apps


def test_example_details() -> None:
    image = ImageManifest.from_json((DATA / "examples" / "image.json").read_text())
    assert image.name == "example.com/reduce-worker"
    assert image.app is not None
    assert image.app.exec[0].startswith("/")
    template = PodManifest.from_json((DATA / "examples" / "pod_template.json").read_text())
    assert any(app.image.id is None for app in template.apps)


@pytest.mark.parametrize("name", ["image_manifest_main.json.in",
                                  "image_manifest_sidekick.json.in"])
def test_ace_validator_manifests(name: str) -> None:
    text = (DATA / "ace" / name).read_text()
    text = text.replace("@ACI_OS@", "linux").replace("@ACI_ARCH@", "amd64")
    manifest = roundtrip(ImageManifest, text)
    assert manifest.app is not None
    freebsd = text.replace('"linux"', '"freebsd"')
    assert ImageManifest.from_json(freebsd).labels["os"] == "freebsd"


ISOLATOR_EXAMPLES = sorted(p.name for p in (DATA / "spec-examples").glob("ace.md-isolator-*")
                           if "INVALID" not in p.name)


@pytest.mark.parametrize("name", ISOLATOR_EXAMPLES)
def test_spec_isolator_examples(name: str) -> None:
    data = json.loads((DATA / "spec-examples" / name).read_text())
    isolator = Isolator.parse(data, "isolators[0]")
    assert isolator.known
    assert Isolator.parse(isolator.to_dict(), "x") == isolator
    if isolator.name.startswith("resource/"):
        for key in ("request", "limit"):
            if key in isolator.value:
                Quantity(isolator.value[key])


def test_invalid_json_spec_example_is_rejected_cleanly() -> None:
    text = (DATA / "spec-examples" / "ace.md-isolator-selinux-context.INVALID-JSON.json"
            ).read_text()
    manifest = ('{"acKind":"ImageManifest","acVersion":"0.8.11","name":"x","app":{"exec":["/a"],'
                '"user":"0","group":"0","isolators":[' + text + "]}}")
    with pytest.raises(ValidationError, match="not valid JSON"):
        ImageManifest.from_json(manifest)


@pytest.mark.parametrize("case", VECTORS["isolator_unmarshal"]["cases"],
                         ids=lambda c: json.dumps(c.get("json", c.get("raw_text_not_json")))[:60])
def test_isolator_vectors(case: dict[str, Any]) -> None:
    if "raw_text_not_json" in case:
        with pytest.raises(ValidationError):
            ImageManifest.from_json('{"acKind":"ImageManifest","acVersion":"0.8.11","name":"x",'
                                    '"app":{"exec":["/a"],"user":"0","group":"0","isolators":['
                                    + case["raw_text_not_json"] + "]}}")
        return
    if case["valid"]:
        Isolator.parse(case["json"], "isolators[0]")
    else:
        with pytest.raises(ValidationError) as info:
            Isolator.parse(case["json"], "isolators[0]")
        assert info.value.path.startswith("isolators[0]")


@pytest.mark.parametrize("case", VECTORS["labels_unmarshal"]["cases"],
                         ids=lambda c: json.dumps(c["json"])[:60])
def test_label_vectors(case: dict[str, Any]) -> None:
    if case["valid"]:
        labels = parse_labels(case["json"])
        assert list(labels.items()) == [(x["name"], x["value"]) for x in case["json"]]
    else:
        with pytest.raises(ValidationError) as info:
            parse_labels(case["json"])
        assert case["error_prefix"] in str(info.value)


@pytest.mark.parametrize(("fn", "key"), [(validate_acidentifier, "ac_identifier"),
                                         (validate_acname, "ac_name")])
def test_name_vectors(fn: Any, key: str) -> None:
    for value in VECTORS[key]["valid"]:
        assert fn(value, "name") == value
    for value in VECTORS[key]["invalid"]:
        with pytest.raises(ValidationError) as info:
            fn(value, "name")
        assert info.value.path == "name"


def test_environment_vectors() -> None:
    for case in VECTORS["environment"]["cases"]:
        if case["valid"]:
            parse_environment(case["environment"])
        else:
            with pytest.raises(ValidationError, match="environment"):
                parse_environment(case["environment"])


def test_annotation_vectors() -> None:
    for case in VECTORS["annotations"]["cases"]:
        if case["valid"]:
            parse_annotations(case["annotations"])
        else:
            with pytest.raises(ValidationError, match="annotations"):
                parse_annotations(case["annotations"])


def test_semver_uuid_url_hash_date_vectors() -> None:
    for case in VECTORS["semver_json"]["cases"]:
        document = ('{"acKind":"ImageManifest","name":"x","acVersion":' + case["json_text"]
                    + "}")
        if case["valid"]:
            assert ImageManifest.from_json(document).ac_version == json.loads(case["json_text"])
        else:
            with pytest.raises(ValidationError) as info:
                ImageManifest.from_json(document)
            assert info.value.path in ("acVersion", "")
    for case in VECTORS["uuid"]["valid"]:
        assert validate_uuid(case["in"]) == case["canonical"]
    for value in VECTORS["uuid"]["invalid"]:
        with pytest.raises(ValidationError):
            validate_uuid(value)
    for text in VECTORS["url_http_https"]["valid_json"]:
        validate_url(json.loads(text))
    for text in VECTORS["url_http_https"]["invalid_json_text"]:
        with pytest.raises((ValidationError, json.JSONDecodeError)):
            validate_url(json.loads(text))
    for value in VECTORS["hash"]["valid"]:
        validate_hash(value)
    for value in VECTORS["hash"]["invalid"]:
        with pytest.raises(ValidationError):
            validate_hash(value)
    for text in VECTORS["date_rfc3339"]["valid_json"]:
        validate_date(json.loads(text))
    for text in VECTORS["date_rfc3339"]["invalid_json_text"]:
        with pytest.raises((ValidationError, json.JSONDecodeError)):
            validate_date(json.loads(text))


def test_cli_string_vectors() -> None:
    for text in VECTORS["volume_cli_string"]["valid"]:
        volume = parse_volume_arg(text)
        assert volume.name == "foobar"
    for text in VECTORS["volume_cli_string"]["invalid"]:
        with pytest.raises(ValidationError):
            parse_volume_arg(text)
    for text in VECTORS["mountpoint_cli_string"]["valid"]:
        assert parse_mountpoint_arg(text).path == "/tmp"
    for text in VECTORS["mountpoint_cli_string"]["invalid"]:
        with pytest.raises(ValidationError):
            parse_mountpoint_arg(text)


def test_app_vectors_with_go_style_keys() -> None:
    for case in VECTORS["app_unmarshal"]["cases"]:
        try:
            value = json.loads(case["json_text"])
        except json.JSONDecodeError:
            assert not case["valid"]
            continue
        if case["valid"]:
            assert App.parse(value).exec == ("/a",)
        else:
            with pytest.raises(ValidationError):
                App.parse(value)


def test_port_vectors() -> None:
    for case in VECTORS["ports"]["cases"]:
        value = dict(case["port"], name="p", protocol="tcp")
        if case["valid"]:
            Port.parse(value, "ports[0]")
        else:
            with pytest.raises(ValidationError, match=r"ports\[0\]"):
                Port.parse(value, "ports[0]")


BASE = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/app",
        "app": {"exec": ["/bin/app"], "user": "0", "group": "0"}}


@pytest.mark.parametrize(("change", "path"), [
    ({"name": "Example.com"}, "name"),
    ({"acKind": "PodManifest"}, "acKind"),
    ({"acVersion": "1.0"}, "acVersion"),
    ({"app": {"exec": [], "user": "0", "group": "0"}}, "app.exec"),
    ({"app": {"exec": [1], "user": "0", "group": "0"}}, "app.exec[0]"),
    ({"app": {"exec": ["/a"], "group": "0"}}, "app.user"),
    ({"app": {"exec": ["/a"], "user": "0", "group": "0", "workingDirectory": "rel"}},
     "app.workingDirectory"),
    ({"app": {"exec": ["/a"], "user": "0", "group": "0",
              "eventHandlers": [{"name": "pre-stop", "exec": ["/x"]}]}},
     "app.eventHandlers[0].name"),
    ({"labels": [{"name": "os", "value": "plan9"}]}, "labels"),
    ({"dependencies": [{"imageName": "x", "imageID": "md5-1"}]}, "dependencies[0].imageID"),
    ({"app": {"exec": ["/a"], "user": "0", "group": "0",
              "mountPoints": [{"name": "data", "path": "data"}]}}, "app.mountPoints[0].path"),
])
def test_errors_name_the_field(change: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as info:
        ImageManifest.from_json(json.dumps({**BASE, **change}))
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")


def test_keys_are_case_insensitive_and_unknown_keys_ignored() -> None:
    manifest = ImageManifest.from_json(json.dumps({
        "ACKIND": "ImageManifest", "acversion": "0.8.11", "Name": "example.com/x",
        "whatever": {"nested": True},
    }))
    assert manifest.name == "example.com/x"


# --- property tests --------------------------------------------------------------------------

acname = st.from_regex(r"\A[a-z0-9]{1,8}(-[a-z0-9]{1,8}){0,2}\Z")
acid = st.from_regex(r"\A[a-z0-9]{1,8}([./_-][a-z0-9]{1,8}){0,3}\Z")
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
env_name = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.-]{0,10}\Z")
abspath = st.from_regex(r"\A(/[a-z0-9._-]{1,8}){1,4}\Z")


@st.composite
def apps(draw: st.DrawFn) -> dict[str, Any]:
    app: dict[str, Any] = {"exec": [draw(abspath), *draw(st.lists(text, max_size=3))],
                           "user": draw(st.sampled_from(["0", "1000", "user", "/etc"])),
                           "group": draw(st.sampled_from(["0", "100", "users"]))}
    if draw(st.booleans()):
        app["environment"] = [{"name": k, "value": v} for k, v in
                              draw(st.dictionaries(env_name, text, max_size=4)).items()]
    if draw(st.booleans()):
        app["workingDirectory"] = draw(abspath)
    if draw(st.booleans()):
        app["eventHandlers"] = [{"name": "pre-start", "exec": [draw(abspath)]}]
    if draw(st.booleans()):
        names = draw(st.lists(acname, unique=True, max_size=3))
        app["ports"] = [{"name": n, "protocol": "tcp", "port": draw(st.integers(1, 60000))}
                        for n in names]
        app["mountPoints"] = [{"name": n, "path": draw(abspath),
                               "readOnly": draw(st.booleans())} for n in names]
    if draw(st.booleans()):
        app["isolators"] = [
            {"name": "resource/memory", "value": {"limit": f"{draw(st.integers(1, 999))}M"}},
            {"name": "os/linux/no-new-privileges", "value": draw(st.booleans())},
        ]
    return app


@st.composite
def image_manifests(draw: st.DrawFn) -> dict[str, Any]:
    manifest: dict[str, Any] = {"acKind": "ImageManifest", "acVersion": "0.8.11",
                                "name": draw(acid)}
    labels = {"version": draw(st.from_regex(r"\A[0-9]\.[0-9]\Z"))}
    if draw(st.booleans()):
        labels.update(os="linux", arch=draw(st.sampled_from(["amd64", "aarch64", "armv7l"])))
    manifest["labels"] = [{"name": k, "value": v} for k, v in labels.items()]
    if draw(st.booleans()):
        manifest["app"] = draw(apps())
    if draw(st.booleans()):
        manifest["dependencies"] = [{"imageName": draw(acid),
                                     "labels": [{"name": "version", "value": "1.0"}]}]
    if draw(st.booleans()):
        manifest["annotations"] = [{"name": k, "value": v} for k, v in
                                   draw(st.dictionaries(acname, text, max_size=3)).items()]
    if draw(st.booleans()):
        manifest["pathWhitelist"] = draw(st.lists(abspath, max_size=3))
    return manifest


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(image_manifests())
def test_image_manifest_round_trip(data: dict[str, Any]) -> None:
    manifest = ImageManifest.from_json(json.dumps(data))
    again = ImageManifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.to_json() == manifest.to_json()


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(acname, apps()), min_size=1, max_size=3, unique_by=lambda t: t[0]))
def test_pod_manifest_round_trip(entries: list[tuple[str, dict[str, Any]]]) -> None:
    data = {"acKind": "PodManifest", "acVersion": "0.8.11",
            "apps": [{"name": n, "image": {"name": "example.com/x", "id": "sha512-" + "a" * 128},
                      "app": a} for n, a in entries],
            "volumes": [{"name": "data", "kind": "empty", "mode": "0700", "uid": 0, "gid": 0}],
            "ports": [{"name": "http", "hostPort": 8080}]}
    manifest = PodManifest.from_json(json.dumps(data))
    assert PodManifest.from_json(manifest.to_json()) == manifest


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["acKind", "acVersion", "name", "app", "exec", "user",
                                       "group", "labels", "apps", "image", "id", "value",
                                       "isolators", "volumes", "kind", "dependencies", "x"]),
                      children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_only_validation_errors(value: Any) -> None:
    for cls in (ImageManifest, PodManifest):
        try:
            cls.from_json(json.dumps(value))
        except ValidationError:
            pass
        document = {"acKind": cls.__name__, "acVersion": "0.8.11", "name": "x", "apps": [],
                    **(value if isinstance(value, dict) else {"app": value})}
        try:
            cls.from_json(json.dumps(document))
        except ValidationError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_validation_errors(data: bytes) -> None:
    for cls in (ImageManifest, PodManifest):
        try:
            cls.from_json(data)
        except ValidationError:
            pass


def test_hostile_documents() -> None:
    with pytest.raises(ValidationError):
        ImageManifest.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValidationError):
        ImageManifest.from_json(b"\xff\xfe")
    with pytest.raises(ValidationError):
        ImageManifest.from_json('{"acKind":"ImageManifest","acVersion":"0.8.11","name":"x",'
                                '"app":{"exec":["/a"],"user":"0","group":"0","isolators":'
                                '[{"name":"resource/memory","value":{"limit":"1e999999999"}}]}}')
