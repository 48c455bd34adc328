"""Recreate examples/astronaut_lr.png: scikit-image's `astronaut` (NASA, public domain) at 1/4 size.

The downscaling is the challenge's degradation (MATLAB-compatible bicubic `imresize`), so the
x4 result can be compared with the 512x512 original.
"""

from pathlib import Path

from PIL import Image
from skimage import data

from sr4.image.resize import imresize

if __name__ == "__main__":
    lr = imresize(data.astronaut(), 0.25)
    Image.fromarray(lr).save(Path(__file__).with_name("astronaut_lr.png"), optimize=True)
