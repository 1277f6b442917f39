"""The party site: the job service every party runs (docs/sites.md).

Layers, each importing only those below it:

* ``cli.py`` / ``jobcli.py``: the ``fed site`` and ``fed job`` commands;
* ``server.py`` and ``api/``: HTTPS (uvicorn + FastAPI), the client API (bearer
  tokens) and the interconnect API (mutual TLS, peer party from its certificate);
* ``service.py``: the approval flow between sites (propose, open, decide);
* ``peers.py``: calls to other sites, checking the peer's certificate names its party;
* ``core/``: job specs, state machines, the database (SQLAlchemy + alembic),
  components, tokens and the approval policy.

The engine (``fed`` outside this package) never imports the site. Nothing here may be
imported at ``fed`` start-up: the extra's packages are loaded only by the commands
that need them (``extra.require``).
"""
