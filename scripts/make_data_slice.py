#!/usr/bin/env python3
"""Cut the bundled Fashion-MNIST slice: the first 1,000 test and 2,000 training images
and labels, as gzipped IDX files with the standard names, into data/fashion-mnist-slice/.

Run: python3 scripts/make_data_slice.py [/usr/share/datasets/fashion-mnist]
Needs only the Python standard library. Fashion-MNIST is MIT-licensed (Zalando Research).
"""
import gzip
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
DST = os.path.join(ROOT, "data", "fashion-mnist-slice")


def cut(name, n):
    with gzip.open(os.path.join(SRC, name), "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    ndim = magic & 0xFF
    dims = list(struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim]))
    per = 1
    for d in dims[1:]:
        per *= d
    head = 4 + 4 * ndim
    dims[0] = n
    out = struct.pack(">I", magic) + struct.pack(">" + "I" * ndim, *dims) + data[head:head + n * per]
    # mtime=0 keeps the gzip bytes reproducible.
    with gzip.GzipFile(os.path.join(DST, name), "wb", mtime=0) as f:
        f.write(out)


os.makedirs(DST, exist_ok=True)
for split, n in (("t10k", 1000), ("train", 2000)):
    cut(f"{split}-images-idx3-ubyte.gz", n)
    cut(f"{split}-labels-idx1-ubyte.gz", n)
print("wrote", DST)
