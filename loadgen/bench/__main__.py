"""`python -m loadgen.bench` runs the benchmark ladder (see loadgen.bench.cli)."""

from loadgen.bench.cli import main

raise SystemExit(main())
