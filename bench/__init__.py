"""`python -m bench`: the gateway measured side by side with direct calls and a bare Tornado relay.

Everything runs on this machine over 127.0.0.1: a demo upstream, the gateway (`python run.py`), a bare
pass-through relay (the framework floor) and a load generator, each its own process except the load
generator, which runs in the benchmark's own process on raw asyncio sockets.
"""
