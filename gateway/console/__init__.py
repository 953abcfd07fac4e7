"""The operator console: pages under ``/console`` behind the admin token, pushed live-call
updates, and a browser phone that calls through the real carrier path.

- :mod:`gateway.console.sessions`  login sessions and their CSRF tokens (pure; clock passed in)
- :mod:`gateway.console.bus`       which live calls changed, for the push stream
- :mod:`gateway.console.routes`    the HTTP/websocket surface, mounted by :mod:`gateway.app`
"""
