"""The dashboard in a real headless browser (Debian's chromium through chromedriver and selenium)
against a real supervisor running real pods: what it shows, that it follows the event stream
without a reload, that its buttons act, and what a page on another origin cannot make it do."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from podhost import Host

pytestmark = [pytest.mark.root, pytest.mark.busybox, pytest.mark.slow]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,860")
SCREENSHOT_ENV = "JETPACK_DASHBOARD_SCREENSHOT"
"""Set to a path (docs/dashboard.png) to keep the screenshot the first test takes."""


@contextlib.contextmanager
def open_browser(tmp_path: Path, *flags: str) -> Iterator[Any]:
    """Headless chromium with a fresh profile, driven through chromedriver."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    require(chromium is not None and driver is not None,
            "chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in (*CHROMIUM_FLAGS, *flags):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    session = webdriver.Chrome(service=Service(str(driver)), options=options)
    session.set_page_load_timeout(60)
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with open_browser(tmp_path) as session:
        yield session


def start_with_listener(host: Host, scheme: str = "http") -> str:
    """Start the supervisor with a loopback listener on a free port; the dashboard's URL."""
    with host.jp.conf.open("a") as conf:
        conf.write("http.listen = 127.0.0.1:0\n")
    host.start()
    url = host.jp("dashboard").stdout.splitlines()[-1]
    assert url.startswith(f"{scheme}://127.0.0.1:")
    assert "/ui/?token=" in url
    return url


def sleeper(host: Host, name: str, message: str = "") -> str:
    """A started pod that prints ``message`` and sleeps; its UUID."""
    uuid = host.jp("prepare", "--name", name, "example.com/busybox", "--exec",
                   f"/bin/sh -c 'echo {message or name} up; exec sleep 600'").stdout.split()[-1]
    host.jp("start", name)
    return uuid


def until(browser: Any, what: str, check: Callable[[Any], Any], timeout: float = 30) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A pod that appears re-renders its row once: a reference may go stale in between.
    return WebDriverWait(browser, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException]
                         ).until(check, message=what)


def row(browser: Any, name: str, state: str | None = None) -> Any:
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.CSS_SELECTOR, f'#pods tr[data-name="{name}"]')
    if not found or (state is not None and found[0].get_attribute("data-state") != state):
        return None
    return found[0]


def test_dashboard_shows_pods_follows_the_cli_and_stops_a_pod(
    host: Host, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    url = start_with_listener(host)
    web = sleeper(host, "web", "hello from web")
    browser.get(url)
    # the token went into a cookie the page's scripts cannot read, and out of the address bar
    base = url.partition("/ui/")[0]
    assert browser.current_url == f"{base}/ui/"
    assert browser.execute_script("return document.cookie") == ""
    web_row = until(browser, "the running pod", lambda b: row(b, "web", "running"))
    cells = {cell.get_attribute("class"): cell.text
             for cell in web_row.find_elements(By.TAG_NAME, "td")}
    assert cells["ip"] == host.pod("web")["ip"]
    assert cells["uuid"] == web[:8]
    assert cells["apps"] == "busybox: running"
    assert cells["restarts"] == "0"
    assert cells["memory"].endswith(("KiB", "MiB"))  # the pod's memory cgroup, read live
    until(browser, "an uptime", lambda b: row(b, "web").find_element(
        By.CSS_SELECTOR, "td.uptime").text.endswith("s"))
    assert until(browser, "the connection", lambda b: b.find_element(
        By.ID, "connection").text == "live")

    # A pod started from the CLI appears without a reload (the websocket carries its events).
    page = browser.execute_script("return window.performance.timeOrigin")
    late = sleeper(host, "late")
    until(browser, "the pod started from the CLI", lambda b: row(b, "late", "running"))
    assert browser.execute_script("return window.performance.timeOrigin") == page

    # The stop button stops it: the CLI sees it, and the page follows.
    row(browser, "late").find_element(By.CSS_SELECTOR, 'button[data-action="stop"]').click()
    host.wait_for("the pod stopped by the button", lambda: host.pod(late)["state"] == "exited")
    until(browser, "the stopped pod", lambda b: row(b, "late", "exited"))
    assert host.pod("web")["state"] == "running"
    until(browser, "pod.exited in the feed", lambda b: any(
        item.get_attribute("data-type") == "pod.exited" and "late" in item.text
        for item in b.find_elements(By.CSS_SELECTOR, "#events li")))

    # A pod's log tail.
    row(browser, "web").find_element(By.CSS_SELECTOR, 'button[data-action="logs"]').click()
    until(browser, "the log tail", lambda b: "hello from web up" in b.find_element(
        By.ID, "logs").text)

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])


def test_attack_cross_site_form_cannot_stop_a_pod(host: Host, browser: Any) -> None:
    """A page on another origin (another port of 127.0.0.1: the same site, so even the
    SameSite cookie goes along) auto-submits a form that posts ``stop`` to the listener."""
    from selenium.webdriver.common.by import By

    url = start_with_listener(host)
    web = sleeper(host, "web")
    base = url.partition("/ui/")[0]
    browser.get(url)  # signed in: the browser holds the session cookie
    until(browser, "the running pod", lambda b: row(b, "web", "running"))

    evil = (f'<form method="post" action="{base}/v1/pods/{web}/stop"></form>'
            "<script>document.forms[0].submit()</script>").encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(evil)))
            self.end_headers()
            self.wfile.write(evil)

        def log_message(self, format: str, *args: Any) -> None:  # the base's name
            del format, args

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        answer = until(browser, "the listener's answer to the form",
                       lambda b: b.current_url.startswith(base) and b.find_element(
                           By.TAG_NAME, "body").text)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert "cross-origin request" in answer or "X-Jetpack-CSRF" in answer
    assert host.pod(web)["state"] == "running"
    # ... while the dashboard's own button still works
    browser.get(f"{base}/ui/")
    until(browser, "the running pod", lambda b: row(b, "web", "running")).find_element(
        By.CSS_SELECTOR, 'button[data-action="stop"]').click()
    host.wait_for("the pod stopped by the button", lambda: host.pod(web)["state"] == "exited")


def test_dashboard_needs_the_token(host: Host, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    url = start_with_listener(host)
    base = url.partition("/ui/")[0]
    for target in (f"{base}/ui/", f"{base}/ui/?token=wrong", f"{base}/v1/pods"):
        browser.get(target)
        text = browser.find_element(By.TAG_NAME, "body").text
        assert '"kind":"SupervisorError"' in text, (target, text)
        assert browser.execute_script("return document.querySelector('#pods')") is None
    browser.get(url)
    until(browser, "the signed-in page", lambda b: b.find_element(
        By.ID, "connection").text == "live")


def test_attack_pod_output_cannot_script_the_dashboard(host: Host, browser: Any) -> None:
    """What a pod writes reaches the page (the log tail): it is shown as text, never parsed
    as markup, and the page's CSP would refuse inline script besides."""
    from selenium.webdriver.common.by import By

    url = start_with_listener(host)
    payload = "<img src=x onerror=window.pwned=1><b>bold</b>"
    host.jp("prepare", "--name", "evil", "example.com/busybox", "--exec",
            f"/bin/sh -c 'echo \"{payload}\"; exec sleep 600'")
    host.jp("start", "evil")
    browser.get(url)
    until(browser, "the running pod", lambda b: row(b, "evil", "running")).find_element(
        By.CSS_SELECTOR, 'button[data-action="logs"]').click()
    logs = until(browser, "the log tail", lambda b: payload in b.find_element(
        By.ID, "logs").text and b.find_element(By.ID, "logs"))
    assert logs.find_elements(By.CSS_SELECTOR, "*") == []  # no element made from the output
    assert browser.execute_script("return window.pwned === undefined")


def test_dashboard_over_tls(host: Host, tmp_path: Path) -> None:
    """The listener with a certificate: the page, its websocket (wss) and a Secure cookie."""
    import base64
    import hashlib

    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from selenium.webdriver.common.by import By

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    with host.jp.conf.open("a") as conf:
        conf.write(f"http.tls-cert = {tmp_path / 'server.pem'}\n"
                   f"http.tls-key = {tmp_path / 'server.key'}\n")
    url = start_with_listener(host, scheme="https")
    sleeper(host, "web")
    # Trust exactly this certificate (chromium reads the system's CAs, not a file of ours).
    public_key = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_key()
    spki = public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    with open_browser(tmp_path, f"--ignore-certificate-errors-spki-list={pin}") as browser:
        browser.get(url)
        assert browser.current_url == url.partition("?")[0]
        until(browser, "the running pod", lambda b: row(b, "web", "running"))
        until(browser, "the wss connection", lambda b: b.find_element(
            By.ID, "connection").text == "live")
        (cookie,) = browser.get_cookies()
        assert cookie["name"] == "jetpack_token"
        assert cookie["secure"]
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"


def test_dashboard_command_says_when_the_listener_is_off(host: Host) -> None:
    host.start()
    answer = host.jp("dashboard", check=False)
    assert answer.returncode == 1
    assert answer.stdout == ""
    assert answer.stderr.splitlines() == [
        "jetpack: the dashboard is off: the supervisor has no HTTP listener",
        "jetpack: set 'http.listen = 127.0.0.1:8080' in jetpack.conf and restart the supervisor "
        "(docs/dashboard.md)"]
