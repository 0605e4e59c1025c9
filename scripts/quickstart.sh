#!/usr/bin/env bash
# Install hwcc, then compile the bundled digits CNN for this machine, run it and score it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
hwcc compile examples/digits_cnn.onnx --target host -o out/digits_cnn
hwcc eval out/digits_cnn --data examples/digits_data.npz --labels label
hwcc bench out/digits_cnn --compare onnxruntime
