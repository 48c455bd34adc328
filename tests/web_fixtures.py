"""A real `sr4 serve` application on a loopback port, in this process, and a plain HTTP client for it."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sr4.image.io import write_image


@dataclass
class Served:
    url: str
    host: str  # "127.0.0.1:PORT", what a browser sends as Host
    port: int
    state: object  # sr4.web.jobs.WebState
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def serve(config) -> Served:
    """Start the app of `config` (a WebConfig) with uvicorn on 127.0.0.1, port chosen by the system."""
    import uvicorn

    from sr4.web.app import allowed_hosts, bind, create_app

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app, state = create_app(config, allowed_hosts("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return Served(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", port, state, server, thread)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Client:
    """HTTP/1.1 requests as the page makes them (same-origin Origin header on every change)."""

    def __init__(self, served: Served):
        self.served = served
        self.workspace: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                origin: bool = True, host: str | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.served.port, timeout=60)
        all_headers = {"Host": host or self.served.host}
        if origin and method not in ("GET", "HEAD"):
            all_headers["Origin"] = f"http://{host or self.served.host}"
        all_headers.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def open_workspace(self) -> str:
        reply = self.request("POST", "/api/w")
        assert reply.status == 200, reply.body
        self.workspace = reply.json()["workspace"]
        return self.workspace

    def ws(self, path: str) -> str:
        return f"/api/w/{self.workspace}{path}"

    def upload(self, data: bytes, name: str = "photo.png", path: str = "/images", **kw) -> Reply:
        from urllib.parse import quote

        return self.request("POST", self.ws(path), body=data, headers={"X-File-Name": quote(name)}, **kw)

    def state(self) -> dict:
        reply = self.request("GET", self.ws("/state"))
        assert reply.status == 200, reply.body
        return reply.json()

    def submit(self, image: str, candidates: list[str], seed: int = 0) -> Reply:
        body = json.dumps({"image": image, "candidates": candidates, "seed": seed}).encode()
        return self.request("POST", self.ws("/jobs"), body=body, headers={"Content-Type": "application/json"})

    def wait_idle(self, timeout: float = 60.0) -> dict:
        """Poll until no job of this workspace is queued or running; returns the last state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if not any(j["state"] in ("queued", "running") for j in state["jobs"]) and all(
                    r["scored"] for im in state["images"] for r in im["results"]):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still running: {state['jobs']}")
            time.sleep(0.05)


def png_bytes(path: Path, h: int, w: int, seed: int = 0, channels: int = 3) -> bytes:
    """A random-texture RGB PNG written by sr4 itself; returns its bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 7 + yy * 3) % 256, (yy * 5) % 256, (xx * yy) % 256], axis=2)[:, :, :channels]
    pixels = np.clip(base + rng.integers(-30, 31, base.shape), 0, 255).astype(np.uint8)
    write_image(path, pixels)
    return path.read_bytes()
