"""`sr4 serve` over real HTTP: results equal `sr4 upscale`, scores, bad inputs, security checks, two tabs,
cancel, temporary files removed on SIGTERM / SIGINT."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

pytest.importorskip("starlette", reason="sr4 serve needs the web extra: pip install 'sr4[web]'")
pytest.importorskip("uvicorn", reason="sr4 serve needs the web extra: pip install 'sr4[web]'")

from web_fixtures import Client, png_bytes, serve  # noqa: E402

from sr4.cli import main  # noqa: E402
from sr4.image.convert import to_rgb8  # noqa: E402
from sr4.image.io import read_image, write_image  # noqa: E402
from sr4.metrics.niqe import niqe  # noqa: E402
from sr4.metrics.psnr_ssim import psnr, ssim  # noqa: E402
from sr4.pipeline.factory import ProcessorOptions  # noqa: E402
from sr4.web.candidates import list_candidates  # noqa: E402
from sr4.web.jobs import WebConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TILE = ["--tile", "32", "--tile-overlap", "4"]  # the server's options below, as sr4 upscale takes them
MAX_UPLOAD = 300_000
MAX_PIXELS = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    bad = root / "broken_model.pth"
    bad.write_bytes(b"this is not a checkpoint")
    (root / "empty_model_dir").mkdir()
    (root / "no_weights").mkdir()
    (root / "temp").mkdir()
    config = WebConfig(candidates=tuple(list_candidates([bad], root / "empty_model_dir")),
                       processor=ProcessorOptions(device="cpu", tile=32, tile_overlap=4),
                       max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, max_images=40,
                       weights_dir=str(root / "no_weights"), temp_parent=str(root / "temp"))
    served = serve(config)
    yield served
    served.stop()
    assert not served.state.root.exists(), "the temporary folder must be removed at shutdown"


@pytest.fixture
def client(server):
    c = Client(server)
    c.open_workspace()
    return c


def _upload(client: Client, tmp_path: Path, name: str = "photo.png", h: int = 40, w: int = 36, seed: int = 0):
    data = png_bytes(tmp_path / f"src_{seed}_{h}x{w}.png", h, w, seed)
    reply = client.upload(data, name)
    assert reply.status == 200, reply.body
    return reply.json()["image"], tmp_path / f"src_{seed}_{h}x{w}.png"


def _sr4_upscale(src: Path, out: Path, *options: str) -> bytes:
    assert main(["upscale", str(src), "-o", str(out), "--ext", "png", *TILE, *options]) == 0
    return (out / f"{src.stem}.png").read_bytes()


def _results(state: dict, image: str) -> dict[str, dict]:
    entry = next(im for im in state["images"] if im["id"] == image)
    return {f"{r['candidate']}:{r['seed']}": r for r in entry["results"]}


# ---------------------------------------------------------------------- the page

def test_page_and_every_asset_are_served_from_the_package(server, client):
    page = client.request("GET", "/")
    assert page.status == 200 and b"/static/app.js" in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("app.js", "app.css"):
        reply = client.request("GET", f"/static/{asset}")
        assert reply.status == 200 and len(reply.body) > 1000
    static = Path(__file__).resolve().parents[1] / "src" / "sr4" / "web" / "static"
    for f in static.iterdir():  # nothing from a CDN or any other host: the app works offline
        text = f.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f.name
    config = client.request("GET", "/api/config").json()
    ids = [c["id"] for c in config["candidates"]]
    assert ids == ["bicubic", "default", "model-1", "snucv", "tsdsr"]
    assert config["candidates"][3]["unavailable"] and config["candidates"][4]["unavailable"]
    missing = config["metrics"]["unavailable"]
    assert set(missing) == {"lpips", "dists", "clipiqa", "maniqa", "musiq"}
    assert "RN50.pt is missing; put it in" in missing["clipiqa"] and "no_weights" in missing["clipiqa"]


# ---------------------------------------------------------------------- results equal sr4 upscale

@pytest.mark.slow  # the first default-model run of the process compiles the numba scan
def test_results_are_the_bytes_sr4_upscale_writes_and_niqe_is_sr4s(server, client, tmp_path):
    image, src = _upload(client, tmp_path, "my photo.png", h=40, w=36)
    reply = client.submit(image, ["bicubic", "default"], seed=3)
    assert reply.status == 200 and len(reply.json()["jobs"]) == 2
    state = client.wait_idle()
    assert [j["state"] for j in state["jobs"]] == ["done", "done"]
    default_job = next(j for j in state["jobs"] if j["candidate"] == "default")
    assert default_job["total"] == 4 and default_job["done"] == 4  # 40x36 in 32 px tiles: per-tile progress
    results = _results(state, image)
    for key, options in (("bicubic:3", ["--model", "bicubic", "--seed", "3"]), ("default:3", ["--seed", "3"])):
        r = results[key]
        download = client.request("GET", r["url"] + "?download=1")
        assert download.status == 200 and download.headers["content-type"] == "image/png"
        disposition = unquote(download.headers["content-disposition"])
        assert disposition.startswith("attachment;") and disposition.endswith(r["download_name"])
        expected = _sr4_upscale(src, tmp_path / key.replace(":", "_"), *options)
        assert download.body == expected, f"{key}: the download differs from sr4 upscale's file"
        out = tmp_path / f"{key.replace(':', '_')}.png"
        out.write_bytes(download.body)
        pixels = to_rgb8(read_image(out).pixels)
        assert (r["width"], r["height"]) == (36 * 4, 40 * 4)
        assert r["scores"]["niqe"] == pytest.approx(niqe(pixels), abs=1e-9)
        assert set(r["scores"]) == {"niqe"}  # no learned weights, no HR reference
    assert results["default:3"]["download_name"] == "my photo_default_seed3.png"
    # The same candidate and seed again is not run twice; another seed is a new result.
    assert client.submit(image, ["default"], seed=3).json()["jobs"] == []
    assert len(client.submit(image, ["default"], seed=4).json()["jobs"]) == 1
    results = _results(client.wait_idle(), image)
    assert client.request("GET", results["default:4"]["url"]).body != client.request(
        "GET", results["default:3"]["url"]).body


def test_hr_reference_gives_full_reference_scores_to_old_and_new_results(server, client, tmp_path):
    image, src = _upload(client, tmp_path, h=32, w=32, seed=5)
    client.submit(image, ["bicubic"])
    client.wait_idle()
    hr_path = tmp_path / "hr.png"
    hr = png_bytes(hr_path, 128, 128, seed=6)
    reply = client.upload(hr, "hr.png", path=f"/images/{image}/reference")
    assert reply.status == 200, reply.body
    client.submit(image, ["default"])
    state = client.wait_idle()
    assert any(j["kind"] == "score" and j["state"] == "done" for j in state["jobs"])
    hr8 = to_rgb8(read_image(hr_path).pixels)
    for r in _results(state, image).values():
        out = tmp_path / f"{r['id']}.png"
        out.write_bytes(client.request("GET", r["url"]).body)
        sr8 = to_rgb8(read_image(out).pixels)
        assert r["scores"]["psnr"] == pytest.approx(psnr(sr8, hr8), abs=1e-9)
        assert r["scores"]["ssim"] == pytest.approx(ssim(sr8, hr8), abs=1e-9)
        # Independent PSNR on Y (BT.601, shave 4), as the challenge computes it.
        def y(a):
            return (a.astype(np.float64) @ [65.481, 128.553, 24.966]) / 255.0 + 16.0
        mse = np.mean((y(sr8)[4:-4, 4:-4] - y(hr8)[4:-4, 4:-4]) ** 2)
        assert r["scores"]["psnr"] == pytest.approx(10 * np.log10(255.0 ** 2 / mse), abs=1e-6)
    entry = next(im for im in state["images"] if im["id"] == image)
    assert entry["reference"]["width"] == 128
    assert client.request("GET", entry["reference"]["url"]).status == 200
    # A reference of another size: the result keeps its no-reference scores and says why the others are missing.
    client.upload(png_bytes(tmp_path / "hr2.png", 100, 128, seed=7), "hr2.png", path=f"/images/{image}/reference")
    state = client.wait_idle()
    for r in _results(state, image).values():
        assert "psnr" not in r["scores"] and "niqe" in r["scores"]
        assert any("HR reference is 128x100 but this result is 128x128" in n for n in r["notes"])


def test_zip_of_all_results_holds_each_download(server, client, tmp_path):
    a, _ = _upload(client, tmp_path, "a.png", seed=1)
    b, _ = _upload(client, tmp_path, "b.png", seed=2)
    for image in (a, b):
        client.submit(image, ["bicubic", "default"])
    state = client.wait_idle()
    reply = client.request("GET", client.ws("/results.zip"))
    assert reply.status == 200 and reply.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.body)) as zf:
        names = sorted(zf.namelist())
        assert names == ["a/a_bicubic_seed0.png", "a/a_default_seed0.png", "b/b_bicubic_seed0.png",
                         "b/b_default_seed0.png"]
        for image in (a, b):
            for r in _results(state, image).values():
                member = next(n for n in names if n.endswith(r["download_name"]))
                assert zf.read(member) == client.request("GET", r["url"]).body
    one = client.request("GET", client.ws(f"/results.zip?image={a}"))
    with zipfile.ZipFile(io.BytesIO(one.body)) as zf:
        assert sorted(zf.namelist()) == ["a/a_bicubic_seed0.png", "a/a_default_seed0.png"]
    assert not list(server.state.root.glob("zip-*")), "zip files are removed once sent"


# ---------------------------------------------------------------------- bad inputs

def _bomb_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


BAD_UPLOADS = {
    "empty": (b"", 400, "the file is empty"),
    "text": (b"hello, this is not an image\n" * 4, 415, "not an image sr4 reads"),
    "html named png": (b"<html><script>alert(1)</script></html>", 415, "not an image sr4 reads"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', 415, "not an image sr4 reads"),
    "zip": (b"PK\x03\x04" + b"\0" * 100, 415, "not an image sr4 reads"),
    "png signature then garbage": (b"\x89PNG\r\n\x1a\n" + b"\x13" * 200, 400, "not a readable PNG"),
    # Pillow's guard or sr4's pixel limit, whichever reads the header first: both name the bomb.
    "decompression bomb": (_bomb_png(), 400, "decompression.bomb"),
    "too large": (b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD + 10), 413, "larger than this server's limit"),
}


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_bad_uploads_get_one_sentence_and_leave_nothing(server, client, kind):
    data, status, words = BAD_UPLOADS[kind]
    before = sorted(p.name for p in server.state.root.iterdir())
    reply = client.upload(data, "evil.png")
    assert reply.status == status, reply.body
    message = reply.json()["error"]
    assert message.startswith("evil.png: ") and re.search(words, message) and "\n" not in message
    assert str(server.state.root) not in message
    assert sorted(p.name for p in server.state.root.iterdir()) == before
    assert client.state()["images"] == []
    assert client.request("GET", "/api/config").status == 200  # still serving


def test_truncated_and_too_many_pixels_images(server, client, tmp_path):
    good = png_bytes(tmp_path / "g.png", 40, 40)
    reply = client.upload(good[: len(good) // 2], "cut.png")
    assert reply.status == 400 and "cut.png: truncated or corrupt PNG image data" in reply.json()["error"]
    write_image(tmp_path / "big.png", np.full((400, 320, 3), 90, np.uint8))  # 128,000 px > 120,000, a small file
    reply = client.upload((tmp_path / "big.png").read_bytes(), "big.png")
    assert reply.status == 400
    assert "big.png: 320x400 = 128,000 pixels exceeds the limit of 120,000" in reply.json()["error"]


def test_oversize_upload_without_content_length_is_cut_off(server, client):
    def chunks():
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(40):
            yield b"\0" * 10_000

    import http.client

    before = sorted(server.state.root.iterdir())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", client.ws("/images"), body=chunks(), encode_chunked=True,
                     headers={"Host": server.host, "Origin": f"http://{server.host}", "X-File-Name": "stream.png"})
        reply = conn.getresponse()
        assert reply.status == 413 and "larger than this server's limit" in json.loads(reply.read())["error"]
    finally:
        conn.close()
    assert sorted(server.state.root.iterdir()) == before


def test_uploaded_names_are_shown_never_used_as_paths(server, client, tmp_path):
    data = png_bytes(tmp_path / "n.png", 20, 20)
    for raw, shown in (("../../../../tmp/evil.png", "evil.png"), ("/etc/passwd", "passwd"),
                       ("..\\..\\win.png", "win.png"), ("a\x00b<script>.png", "a_b_script_.png"), ("", "image")):
        reply = client.upload(data, raw)
        assert reply.status == 200, reply.body
        assert reply.json()["name"] == shown
    assert not Path("/tmp/evil.png").exists()
    names = [p.name for p in server.state.root.iterdir()]
    assert all(re.fullmatch(r"(lr|ref|hr|sr|zip)-[A-Za-z0-9_-]{16}\.(upload|png|zip)", n) for n in names), names


def test_bad_requests_and_unknown_ids(server, client, tmp_path):
    image, _ = _upload(client, tmp_path)
    jobs = client.ws("/jobs")
    json_headers = {"Content-Type": "application/json"}
    for body, words in ((b"{not json", "not JSON"), (b"[1, 2]", "expected a JSON object"),
                        (json.dumps({"image": image, "candidates": ["bicubic"], "seed": -1}).encode(), "seed"),
                        (json.dumps({"image": image, "candidates": ["bicubic"], "seed": "7"}).encode(), "seed"),
                        (json.dumps({"image": image, "candidates": ["bicubic"], "seed": True}).encode(), "seed"),
                        (json.dumps({"image": image, "candidates": "bicubic"}).encode(), "list"),
                        (json.dumps({"image": image, "candidates": []}).encode(), "at least one"),
                        (json.dumps({"image": image, "candidates": ["/etc/passwd"]}).encode(), "unknown candidate"),
                        (json.dumps({"image": 5, "candidates": ["bicubic"]}).encode(), "image id")):
        reply = client.request("POST", jobs, body=body, headers=json_headers)
        assert reply.status == 400 and words in reply.json()["error"], (body, reply.body)
    reply = client.submit(image, ["snucv"])
    assert reply.status == 400 and "SNUCV (MambaIRv2 + TSD-SR) is unavailable" in reply.json()["error"]
    assert client.submit("nope", ["bicubic"]).status == 404
    assert client.request("GET", "/api/w/nope/state").status == 404
    assert client.request("GET", client.ws("/results/nope.png")).status == 404
    assert client.request("GET", client.ws(f"/images/{image}/reference.png")).status == 404
    assert client.request("POST", client.ws("/jobs/nope/cancel")).status == 404
    assert client.request("GET", client.ws("/results.zip")).status == 404  # nothing to zip yet
    assert client.request("DELETE", client.ws("/images/nope")).status == 404


def test_a_failing_model_is_one_sentence_and_the_server_goes_on(server, client, tmp_path):
    image, _ = _upload(client, tmp_path)
    client.submit(image, ["model-1", "bicubic"])
    state = client.wait_idle()
    jobs = {j["candidate"]: j for j in state["jobs"]}
    assert jobs["model-1"]["state"] == "failed" and jobs["bicubic"]["state"] == "done"
    error = jobs["model-1"]["error"]
    assert "broken_model.pth" in error and "\n" not in error and error.endswith(".")


# ---------------------------------------------------------------------- Origin and Host

def test_state_changes_need_this_servers_origin_and_host(server, client, tmp_path):
    data = png_bytes(tmp_path / "o.png", 16, 16)
    cases = [
        ({"Origin": "http://evil.example"}, None),
        ({"Origin": "null"}, None),
        ({"Origin": f"http://localhost:{server.port + 1}"}, None),
        ({"Sec-Fetch-Site": "cross-site"}, None),  # a browser request without Origin
        ({"Origin": f"http://evil.example:{server.port}"}, f"evil.example:{server.port}"),  # DNS rebinding
    ]
    for headers, host in cases:
        reply = client.request("POST", client.ws("/images"), body=data, headers={**headers, "X-File-Name": "o.png"},
                               origin=False, host=host)
        assert reply.status == 403 and reply.json()["error"].startswith("refused"), headers
        assert client.request("POST", "/api/w", headers=headers, origin=False, host=host).status == 403
    assert client.request("GET", "/", host=f"evil.example:{server.port}").status == 403
    assert client.request("GET", "/api/config", host="127.0.0.1").status == 403  # another port
    assert client.state()["images"] == []
    # The page's own requests, under each local name.
    for name in ("127.0.0.1", "localhost"):
        reply = client.upload(data, "o.png", host=f"{name}:{server.port}")
        assert reply.status == 200, reply.body
    # A client that is no web page (no Origin, no Sec-Fetch-Site) may script the API.
    assert client.upload(data, "o.png", origin=False).status == 200


# ---------------------------------------------------------------------- two tabs, queue, cancel

def test_two_tabs_work_at_once_and_see_only_their_own(server, tmp_path):
    import sr4

    tabs = [Client(server), Client(server)]
    for tab in tabs:
        tab.open_workspace()
    outcome: dict[int, dict] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            tab = tabs[i]
            data = png_bytes(tmp_path / f"tab{i}.png", 24 + 8 * i, 28, seed=10 + i)
            image = tab.upload(data, f"tab{i}.png").json()["image"]
            assert tab.submit(image, ["default", "bicubic"], seed=i).status == 200
            outcome[i] = {"image": image, "state": tab.wait_idle()}
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, tab in enumerate(tabs):
        state = outcome[i]["state"]
        assert [im["name"] for im in state["images"]] == [f"tab{i}.png"]
        results = _results(state, outcome[i]["image"])
        expected = sr4.Upscaler(tile=32, tile_overlap=4, device="cpu", seed=i)(
            read_image(tmp_path / f"tab{i}.png").pixels)
        out = tmp_path / f"tab{i}_sr.png"
        out.write_bytes(tab.request("GET", results[f"default:{i}"]["url"]).body)
        np.testing.assert_array_equal(read_image(out).pixels, expected)
        other = tabs[1 - i]
        assert other.request("GET", results[f"default:{i}"]["url"].replace(tab.workspace, other.workspace)).status \
            == 404
        assert other.request("GET", f"/api/w/{other.workspace}/images/{outcome[i]['image']}/lr.png").status == 404


def test_queue_positions_and_cancel_of_waiting_and_running_jobs(server, client, tmp_path, monkeypatch):
    from sr4.networks.bicubic import BicubicUpsampler

    entered, release = threading.Event(), threading.Event()
    original = BicubicUpsampler.forward

    def slow_forward(self, x, generator=None):
        entered.set()
        assert release.wait(30)
        return original(self, x, generator)

    monkeypatch.setattr(BicubicUpsampler, "forward", slow_forward)
    first, _ = _upload(client, tmp_path, "first.png", seed=1)
    second, _ = _upload(client, tmp_path, "second.png", seed=2)
    try:
        running = client.submit(first, ["bicubic"]).json()["jobs"][0]
        assert entered.wait(30)
        waiting = client.submit(second, ["bicubic"]).json()["jobs"][0]
        jobs = {j["id"]: j for j in client.state()["jobs"]}
        assert (jobs[running]["state"], jobs[running]["position"]) == ("running", 0)
        assert (jobs[waiting]["state"], jobs[waiting]["position"]) == ("queued", 1)
        assert client.state()["queue"] == {"running": 1, "waiting": 1}
        assert client.request("POST", client.ws(f"/jobs/{waiting}/cancel")).json()["state"] == "cancelled"
        assert client.request("POST", client.ws(f"/jobs/{running}/cancel")).json()["state"] == "running"
        assert next(j for j in client.state()["jobs"] if j["id"] == running)["cancelling"]
    finally:
        release.set()
    state = client.wait_idle()
    jobs = {j["id"]: j for j in state["jobs"]}
    assert jobs[running]["state"] == "cancelled" and jobs[waiting]["state"] == "cancelled"
    assert all(not im["results"] for im in state["images"])
    monkeypatch.setattr(BicubicUpsampler, "forward", original)
    client.submit(second, ["bicubic"])
    assert client.wait_idle()["jobs"][-1]["state"] == "done"  # the worker goes on


def test_removing_an_image_removes_its_files(server, client, tmp_path):
    image, _ = _upload(client, tmp_path)
    client.submit(image, ["bicubic"])
    state = client.wait_idle()
    before = set(server.state.root.iterdir())
    assert client.request("DELETE", client.ws(f"/images/{image}")).status == 200
    gone = before - set(server.state.root.iterdir())
    assert len(gone) == 3  # upload, preview, result
    assert client.request("GET", _results(state, image)["bicubic:0"]["url"]).status == 404
    assert client.state()["images"] == []


# ---------------------------------------------------------------------- the command

def _start_cli(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str, Path]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sr4", "serve", "--port", "0", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = proc.stdout.readline().split()[2]
    temp = Path(proc.stdout.readline().split(" in ")[1].split(" (")[0])
    return proc, url, temp


@pytest.mark.slow  # a fresh interpreter imports torch
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_removes_its_temporary_folder_on_signals(tmp_path, sig):
    host = "127.0.0.1" if sig == signal.SIGTERM else "127.0.0.2"  # another address: served, with a warning
    proc, url, temp = _start_cli(tmp_path, "--host", host)
    try:
        assert url == f"http://{host}:{url.rsplit(':', 1)[1]}" and temp.is_dir() and temp.parent == tmp_path
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "api/config", timeout=5) as r:
                    assert json.load(r)["candidates"][0]["id"] == "bicubic"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        request = urllib.request.Request(url + "api/w", method="POST", headers={"Origin": url.rstrip("/")})
        with urllib.request.urlopen(request, timeout=5) as r:
            workspace = json.load(r)["workspace"]
        data = png_bytes(tmp_path / "p.png", 16, 16)
        request = urllib.request.Request(url + f"api/w/{workspace}/images", data=data, method="POST",
                                         headers={"Origin": url.rstrip("/"), "X-File-Name": "p.png"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200
        assert len(list(temp.iterdir())) == 2
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not temp.exists(), err
    assert proc.returncode in (0, 128 + sig, -sig), err
    assert ("WARNING: listening on 127.0.0.2" in err) == (host != "127.0.0.1")


@pytest.mark.slow  # two fresh interpreters import torch
def test_a_folder_left_by_sigkill_is_removed_at_the_next_start(tmp_path):
    # Folders that only look alike stay: another program's, a live process's (this one), a link to a folder.
    from sr4.utils.atomic import writer_token

    foreign = tmp_path / "sr4-serve-notours"
    foreign.mkdir()
    live = tmp_path / f"sr4-serve-{writer_token()}-abc"
    live.mkdir()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "f.txt").write_text("x")
    link = tmp_path / "sr4-serve-000000-1-1-link"
    link.symlink_to(tmp_path / "kept", target_is_directory=True)
    proc, _, first = _start_cli(tmp_path)
    proc.kill()
    proc.communicate(timeout=30)
    assert first.is_dir()  # SIGKILL: nothing could clean up
    proc, _, second = _start_cli(tmp_path)
    try:
        assert second.is_dir() and not first.exists()
        assert foreign.is_dir() and live.is_dir() and link.is_symlink()
        assert (tmp_path / "kept" / "f.txt").read_text() == "x"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert not second.exists()


def test_cli_refuses_a_missing_model_and_a_missing_extra(tmp_path, monkeypatch, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope.pth")]) == 2
    assert "--model" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve"]) == 2
    assert "pip install 'sr4[web]'" in capsys.readouterr().err


@pytest.mark.slow  # builds a tiny SD3 model folder
def test_snucv_candidate_of_a_model_folder_equals_sr4_upscale(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from refiner_fixtures import shared_tiny_model_folder

    model_dir = shared_tiny_model_folder()
    config = WebConfig(candidates=tuple(list_candidates(model_dir=model_dir)),
                       processor=ProcessorOptions(device="cpu", tile=32, tile_overlap=4),
                       weights_dir=str(tmp_path), temp_parent=str(tmp_path))
    assert [(c.id, c.unavailable) for c in config.candidates[2:]] == [("snucv", None), ("tsdsr", None)]
    served = serve(config)
    try:
        client = Client(served)
        client.open_workspace()
        image, src = _upload(client, tmp_path, "lr.png", h=12, w=14, seed=3)
        client.submit(image, ["snucv"], seed=2)
        state = client.wait_idle(120)
        assert state["jobs"][0]["state"] == "done", state["jobs"][0]["error"]
        result = _results(state, image)["snucv:2"]
        expected = _sr4_upscale(src, tmp_path / "cli", "--pipeline", "snucv", "--model-dir", str(model_dir),
                                "--seed", "2", "--device", "cpu")
        assert client.request("GET", result["url"]).body == expected
    finally:
        served.stop()
