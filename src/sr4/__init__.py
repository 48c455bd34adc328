"""sr4: x4 image super-resolution (MambaIRv2 upsampler + TSD-SR one-step diffusion refiner)."""

from __future__ import annotations

from sr4.utils.lazy import lazy_attributes

__version__ = "0.1.0"

# Public names, imported on first use so `import sr4` stays cheap (no diffusers, no numba JIT).
_LAZY = {
    "load_upsampler": "sr4.models.loading",
    "load_model": "sr4.models.loading",
    "Upscaler": "sr4.pipeline.upscaler",
    "Pipeline": "sr4.pipeline.two_stage",
    "SNUCVPipeline": "sr4.pipeline.snucv",
    "TSDSRPipeline": "sr4.pipeline.tsdsr",
    "SNUCVConfig": "sr4.pipeline.configs",
    "TSDSRConfig": "sr4.pipeline.configs",
    "RefinerConfig": "sr4.refiner.tsdsr",
    "Sr4Error": "sr4.errors",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
