"""Download Fashion-MNIST with torchvision when Debian's package is not available.

    python -m indexer.datasets data/fashion-mnist
"""

from __future__ import annotations

import sys
from pathlib import Path


def download_fashion_mnist(root: str | Path = "data/fashion-mnist") -> Path:
    """Fetch the four IDX files with torchvision's downloader; returns the folder holding them.

    Raises:
        RuntimeError: no network (the message says how to install the Debian package instead).
    """
    from torchvision.datasets import FashionMNIST

    root = Path(root)
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "no download"
        raise RuntimeError(
            f"could not download Fashion-MNIST ({type(exc).__name__}: {exc}). Without network, install "
            "Debian's package as root: apt-get install -y dataset-fashion-mnist"
        ) from None
    return root / "FashionMNIST" / "raw"


if __name__ == "__main__":
    try:
        print(download_fashion_mnist(sys.argv[1] if len(sys.argv) > 1 else "data/fashion-mnist"))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
