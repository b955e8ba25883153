"""Who is calling: admins by bearer token on the public port, workers by client
certificate on the agent port."""

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable

from flask import current_app, g, request

from primary.errors import Forbidden, StorageUnavailable, Unauthorized
from primary.fleet.credentials import authenticate
from primary.fleet.tokens import hash_token, role_of, token_name


def primary_of_app():
    return current_app.extensions["cifleet"]


class KnownRoles:
    """The role each token had when this process last looked it up in the store (by the
    token's hash; the most recent MAX): what views that must answer while the store cannot
    be read (GET /metrics, so a scrape says cifleet_store_up 0) go by then. A token the
    store calls unknown or revoked is forgotten at once."""

    MAX = 256

    def __init__(self) -> None:
        self._roles: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def found(self, token_hash: str, role: str | None) -> None:
        with self._lock:
            if role is None:
                self._roles.pop(token_hash, None)
                return
            self._roles[token_hash] = role
            self._roles.move_to_end(token_hash)
            while len(self._roles) > self.MAX:
                self._roles.popitem(last=False)

    def get(self, token_hash: str) -> str | None:
        with self._lock:
            return self._roles.get(token_hash)


def _role(token: str, while_store_down: bool) -> str | None:
    known: KnownRoles = current_app.extensions["cifleet.known_roles"]
    token_hash = hash_token(token)
    try:
        role = role_of(primary_of_app().store, token)
    except StorageUnavailable:
        if while_store_down and (remembered := known.get(token_hash)) is not None:
            return remembered
        raise
    known.found(token_hash, role)
    return role


def require_role(*roles: str, while_store_down: bool = False) -> Callable:
    """Allow a bearer token of one of `roles` (admin may do everything). `while_store_down`:
    when the store cannot be read, take a token at the role it had at its last lookup."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("an API token is required (Authorization: Bearer ...)")
            role = _role(token.strip(), while_store_down)
            if role is None:
                raise Unauthorized("the API token is not valid")
            if role != "admin" and role not in roles:
                raise Forbidden(f"the {role} role may not do this")
            g.role = role
            return view(*args, **kwargs)

        return wrapped

    return decorator


def caller() -> dict:
    """Who made this API request, as a run records it: {"kind": "api", "token": NAME}."""
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return {"kind": "api", "token": token_name(primary_of_app().store, token)}


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
