"""Helpers for the browser tests of the page at ``/``: a live server and headless Chromium.

* ``live_server(app)``: the app served by uvicorn in a thread on a free loopback port.
* ``start_chromium(profile)``: Debian's headless Chromium through its own chromedriver, driven by
  Selenium with Selenium Manager offline (no driver or browser is ever downloaded), logging every
  network request (``goog:loggingPrefs`` performance) and the console.
* ``submit(driver, panel, field, keys)``: type into a panel's field, submit from the keyboard and
  wait for the panel's answer (a result or an error).
* ``make ui-screenshot`` (``PYTHONPATH=. python tests/ui_browser.py --checkpoint DIR --out docs/ui.png``): a screenshot
  of the whole page with every panel filled in (the README's picture).

Not a test module (no ``test_`` prefix); imported by tests/app/test_app_ui_browser.py. Deliberately
no browser installation here: ``browser_missing`` says what is absent and how to install it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

INSTALL_HINT = "sudo apt-get install -y chromium chromium-driver && .venv/bin/pip install selenium"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
)
WAIT_S = 20.0  # generous: the test machine may be busy training


def _binary(name: str, env: str) -> str | None:
    configured = os.environ.get(env)
    if configured:
        return configured if Path(configured).exists() else None
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def chromium_path() -> str | None:
    """Chromium's binary (``$BERT_UI_CHROMIUM``, else /usr/bin/chromium or on PATH)."""
    return _binary("chromium", "BERT_UI_CHROMIUM")


def chromedriver_path() -> str | None:
    """chromedriver's binary (``$BERT_UI_CHROMEDRIVER``, else /usr/bin/chromedriver or PATH)."""
    return _binary("chromedriver", "BERT_UI_CHROMEDRIVER")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (with the command that fixes it), or None."""
    missing = []
    if chromium_path() is None:
        missing.append("chromium")
    if chromedriver_path() is None:
        missing.append("chromedriver")
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium")
    if not missing:
        return None
    return f"browser tests need {', '.join(missing)}: {INSTALL_HINT}"


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` (lifespan on) with uvicorn in a daemon thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other tests
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ui-live-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the live server did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def start_chromium(profile: Path, width: int = 1280, height: int = 1000) -> Any:
    """Headless Chromium with a fresh profile in ``profile``, network and console logs on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # Selenium Manager must never go to the internet for a driver: the system one is given.
    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"
    try:
        return webdriver.Chrome(
            options=options, service=Service(executable_path=chromedriver_path())
        )
    finally:
        if previous is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = previous


def wait(driver: Any, condition: Any, timeout: float = WAIT_S) -> Any:
    """WebDriverWait(...).until(condition), polling every 50 ms."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(
        condition
    )


def open_page(driver: Any, base_url: str) -> None:
    """Load the page and wait until the model panel shows a version (/info answered)."""
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model-info [data-field=version]"))


def submit(driver: Any, panel: str, field: str, text: str | None, keys: str) -> Any:
    """Type ``text`` into ``#field`` (None: keep it), send ``keys`` (Enter, Ctrl+Enter), and
    wait for ``#panel`` to show a new result or error; returns the panel element."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, field)
    # Clear the previous answer first, so that waiting for "an answer" waits for this one.
    driver.execute_script(
        "const p = document.getElementById(arguments[0]);"
        "p.querySelector('.result').replaceChildren();"
        "const e = p.querySelector('.error'); e.hidden = true; e.textContent = '';",
        panel,
    )
    if text is not None:
        element.clear()
        if all(ord(c) <= 0xFFFF for c in text):
            element.send_keys(text)
        else:
            # Some ChromeDriver releases refuse keys outside the BMP (emoji): set the value as
            # the page would receive it from typing, one input event.
            driver.execute_script(
                "arguments[0].value = arguments[1];"
                "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
                element,
                text,
            )
    element.send_keys(keys)

    def answered(d: Any) -> Any:
        p = d.find_element(By.ID, panel)
        done = p.get_attribute("aria-busy") is None
        has_result = p.find_elements(By.CSS_SELECTOR, ".result > *")
        has_error = p.find_element(By.CSS_SELECTOR, ".error").is_displayed()
        return p if done and (has_result or has_error) else None

    return wait(driver, answered)


def fill_every_panel(driver: Any) -> None:
    """Submit each panel the model has with its example input (what a first visitor would try);
    the sparse and rerank panels only where /info shows them (an MLM head; a cross-encoder)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    submit(driver, "fill-panel", "fill-text", None, Keys.ENTER)
    submit(driver, "sim-panel", "sim-text", None, Keys.CONTROL + Keys.ENTER)
    if driver.find_element(By.ID, "sparse-panel").is_displayed():
        submit(driver, "sparse-panel", "sparse-text", None, Keys.ENTER)
    if driver.find_element(By.ID, "rerank-panel").is_displayed():
        submit(driver, "rerank-panel", "rerank-docs", None, Keys.CONTROL + Keys.ENTER)
    submit(driver, "tok-panel", "tok-text", None, Keys.ENTER)


def page_screenshot(driver: Any, out: Path) -> None:
    """The whole page as a PNG, beyond the window's height (headless windows cannot grow past
    the virtual screen, so the DevTools protocol captures the full layout instead)."""
    width, height = driver.execute_script(
        "document.activeElement.blur();"  # no focus ring in the picture
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot the page with every panel filled.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/ui.png"))
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    reason = browser_missing()
    if reason:
        parser.exit(2, reason + "\n")
    from app.config import ServeConfig
    from app.main import create_app

    app = create_app(ServeConfig(checkpoint=args.checkpoint, torch_threads=1))
    with (
        live_server(app) as url,
        tempfile.TemporaryDirectory(prefix="bert-ui-") as profile,
    ):
        driver = start_chromium(Path(profile), width=args.width)
        try:
            open_page(driver, url)
            fill_every_panel(driver)
            page_screenshot(driver, args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
