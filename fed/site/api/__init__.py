"""The site's HTTP API: the client API (bearer tokens) and the interconnect API
(mutual TLS), served together on one HTTPS port (fed/site/server.py)."""
