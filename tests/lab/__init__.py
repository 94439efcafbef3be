"""Tests of the namespace lab itself (spec, addressing, reflector, truth, teardown)."""
