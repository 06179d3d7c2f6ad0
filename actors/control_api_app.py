"""The control API's HTTP side: the FastAPI app (bearer-token auth, the routes of the contract) and the uvicorn
server on its own daemon thread. What each route reads or commands is the backend's job (actors/control_api.py);
this module only speaks HTTP, so its auth can be tested without a node.

Every route of the `/api` router depends on `require_token`, and a middleware refuses every `/api*` path
without the token before any routing: a route added under /api cannot forget auth. The token is
compared with `hmac.compare_digest` (constant time) and is never echoed: a refusal is always the same
`401 {"error": "unauthorized"}`. No interactive docs or OpenAPI schema are served.
"""

import asyncio
import hmac
import logging
import socket
import threading
from pathlib import Path
from typing import Annotated, Any, Protocol

import uvicorn
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

API_PREFIX = "/api"
SERVER_JOIN_SECONDS = 5.0
OptionalBody = Annotated[dict | None, Body()]  # a JSON object, or no body at all
DASHBOARD = Path(__file__).with_name("dashboard.html")  # the operator page (package data)
# The page is a static shell: no data, no secret; it may talk to this server only (connect-src 'self'), loads
# nothing from elsewhere, and is never framed or cached.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class ApiError(Exception):
    """An answer other than 2xx: its status and the message a person reads (never a credential)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Unauthorized(ApiError):
    def __init__(self):
        super().__init__(401, "unauthorized")


class Backend(Protocol):
    """What the routes ask of the node (actors/control_api.py:ControlApi implements it)."""

    def token_matches(self, presented: str) -> bool: ...
    async def read(self, what: str, **args) -> dict: ...
    async def command(self, action: str, symbol: str = "", target: str = "", reason: str = "") -> dict: ...
    async def models(self) -> dict: ...
    async def promote(self, id_or_kind: str) -> dict: ...
    async def demote(self, kind: str) -> dict: ...
    async def retrain(self, kind: str | None) -> dict: ...


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for any other scheme or shape."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def constant_time_equal(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())


def _reason(body: dict | None) -> str:
    reason = (body or {}).get("reason", "")
    if not isinstance(reason, str):
        raise ApiError(422, "reason must be a string")
    return reason


def build_app(backend: Backend) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    async def require_token(request: Request) -> None:
        token = bearer_token(request.headers.get("authorization"))
        if token is None or not backend.token_matches(token):
            raise Unauthorized()

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_token)])

    # ---- reads ----------------------------------------------------------------------------------------------
    @api.get("/health")
    async def health():
        return await backend.read("health")

    @api.get("/positions")
    async def positions():
        return await backend.read("positions")

    @api.get("/signals")
    async def signals(limit: int = 50):
        if not 1 <= limit <= 10_000:
            raise ApiError(422, f"limit must be 1..10000, got {limit}")
        return await backend.read("signals", limit=limit)

    @api.get("/risk")
    async def risk():
        return await backend.read("risk")

    @api.get("/equity")
    async def equity():
        return await backend.read("equity")

    @api.get("/executor")
    async def executor():
        return await backend.read("executor")

    @api.get("/models")
    async def models():
        return await backend.models()

    @api.get("/stats/{period}")
    async def stats(period: str):
        if period not in ("daily", "weekly"):
            raise ApiError(404, f"unknown period {period!r}; allowed: daily, weekly")
        return await backend.read("stats", period=period)

    # ---- commands -------------------------------------------------------------------------------------------
    def accepted(command: dict) -> JSONResponse:
        return JSONResponse({"accepted": True, "command": command}, status_code=202)

    @api.post("/executor/{verb}")
    async def executor_command(verb: str, body: OptionalBody = None):
        if verb not in ("stop", "start"):
            raise ApiError(404, f"unknown executor command {verb!r}; allowed: stop, start")
        return accepted(await backend.command(f"executor_{verb}", reason=_reason(body)))

    @api.post("/ess/{verb}")
    async def ess_command(verb: str, body: OptionalBody = None):
        if verb not in ("trip", "reset"):
            raise ApiError(404, f"unknown emergency stop command {verb!r}; allowed: trip, reset")
        return accepted(await backend.command(verb, reason=_reason(body)))

    @api.post("/positions/close-all")
    async def close_all(body: OptionalBody = None):
        return accepted(await backend.command("close", symbol="*", reason=_reason(body)))

    @api.post("/positions/{symbol}/close")
    async def close_one(symbol: str, body: OptionalBody = None):
        return accepted(await backend.command("close", symbol=symbol, reason=_reason(body)))

    @api.post("/models/retrain")
    async def retrain(body: OptionalBody = None):
        kind = (body or {}).get("kind")
        if kind is not None and not isinstance(kind, str):
            raise ApiError(422, "kind must be a string or null")
        return JSONResponse(await backend.retrain(kind), status_code=202)

    @api.post("/models/{id_or_kind}/promote")
    async def promote(id_or_kind: str):
        return accepted(await backend.promote(id_or_kind))

    @api.post("/models/{kind}/demote")
    async def demote(kind: str):
        return accepted(await backend.demote(kind))

    app.include_router(api)

    @app.get("/dashboard")
    def dashboard():  # no token here: the page holds no data; it sends the token with each /api call
        return HTMLResponse(DASHBOARD.read_text(), headers=DASHBOARD_HEADERS)

    app.state.api_router = api  # its routes, for a test that calls each of them

    @app.middleware("http")
    async def token_for_every_api_path(request: Request, call_next):
        # Also here, not only on the router: a route added under /api some other way, or a path that matches
        # no route, is still refused without the token (an unknown path says nothing to a stranger).
        if request.url.path.startswith(API_PREFIX):
            token = bearer_token(request.headers.get("authorization"))
            if token is None or not backend.token_matches(token):
                return _unauthorized()
        return await call_next(request)

    _add_error_handlers(app)
    return app


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal is `{"error": message}`; FastAPI's own validation answers would echo request input."""

    def error(status: int, message: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
        return error(err.status, err.message, **headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, err: RequestValidationError):
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in err.errors())
        return error(422, f"invalid request: {where}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):
        return error(err.status_code, str(err.detail))


class ApiServer:
    """uvicorn serving `app` on a daemon thread with its own event loop. The socket is bound here, in the
    caller's thread, so a taken port fails at once and `port` 0 gives its free port as `bound_port`."""

    def __init__(self, app: Any, host: str, port: int):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.listen(128)  # connections wait in the backlog until the thread's server accepts them
        self.bound_port: int = self.sock.getsockname()[1]
        # log_config None: uvicorn configures no logging of its own; no access log (it would log every path)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="control-api", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        except Exception:  # the thread dies alone; the node keeps trading
            logging.getLogger(__name__).exception("control API server stopped on an error")

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        self.server.should_exit = True
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=SERVER_JOIN_SECONDS)
        self.sock.close()
