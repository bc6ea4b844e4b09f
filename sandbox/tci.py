"""Together's code interpreter (TCI), as it answers: `POST /v1/tci/execute` and
`GET /v1/tci/sessions`.

Shapes from the together SDK's types (2.x `ExecuteResponse`, `CodeInterpreterExecuteParams`,
`code_interpreter.SessionListResponse`; the 3.1 SDK has no resource for them): an execute
answers `{"data": {"session_id", "status", "outputs": [...]}, "errors": null}`, a session
list `{"data": {"sessions": [{"id", "execute_count", "started_at", "last_execute_at",
"expires_at"}]}}`. A session lives 60 minutes, as Together's guide says.

Nothing is executed. The sandbox reads the code with `ast` and plays a tiny part of Python,
enough to show a session keeping its state: `name = <literal>` stores a value,
`print(<literal or name>)` writes it to stdout, a last bare expression of either is the
`execute_result`; anything else runs silently, and code that does not parse is an `error`
output. Files sent with a call are kept in its session by name.
"""

from __future__ import annotations

import ast
import uuid
from dataclasses import dataclass, field
from typing import Any

from .http import ApiError, Request, Response, json_response
from .jobs import iso

SESSION_SECONDS = 3600.0
LANGUAGES = ("python",)
ENCODINGS = ("string", "base64")


@dataclass
class Session:
    id: str
    started: float  # the sandbox's wall clock
    last_execute: float
    execute_count: int = 0
    names: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def expired(self, now: float) -> bool:
        return now >= self.started + SESSION_SECONDS

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "execute_count": self.execute_count,
            "started_at": iso(self.started),
            "last_execute_at": iso(self.last_execute),
            "expires_at": iso(self.started + SESSION_SECONDS),
        }


def _value(node: ast.expr, names: dict[str, Any]) -> tuple[bool, Any]:
    """(known, value) of a literal or a stored name."""
    if isinstance(node, ast.Name):
        return node.id in names, names.get(node.id)
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _run(code: str, names: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        return [{"type": "error", "data": f"{type(exc).__name__}: {exc}"}]
    outputs: list[dict[str, Any]] = []
    for at, statement in enumerate(tree.body):
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            known, value = _value(statement.value, names)
            if known and isinstance(target, ast.Name):
                names[target.id] = value
        elif isinstance(statement, ast.Expr):
            call = statement.value
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "print":
                shown = [_value(arg, names) for arg in call.args]
                if all(known for known, _ in shown):
                    text = " ".join(str(value) for _, value in shown) + "\n"
                    outputs.append({"type": "stdout", "data": text})
            elif at == len(tree.body) - 1:
                known, value = _value(call, names)
                if known:
                    outputs.append({"type": "execute_result", "data": {"text/plain": repr(value)}})
    return outputs


def _files(body: dict[str, Any]) -> dict[str, str]:
    files = body.get("files") or []
    if not isinstance(files, list):
        raise ApiError(400, "files must be a list", param="files")
    kept = {}
    for entry in files:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("content"), str)
            or entry.get("encoding") not in ENCODINGS
        ):
            raise ApiError(400, "each file needs name, content and encoding", param="files")
        kept[entry["name"]] = entry["content"]
    return kept


def _session(sessions: dict[str, Session], session_id: Any, now: float) -> Session:
    if session_id is None:
        session = Session(id="ses_" + uuid.uuid4().hex[:24], started=now, last_execute=now)
        sessions[session.id] = session
        return session
    found = sessions.get(session_id) if isinstance(session_id, str) else None
    if found is None or found.expired(now):
        raise ApiError(404, f"Session {session_id} not found or expired", code="not_found")
    return found


def execute(state: Any, request: Request, _: str) -> Response:
    body = request.json_object()
    code, language = body.get("code"), body.get("language")
    if not isinstance(code, str) or not code:
        raise ApiError(400, "code is required", param="code")
    if language not in LANGUAGES:
        raise ApiError(400, "language must be one of: python", param="language")
    files = _files(body)
    now = state.wall_clock()
    session = _session(state.tci_sessions, body.get("session_id"), now)
    session.files.update(files)
    session.execute_count += 1
    session.last_execute = now
    outputs = _run(code, session.names)
    data = {"session_id": session.id, "status": "success", "outputs": outputs}
    return json_response({"data": data, "errors": None})


def sessions_list(state: Any, request: Request, _: str) -> Response:
    now = state.wall_clock()
    live = [s.to_json() for s in state.tci_sessions.values() if not s.expired(now)]
    return json_response({"data": {"sessions": live}, "errors": None})


ROUTES = [
    ("POST", r"/v1/tci/execute", execute),
    ("GET", r"/v1/tci/sessions", sessions_list),
]
