"""loadgen: a multiprocess, high-rate network prober with exact per-second accounting."""

__version__ = "0.1.0"
