"""A pipeline's secrets in the UI: set a value (write-only: never shown again) and unset
one. The list of names is on the pipeline's page (pipelines_views.show)."""

from flask import Blueprint, request, url_for

from primary.api.auth import primary_of_app
from primary.pipelines import secrets as pipeline_secrets
from primary.ui.respond import done
from primary.ui.session import require_admin

bp = Blueprint("secrets", __name__, url_prefix="/pipelines")


@bp.post("/<name>/secrets")
@require_admin
def set_secret(name: str):
    secret = request.form.get("name", "").strip()
    # A textarea sends CR LF; a secret is kept as typed otherwise (a key's last newline too).
    value = request.form.get("value", "").replace("\r\n", "\n")
    pipeline_secrets.set_secret(primary_of_app(), name, secret, value.encode())
    back = url_for("ui.pipelines.show", name=name, _anchor="secrets")
    return done(f"secret {secret} of {name} set", back, secret=secret)


@bp.post("/<name>/secrets/<secret>/unset")
@require_admin
def unset_secret(name: str, secret: str):
    pipeline_secrets.delete_secret(primary_of_app(), name, secret)
    back = url_for("ui.pipelines.show", name=name, _anchor="secrets")
    return done(f"secret {secret} of {name} unset", back, secret=secret)
