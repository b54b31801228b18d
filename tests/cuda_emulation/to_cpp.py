"""Rewrites a .cu file of csrc/cuda as C++ for the CPU stand-in (cuda_runtime.h here): each
kernel launch `k<<<grid, block, shared, stream>>>(args);` becomes an emu::launch of a lambda, and
the dynamic shared memory declaration a pointer to the block's buffer.

    python to_cpp.py input.cu output.cpp
"""

import re
import sys

LAUNCH = re.compile(
    r"([A-Za-z_][\w:]*(?:<(?:[^<>;]|<[^<>;]*>)*>)?)\s*<<<(.*?)>>>\s*\((.*?)\);", re.S
)
SHARED = "extern __shared__ float shared[];"


def convert(source: str) -> tuple[str, int]:
    launches = 0

    def launch(match):
        nonlocal launches
        launches += 1
        kernel, config, args = match.groups()
        return f"emu::launch(emu::Config{{{config}}}, [&] {{ {kernel}({args}); }});"

    out = LAUNCH.sub(launch, source)
    return out.replace(SHARED, "float* shared = emu::dynamic_shared<float>();"), launches


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        text, count = convert(f.read())
    if count == 0:
        sys.exit(f"{sys.argv[1]}: no kernel launch found")
    with open(sys.argv[2], "w") as f:
        f.write(text)
