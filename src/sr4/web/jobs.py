"""The state behind `sr4 serve`: per-tab workspaces, one job queue per device, results and scores.

Each browser tab opens a workspace (a random id) holding its images, their optional HR references,
its results and its jobs; another tab sees none of them. All files live in one temporary folder,
under names made here, and that folder is removed by `WebState.close` (the server calls it on exit,
SIGINT and SIGTERM). One worker thread runs the jobs of the device one at a time, in order; a job
reads the uploaded file with `sr4.image.io.read_image`, upscales it with
`ImageProcessor.process_image_data` and writes the PNG with `sr4.image.io.write_image`, the same
steps as `sr4 upscale --ext png`, so a downloaded result is that command's file byte for byte.
Scores come from `sr4.metrics` (NIQE always; CLIP-IQA, MANIQA, MUSIQ when their weight files are
there; PSNR, SSIM, LPIPS, DISTS against an HR reference).
"""

from __future__ import annotations

import math
import queue
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr4.pipeline.factory import ProcessorOptions
from sr4.utils.atomic import sweep_stale_folders, writer_token
from sr4.web.candidates import Candidate, load_processor
from sr4.web.uploads import UploadError, display_name, stem

#: metrics shown for every result / only against an HR reference, in the page's column order.
NO_REFERENCE = ("niqe", "clipiqa", "maniqa", "musiq")
FULL_REFERENCE = ("psnr", "ssim", "lpips", "dists")
#: jobs kept per workspace (finished ones beyond this are forgotten, oldest first).
MAX_JOBS_KEPT = 200
#: processors kept loaded at once (the SNUCV pipeline alone holds SD3).
MAX_LOADED = 2


class JobCancelled(Exception):
    """Raised from the progress callback of a job whose cancel was asked."""


class NotFound(LookupError):
    """An id that names nothing in this workspace."""


@dataclass(frozen=True)
class WebConfig:
    """Everything `sr4 serve` is started with that the app needs."""

    candidates: tuple[Candidate, ...]
    processor: ProcessorOptions = field(default_factory=ProcessorOptions)
    max_upload_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 2048 * 2048
    max_images: int = 200
    weights_dir: str | None = None
    temp_parent: str | None = None  # where the temporary folder is made (default: the system's)


@dataclass
class Result:
    id: str
    candidate: Candidate
    seed: int
    path: Path
    width: int
    height: int
    seconds: float
    download_name: str
    scores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scored: bool = False


@dataclass
class ImageEntry:
    id: str
    name: str
    upload: Path
    preview: Path
    width: int
    height: int
    mode: str
    bits: int
    reference: Path | None = None
    reference_preview: Path | None = None
    reference_size: tuple[int, int] | None = None
    results: dict[str, Result] = field(default_factory=dict)


@dataclass
class Job:
    id: str
    workspace: str
    image: str
    kind: str  # "upscale" | "score"
    candidate: Candidate
    seed: int
    created: float
    state: str = "queued"  # queued | running | done | failed | cancelled
    stage: str = "waiting"
    done: int = 0
    total: int = 0
    error: str | None = None
    result: str | None = None  # the result id (the one made, or the one rescored)
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Workspace:
    id: str
    images: dict[str, ImageEntry] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)


def _new_id() -> str:
    return secrets.token_urlsafe(12)


def error_sentence(exc: BaseException, replace: dict[str, str] | None = None) -> str:
    """One line for the page: the exception's first line, server paths replaced by what users know."""
    text = (str(exc).strip().splitlines() or [""])[0].strip() or type(exc).__name__
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return text if text.endswith((".", "!", "?")) else text + "."


class Scorer:
    """sr4.metrics for the page: NIQE always, learned metrics when their weight files are present."""

    def __init__(self, weights_dir: str | None, device: str):
        from sr4.metrics.evaluate import EvalConfig

        self.weights_dir = weights_dir
        self.device = device
        self.cfg = EvalConfig(weights_dir=weights_dir, device=device)
        self._learned: Any = None  # sr4.metrics.learned.LearnedMetrics, built on first use
        self._lock = threading.Lock()
        self.unavailable = self._missing_files()

    def _missing_files(self) -> dict[str, str]:
        """metric -> the sentence saying which file is missing and where to put it (files not loaded)."""
        from sr4.metrics.learned import weight_status

        missing: dict[str, str] = {}
        for row in weight_status(self.weights_dir):
            if row.found is None and not row.note and row.metric not in missing:
                missing[row.metric] = f"{row.name} is missing; put it in {row.looked_in[0].parent}"
        return missing

    def _learned_metrics(self) -> Any:
        with self._lock:
            if self._learned is None:
                from sr4.metrics.learned import LEARNED, build_learned
                from sr4.utils.device import resolve_device

                wanted = [m for m in LEARNED if m not in self.unavailable]
                self._learned = build_learned(wanted, self.weights_dir, resolve_device(self.device))
                self.unavailable.update(self._learned.unavailable)
            return self._learned

    def status(self) -> dict:
        return {"always": ["niqe"], "no_reference": list(NO_REFERENCE), "full_reference": list(FULL_REFERENCE),
                "unavailable": dict(self.unavailable)}

    def score(self, sr8: np.ndarray, hr8: np.ndarray | None) -> tuple[dict[str, float], list[str]]:
        """Scores of one HxWx3 uint8 result (and its HR reference of the same size, or None)."""
        from sr4.metrics.evaluate import score_image
        from sr4.metrics.score import challenge_score

        learned = self._learned_metrics()
        notes: list[str] = []
        wanted = list(NO_REFERENCE) + (list(FULL_REFERENCE) if hr8 is not None else [])
        metrics = [m for m in wanted if m not in self.unavailable]
        torch.manual_seed(self.cfg.seed)  # as sr4 eval: scores that draw random crops repeat
        values = score_image(sr8, hr8, metrics, learned, self.cfg, notes)
        values = {k: v for k, v in values.items() if not math.isnan(v)}
        score = challenge_score(values)
        if score is not None:
            values["score"] = score
        return values, notes


#: temporary folders of `sr4 serve` are named SERVE_TEMP_PREFIX + HOST-PID-START + random.
SERVE_TEMP_PREFIX = "sr4-serve-"


class WebState:
    """Workspaces, the job queue and its worker; thread-safe. `close()` removes every file."""

    def __init__(self, config: WebConfig):
        self.config = config
        self.candidates = {c.id: c for c in config.candidates}
        # Named after this process, so the next start removes what a SIGKILL left behind.
        parent = config.temp_parent or tempfile.gettempdir()
        sweep_stale_folders(parent, SERVE_TEMP_PREFIX)
        self.root = Path(tempfile.mkdtemp(prefix=f"{SERVE_TEMP_PREFIX}{writer_token()}-", dir=parent))
        self.scorer = Scorer(config.weights_dir, config.processor.device)
        self._lock = threading.RLock()  # guards workspaces, jobs and the closed flag
        self._write_lock = threading.Lock()  # held while a file is written; close() takes it before removing
        self._workspaces: dict[str, Workspace] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._order: list[Job] = []  # every job not finished, in queue order
        self._processors: OrderedDict[str, object] = OrderedDict()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="sr4-serve-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ workspaces and images

    def new_workspace(self) -> str:
        with self._lock:
            self._check_open()
            ws = Workspace(_new_id())
            self._workspaces[ws.id] = ws
            return ws.id

    def workspace(self, wid: str) -> Workspace:
        with self._lock:
            ws = self._workspaces.get(wid)
            if ws is None:
                raise NotFound("unknown workspace (the server may have been restarted; reload the page)")
            return ws

    def image(self, wid: str, iid: str) -> ImageEntry:
        with self._lock:
            entry = self.workspace(wid).images.get(iid)
            if entry is None:
                raise NotFound("unknown image")
            return entry

    def result(self, wid: str, rid: str) -> tuple[ImageEntry, Result]:
        with self._lock:
            for entry in self.workspace(wid).images.values():
                if rid in entry.results:
                    return entry, entry.results[rid]
            raise NotFound("unknown result")

    def new_upload_path(self, kind: str) -> Path:
        """A fresh path in the temporary folder for an upload being received."""
        self._check_open()
        return self.root / f"{kind}-{_new_id()}.upload"

    def add_image(self, wid: str, upload: Path, name: str) -> ImageEntry:
        """Register a received upload (already size- and type-checked) after reading it like `sr4 upscale`."""
        from sr4.image.io import ImageData, ImageError, read_image

        ws = self.workspace(wid)
        with self._lock:
            if sum(len(w.images) for w in self._workspaces.values()) >= self.config.max_images:
                raise UploadError(f"{name}: this server already holds {self.config.max_images} images; remove "
                                  "some first", status=409)
        try:
            data = read_image(upload, max_pixels=self.config.max_pixels)
        except ImageError as exc:
            raise UploadError(f"{name}: {exc.problem}") from None
        iid = _new_id()
        preview = self.root / f"lr-{iid}.png"
        self._write(preview, ImageData(pixels=data.pixels, icc_profile=data.icc_profile))
        entry = ImageEntry(iid, name, upload, preview, data.size[0], data.size[1], data.mode, data.bits)
        with self._lock:
            self._check_open()
            ws.images[iid] = entry
        return entry

    def set_reference(self, wid: str, iid: str, upload: Path, name: str) -> ImageEntry:
        """Attach an HR reference to an image and queue the full-reference scores of its results."""
        from sr4.image.io import ImageData, ImageError, read_image

        entry = self.image(wid, iid)
        try:
            data = read_image(upload, max_pixels=self.config.max_pixels * 16)  # HR: x4 each side
        except ImageError as exc:
            raise UploadError(f"{name}: {exc.problem}") from None
        preview = self.root / f"hr-{_new_id()}.png"
        self._write(preview, ImageData(pixels=data.pixels, icc_profile=data.icc_profile))
        with self._lock:
            old = (entry.reference, entry.reference_preview)
            entry.reference, entry.reference_preview, entry.reference_size = upload, preview, data.size
            for res in entry.results.values():
                self._enqueue(Job(_new_id(), wid, iid, "score", res.candidate, res.seed, time.time(), result=res.id))
        for path in old:
            if path is not None:
                path.unlink(missing_ok=True)
        return entry

    def remove_image(self, wid: str, iid: str) -> None:
        with self._lock:
            ws = self.workspace(wid)
            entry = ws.images.pop(iid, None)
            if entry is None:
                raise NotFound("unknown image")
            for job in ws.jobs.values():
                if job.image == iid and job.state in ("queued", "running"):
                    job.cancel.set()
        with self._write_lock:
            paths = [entry.upload, entry.preview, entry.reference, entry.reference_preview,
                     *(r.path for r in entry.results.values())]
            for path in paths:
                if path is not None:
                    path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ jobs

    def submit(self, wid: str, iid: str, candidate_ids: list[str], seed: int) -> list[Job]:
        """Queue one upscale job per candidate; an identical result or waiting job is not repeated."""
        entry = self.image(wid, iid)
        unknown = [c for c in candidate_ids if c not in self.candidates]
        if unknown or not candidate_ids:
            raise UploadError(f"unknown candidate {unknown[0]!r}" if unknown else "choose at least one candidate")
        jobs = []
        with self._lock:
            ws = self.workspace(wid)
            for cid in dict.fromkeys(candidate_ids):
                cand = self.candidates[cid]
                if cand.unavailable:
                    raise UploadError(f"{cand.label} is unavailable: {cand.unavailable}")
                same = [j for j in ws.jobs.values() if j.image == iid and j.kind == "upscale"
                        and j.candidate.id == cid and j.seed == seed and j.state in ("queued", "running")]
                if same or any(r.candidate.id == cid and r.seed == seed for r in entry.results.values()):
                    continue
                job = Job(_new_id(), wid, iid, "upscale", cand, seed, time.time())
                self._enqueue(job)
                jobs.append(job)
        return jobs

    def _enqueue(self, job: Job) -> None:
        self._check_open()
        ws = self._workspaces[job.workspace]
        ws.jobs[job.id] = job
        finished = [j for j in ws.jobs.values() if j.state in ("done", "failed", "cancelled")]
        for old in finished[: max(0, len(ws.jobs) - MAX_JOBS_KEPT)]:
            del ws.jobs[old.id]
        self._order.append(job)
        self._queue.put(job)

    def cancel(self, wid: str, jid: str) -> Job:
        with self._lock:
            job = self.workspace(wid).jobs.get(jid)
            if job is None:
                raise NotFound("unknown job")
            job.cancel.set()
            if job.state == "queued":
                self._finish(job, "cancelled")
            return job

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        job.state, job.error, job.stage = state, error, state
        if job in self._order:
            self._order.remove(job)

    def queue_position(self, job: Job) -> int | None:
        """0 for the running job, n for the n-th waiting one; None when finished."""
        with self._lock:
            return self._order.index(job) if job in self._order else None

    def queue_summary(self) -> dict:
        with self._lock:
            running = [j for j in self._order if j.state == "running"]
            return {"running": len(running), "waiting": len(self._order) - len(running)}

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state != "queued" or self._closed:
                    continue
                job.state, job.stage = "running", "starting"
            try:
                if job.kind == "upscale":
                    self._upscale(job)
                else:
                    self._rescore(job)
            except JobCancelled:
                with self._lock:
                    self._finish(job, "cancelled")
            except Exception as exc:  # any failure of one job is shown in the page; the server goes on
                if job.cancel.is_set():  # e.g. its image was removed while it ran
                    with self._lock:
                        self._finish(job, "cancelled")
                    continue
                entry = self._workspaces.get(job.workspace, Workspace("")).images.get(job.image)
                paths = {str(p): entry.name for p in (entry.upload, entry.reference) if p} if entry else {}
                with self._lock:
                    self._finish(job, "failed", error_sentence(exc, {**paths, str(self.root): "(temporary folder)"}))
            else:
                with self._lock:
                    self._finish(job, "done")

    def _check_cancel(self, job: Job) -> None:
        if job.cancel.is_set() or self._closed:
            raise JobCancelled()

    def _processor(self, cand: Candidate):
        proc = self._processors.get(cand.id)
        if proc is None:
            while len(self._processors) >= MAX_LOADED:
                self._processors.popitem(last=False)
            proc = self._processors[cand.id] = load_processor(cand, self.config.processor)
        self._processors.move_to_end(cand.id)
        return proc

    def _upscale(self, job: Job) -> None:
        from sr4.image.io import read_image

        entry = self.image(job.workspace, job.image)
        job.stage = "loading model"
        processor = self._processor(job.candidate)
        self._check_cancel(job)
        data = read_image(entry.upload, max_pixels=self.config.max_pixels)

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            self._check_cancel(job)

        job.stage = "upscaling"
        start = time.perf_counter()
        out = processor.process_image_data(data, seed=job.seed, progress=progress)
        seconds = time.perf_counter() - start
        del data
        self._check_cancel(job)
        job.stage = "writing"
        rid = _new_id()
        path = self.root / f"sr-{rid}.png"
        self._write(path, out)
        name = f"{stem(entry.name)}_{job.candidate.id if job.candidate.kind != 'model' else stem(job.candidate.label)}"
        result = Result(rid, job.candidate, job.seed, path, out.size[0], out.size[1], seconds,
                        display_name(f"{name}_seed{job.seed}.png"))
        with self._lock:
            if job.image not in self.workspace(job.workspace).images:
                path.unlink(missing_ok=True)
                raise JobCancelled()
            entry.results[rid] = result
            job.result = rid
        job.stage = "scoring"
        self._score(entry, result, out.pixels)

    def _rescore(self, job: Job) -> None:
        from sr4.image.io import read_image

        if job.result is None:
            raise NotFound("no result to score")
        entry, result = self.result(job.workspace, job.result)
        job.stage = "scoring"
        self._score(entry, result, read_image(result.path).pixels)

    def _score(self, entry: ImageEntry, result: Result, pixels: np.ndarray) -> None:
        from sr4.image.convert import to_rgb8
        from sr4.image.io import read_image

        sr8 = to_rgb8(pixels)
        hr8, notes = None, []
        if entry.reference is not None:
            hr8 = to_rgb8(read_image(entry.reference, max_pixels=self.config.max_pixels * 16).pixels)
            if hr8.shape != sr8.shape:
                notes.append(f"the HR reference is {hr8.shape[1]}x{hr8.shape[0]} but this result is "
                             f"{sr8.shape[1]}x{sr8.shape[0]}: no full-reference scores")
                hr8 = None
        values, more = self.scorer.score(sr8, hr8)
        with self._lock:
            result.scores, result.notes, result.scored = values, notes + more, True

    # ------------------------------------------------------------------ files

    def _write(self, path: Path, data) -> None:
        """Write an image into the temporary folder, unless the server is closing (then nothing is written)."""
        from sr4.image.io import write_image

        with self._write_lock:
            self._check_open()
            write_image(path, data)

    def zip_results(self, wid: str, iid: str | None = None) -> Path:
        """A zip (stored, PNGs do not compress) of the workspace's results, or of one image's."""
        with self._lock:
            ws = self.workspace(wid)
            entries = [self.image(wid, iid)] if iid else list(ws.images.values())
            members = []
            used: set[str] = set()
            for entry in entries:
                folder = stem(entry.name)
                for res in entry.results.values():
                    arc = f"{folder}/{res.download_name}"
                    n = 1
                    while arc in used:
                        n += 1
                        arc = f"{folder} ({n})/{res.download_name}"
                    used.add(arc)
                    members.append((res.path, arc))
        if not members:
            raise NotFound("no results to download yet")
        path = self.root / f"zip-{_new_id()}.zip"
        with self._write_lock:
            self._check_open()
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
                for src, arc in members:
                    if src.exists():
                        zf.write(src, arc)
        return path

    # ------------------------------------------------------------------ page state

    def snapshot(self, wid: str) -> dict:
        """Everything the page shows for one workspace, as JSON-ready data."""
        with self._lock:
            ws = self.workspace(wid)
            images = [self._describe_image(wid, e) for e in ws.images.values()]
            jobs = [self._describe_job(j) for j in ws.jobs.values()]
            return {"images": images, "jobs": jobs, "queue": self.queue_summary(),
                    "metrics": self.scorer.status()}

    def _describe_image(self, wid: str, e: ImageEntry) -> dict:
        base = f"/api/w/{wid}/images/{e.id}"
        ref = None
        if e.reference is not None and e.reference_size is not None:
            ref = {"url": f"{base}/reference.png", "width": e.reference_size[0], "height": e.reference_size[1]}
        results = [{"id": r.id, "candidate": r.candidate.id, "label": r.candidate.label, "seed": r.seed,
                    "width": r.width, "height": r.height, "seconds": round(r.seconds, 3),
                    "url": f"/api/w/{wid}/results/{r.id}.png", "download_name": r.download_name,
                    "scores": r.scores, "notes": r.notes, "scored": r.scored} for r in e.results.values()]
        return {"id": e.id, "name": e.name, "width": e.width, "height": e.height, "mode": e.mode, "bits": e.bits,
                "lr": f"{base}/lr.png", "reference": ref, "results": results}

    def _describe_job(self, j: Job) -> dict:
        return {"id": j.id, "image": j.image, "kind": j.kind, "candidate": j.candidate.id,
                "label": j.candidate.label, "seed": j.seed, "state": j.state, "stage": j.stage, "done": j.done,
                "total": j.total, "error": j.error, "result": j.result, "position": self.queue_position(j),
                "cancelling": j.cancel.is_set() and j.state == "running"}

    # ------------------------------------------------------------------ shutdown

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the server is shutting down")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (the running job is cancelled at its next tile) and remove the temporary folder."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for job in list(self._order):
                job.cancel.set()
        self._queue.put(None)
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        with self._write_lock:
            shutil.rmtree(self.root, ignore_errors=True)
        self._processors.clear()
