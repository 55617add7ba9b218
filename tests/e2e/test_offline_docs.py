"""`/docs` and `/redoc` render in headless Chromium with every non-local request blocked.

Site-security networks are often air-gapped: the pages must load their assets from the service
itself. Each service's app is served by uvicorn without its lifespan (the documentation needs
no database), and the browser is offline except for 127.0.0.1.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI

from services.analytics.app import create_app as analytics_app
from services.analytics.settings import AnalyticsSettings
from services.gateway.app import create_app as gateway_app
from services.gateway.event_processor.app import create_app as processor_app
from services.gateway.settings import GatewaySettings
from services.optimizer.app import create_app as optimizer_app
from services.optimizer.settings import OptimizerSettings
from services.replicator.app import create_app as replicator_app
from services.replicator.settings import ReplicatorSettings
from tools.dev.embedded import free_port
from tools.dev.servers import unavailable

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
APPS: dict[str, Callable[[], FastAPI]] = {
    "gateway": lambda: gateway_app(GatewaySettings(TRACING_ENABLED=False)),
    "event_processor": lambda: processor_app(GatewaySettings(TRACING_ENABLED=False)),
    "analytics": lambda: analytics_app(AnalyticsSettings(TRACING_ENABLED=False)),
    "optimizer": lambda: optimizer_app(OptimizerSettings(TRACING_ENABLED=False)),
    "replicator": lambda: replicator_app(ReplicatorSettings(TRACING_ENABLED=False)),
}


OPEN_OPERATIONS = """els => {
    const wanted = els.filter(e => {
        const id = e.closest('.opblock').id;
        return !id.startsWith('operations-proxy-') || id.endsWith('_get');
    });
    wanted.forEach(e => e.click());
    return wanted.length;
}"""


class DocsServer:
    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        unavailable("Chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def offline_page(browser: Any) -> tuple[Any, list[str]]:
    """A page whose every request to anything but 127.0.0.1 is aborted (and recorded)."""
    context = browser.new_context()
    blocked: list[str] = []

    def route(r: Any) -> None:
        if urlsplit(r.request.url).hostname in {"127.0.0.1", "localhost"}:
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return context.new_page(), blocked


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(APPS))
def test_swagger_ui_shows_every_operation_offline_without_reference_errors(browser: Any, name: str) -> None:
    app = APPS[name]()
    operations = sum(
        1
        for item in app.openapi()["paths"].values()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    )
    with DocsServer(app) as url:
        page, blocked = offline_page(browser)
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(url + "/docs", wait_until="networkidle")
        page.wait_for_selector(".opblock", timeout=20_000)
        summaries = page.locator(".opblock-summary-control")
        assert summaries.count() == operations
        # Swagger UI resolves references when an operation is opened: open them all (of the
        # proxy's seven identical methods per prefix, GET only: rendering is slow), and the
        # schema section at the bottom, then look for its resolver errors.
        opened = page.eval_on_selector_all(".opblock-summary-control", OPEN_OPERATIONS)
        page.eval_on_selector_all(".models-control", "els => els.forEach(e => e.click())")
        page.wait_for_selector(".opblock-body", timeout=10_000)
        page.wait_for_timeout(1000)
        assert page.locator(".opblock.is-open").count() == opened > 0
        text = page.inner_text("body")
        assert "Could not resolve reference" not in text
        assert "Resolver error" not in text
        assert page.locator(".errors-wrapper").count() == 0
        assert blocked == []
        assert failed == []
        page.context.close()


@pytest.mark.timeout(120)
def test_redoc_renders_offline(browser: Any) -> None:
    app = APPS["analytics"]()
    with DocsServer(app) as url:
        page, blocked = offline_page(browser)
        page.goto(url + "/redoc", wait_until="networkidle")
        page.wait_for_selector("h1", timeout=20_000)
        text = page.inner_text("body")
        assert app.title in text
        assert "/api/v1/analytics/patterns" in text
        assert "Something went wrong" not in text
        # ReDoc's footer always asks its vendor's CDN for a small logo and removes the image
        # when that fails; nothing else may leave the machine.
        assert [u for u in blocked if u != "https://cdn.redoc.ly/redoc/logo-mini.svg"] == []
        page.context.close()
