"""``unifeed serve``: the unified feed as live state, history and a WebSocket API.

Layers, each importing only those above it:

* ``_state`` (pure, no I/O): the fold of unified-feed records into the latest state per
  aircraft by feed time, staleness, viewport diffs into snapshot/update frames, and the
  audience filter (the core's rule in ``unifeed.core.access``). May import the core only.
* ``_history`` (SQLite, PostgreSQL/TimescaleDB), ``_shared`` (Redis), ``_source`` (file,
  stdin, Kafka through ``unifeed.kafka.clients``): sinks and sources around the state, each
  with its own thread or task, none able to delay the live state.
* ``_app``: the ASGI application (Starlette, run by uvicorn): HTTP, WebSocket, tokens.
* ``_cli``: the ``unifeed serve`` subcommand; imports the server stack only when run.

This package's server-side dependencies are the ``serve`` extra; ``import unifeed``
never imports them, and neither does this ``__init__``.
"""
