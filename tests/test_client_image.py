"""The terminal client's `--image PATH`: the picture goes to /chat as a data: URL in an image_url part."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from client import chat as client
from client.chat import image_data_url, stream_chat
from tests.conftest import RunningGateway
from tests.fault_upstream import FaultUpstream

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


async def test_picture_reaches_the_upstream_with_the_prompt(gateway: RunningGateway, upstream: FaultUpstream, tmp_path: Path) -> None:
    picture = tmp_path / "dot.png"
    picture.write_bytes(PNG)
    out = io.StringIO()
    await stream_chat(gateway.url, "What is this?", out, images=[image_data_url(str(picture))])
    assert out.getvalue() == "Hello, world!\n"
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert upstream.requests[0]["body"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}
    ]


@pytest.mark.parametrize(("name", "message"), [("notes.txt", "is not a picture"), ("missing.png", "cannot read")])
def test_a_file_that_is_not_a_readable_picture_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SystemExit) as exited:
        client.main(["--image", str(tmp_path / name), "hi"])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
