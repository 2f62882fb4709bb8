"""Low-level Redis plumbing shared by the Streams broker and the Redis result backend.

`conn`: redis-py connections with C command packing; `client`: client set-up, one pool shared
by a broker and a backend on the same server, error mapping and retries with one Backoff.
"""
