"""The chat page: its routes and headers over raw sockets, then a real Chromium driving `python run.py --demo`.

The browser tests use the page the way a person does (type, click Send or Stop, read) and fail on any
console error, uncaught exception or CSP violation. Debian's chromium is used (no browser download).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from middleware.security_headers import API_CSP, PAGE_CSP
from server.demo_upstream import FILLER
from tests.conftest import ROOT, RunningGateway, head_and_get, request, same_headers
from tests.services import GatewayProcess, http_request, metric
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.chromium

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_ENV = "SCREENSHOT_PATH"  # set by `make screenshot` to refresh docs/screenshot.png
TIMEOUT_MS = 15_000

LAST_ANSWER = "#thread .turn.assistant:last-child .body"
DEMO_ENV = {"DEMO_DELAY_MS": "40", "SHUTDOWN_TIMEOUT_SECS": "1"}  # words arrive over many frames
UPSTREAM_CALLS = 'upstream_requests_total{status="200"}'
RESUMES = "chat_stream_resumes_total"


def demo_answer(prompt: str) -> str:
    return f'You said: "{prompt}". {FILLER}'


# -- routes and headers (in-process gateway, raw sockets) -----------------------------------------------


def asset_url(page_body: bytes, name: str) -> str:
    match = re.search(rf'"(/static/{re.escape(name)}\?v=[0-9a-f]+)"', page_body.decode())
    assert match, f"{name} is not linked with a version hash"
    return match.group(1)


async def test_page_has_the_page_csp_and_every_edge_header(gateway: RunningGateway) -> None:
    response = await request(gateway.port, "GET", "/", headers={"X-Request-ID": "page-1"})
    assert response.status == 200
    assert response.header("Content-Type") == "text/html; charset=UTF-8"
    assert response.header("Content-Security-Policy") == PAGE_CSP
    assert response.header("X-Request-ID") == "page-1"
    assert response.header("X-Content-Type-Options") == "nosniff"
    assert response.header("X-Frame-Options") == "DENY"
    assert response.header("Cache-Control") == "no-cache"
    assert response.header("Server") is None
    assert asset_url(response.body, "app.js") and asset_url(response.body, "app.css")
    assert b'id="key"' not in response.body  # no key field when client keys are off
    health = await request(gateway.port, "GET", "/health")
    assert health.header("Content-Security-Policy") == API_CSP  # API routes keep default-src 'none'


async def test_head_of_the_page_and_a_static_file_has_the_get_headers(gateway: RunningGateway) -> None:
    for path in ("/", "/static/app.css"):
        head, get = await head_and_get(gateway.port, path)
        assert head.status == 200, path
        same_headers(head, get)
    assert head.header("Cache-Control") is None  # unversioned static file: the ETag revalidates it
    page, _ = await head_and_get(gateway.port, "/")
    assert page.header("Cache-Control") == "no-cache"


async def test_static_files_are_cached_and_carry_the_edge(gateway: RunningGateway) -> None:
    page = await request(gateway.port, "GET", "/")
    versioned = await request(gateway.port, "GET", asset_url(page.body, "app.js"), headers={"X-Request-ID": "static-1"})
    assert versioned.status == 200
    assert versioned.header("Content-Type") in ("text/javascript", "application/javascript")
    assert versioned.header("Cache-Control") == "max-age=315360000"
    assert versioned.header("Content-Security-Policy") == PAGE_CSP
    assert versioned.header("X-Request-ID") == "static-1"
    assert versioned.header("X-Content-Type-Options") == "nosniff"
    assert versioned.body == (ROOT / "server" / "static" / "app.js").read_bytes()
    css = await request(gateway.port, "GET", "/static/app.css")
    assert css.status == 200 and css.header("Content-Type") == "text/css"
    assert css.header("Cache-Control") is None  # unversioned: revalidate with the ETag instead
    again = await request(gateway.port, "GET", "/static/app.css", headers={"If-None-Match": css.header("Etag") or ""})
    assert again.status == 304
    assert again.header("X-Request-ID") and again.header("Content-Security-Policy") == PAGE_CSP


async def test_missing_static_files_and_the_raw_template_get_the_json_404(gateway: RunningGateway) -> None:
    for path in ("/static/missing.js", "/static/index.html", "/favicon.ico"):
        response = await request(gateway.port, "GET", path, headers={"X-Request-ID": "miss-1"})
        assert response.status == 404, path
        assert response.header("Content-Type") == "application/json"
        assert response.json()["error_type"] == "not_found"
        assert response.json()["request_id"] == "miss-1"
        assert response.header("X-Request-ID") == "miss-1"
        assert response.header("Content-Security-Policy") == PAGE_CSP
    outside = await request(gateway.port, "GET", "/static/%2e%2e/config.py")
    assert outside.status == 403
    assert outside.header("Content-Type") == "application/json"


async def test_a_nul_byte_in_a_static_path_is_a_json_404_not_a_traceback(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for path in ("/static/app.js%00", "/static/%00", "/static/app%00.css"):
            response = await request(gateway.port, "GET", path)
            assert response.status == 404, path
            assert response.json()["error_type"] == "not_found"
    assert [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info] == []


async def test_page_and_static_files_are_not_rate_limited(start_gateway: Any) -> None:
    gateway = start_gateway(RATE_LIMIT="1", RATE_LIMIT_BURST="1")
    for path in ("/", "/static/app.js", "/", "/static/app.css"):
        response = await request(gateway.port, "GET", path)
        assert response.status == 200, path
        assert response.header("RateLimit-Limit") is None
    posted = await request(gateway.port, "POST", "/", body={"prompt": "x"})
    assert posted.status == 405
    assert posted.json()["error_type"] == "method_not_allowed"


async def test_web_ui_disabled_means_404_for_the_page_and_its_files(start_gateway: Any) -> None:
    gateway = start_gateway(WEB_UI_ENABLED="false")
    for path in ("/", "/static/app.js", "/static/app.css"):
        response = await request(gateway.port, "GET", path)
        assert response.status == 404, path
        assert response.json()["error_type"] == "not_found"
        assert response.header("Content-Security-Policy") == API_CSP


async def test_page_has_a_key_field_when_client_keys_are_on(start_gateway: Any) -> None:
    gateway = start_gateway(CLIENT_API_KEYS="k-1")
    response = await request(gateway.port, "GET", "/")  # the page itself needs no key
    assert response.status == 200
    assert b'<input id="key"' in response.body


# -- a person in a browser against `python run.py --demo` ---------------------------------------------


class Watched:
    """A page whose console errors, uncaught exceptions and CSP violations are all recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.set_default_timeout(TIMEOUT_MS)
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', (e) =>"
            " console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`));"
        )
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")

    def wait_state(self, state: str) -> None:
        self.page.wait_for_selector(f'#status[data-state="{state}"]')

    def send(self, prompt: str) -> None:
        self.page.fill("#prompt", prompt)
        self.page.click("#send")

    def ask(self, prompt: str) -> None:
        """Send `prompt` and wait for its answer to be done."""
        self.send(prompt)
        self.wait_state("done")

    def answer(self) -> str:
        """The latest answer's text as shown."""
        return self.page.text_content(LAST_ANSWER) or ""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = GatewayProcess(tmp_path_factory.mktemp("demo"), **DEMO_ENV).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 900, "height": 620}, color_scheme="light")
    yield context
    context.close()


@pytest.fixture
def watched(context: BrowserContext) -> Watched:
    return Watched(context.new_page())


def counting(demo: GatewayProcess, sample: str) -> Callable[[], float]:
    """How much a /metrics sample has grown since this call."""
    before = metric(demo.port, sample)
    return lambda: metric(demo.port, sample) - before


@pytest.fixture
def screenshot(tmp_path: Path) -> Path:
    """Where the answered page's screenshot goes: a temporary file, so a test run leaves the work tree alone."""
    return Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "screenshot.png")


def test_answer_streams_in_over_many_frames_with_request_id_and_ttft(demo: GatewayProcess, watched: Watched, screenshot: Path) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    # Sample the answer's length once per animation frame until the stream has ended.
    page.evaluate(
        """() => {
            const status = document.getElementById('status');
            window.sampled = [];
            const tick = () => {
                const answer = document.querySelector('#thread .turn.assistant:last-child .body');
                window.sampled.push(answer ? answer.textContent.length : 0);
                if (!['done', 'error', 'stopped'].includes(status.dataset.state)) requestAnimationFrame(tick);
            };
            requestAnimationFrame(tick);
        }"""
    )
    prompt = "What is a server-sent event?"
    with page.expect_response(lambda response: response.url.endswith("/chat")) as chat:
        watched.send(prompt)
    watched.wait_state("done")
    expected = demo_answer(prompt)
    assert watched.answer() == expected
    lengths = page.evaluate("window.sampled")
    assert lengths == sorted(lengths)  # the text only grows
    growing = {length for length in lengths if 0 < length < len(expected)}
    assert len(growing) >= 10, lengths  # seen partially on many frames, not all at once at the end
    assert lengths[-1] == len(expected)
    assert page.text_content("#request-id") == chat.value.headers["x-request-id"]
    assert re.fullmatch(r"\d+ ms", page.text_content("#ttft") or "")
    assert page.is_hidden("#error")
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    page.screenshot(path=screenshot)
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    assert watched.problems == []


def test_stop_cancels_the_stream_and_the_server_closes_the_upstream(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    watched.send("Tell me a long story")
    page.wait_for_function(f"() => document.querySelector('{LAST_ANSWER}')?.textContent.length > 40")
    assert page.is_disabled("#send")
    with page.expect_response(lambda response: response.request.method == "DELETE") as deleted:
        page.click("#stop")
    watched.wait_state("stopped")
    assert re.search(r"/chat/streams/[\w-]+$", deleted.value.url) and deleted.value.status == 204
    request_id = page.text_content("#request-id")
    logged = demo.wait_for_log(lambda line: line.get("outcome") == "cancelled" and line.get("request_id") == request_id)
    assert logged["logger"] == "gateway.stream"
    shown = watched.answer()
    assert 40 < len(shown) < len(demo_answer("Tell me a long story"))
    assert demo_answer("Tell me a long story").startswith(shown)
    assert page.is_hidden("#error")
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    assert watched.problems == []


def test_html_in_the_answer_is_shown_as_text(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    prompt = '<img src=x onerror="window.pwned = 1"><b>bold</b>'
    watched.ask(prompt)
    assert watched.answer() == demo_answer(prompt)
    assert page.locator(f"{LAST_ANSWER} *").count() == 0  # no <img>, no <b>: only text
    assert page.locator("img").count() == 0
    assert page.evaluate("window.pwned") is None
    assert watched.problems == []


def test_the_page_csp_blocks_inline_script_and_style(demo: GatewayProcess, watched: Watched) -> None:
    """The policy is strict, and the console listener sees violations (so `problems == []` above means something)."""
    page = watched.page
    page.goto(demo.url + "/")
    with page.expect_console_message(lambda message: "CSP violation" in message.text):
        blocked = page.evaluate(
            """() => new Promise((resolve) => {
                const seen = [];
                document.addEventListener('securitypolicyviolation', (e) => {
                    seen.push(e.violatedDirective);
                    if (seen.length === 2) resolve(seen.sort());
                });
                const script = document.createElement('script');
                script.textContent = 'window.inlineRan = 1';
                document.body.append(script);
                const styled = document.createElement('p');
                styled.setAttribute('style', 'color: red');
                document.body.append(styled);
            })"""
        )
    assert blocked == ["script-src-elem", "style-src-attr"]
    assert page.evaluate("window.inlineRan") is None


SSE_CASES = [
    # (stream, [(type, data, lastEventId), ...]) per the WHATWG event-stream rules
    ("data: a\n\n", [("message", "a", "")]),
    ("\ufeffdata: bom\r\ndata:  two\r\n\r\n", [("message", "bom\n two", "")]),
    (": ping\n\nevent: x\nid: 7\ndata:no-space\n\ndata: after\n\n", [("x", "no-space", "7"), ("message", "after", "7")]),
    ("data: cr\rdata\r\rretry: 5\nunknown: 1\n\n", [("message", "cr\n", "")]),
    ('data: {"content": "\u4e16\u754c"}\n\ndata: cut off', [("message", '{"content": "\u4e16\u754c"}', "")]),
]


def test_the_page_sse_parser_follows_the_spec_for_any_split(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    for stream, expected in SSE_CASES:
        for split in ("whole", "chars"):
            events = page.evaluate(
                """async ([stream, split]) => {
                    const { SSEParser } = await import('/static/sse.js');
                    const parser = new SSEParser();
                    const pieces = split === 'whole' ? [stream] : [...stream];
                    return pieces.flatMap((piece) => parser.feed(piece)).map((e) => [e.type, e.data, e.lastEventId]);
                }""",
                [stream, split],
            )
            assert [tuple(event) for event in events] == expected, (stream, split)
    assert watched.problems == []


def test_client_key_field_sends_the_key_and_keeps_it_for_the_session(tmp_path: Path, watched: Watched) -> None:
    server = GatewayProcess(tmp_path, CLIENT_API_KEYS="k-web-1", **DEMO_ENV).start()
    try:
        page = watched.page
        page.goto(server.url + "/")
        watched.send("hello")
        watched.wait_state("error")
        error = page.text_content("#error") or ""
        assert "missing or invalid client key" in error and "HTTP 401, unauthorized" in error
        assert page.text_content("#request-id") in error
        page.fill("#key", "k-web-1")
        page.click("#send")
        watched.wait_state("done")
        assert watched.answer() == demo_answer("hello")
        assert page.is_hidden("#error")
        page.reload()
        assert page.input_value("#key") == "k-web-1"  # kept in sessionStorage
        # The browser reports the deliberate 401 itself; nothing else may show up.
        assert [p for p in watched.problems if "status of 401" not in p] == []
    finally:
        server.kill()


# -- a conversation that survives reloads and dropped connections ----------------------------------------


def posted_bodies(page: Page) -> list[dict[str, Any]]:
    """Every body the page POSTs to /chat from now on."""
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda sent: bodies.append(json.loads(sent.post_data or "")) if sent.url.endswith("/chat") else None)
    return bodies


def turns(page: Page) -> list[tuple[str, str]]:
    return [
        (turn.get_attribute("class") or "", turn.text_content() or "") for turn in page.locator("#thread .turn").all()
    ]


def test_a_conversation_sends_its_history_survives_a_reload_and_new_chat_clears_it(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    bodies = posted_bodies(page)
    watched.ask("first question")
    assert page.input_value("#prompt") == ""
    watched.ask("second question")
    history = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": demo_answer("first question")},
        {"role": "user", "content": "second question"},
    ]
    assert bodies == [{"messages": history[:1], "resumable": True}, {"messages": history, "resumable": True}]
    thread = [("turn user", "first question"), ("turn assistant", demo_answer("first question"))]
    thread += [("turn user", "second question"), ("turn assistant", demo_answer("second question"))]
    assert turns(page) == thread
    page.reload()
    assert turns(page) == thread  # kept in the tab's sessionStorage
    page.click("#new-chat")
    assert turns(page) == []
    page.reload()
    assert turns(page) == []
    watched.ask("third")
    assert bodies[-1]["messages"] == [{"role": "user", "content": "third"}]
    assert watched.problems == []


# -- a picture with the message ----------------------------------------------------------------------------

PNG_1X1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
QUESTION = "What is in this picture?"


def attach(page: Page, name: str, data: bytes = PNG_1X1) -> None:
    """Choose a file with the control labelled "Attach picture", as a person does with the file dialog."""
    page.get_by_label("Attach picture").set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": data}])
    page.wait_for_function(f"() => document.getElementById('attached-name').textContent === {json.dumps(name)}")


def with_picture(text: str, data: bytes = PNG_1X1) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}


def test_a_picture_is_sent_as_an_image_part_and_once_removed_the_message_is_a_string(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    page.focus("#prompt")
    page.keyboard.press("Tab")  # Send
    page.keyboard.press("Tab")  # Stop is disabled: the picture control is next
    assert page.evaluate("document.activeElement.id") == "attach"
    bodies = posted_bodies(page)
    attach(page, "dot.png")
    assert page.is_visible("#attached")
    watched.ask(QUESTION)
    assert bodies == [{"messages": [with_picture(QUESTION)], "resumable": True}]
    assert watched.answer() == demo_answer(QUESTION)  # the demo upstream got the text part through the gateway
    assert turns(page)[0] == ("turn user", f"{QUESTION}[picture: dot.png]")
    assert page.locator("img").count() == 0  # a marker, never the picture itself
    assert page.is_hidden("#attached")  # sent: nothing attached to the next message
    attach(page, "dot.png")
    page.click("#detach")
    assert page.is_hidden("#attached")
    watched.ask("and now?")
    history = [with_picture(QUESTION), {"role": "assistant", "content": demo_answer(QUESTION)}]
    assert bodies[-1]["messages"] == [*history, {"role": "user", "content": "and now?"}]
    page.reload()
    assert turns(page)[0] == ("turn user", f"{QUESTION}[picture: dot.png]")
    watched.ask("still there?")
    assert bodies[-1]["messages"][0] == with_picture(QUESTION)  # the stored history kept the picture
    assert watched.problems == []


def test_a_picture_the_tab_cannot_store_is_dropped_from_the_stored_copy_only(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.add_init_script(
        "const setItem = Storage.prototype.setItem;"
        "Storage.prototype.setItem = function (key, value) {"
        "  if (String(value).includes('data:image')) throw new DOMException('full', 'QuotaExceededError');"
        "  return setItem.call(this, key, value);"
        "};"
    )
    page.goto(demo.url + "/")
    bodies = posted_bodies(page)
    attach(page, "dot.png")
    watched.ask(QUESTION)
    assert bodies[-1]["messages"] == [with_picture(QUESTION)]
    watched.ask("and now?")
    assert bodies[-1]["messages"][0] == with_picture(QUESTION)  # the conversation in memory still has it
    page.reload()
    assert turns(page)[0] == ("turn user", f"{QUESTION}[picture: dot.png]")
    watched.ask("after the reload")
    assert bodies[-1]["messages"][0] == {"role": "user", "content": QUESTION}  # the text kept, the picture dropped
    assert watched.problems == []


def test_a_picture_over_the_body_limit_shows_the_413_and_waits_to_be_removed(tmp_path: Path, watched: Watched) -> None:
    server = GatewayProcess(tmp_path, MAX_BODY_BYTES="2048", **DEMO_ENV).start()
    try:
        page = watched.page
        page.goto(server.url + "/")
        attach(page, "big.png", PNG_1X1 + bytes(4096))
        watched.send(QUESTION)
        watched.wait_state("error")
        error = page.text_content("#error") or ""
        assert "HTTP 413, body_too_large" in error and "the limit is 2048" in error
        assert turns(page) == []  # unanswered: the message and its picture go back, to be sent again
        assert page.input_value("#prompt") == QUESTION
        assert page.text_content("#attached-name") == "big.png"
        bodies = posted_bodies(page)
        page.click("#detach")
        page.click("#send")
        watched.wait_state("done")
        assert bodies == [{"messages": [{"role": "user", "content": QUESTION}], "resumable": True}]
        assert page.is_hidden("#error")
        # The browser reports the deliberate 413 itself; nothing else may show up.
        assert [p for p in watched.problems if "status of 413" not in p] == []
    finally:
        server.kill()


def test_the_model_picker_lists_v1_models_and_sends_the_choice(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    listed = [model["id"] for model in http_request(demo.port, "GET", "/v1/models").json()["data"]]
    page.wait_for_function("() => document.querySelectorAll('#model option').length > 1")
    options = page.eval_on_selector_all("#model option", "options => options.map((o) => o.value)")
    assert options == ["", *listed]
    bodies = posted_bodies(page)
    page.select_option("#model", listed[-1])
    watched.ask("which model?")
    assert bodies[-1]["model"] == listed[-1]
    page.reload()
    page.wait_for_function(f"() => document.getElementById('model').value === {json.dumps(listed[-1])}")  # kept for the tab
    assert watched.problems == []


def test_code_fences_are_preformatted_text(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    prompt = "see\n```html\n<b>x</b>\n```\nafter"
    watched.ask(prompt)
    body = page.locator(LAST_ANSWER)
    assert body.locator("pre > code").count() == 1
    assert body.locator("pre > code").text_content() == "<b>x</b>"
    assert body.locator("pre").get_attribute("data-lang") == "html"
    assert body.locator("b").count() == 0
    assert watched.problems == []


def test_reload_mid_answer_resumes_and_finishes_it_once_with_one_upstream_call(demo: GatewayProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(demo.url + "/")
    calls, resumes = counting(demo, UPSTREAM_CALLS), counting(demo, RESUMES)
    prompt = "Tell me a long story, then reload"
    watched.send(prompt)
    page.wait_for_function(f"() => document.querySelector('{LAST_ANSWER}')?.textContent.length > 60")
    request_id = page.text_content("#request-id")
    page.reload()
    watched.wait_state("done")
    assert turns(page) == [("turn user", prompt), ("turn assistant", demo_answer(prompt))]
    assert page.text_content("#request-id") == request_id  # the answer's own request, not the resume's
    assert (calls(), resumes()) == (1, 1)
    assert watched.problems == []


@pytest.fixture
def relay(demo: GatewayProcess) -> Iterator[TcpRelay]:
    relay = TcpRelay(demo.port).start()
    yield relay
    relay.close()


def test_a_cut_network_shows_reconnecting_then_finishes_the_answer_once(
    demo: GatewayProcess, relay: TcpRelay, context: BrowserContext, watched: Watched
) -> None:
    page = watched.page
    page.goto(relay.url + "/")
    calls = counting(demo, UPSTREAM_CALLS)
    prompt = "Tell me a long story over a bad network"
    watched.send(prompt)
    page.wait_for_function(f"() => document.querySelector('{LAST_ANSWER}')?.textContent.length > 40")
    context.set_offline(True)
    assert relay.reset() >= 1
    watched.wait_state("reconnecting")
    assert page.text_content("#status") == "reconnecting\u2026"
    page.wait_for_timeout(2000)  # the network stays down for 2 s
    context.set_offline(False)
    watched.wait_state("done")
    assert watched.answer() == demo_answer(prompt)
    assert calls() == 1
    assert page.is_hidden("#error")
    # the browser reports the reset and each try while offline itself; nothing else may show up
    expected = ("net::ERR_CONNECTION_RESET", "net::ERR_INTERNET_DISCONNECTED")
    assert [p for p in watched.problems if not p.endswith(expected)] == []
