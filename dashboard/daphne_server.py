"""daphne's server as `manage.py serve` runs it (imported only there: importing
daphne.server installs Twisted's asyncio reactor as a side effect).

- Its listening ports are kept, so a drain can close them.
- A failure to listen is remembered, so the command exits non-zero.
- A POST body is not parsed for form fields. Twisted's `Request` parses every POST
  body with a Content-Type into `request.args` (the type through `email.message`, a
  multipart body whole) before daphne sees it; daphne hands the raw body to the ASGI
  application and never reads `args`. Profiled, that parse was about 4% of a chat
  call's CPU (docs/measured.md), and a multipart file upload was parsed in full for
  nothing. Twisted's own switch for it is `parsePOSTFormSubmission=False`.
"""

from __future__ import annotations

from typing import Any

from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server


class FormlessRequest(WebRequest):
    """daphne's request, leaving a POST body's form fields unparsed (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)


class FormlessHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = FormlessRequest
        return protocol


class SluiceServer(Server):
    """daphne's server: ports kept, listen failures remembered, POST forms unparsed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ports: list[Any] = []
        self.failed = False

    @property
    def http_factory(self) -> HTTPFactory:
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory: HTTPFactory) -> None:
        # daphne's run() makes its factory and listens with it at once, with no hook
        # between: the one it made is replaced by ours, made the same way.
        self._http_factory = FormlessHTTPFactory(factory.server)

    def listen_success(self, listening_port: Any) -> None:
        self.ports.append(listening_port)
        super().listen_success(listening_port)

    def listen_error(self, failure: Any) -> None:
        # daphne logs it and stops the reactor, and the process would exit 0: a
        # supervisor must see that it could not serve.
        self.failed = True
        super().listen_error(failure)
