"""mailstead's own web listeners: ACME http-01 challenges, the MTA-STS policy of our domains,
and redirects to HTTPS (the admin panel will be mounted on the HTTPS listener)."""

from server.web.http import WebContext, WebListener

__all__ = ["WebContext", "WebListener"]
