"""`manage.py serve`'s daphne server (dashboard/daphne_server.py): a POST body goes to the
application as bytes without Twisted parsing it for form fields first."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from daphne.http_protocol import HTTPFactory, WebRequest
from twisted.web.test.requesthelper import DummyChannel

from dashboard.daphne_server import FormlessHTTPFactory, FormlessRequest, SluiceServer


def _received(request_class: type[WebRequest], content_type: bytes, body: bytes) -> WebRequest:
    """A POST through Twisted's request parsing, up to where daphne takes it over."""

    class Stopped(request_class):
        def process(self) -> None:  # daphne's: hands the request to the application
            self.processed = True

    channel: Any = DummyChannel()
    channel.factory = SimpleNamespace(server=SimpleNamespace(protocol_connected=lambda r: None))
    request = Stopped(channel)
    request.requestHeaders.setRawHeaders(b"content-type", [content_type])
    request.gotLength(len(body))
    request.handleContentChunk(body)
    request.requestReceived(b"POST", b"/v1/files?purpose=x", b"HTTP/1.1")
    assert request.processed
    return request


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"application/x-www-form-urlencoded", b"model=a&purpose=fine-tune"),
        (
            b"multipart/form-data; boundary=b",
            b'--b\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b--\r\n',
        ),
    ],
)
def test_a_post_body_is_left_whole_for_the_application(content_type: bytes, body: bytes) -> None:
    # daphne's own request would parse the body into `args` (what this server avoids)...
    assert b"purpose" in _received(WebRequest, content_type, body).args
    request = _received(FormlessRequest, content_type, body)
    assert request.args == {b"purpose": [b"x"]}  # ...ours reads the query string only
    request.content.seek(0)
    assert request.content.read() == body  # and the body is there, untouched


def test_the_server_builds_its_requests_that_way() -> None:
    server = SluiceServer(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.http_factory = HTTPFactory(server)  # what daphne's run() sets, then listens with
    assert isinstance(server.http_factory, FormlessHTTPFactory)
    assert server.http_factory.server is server
    protocol = server.http_factory.buildProtocol(("127.0.0.1", 1))
    assert protocol.requestFactory is FormlessRequest
