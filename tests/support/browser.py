"""Debian's headless Chromium driven by Selenium, for the admin panel's end-to-end tests.

Offline by construction: chromedriver and the browser are the Debian packages (``chromium``,
``chromium-driver``), given by path so Selenium Manager never downloads either
(``SE_OFFLINE=true`` makes sure); the ``--disable-background-networking`` family stops calls to
Google services; ``--host-resolver-rules`` answers every name but 127.0.0.1 with NXDOMAIN, so
the browser never asks the real DNS. The panel's certificate is self-signed for the instance's
host name, hence ``--ignore-certificate-errors`` (the page is still ``https://``, so the
``Secure`` ``__Host-`` session cookie is kept).

    with launch(javascript=False) as browser:
        browser.get("https://127.0.0.1:8443/")
        browser.fill("#address", "me@example.test")
        browser.screenshot("login")               # tests/artifacts/panel/login.png
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import require_tool

os.environ.setdefault("SE_OFFLINE", "true")

from selenium import webdriver  # noqa: E402 (after SE_OFFLINE)
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DESKTOP = (1280, 900)
PHONE = (390, 844)  # an iPhone 12-15 viewport in CSS pixels
WAIT = 10.0

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container: the setuid sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a small /dev/shm in containers crashes tabs
    "--no-first-run",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--password-store=basic",
    "--ignore-certificate-errors",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--hide-scrollbars",  # screenshots without a scrollbar strip
    "--force-device-scale-factor=1",
    "--lang=en-US",
)


def artifacts_dir() -> Path:
    """Where screenshots go: ``$ARTIFACTS_DIR/panel`` if set (CI), else tests/artifacts/panel."""
    base = Path(os.environ["ARTIFACTS_DIR"]) if os.environ.get("ARTIFACTS_DIR") else ARTIFACTS
    path = base / "panel"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Browser:
    """A WebDriver with the few verbs the panel tests need. Elements are named by CSS selector
    (``#address``, ``form[action='/logout'] button``)."""

    def __init__(self, driver: webdriver.Chrome, base_url: str = ""):
        self.driver = driver
        self.base_url = base_url

    # --- navigation and forms ---

    def get(self, path: str) -> None:
        self.driver.get(self.base_url + path if path.startswith("/") else path)

    @property
    def path(self) -> str:
        url = self.driver.current_url
        return url[len(self.base_url):] if url.startswith(self.base_url) else url

    def find(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        return self.find(selector).text

    def fill(self, selector: str, value: str) -> None:
        element = self.find(selector)
        element.clear()
        element.send_keys(value)

    def click(self, selector: str) -> None:
        """Click a link or submit button and wait until the page it leads to has loaded
        (stylesheets included: they hold up the load event)."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.find(selector).click()
        WebDriverWait(self.driver, WAIT).until(lambda d: _stale(old))
        WebDriverWait(self.driver, WAIT).until(
            lambda d: d.execute_script("return document.readyState") == "complete")

    def wait_for_path(self, prefix: str) -> None:
        """Wait for a page under ``prefix`` to have loaded.  The URL changes when the
        navigation commits, before the new document is there: an element found at that
        moment may belong to the old one ("Node ... does not belong to the document")."""
        WebDriverWait(self.driver, WAIT).until(
            lambda d: self.path.startswith(prefix)
            and d.execute_script("return document.readyState") == "complete")

    def cookie(self, name: str) -> dict | None:
        return self.driver.get_cookie(name)

    def use_cache(self, enabled: bool) -> None:
        """Turn the HTTP cache on or off: off, every stylesheet is fetched afresh (200), never
        revalidated (If-None-Match, 304)."""
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": not enabled})

    # --- layout and screenshots ---

    def computed(self, selector: str, prop: str) -> str:
        return self.driver.execute_script(
            "return getComputedStyle(document.querySelector(arguments[0]))"
            ".getPropertyValue(arguments[1])", selector, prop)

    def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Emulate a screen: ``mobile`` also honours <meta name=viewport> like a phone does."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def overflow_x(self, width: int) -> int:
        """How many CSS pixels the page is wider than a screen ``width`` wide (0: it fits).
        Not window.innerWidth: a mobile browser widens its layout viewport to the content."""
        return max(0, int(self.driver.execute_script(
            "return document.documentElement.scrollWidth")) - width)

    def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        """Save ``<artifacts>/<name>.png``: the whole page, not just the viewport, by default."""
        import base64

        out = artifacts_dir() / f"{name}.png"
        params: dict = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"],
                              "height": size["height"], "scale": 1}
        data = self.driver.execute_cdp_cmd("Page.captureScreenshot", params)["data"]
        out.write_bytes(base64.b64decode(data))
        return out


def chromium_options(*, javascript: bool = True,
                     window: tuple[int, int] = DESKTOP) -> webdriver.ChromeOptions:
    opts = webdriver.ChromeOptions()
    opts.binary_location = require_tool("chromium")
    for arg in CHROMIUM_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={window[0]},{window[1]}")
    prefs = {"credentials_enable_service": False, "profile.password_manager_enabled": False}
    if not javascript:
        prefs["profile.managed_default_content_settings.javascript"] = 2
    opts.add_experimental_option("prefs", prefs)
    opts.accept_insecure_certs = True
    return opts


@contextlib.contextmanager
def launch(base_url: str = "", *, javascript: bool = True, window: tuple[int, int] = DESKTOP,
           log_path: Path | None = None) -> Iterator[Browser]:
    """A fresh headless Chromium (its own temporary profile), quit on exit."""
    options = chromium_options(javascript=javascript, window=window)
    service = Service(executable_path=require_tool("chromedriver"),
                      log_output=str(log_path) if log_path else os.devnull)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield Browser(driver, base_url)
    finally:
        driver.quit()


def _stale(element: WebElement) -> bool:
    """True once ``element``'s document is gone.  EC.staleness_of expects
    StaleElementReferenceException; Chromium 156 sometimes answers with a plain error
    instead ("Node with given id does not belong to the document"), which means the same."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as err:
        if "does not belong to the document" in str(err):
            return True
        raise
    return False
