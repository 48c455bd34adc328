"""Upscaling a batch of files without ever losing one: planning, existing outputs, interruption.

Rules every batch follows (`sr4 upscale`, `sr4 eval --lr-dir`):

* No output replaces an input of the same run. Inputs are compared with outputs by path (as given
  and resolved) and by file identity (device and inode), so links, symlinked folders, bind mounts
  and case-insensitive file systems cannot hide a match; `overwrite` does not lift this rule.
* Output names stay inside the output folder.
* An output that exists when the run plans is skipped (`skip_existing`), replaced (`overwrite`)
  or reported; one that appears while the run works (another run, the user) is never replaced
  unless `overwrite`: the final rename refuses (`sr4.utils.atomic.publish`).
* `overwrite` replaces only files sr4 wrote (their mark: `sr4.image.marker.written_by_sr4`), read
  when the run plans and again just before the final rename; any other file is reported and left.
* SIGINT / SIGTERM (`sr4.utils.signals.Interrupted`) stop the batch between steps: images not
  started are left, images already computed are written (or fail and remove their temporary files),
  and the caller gets the signal back to report and exit with.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sr4.errors import NotWrittenBySr4Error, OutputExistsError
from sr4.image.files import OUTPUT_SUFFIXES, list_images
from sr4.utils.atomic import is_temp_name
from sr4.utils.signals import Interrupted


@dataclass
class Job:
    src: Path
    dst: Path


@dataclass
class Report:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    #: images planned but left without a result because a signal stopped the batch.
    unfinished: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class BatchOptions:
    """What `process_jobs` needs from the command line."""

    outscale: float | None = None
    max_pixels: int | None = None
    quality: int = 95
    skip_existing: bool = False
    overwrite: bool = False


# ---------------------------------------------------------------------- planning


def collect_inputs(inputs: list[str], *, recursive: bool, report: Report,
                   outdir: Path | None = None) -> list[tuple[Path, Path]]:
    """Expand files, folders and globs into (source, path relative to the output folder).

    Folders give their image files (`sr4.image.files.list_images`), less those inside `outdir`
    when it is a sub-folder of a folder walked recursively (earlier outputs are not inputs);
    named files are taken as they are; sr4's temporary files are never inputs. Problems go to
    `report.failed`."""
    found: list[tuple[Path, Path]] = []
    skip = Path(os.path.abspath(outdir)) if outdir is not None else None
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            files = list_images(path, recursive=recursive)
            if recursive and skip is not None and skip != Path(os.path.abspath(path)):
                files = [f for f in files if not Path(os.path.abspath(f)).is_relative_to(skip)]
            found += [(f, f.relative_to(path)) for f in files]
        elif path.exists() or path.is_symlink():
            if is_temp_name(path.name):
                report.failed.append((path, "a temporary file of an interrupted sr4 run, not an image to upscale"))
            else:
                found.append((path, Path(path.name)))
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=recursive))
            files = [m for m in matches if m.is_file() and not is_temp_name(m.name)]
            if not files:
                report.failed.append((path, "no file matches this pattern"))
            found += [(m, Path(m.name)) for m in files]
        else:
            report.failed.append((path, "no such file or folder"))
    return found


def _output_suffix(src: Path, ext: str) -> str:
    return src.suffix.lower() if ext == "keep" else OUTPUT_SUFFIXES[ext]


class _Inputs:
    """Every input of a run, by path (as given and resolved) and by file identity."""

    def __init__(self, sources: list[Path]):
        self.by_path: dict[str, Path] = {}
        self.by_identity: dict[tuple[int, int], Path] = {}
        for src in sources:
            self.by_path[os.path.abspath(src)] = src
            self.by_path[str(src.resolve())] = src
            try:
                st = src.stat()
            except OSError:
                continue  # reported when it is read
            self.by_identity[(st.st_dev, st.st_ino)] = src

    def at(self, dst: Path) -> Path | None:
        """The input that `dst` names, if any."""
        for key in (os.path.abspath(dst), str(dst.resolve())):
            if key in self.by_path:
                return self.by_path[key]
        try:
            st = dst.stat()
        except OSError:
            return None
        return self.by_identity.get((st.st_dev, st.st_ino))


def plan_jobs(found: list[tuple[Path, Path]], outdir: Path, *, suffix: str, ext: str, report: Report) -> list[Job]:
    """One job per input; outputs that would replace an input, leave the output folder, or
    collide with another job's output are reported in `report.failed` instead."""
    inputs = _Inputs([src for src, _ in found])
    root = os.path.abspath(outdir)
    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for src, rel in found:
        dst = outdir / rel.parent / f"{rel.stem}{suffix}{_output_suffix(src, ext)}"
        if os.path.commonpath([root, os.path.abspath(dst)]) != root:
            report.failed.append((src, f"output {dst} would be outside the output folder {outdir}"))
            continue
        victim = inputs.at(dst)
        if victim is not None:
            what = "the input itself" if victim == src else f"the input {victim} of this run"
            report.failed.append((src, f"output {dst} would replace {what}; inputs are never replaced, not even "
                                       "with --overwrite (use another -o, --suffix or --ext)"))
            continue
        key = dst.resolve()
        if key in claimed:
            if claimed[key] != src.resolve():
                report.failed.append((src, f"output {dst} is also the output of {claimed[key]} (use --suffix or "
                                           "--ext to tell them apart)"))
            continue
        claimed[key] = src.resolve()
        jobs.append(Job(src, dst))
    return jobs


def select_todo(jobs: list[Job], options: BatchOptions, report: Report) -> list[Job]:
    """The jobs to run, after the existing-output rule (skip, replace an earlier sr4 output, or report)."""
    from sr4.image.marker import written_by_sr4

    todo: list[Job] = []
    for job in jobs:
        if os.path.lexists(job.dst):
            if options.skip_existing:
                report.skipped.append(job.src)
                continue
            if not options.overwrite:
                report.failed.append((job.src, f"output {job.dst} exists (use --overwrite or --skip-existing)"))
                continue
            if job.dst.is_dir():
                report.failed.append((job.src, f"output {job.dst} is a folder; it is never replaced"))
                continue
            if not written_by_sr4(job.dst):
                report.failed.append((job.src, str(NotWrittenBySr4Error(job.dst))))
                continue
        todo.append(job)
    return todo


def output_folders(jobs: list[Job], outdir: Path) -> list[Path]:
    """The output folder and every existing sub-folder outputs go to (where temporary files may be left)."""
    folders = {outdir} | {job.dst.parent for job in jobs}
    return sorted(f for f in folders if f.is_dir())


# ---------------------------------------------------------------------- running


def process_jobs(processor: Any, todo: list[Job], options: BatchOptions, report: Report, *,
                 advance: Callable[[int], None] = lambda n: None, tile_progress: Callable | None = None,
                 say: Callable[[str], None] = print) -> Interrupted | None:
    """Read ahead and write behind in two helper threads while the network works on the current image.

    Decoding and PNG/JPEG encoding release the GIL, so on a fast accelerator they no longer
    serialise with the network. At most one image is read ahead and two written behind, so memory
    stays bounded. Each failure is recorded against its file; the rest of the batch goes on.
    Notes about an image (a profile dropped, a float16 tile recomputed) go to `say`.
    Returns the `Interrupted` that stopped the batch, or None when every job ran.
    """
    from sr4.image.io import read_image, write_image
    from sr4.image.marker import written_by_sr4

    settled: set[Path] = set()
    # What the final rename may replace: with `overwrite`, a file sr4 wrote (checked again right there).
    replace = written_by_sr4 if options.overwrite else False

    def collect(job: Job, future: Future) -> None:
        if job.src in settled:
            return
        try:
            future.result()
        except NotWrittenBySr4Error as exc:  # appeared (or was swapped in) while this run worked
            report.failed.append((job.src, str(exc)))
        except OutputExistsError:
            if options.skip_existing:  # another run made it meanwhile: its file stays
                report.skipped.append(job.src)
            else:
                report.failed.append((job.src, f"output {job.dst} appeared while this run was working (another "
                                               "run or program wrote it); left alone (use --overwrite to replace)"))
        except Exception as exc:  # the message names the file
            report.failed.append((job.src, str(exc) or type(exc).__name__))
        else:
            report.done.append(job.dst)
        settled.add(job.src)
        advance(1)

    def settle_without_write(job: Job, failure: str | None) -> None:
        if failure is None:
            report.skipped.append(job.src)
        else:
            report.failed.append((job.src, failure))
        settled.add(job.src)
        advance(1)

    def read(job: Job) -> Future:
        return reader.submit(read_image, job.src, max_pixels=options.max_pixels, frames="all")

    reader = ThreadPoolExecutor(1, thread_name_prefix="sr4-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="sr4-write")
    reads: list[Future] = []
    writes: list[tuple[Job, Future]] = []
    stop: Interrupted | None = None
    try:
        reads = [read(job) for job in todo[:1]]
        for index, job in enumerate(todo):
            current = reads.pop(0)
            if index + 1 < len(todo):
                reads.append(read(todo[index + 1]))
            if options.skip_existing and os.path.lexists(job.dst):  # another run made it meanwhile
                settle_without_write(job, None)
                continue
            try:
                result = processor.process_image_data(current.result(), outscale=options.outscale,
                                                      progress=tile_progress)
            except Exception as exc:  # one bad file must not stop the batch; the message names it
                settle_without_write(job, str(exc) or type(exc).__name__)
                continue
            for note in result.notes:
                say(f"note: {job.src}: {note}")
            writes.append((job, writer.submit(write_image, job.dst, result, quality=options.quality,
                                              overwrite=replace)))
            del result
            while len(writes) > 1:
                collect(*writes[0])  # removed once collected, so an interruption here still waits for it
                writes.pop(0)
        while writes:
            collect(*writes[0])
            writes.pop(0)
    except Interrupted as exc:
        stop = exc
    finally:
        for future in reads:
            future.cancel()
        reader.shutdown(wait=False, cancel_futures=True)  # reading leaves nothing behind
        # Images already computed are written (at most two wait here), so nothing done is thrown away; a write
        # that fails removes its temporary file.
        for job, future in writes:
            collect(job, future)
        writer.shutdown(wait=True)
    if stop is not None:
        report.unfinished = [job.src for job in todo if job.src not in settled]
    return stop
