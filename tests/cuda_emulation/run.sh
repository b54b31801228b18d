#!/usr/bin/env bash
# Runs the CUDA kernels of csrc/cuda on the CPU, through the stand-in for CUDA in this folder,
# against the CPU kernels of csrc/cpu (themselves tested against the PyTorch reference): every
# rule, odd dims (vector and scalar paths), multi-valued fields, hot rows split into segments,
# batch 0 and 1, misaligned tables. Under AddressSanitizer and UBSan by default (out-of-bounds
# reads and writes in a kernel fail the run); SAN=-fsanitize=thread looks for races instead.
# Needs g++ with C++20; about a minute to build and one to run on 2 cores.
#
#   tests/cuda_emulation/run.sh [quick]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
csrc=$(cd "$here/../../csrc" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for source in forward backward; do
  python3 "$here/to_cpp.py" "$csrc/cuda/$source.cu" "$work/$source.cpp"
done
g++ -std=c++20 -g -O1 -pthread ${SAN:--fsanitize=address,undefined -fno-sanitize-recover=undefined} \
  -Wno-unknown-pragmas -I"$here" -I"$csrc" "$here/check_kernels.cpp" "$work/forward.cpp" \
  "$work/backward.cpp" "$csrc/cpu/fm.cpp" "$csrc/cpu/group_by_row.cpp" -o "$work/check_kernels"
"$work/check_kernels" "$@"
