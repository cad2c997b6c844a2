"""The trivial job of bench/job_overhead.py: whatever a worker spends on it is RQ's own cost."""


def noop():
    return None
