"""The upscalers `sr4 serve` offers, and the one function that loads them.

Candidates come only from the command line (the browser picks among them by id): plain bicubic,
the bundled default model, every `--model FILE`, and the SNUCV / TSD-SR pipelines when a model
folder is given. `load_processor` builds each through the same function as `sr4 upscale`
(`sr4.pipeline.factory.build_processor`, models from the registry `sr4.models`), so a result is the same pixels
`sr4 upscale` writes with the same options; new kinds of model plug in there.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from sr4.models.bicubic import BICUBIC
from sr4.optional import problem
from sr4.pipeline.base import ImageProcessor
from sr4.pipeline.factory import ProcessorOptions, build_processor


@dataclass(frozen=True)
class Candidate:
    """One upscaler the page can run. `id` is what the browser sends; nothing else names a model."""

    id: str
    label: str
    kind: str  # "bicubic" | "default" | "model" | "snucv" | "tsdsr"
    source: Path | None = None
    unavailable: str | None = None  # why it cannot run here (shown in the page), None when it can

    def describe(self) -> dict:
        return {"id": self.id, "label": self.label, "kind": self.kind,
                "source": str(self.source) if self.source else None, "unavailable": self.unavailable}


def list_candidates(models: list[str | os.PathLike] | None = None,
                    model_dir: str | os.PathLike | None = None) -> list[Candidate]:
    """bicubic, the bundled default, each model file, then SNUCV and TSD-SR for a model folder.

    A model file that does not exist raises FileNotFoundError (a typo on the command line should stop
    the start); a model folder with missing files or without the refiner extra gives candidates that
    are listed but unavailable, with the reason.
    """
    out = [Candidate("bicubic", "bicubic", "bicubic"),
           Candidate("default", "sr4 default (MambaIRv2-Light x4)", "default")]
    labels: dict[str, int] = {}
    for i, model in enumerate(models or [], start=1):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--model {model}: no such file")
        label = path.name
        labels[label] = labels.get(label, 0) + 1
        if labels[label] > 1:
            label = f"{label} ({labels[label]})"
        out.append(Candidate(f"model-{i}", label, "model", path.resolve()))
    if model_dir is not None:
        root = Path(model_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--model-dir {model_dir}: no such folder")
        for kind, label in (("snucv", "SNUCV (MambaIRv2 + TSD-SR)"), ("tsdsr", "TSD-SR")):
            out.append(Candidate(kind, label, kind, root.resolve(), _pipeline_problem(root, kind)))
    return out


def _pipeline_problem(root: Path, kind: str) -> str | None:
    needs = problem("refiner", "the two-stage pipelines")
    if needs is not None:
        return needs
    from sr4.refiner.folder import ModelFolderError, validate_model_folder

    try:
        validate_model_folder(root, need_upsampler=kind == "snucv")
    except ModelFolderError as exc:
        return str(exc)
    return None


def load_processor(candidate: Candidate, options: ProcessorOptions) -> ImageProcessor:
    """The processor `sr4 upscale` would build for this candidate and these options."""
    if candidate.unavailable:
        raise RuntimeError(f"{candidate.label} is unavailable: {candidate.unavailable}")
    pipeline = candidate.kind if candidate.kind in ("snucv", "tsdsr") else "upsampler"
    model = {"bicubic": BICUBIC, "default": None}.get(candidate.kind, str(candidate.source))
    return build_processor(pipeline, model if pipeline == "upsampler" else None,
                           str(candidate.source) if pipeline != "upsampler" else None,
                           dataclasses.replace(options, seed=0))
