"""The chaos suite: real workers, private servers, injected faults (`make chaos`, `chaos-short`).

Not collected by pytest (no test_*.py files): it is run by `python -m tests.chaos`.
"""
