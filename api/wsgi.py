"""WSGI entry point for an external server: ``gunicorn 'saliency.api.wsgi:app'`` (settings from ``SALIENCY_*``)."""

from saliency.api.app import create_app

app = create_app()
