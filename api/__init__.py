"""The HTTP service: ``create_app(config)`` builds the Flask app, ``serve(...)`` runs it under gunicorn."""

from saliency.api.app import create_app
from saliency.api.server import serve

__all__ = ["create_app", "serve"]
