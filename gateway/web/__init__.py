"""Web pages for the people of a partnership, served by the gateway under ``/web``.

Server-rendered HTML (Jinja2 templates), no JavaScript and no build step; charts
are inline SVG drawn on the server. The pages are thin adapters over the same
functions as the API and check tokens, roles and agreements with the API's own code
(see docs/web.md):

- ``session``: signing in and out, the session cookie, CSRF tokens, role checks (the
  sessions themselves are kept by :mod:`gateway.web_sessions`);
- ``pages``: the routes (sign-in, home, uploads, reports, budgets, the audit log);
- ``rendering``: templates, and every failure of a page shown as a page;
- ``cells``, ``charts``: released tables as rows, CSV and SVG geometry;
- ``forms``: the upload form's fields, checked before its file is stored.
"""

from gateway.web.pages import router
from gateway.web.rendering import STATIC_DIR

__all__ = ["STATIC_DIR", "router"]
