"""Security headers: ``nosniff`` on every answer; a Content-Security-Policy on the web page."""

from __future__ import annotations

from flask import Flask, Response

#: The page loads its own script, style sheet and API answers; pictures are data: URIs (maps) and
#: blob: URLs (the dropped file); it may not be framed.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
               "frame-ancestors 'none'")


def install(app: Flask) -> None:
    """Add the headers to every response ``app`` sends, error answers included."""

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.mimetype == "text/html":
            response.headers["Content-Security-Policy"] = PAGE_POLICY
            response.headers["X-Frame-Options"] = "DENY"
        return response
