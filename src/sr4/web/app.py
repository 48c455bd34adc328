"""The Starlette application of `sr4 serve`, and the function that runs it with uvicorn.

Security, since it runs next to people's photos: every request must name this server in its Host
header (a DNS-rebinding page cannot reach it under another name); every state-changing request
(POST, DELETE) must come from the page itself (Origin equal to this server; a browser request
without Origin must be same-origin by Sec-Fetch-Site); uploads are streamed to disk with a size cap,
sniffed by content and read with a pixel limit; ids are random and scoped to a browser tab's
workspace; no request names a file or a model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sr4 import __version__
from sr4.web.jobs import NotFound, WebConfig, WebState
from sr4.web.uploads import SNIFF_BYTES, UploadError, display_name, sniff_image_type

STATIC_DIR = Path(__file__).resolve().parent / "static"
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                                 b"base-uri 'none'; form-action 'self'"),
]


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """Host header values this server answers to; None (any) when bound to every interface."""
    if host in WILDCARD_HOSTS:
        return None
    names = set(LOCAL_NAMES) | {f"[{host}]" if ":" in host else host}
    return {f"{name}:{port}" for name in names}


class Guard:
    """ASGI middleware: Host check on every request, Origin check on state-changing ones, safe headers."""

    def __init__(self, app, hosts: set[str] | None):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self.problem(scope["method"], headers)
        if problem is not None:
            return await JSONResponse({"error": problem}, status_code=403)(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def problem(self, method: str, headers: dict[str, str]) -> str | None:
        host = headers.get("host", "")
        if self.hosts is not None and host not in self.hosts:
            return f"refused: this server does not answer to the host name {host!r}"
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is None:
            # Browsers send Origin or Sec-Fetch-Site with every POST; a request with neither is not a web page's.
            if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return "refused: a cross-site request may not change anything here"
            return None
        if origin != f"http://{host}":
            return f"refused: requests from {origin} may not change anything here"
        return None


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _receive_upload(request: Request, state: WebState, kind: str) -> tuple[Path, str]:
    """Stream the request body to a fresh file in the temporary folder, refusing oversize and non-images."""
    limit = state.config.max_upload_bytes
    name = display_name(unquote(request.headers.get("x-file-name", "")))
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        declared = 0
    if declared > limit:
        raise UploadError(f"{name}: the file is {_size(declared)}, larger than this server's limit of {_size(limit)}",
                          status=413)
    path = state.new_upload_path(kind)
    size, head = 0, b""
    try:
        with open(path, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise UploadError(f"{name}: the file is larger than this server's limit of {_size(limit)}",
                                      status=413)
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                fh.write(chunk)
        if size == 0:
            raise UploadError(f"{name}: the file is empty")
        if sniff_image_type(head) is None:
            raise UploadError(f"{name}: not an image sr4 reads (PNG, JPEG, WebP, TIFF or BMP, judged by its "
                              "content, not its name)", status=415)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, name


def create_app(config: WebConfig, hosts: set[str] | None) -> tuple[Starlette, WebState]:
    """The application and its state; the state's temporary folder is removed at the app's shutdown."""
    state = WebState(config)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})

    async def app_config(request: Request) -> Response:
        return JSONResponse({
            "version": __version__,
            "device": config.processor.device, "dtype": config.processor.dtype,
            "tile": config.processor.tile, "candidates": [c.describe() for c in config.candidates],
            "limits": {"max_upload_bytes": config.max_upload_bytes, "max_pixels": config.max_pixels,
                       "max_images": config.max_images},
            "metrics": state.scorer.status(),
        })

    async def new_workspace(request: Request) -> Response:
        return JSONResponse({"workspace": state.new_workspace()})

    async def snapshot(request: Request) -> Response:
        return JSONResponse(state.snapshot(request.path_params["wid"]), headers={"cache-control": "no-store"})

    async def upload_image(request: Request) -> Response:
        wid = request.path_params["wid"]
        state.workspace(wid)
        path, name = await _receive_upload(request, state, "lr")
        try:
            entry = await run_in_threadpool(state.add_image, wid, path, name)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return JSONResponse({"image": entry.id, "name": entry.name, "width": entry.width, "height": entry.height})

    async def upload_reference(request: Request) -> Response:
        wid, iid = request.path_params["wid"], request.path_params["iid"]
        state.image(wid, iid)
        path, name = await _receive_upload(request, state, "ref")
        try:
            entry = await run_in_threadpool(state.set_reference, wid, iid, path, name)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return JSONResponse({"image": entry.id, "reference": list(entry.reference_size or ())})

    async def remove_image(request: Request) -> Response:
        await run_in_threadpool(state.remove_image, request.path_params["wid"], request.path_params["iid"])
        return JSONResponse({"removed": request.path_params["iid"]})

    async def image_file(request: Request) -> Response:
        entry = state.image(request.path_params["wid"], request.path_params["iid"])
        path = entry.preview if request.path_params["which"] == "lr" else entry.reference_preview
        if path is None or not path.exists():
            raise NotFound("this image has no reference yet")
        return FileResponse(path, media_type="image/png", headers={"cache-control": "no-store"})

    async def submit(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("the request body is not JSON")
        if not isinstance(body, dict):
            return _error("expected a JSON object {image, candidates, seed}")
        seed = body.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            return _error("the seed must be a whole number from 0 to 2^63-1")
        candidates = body.get("candidates")
        if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
            return _error("candidates must be a list of candidate ids")
        image = body.get("image")
        if not isinstance(image, str):
            return _error("image must be an image id")
        jobs = state.submit(request.path_params["wid"], image, candidates, seed)
        return JSONResponse({"jobs": [j.id for j in jobs]})

    async def cancel(request: Request) -> Response:
        job = state.cancel(request.path_params["wid"], request.path_params["jid"])
        return JSONResponse({"job": job.id, "state": job.state})

    async def result_file(request: Request) -> Response:
        _, result = state.result(request.path_params["wid"], request.path_params["rid"])
        if request.query_params.get("download"):
            return FileResponse(result.path, media_type="image/png", filename=result.download_name)
        return FileResponse(result.path, media_type="image/png", headers={"cache-control": "no-store"})

    async def results_zip(request: Request) -> Response:
        wid = request.path_params["wid"]
        iid = request.query_params.get("image")
        path = await run_in_threadpool(state.zip_results, wid, iid)
        name = f"{display_name(state.image(wid, iid).name)}_results.zip" if iid else "sr4_results.zip"
        # Unlinked once open: nothing is left behind, whether or not the download completes.
        fh = open(path, "rb")
        size = os.fstat(fh.fileno()).st_size
        path.unlink()

        async def chunks():
            try:
                while block := await run_in_threadpool(fh.read, 1 << 20):
                    yield block
            finally:
                fh.close()

        return StreamingResponse(chunks(), media_type="application/zip", headers={
            "content-length": str(size), "content-disposition": f"attachment; filename*=utf-8''{quote(name)}"})

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(str(exc) or "not found", 404)

    async def upload_error(request: Request, exc: Exception) -> Response:
        return _error(str(exc), getattr(exc, "status", 400))

    async def closing(request: Request, exc: Exception) -> Response:
        return _error(str(exc), 503 if state.closed else 500)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    routes = [
        Route("/", index),
        Route("/api/config", app_config),
        Route("/api/w", new_workspace, methods=["POST"]),
        Route("/api/w/{wid}/state", snapshot),
        Route("/api/w/{wid}/images", upload_image, methods=["POST"]),
        Route("/api/w/{wid}/images/{iid}", remove_image, methods=["DELETE"]),
        Route("/api/w/{wid}/images/{iid}/reference", upload_reference, methods=["POST"]),
        Route("/api/w/{wid}/images/{iid}/{which:str}.png", image_file),
        Route("/api/w/{wid}/jobs", submit, methods=["POST"]),
        Route("/api/w/{wid}/jobs/{jid}/cancel", cancel, methods=["POST"]),
        Route("/api/w/{wid}/results/{rid}.png", result_file),
        Route("/api/w/{wid}/results.zip", results_zip),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    handlers = {NotFound: not_found, UploadError: upload_error, RuntimeError: closing}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.add_middleware(Guard, hosts=hosts)
    return app, state


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), made before the server so the URL is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_for(host: str, port: int) -> str:
    name = "127.0.0.1" if host in WILDCARD_HOSTS else (f"[{host}]" if ":" in host else host)
    return f"http://{name}:{port}/"


def run_server(config: WebConfig, host: str, port: int, *, open_browser: bool = False) -> int:
    """Serve until SIGINT / SIGTERM; the temporary folder is removed on the way out."""
    import uvicorn

    sock = bind(host, port)
    port = sock.getsockname()[1]
    app, state = create_app(config, allowed_hosts(host, port))
    url = url_for(host, port)
    print(f"sr4 serve: {url}  (Ctrl+C to stop)", flush=True)
    print(f"sr4 serve: temporary files in {state.root} (removed on exit)", flush=True)
    # uvicorn re-raises a captured SIGTERM after its shutdown; as an exception it unwinds through `finally`.
    previous = signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5,
                                               lifespan="on"))
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        state.close()
        sock.close()
        signal.signal(signal.SIGTERM, previous)
    print("sr4 serve: stopped; temporary files removed", file=sys.stderr, flush=True)
    return 0


def _raise_system_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)
