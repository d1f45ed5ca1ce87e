"""The HTTP face of the runtime: a Flask app factory, its routes, /v2 forwarding, OpenAPI."""

from triton_score.http.app import create_app

__all__ = ["create_app"]
