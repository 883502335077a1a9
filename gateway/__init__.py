"""Teacher-data sharing gateway: a data-sharing agreement executed as code.

The public surface is small: :func:`gateway.app.create_app` builds the HTTP
application, :class:`gateway.config.Settings` holds configuration, and the
``gateway`` command (:mod:`gateway.cli`) drives everything from a shell.
"""

__version__ = "0.1.0"
