#!/usr/bin/env bash
# Make Fashion-MNIST available: Debian's dataset-fashion-mnist package where apt is there and
# we are root, else torchvision's downloader into data/fashion-mnist. Usage: get-fashion-mnist.sh PYTHON
set -u
PY=${1:-python3}
if "$PY" -c "from simdex.indexer.sources import find_fashion_mnist; find_fashion_mnist()" 2>/dev/null; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Fashion-MNIST with apt-get (dataset-fashion-mnist)..."
  { apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; } >/dev/null 2>&1
  "$PY" -c "from simdex.indexer.sources import find_fashion_mnist; find_fashion_mnist()" 2>/dev/null && exit 0
fi
echo "downloading Fashion-MNIST with torchvision into data/fashion-mnist..."
exec "$PY" -m simdex.indexer.datasets data/fashion-mnist
