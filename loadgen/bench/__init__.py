"""`make bench`: loadgen's rate ladder and its peers (`ping -f`, `fping`) measured in the
bench's own namespace lab, with the kernel's ICMP counters as the referee.

    python -m loadgen.bench [--quick] [--rates 50k,100k] [--workers 1,2] [--duration 10s]

Modules: topology (namespaces), measure (run one tool, sample it), figures (pure arithmetic),
steps (what to run, verdicts), output (table, results JSON), cli (flags, ladder, exit code).
"""
