"""Who is calling: admins by bearer token on the public port, workers by client
certificate on the agent port."""

import functools
from collections.abc import Callable

from flask import current_app, g, request

from primary.errors import Forbidden, Unauthorized
from primary.fleet.credentials import authenticate
from primary.fleet.tokens import role_of


def primary_of_app():
    return current_app.extensions["cifleet"]


def require_role(*roles: str) -> Callable:
    """Allow a bearer token of one of `roles` (admin may do everything)."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("an API token is required (Authorization: Bearer ...)")
            role = role_of(primary_of_app().store, token.strip())
            if role is None:
                raise Unauthorized("the API token is not valid")
            if role != "admin" and role not in roles:
                raise Forbidden(f"the {role} role may not do this")
            g.role = role
            return view(*args, **kwargs)

        return wrapped

    return decorator


def require_worker(view: Callable) -> Callable:
    """The worker behind the verified client certificate. The TLS layer (primary/server/)
    verified the chain against the fleet CA and put the subject and serial into the WSGI
    environ."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        env = request.environ
        if env.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            raise Unauthorized("a client certificate is required")
        g.worker = authenticate(
            primary_of_app(), env.get("SSL_CLIENT_S_DN_CN"), env.get("SSL_CLIENT_M_SERIAL")
        )
        return view(*args, **kwargs)

    return wrapped
