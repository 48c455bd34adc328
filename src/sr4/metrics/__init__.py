"""The NTIRE 2025 x4 challenge metrics, computed offline.

- ``psnr_ssim``: PSNR / SSIM as the challenge's eval (Y channel, modcrop 4, shave 4).
- ``niqe``: NIQE with pyiqa 0.1.13 semantics and the pristine model as package data.
- ``lpips`` / ``dists``: LPIPS-Alex v0.1 and DISTS as differentiable modules (``LPIPS``, ``DISTS``)
  reading pyiqa's and torchvision's weight files from local folders (``weights``).
- ``clipiqa`` / ``maniqa`` / ``musiq``: the no-reference metrics, native, reading pyiqa's weight files.
- ``learned``: which learned metrics can run here, and why the others cannot.
- ``score``: the challenge score from the six averages.
- ``evaluate`` / ``report``: folder pairing, per-image scoring, CSV / JSON / HTML output (``sr4 eval``).

Submodules are imported on use; importing this package loads nothing heavy.
"""
