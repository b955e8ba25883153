"""The HTTP servers of both ports, on one asyncio event loop (docs/design.md, "Servers").

`connections.py` accepts, admits and handshakes every connection itself (per-address and
per-worker bounds, a deadline per TLS handshake, counted refusals); aiohttp parses HTTP on
the connections it hands over. `body.py` reads request bodies against a deadline,
`wsgi.py` serves the public Flask app from a bounded thread pool, `services.py` is the
thread pool the agent views call the synchronous services through, and `loop.py` runs it
all in one thread beside the sweeper and the built-in worker.

Nothing here imports the apps or their views: `primary/cli/serve.py` hands them in.
"""
