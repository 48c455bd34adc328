"""`sr4 upscale` never loses a file: inputs, files that appear mid-run, full disks, options, signals, leftovers."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from image_fixtures import animation
from PIL import Image

from sr4.cli import main
from sr4.image.io import read_image, write_image
from sr4.pipeline.upscaler import Upscaler
from sr4.utils import atomic

RNG = np.random.default_rng(5)
BICUBIC = ["--model", "bicubic"]
_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _img(path: Path, h: int = 10, w: int = 12, c: int = 3) -> Path:
    write_image(path, RNG.integers(0, 256, (h, w, c), dtype=np.uint8))
    return path


def _hashes(*folders: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*"))
            if p.is_file()}


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if atomic.is_temp_name(p.name)]


# ---------------------------------------------------------------------- inputs are never outputs


@pytest.mark.parametrize("case", ["other-input-same-stem", "suffix-names-an-input", "hard-link", "symlinked-folder",
                                  "same-folder-keep"])
def test_no_output_replaces_an_input_even_with_overwrite(tmp_path: Path, case: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    args: list[str]
    if case == "other-input-same-stem":  # a.jpg's output a.png is the input a.png
        _img(d / "a.png"), _img(d / "a.jpg")
        args, out = [str(d), "-o", str(d), "--ext", "png"], d
    elif case == "suffix-names-an-input":  # a.png's output a_x4.png is the input a_x4.png
        _img(d / "a.png"), _img(d / "a_x4.png")
        args, out = [str(d), "-o", str(d), "--suffix", "_x4"], d
    elif case == "hard-link":  # the output name is another name of the input file
        _img(d / "a.png")
        out = tmp_path / "out"
        out.mkdir()
        os.link(d / "a.png", out / "a.png")
        args = [str(d / "a.png"), "-o", str(out)]
    elif case == "symlinked-folder":  # -o is a link to the input folder
        _img(d / "a.png")
        out = tmp_path / "link"
        out.symlink_to(d, target_is_directory=True)
        args = [str(d), "-o", str(out)]
    else:
        _img(d / "a.png")
        args, out = [str(d / "a.png"), str(d / "a.png"), "-o", str(d)], d
    before = _hashes(d)
    assert main(["upscale", *args, "--overwrite", *BICUBIC]) == 1
    captured = capsys.readouterr()
    assert "would replace the input" in captured.err and "not even with --overwrite" in captured.err
    assert {p: h for p, h in _hashes(d).items() if p in before} == before
    assert not _temps(tmp_path)


def test_a_recursive_run_does_not_take_its_output_folder_for_input(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _img(photos / "a.png"), _img(photos / "trip" / "b.png")
    out = photos / "big"
    for _ in range(2):  # the second run finds the first run's outputs inside the input tree
        assert main(["upscale", str(photos), "-r", "-o", str(out), "--skip-existing", *BICUBIC]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["a.png", "trip/b.png"]


def test_overwrite_replaces_earlier_outputs_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _img(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), *BICUBIC]) == 0
    assert read_image(out / "a.png").size == (48, 40)
    assert main(["upscale", str(src), "-o", str(out), "--outscale", "2", "--overwrite", *BICUBIC]) == 0
    assert read_image(out / "a.png").size == (24, 20)
    (out / "b.png").mkdir()  # a folder at an output name is never replaced
    _img(tmp_path / "in" / "b.png")
    assert main(["upscale", str(tmp_path / "in"), "-o", str(out), "--overwrite", *BICUBIC]) == 1
    assert "is a folder" in capsys.readouterr().err and (out / "b.png").is_dir()


def test_overwrite_leaves_alone_every_file_sr4_did_not_write(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    for name in ("a.png", "b.jpg", "c.png", "d.png"):
        _img(src / name)
    out = tmp_path / "out"
    assert main(["upscale", str(src / "c.png"), "-o", str(out), *BICUBIC]) == 0  # an earlier sr4 output
    photo = Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    photo.save(out / "a.png")  # a user's PNG, no mark
    exif = Image.Exif()
    exif[0x0131] = "GIMP 2.10"
    photo.save(out / "b.jpg", exif=exif.tobytes())  # a JPEG another program wrote
    (out / "d.png").write_bytes(_hashes(src)[src / "d.png"].encode())  # not an image at all
    before, inputs = _hashes(out), _hashes(src)
    assert main(["upscale", str(src), "-o", str(out), "--outscale", "2", "--overwrite", *BICUBIC]) == 1
    captured = capsys.readouterr()
    assert "1 done, 0 skipped, 3 failed" in captured.out
    for name in ("a.png", "b.jpg", "d.png"):
        assert f"output {out / name} exists and was not written by sr4; left alone (remove it yourself" in captured.err
        assert _hashes(out)[out / name] == before[out / name]
    assert read_image(out / "c.png").size == (24, 20)  # the earlier output was replaced
    assert _hashes(src) == inputs and not _temps(tmp_path)


# ---------------------------------------------------------------------- files that appear while a run works


class _DropsAFile(Upscaler):
    """Bicubic; while working on an image it writes a file at that image's output name: a user's
    file, or an earlier sr4 output (`sr4_output`)."""

    def __init__(self, outdir: Path, sr4_output: bool = False):
        super().__init__("bicubic", tile=None)
        self.outdir, self.sr4_output = outdir, sr4_output

    def process_image_data(self, data, **kwargs):  # type: ignore[no-untyped-def]
        result = super().process_image_data(data, **kwargs)
        if data.size == (13, 11):  # b.png, planned while its output name was free
            if self.sr4_output:
                write_image(self.outdir / "b.png", np.zeros((5, 5, 3), np.uint8))
            else:
                (self.outdir / "b.png").write_bytes(b"user data")
        return result


@pytest.mark.parametrize("policy,code,line", [("", 1, "0 skipped, 1 failed"), ("--skip-existing", 0, "1 skipped"),
                                              ("--overwrite", 1, "1 done, 0 skipped, 1 failed")])
def test_a_file_that_appears_mid_run_is_never_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], policy: str, code: int,
        line: str) -> None:
    src = tmp_path / "in"
    _img(src / "a.png"), _img(src / "b.png", 11, 13)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr("sr4.cli.upscale.build_processor", lambda args, device: _DropsAFile(out))
    assert main(["upscale", str(src), "-o", str(out), *([policy] if policy else [])]) == code
    captured = capsys.readouterr()
    assert line in captured.out
    assert (out / "b.png").read_bytes() == b"user data"
    if policy == "--overwrite":  # judged by its mark at the final rename, not by the plan made before it appeared
        assert f"output {out / 'b.png'} exists and was not written by sr4; left alone" in captured.err
    else:
        assert policy or "appeared while this run was working" in captured.err
    assert read_image(out / "a.png").size == (48, 40) and not _temps(out)


def test_an_sr4_output_that_appears_mid_run_is_replaced_with_overwrite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    _img(src / "a.png"), _img(src / "b.png", 11, 13)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr("sr4.cli.upscale.build_processor", lambda args, device: _DropsAFile(out, sr4_output=True))
    assert main(["upscale", str(src), "-o", str(out), "--overwrite"]) == 0
    assert "2 done" in capsys.readouterr().out
    assert read_image(out / "b.png").size == (52, 44) and not _temps(out)


@pytest.mark.slow
def test_two_runs_into_one_folder_never_replace_each_other(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(24):
        _img(src / f"{i:02d}.png", 24, 24)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sr4", "upscale", str(src), "-o", str(out), *BICUBIC]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
            for _ in range(2)]
    results = [r.communicate(timeout=300) for r in runs]
    done = [int(o.split("sr4 upscale: ")[1].split(" done")[0]) for o, _ in results]
    assert sum(done) == 24, results  # every output written by exactly one run: none replaced
    for _, err in results:
        assert "Traceback" not in err
        for line in err.splitlines():
            assert "FAILED" not in line or "exists" in line or "appeared while" in line
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    for p in out.iterdir():
        assert read_image(p).size == (96, 96)


# ---------------------------------------------------------------------- full disk


@pytest.mark.parametrize("ext,bits", [("jpg", 8), ("png", 8), ("webp", 8), ("tiff", 8), ("png", 16), ("tiff", 16)])
def test_full_disk_never_leaves_a_truncated_output(tmp_path: Path, full_disk: Path, ext: str, bits: int,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    peak = 255 if bits == 8 else 65535
    # 48x48 -> 192x192 output: a JPEG of about 25 kB, written by one write() that a full disk cut short silently.
    pixels = RNG.integers(0, peak + 1, (48, 48, 3)).astype(np.uint8 if bits == 8 else np.uint16)
    write_image(tmp_path / "img.png", pixels)
    for rerun in ([], ["--skip-existing"]):
        assert main(["upscale", str(tmp_path / "img.png"), "-o", str(full_disk), "--ext", ext, *rerun,
                     *BICUBIC]) == 1
        captured = capsys.readouterr()
        assert "0 done, 0 skipped, 1 failed" in captured.out and "No space left on device" in captured.err
        assert os.listdir(full_disk) == []


# ---------------------------------------------------------------------- options and folders, before any work


@pytest.mark.parametrize("option", [["--suffix", "/../../escape"], ["--suffix", "x/y"], ["--suffix", "a\\b"],
                                    ["--outscale", "1000"], ["--outscale", "inf"], ["--outscale", "nan"],
                                    ["--outscale", "0"], ["--outscale", "-2"], ["--max-pixels", "0"],
                                    ["--max-pixels", "-1"], ["--max-pixels", "many"], ["--seed", str(2**64)],
                                    ["--tile-overlap", "-1"]])
def test_bad_options_stop_before_any_work(tmp_path: Path, option: list[str], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = _img(tmp_path / "deep" / "er" / "a.png")
    loaded = []
    monkeypatch.setattr("sr4.cli.upscale.build_processor", lambda *a: loaded.append(a))
    try:
        code = main(["upscale", str(src), "-o", str(tmp_path / "deep" / "er" / "out"), *option])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2 and not loaded
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "deep", "er"]  # nothing written anywhere
    capsys.readouterr()


@pytest.mark.parametrize("content", ["empty", "text-only", "hidden-and-temps"])
def test_no_images_is_a_could_not_start(tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    d.mkdir()
    if content == "text-only":
        (d / "notes.txt").write_text("x")
    elif content == "hidden-and-temps":
        _img(d / ".hidden.png")
        _img(d / f"{atomic.TEMP_PREFIX}abcdef-1-0-abcdef.a.png")
    assert main(["upscale", str(d), "-o", str(tmp_path / "out"), *BICUBIC]) == 2
    assert "no images found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_found_before_the_model_loads(tmp_path: Path, read_only_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = _img(tmp_path / "a.png")
    loaded = []
    monkeypatch.setattr("sr4.cli.upscale.build_processor", lambda *a: loaded.append(a))
    assert main(["upscale", str(src), "-o", str(read_only_dir)]) == 2
    assert "cannot write there" in capsys.readouterr().err and not loaded


# ---------------------------------------------------------------------- leftovers


def test_stale_temps_are_swept_and_never_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _img(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f"{atomic.TEMP_PREFIX}{atomic._host_tag()}-{int(dead.stdout)}-0-abcdef.a.png"
    stale.write_bytes(b"half an image")
    assert main(["upscale", str(src), "-o", str(out), *BICUBIC]) == 0
    captured = capsys.readouterr()
    assert "removed 1 temporary file(s)" in captured.err and not stale.exists()
    named = out / f"{atomic.TEMP_PREFIX}{atomic._host_tag()}-{os.getpid()}-0-abcdef.b.png"
    _img(named)
    assert main(["upscale", str(named), "-o", str(tmp_path / "o2"), *BICUBIC]) == 2
    assert "temporary file of an interrupted sr4 run" in capsys.readouterr().err


# ---------------------------------------------------------------------- frames


@pytest.mark.parametrize("ext", ["png", "webp", "gif", "tiff"])
def test_every_frame_is_upscaled(tmp_path: Path, ext: str, capsys: pytest.CaptureFixture[str]) -> None:
    frames = [(RNG.integers(0, 4, (6, 7, 3)) * 85).astype(np.uint8) for _ in range(3)]
    src = animation(tmp_path / f"in.{ext}", frames, [50, 100, 150], loop=0)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), *BICUBIC]) == 0
    out = read_image(tmp_path / "o" / f"in.{ext}", frames="all")
    assert out.frame_count == 3 and out.size == (28, 24)
    if ext != "tiff":
        assert out.animation.durations == [50, 100, 150]
    if ext in ("png", "tiff"):  # lossless: each frame is exactly the frame upscaled alone
        up = Upscaler("bicubic", tile=None)
        for got, frame in zip(out.animation.frames, frames):
            np.testing.assert_array_equal(got, np.asarray(up(Image.fromarray(frame))))
    assert main(["upscale", str(src), "-o", str(tmp_path / "j"), "--ext", "jpg", *BICUBIC]) == 1
    assert "3 frames and JPEG holds one" in capsys.readouterr().err
    assert not (tmp_path / "j").exists() or not any((tmp_path / "j").iterdir())


# ---------------------------------------------------------------------- signals


def _start_batch(tmp_path: Path, count: int = 20) -> tuple[subprocess.Popen, Path, Path]:
    src = tmp_path / "in"
    for i in range(count):
        _img(src / f"{i:02d}.png", 160, 160)  # 640x640 outputs: encoding takes a moment, writes are in flight
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sr4", "upscale", str(src), "-o", str(out), *BICUBIC],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    return proc, src, out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_write_cleans_up_and_reports(tmp_path: Path, sig: signal.Signals) -> None:
    proc, src, out = _start_batch(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.is_dir() and any(not atomic.is_temp_name(p.name) for p in
                                                               out.iterdir())):
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (stdout, stderr)
    assert f"stopped by {sig.name}" in stdout and "not finished" in stdout
    assert "Traceback" not in stderr
    assert not _temps(out)
    written = sorted(out.iterdir())
    assert 0 < len(written) < 20
    for p in written:
        assert read_image(p).size == (640, 640)
    rerun = subprocess.run([sys.executable, "-m", "sr4", "upscale", str(src), "-o", str(out), "--skip-existing",
                            *BICUBIC], capture_output=True, text=True, env=_ENV, timeout=300)
    assert rerun.returncode == 0 and f"{20 - len(written)} done, {len(written)} skipped" in rerun.stdout
    assert len(list(out.iterdir())) == 20


def test_interrupt_in_process_prints_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    for i in range(5):
        _img(src / f"{i}.png")

    class _SignalledAtThird(Upscaler):
        calls = 0

        def process_image_data(self, data, **kwargs):  # type: ignore[no-untyped-def]
            type(self).calls += 1
            if type(self).calls == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives in the main thread, mid-image
                time.sleep(1)
            return super().process_image_data(data, **kwargs)

    monkeypatch.setattr("sr4.cli.upscale.build_processor", lambda args, device: _SignalledAtThird("bicubic"))
    previous = signal.getsignal(signal.SIGTERM)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out")]) == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    out = capsys.readouterr().out
    assert "stopped by SIGTERM: 2 done, 0 skipped, 0 failed, 3 not finished" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png"]
