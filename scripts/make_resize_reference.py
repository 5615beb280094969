#!/usr/bin/env python3
"""Make the resize/crop reference: an image and what torchvision's ImageNet transform
(Resize(16) then CenterCrop(12), PIL bilinear with antialiasing) makes of it.

Writes fixtures/data/resize_ref/photo/photo.png (120x90 RGB, smooth waves plus noise,
numpy seed 0) and fixtures/data/resize_ref.npy (float32 [3, 12, 12] in [0, 1], CHW, as
torchvision's ToTensor gives it). src/data/images.rs checks harden's --resize 16
--crop 12 against it (within one 8-bit step).

Run: /work/pyenv/bin/python scripts/make_resize_reference.py  (numpy, Pillow, torchvision)
"""
import os

import numpy as np
import torchvision.transforms as T
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "data")

rng = np.random.default_rng(0)
h, w = 90, 120
yy, xx = np.mgrid[0:h, 0:w]
img = np.stack(
    [128 + 100 * np.sin(xx / 7.0 + c) * np.cos(yy / 9.0 - c) for c in range(3)], -1
)
img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
os.makedirs(os.path.join(OUT, "resize_ref", "photo"), exist_ok=True)
png = os.path.join(OUT, "resize_ref", "photo", "photo.png")
Image.fromarray(img).save(png)
tf = T.Compose([T.Resize(16), T.CenterCrop(12), T.ToTensor()])
ref = tf(Image.open(png).convert("RGB")).numpy().astype(np.float32)
np.save(os.path.join(OUT, "resize_ref.npy"), ref)
print(png, ref.shape)
