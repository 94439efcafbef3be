"""loadgen: a multiprocess, high-rate network prober with exact per-second accounting."""

import os

# numpy's OpenBLAS starts a thread per CPU when it is imported, and those threads spin after
# waking: loadgen never multiplies matrices, and its workers want the CPUs. Set before any
# loadgen module imports numpy (spawned workers import this package first too).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
