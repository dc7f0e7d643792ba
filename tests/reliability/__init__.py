"""Reliability: faults, hostile input and the report that sums them up (issue 6)."""
