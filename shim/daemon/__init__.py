"""flexnpud, the node daemon: INI config, the registration HTTP API, admission, persistence and the grant server.

Modules: ``config`` (flexnpud.conf -> DaemonSettings), ``devices`` (the ``[flexnpu] devices`` key -> cards),
``store`` (atomic persistence of registrations), ``service`` (the daemon's state and its operations, no HTTP),
``api`` (the HTTP adapter, aiohttp), ``metrics`` (Prometheus), ``grant`` (hosting the grant server), ``main``
(``flexnpu daemon`` / ``flexnpud``).
"""
