"""The truth suite: loadgen run against lab hosts, its figures compared with the lab's counters."""
