"""A pipeline's git source and its parameters, as the definition declares them. Pure
functions: validation at save time, and the parameter values a trigger gives, checked
against their declaration.

    source:
      git: https://git.example.com/team/app.git   # https, http, git, ssh, file, or user@host:path
      ref: main                 # the branch (or refs/tags/NAME) a manual run builds
      token: GIT_TOKEN          # https only: a pipeline secret with a token (basic-auth password)
      username: x-access-token  # https: the user name sent with the token
      ca: "-----BEGIN CERTIFICATE-----..."   # https: the CA(s) to trust instead of the system's
      ssh_key: DEPLOY_KEY       # ssh: a pipeline secret with a private key
      known_hosts: "host ssh-ed25519 AAAA..."   # ssh: the server's host key line(s)
      branches: [main, "release/*"]   # pushes to these branches run it (globs; default: [ref])
      tags: ["v*"]              # pushes of these tags run it (default: none)
      clean: false              # true: untracked and ignored files are removed before a run
    parameters:
      TARGET: {type: string, default: x86, choices: [x86, arm]}
      COUNT: {type: integer, default: 1, min: 1, max: 10}
      DEBUG: {type: boolean, default: false}
"""

import fnmatch
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

SOURCE_KEYS = {"git", "ref", "token", "username", "ssh_key", "known_hosts", "branches", "tags"}
SOURCE_KEYS |= {"clean", "ca"}
MAX_CA_CHARS = 65536
URL_SCHEMES = ("https", "http", "git", "ssh", "file")
SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/\\][^\\]*$")  # git@host:team/app.git
REF_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/+-]{0,254}$")
GLOB_RE = re.compile(r"^[A-Za-z0-9._/*?+\[\]-]{1,255}$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
PARAMETER_TYPES = ("string", "integer", "boolean")
MAX_PARAMETERS = 64
MAX_PARAMETER_CHARS = 4096
DEFAULT_USERNAME = "x-access-token"

Fail = Callable[[str, str], Exception]


def validate_source(value: Any, fail: Fail) -> dict[str, Any]:
    """The `source` mapping, normalised. Its credentials name pipeline secrets, which must
    be set when a run is triggered."""
    if not isinstance(value, dict):
        raise fail("source", "must be a mapping with git and ref")
    for key in value:
        if key not in SOURCE_KEYS:
            raise fail(
                f"source.{key}", f"unknown field; expected one of {', '.join(sorted(SOURCE_KEYS))}"
            )
    url = value.get("git")
    if not isinstance(url, str) or not url:
        raise fail("source.git", "must be the repository's URL")
    kind = url_kind(url)
    if kind is None:
        raise fail(
            "source.git",
            "must be an https, http, git, ssh or file URL, or user@host:path, with no"
            " password in it (credentials come from pipeline secrets: token, ssh_key)",
        )
    ref = value.get("ref", "main")
    if not isinstance(ref, str) or not valid_ref(ref):
        raise fail("source.ref", "must be a branch name or refs/tags/NAME")
    source: dict[str, Any] = {"git": url, "ref": ref}
    token, ssh_key = value.get("token"), value.get("ssh_key")
    if token is not None and ssh_key is not None:
        raise fail("source", "give token (https) or ssh_key (ssh), not both")
    if token is not None:
        if kind == "http":
            raise fail("source.token", "is sent only over https (http would send it in clear)")
        if kind != "https":
            raise fail("source.token", "is for https URLs; an ssh URL takes ssh_key")
        source["token"] = _secret_name(token, "source.token", fail)
        username = value.get("username", DEFAULT_USERNAME)
        if not isinstance(username, str) or not USERNAME_RE.match(username):
            raise fail("source.username", "must be 1-128 letters, digits or . _ @ + -")
        source["username"] = username
    elif "username" in value:
        raise fail("source.username", "goes with token")
    if ssh_key is not None:
        if kind != "ssh":
            raise fail("source.ssh_key", "is for ssh URLs; an https URL takes token")
        source["ssh_key"] = _secret_name(ssh_key, "source.ssh_key", fail)
    known_hosts = value.get("known_hosts")
    if kind == "ssh":
        if not isinstance(known_hosts, str) or not known_hosts.strip() or "\x00" in known_hosts:
            raise fail(
                "source.known_hosts",
                "an ssh source needs the server's host key lines (ssh-keyscan HOST), so that"
                " no other server can pose as it",
            )
        source["known_hosts"] = known_hosts.strip() + "\n"
    elif known_hosts is not None:
        raise fail("source.known_hosts", "is for ssh URLs")
    ca = value.get("ca")
    if ca is not None:
        if kind != "https":
            raise fail("source.ca", "is for https URLs")
        if (
            not isinstance(ca, str)
            or "-----BEGIN CERTIFICATE-----" not in ca
            or len(ca) > MAX_CA_CHARS
            or "\x00" in ca
        ):
            raise fail("source.ca", f"must be PEM certificates, at most {MAX_CA_CHARS} characters")
        source["ca"] = ca.strip() + "\n"
    default_branches = [] if ref.startswith("refs/") else [ref]
    source["branches"] = _globs(value.get("branches", default_branches), "source.branches", fail)
    source["tags"] = _globs(value.get("tags", []), "source.tags", fail)
    clean = value.get("clean", False)
    if not isinstance(clean, bool):
        raise fail("source.clean", "must be true or false")
    source["clean"] = clean
    return source


def url_kind(url: str) -> str | None:
    """The transport of a source URL (https, http, git, ssh, file), or None when it is not
    one we accept: another scheme (ext:: runs commands), a password in it, a leading '-'."""
    if not url.isprintable() or url.startswith("-") or len(url) > 2048 or " " in url:
        return None
    if SCP_LIKE.match(url) and "://" not in url:
        return "ssh"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in URL_SCHEMES or parts.password is not None:
        return None
    if parts.scheme == "file":
        return "file" if parts.path.startswith("/") and not parts.netloc else None
    if not parts.hostname:
        return None
    if parts.scheme != "ssh" and parts.username is not None:
        return None  # a user in an https URL is given with username/token instead
    return parts.scheme


def valid_ref(ref: str) -> bool:
    """A branch name, or refs/heads/NAME, refs/tags/NAME (git check-ref-format, roughly)."""
    if not REF_RE.match(ref) or ".." in ref or "//" in ref or "@{" in ref:
        return False
    return not (ref.endswith(("/", ".", ".lock")) or "/." in ref)


def branch_matches(branch: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(branch, glob) for glob in globs)


def source_secrets(spec: dict[str, Any]) -> list[str]:
    """The pipeline secrets its source's credentials come from."""
    source = spec.get("source") or {}
    return [source[key] for key in ("token", "ssh_key") if key in source]


def _secret_name(value: Any, field: str, fail: Fail) -> str:
    if not isinstance(value, str) or not value.isidentifier() or not value.isascii():
        raise fail(field, "must name a pipeline secret (an environment variable name)")
    return value


def _globs(value: Any, field: str, fail: Fail) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and GLOB_RE.match(v) for v in value
    ):
        raise fail(field, "must be a list of branch or tag names (globs: *, ?, [...])")
    return list(value)


# -- parameters ------------------------------------------------------------------------------


def validate_parameters(value: Any, env: dict[str, str], fail: Fail) -> dict[str, dict]:
    """`parameters`: NAME → {type, default, choices | min, max}. Every parameter has a
    default, which runs that nobody gave values for (a push) use."""
    if not isinstance(value, dict):
        raise fail("parameters", "must be a mapping of variable names to declarations")
    if len(value) > MAX_PARAMETERS:
        raise fail("parameters", f"at most {MAX_PARAMETERS} parameters")
    declared: dict[str, dict] = {}
    for name, decl in value.items():
        field = f"parameters.{name}"
        if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
            raise fail(field, "is not a valid environment variable name")
        if name in env:
            raise fail(field, "is also in env; a parameter's default is its value there")
        if not isinstance(decl, dict):
            raise fail(field, "must be a mapping with type and default")
        unknown = set(decl) - {"type", "default", "choices", "min", "max", "description"}
        if unknown:
            raise fail(
                f"{field}.{sorted(unknown)[0]}",
                "unknown field; expected type, default, choices, min, max, description",
            )
        kind = decl.get("type", "string")
        if kind not in PARAMETER_TYPES:
            raise fail(f"{field}.type", f"must be one of {', '.join(PARAMETER_TYPES)}")
        out: dict[str, Any] = {"type": kind}
        if kind == "string" and "choices" in decl:
            choices = decl["choices"]
            if (
                not isinstance(choices, list)
                or not choices
                or not all(_plain_text(c) for c in choices)
            ):
                raise fail(f"{field}.choices", "must be a non-empty list of strings")
            out["choices"] = list(choices)
        if kind == "integer":
            for bound in ("min", "max"):
                if bound in decl:
                    b = decl[bound]
                    if not isinstance(b, int) or isinstance(b, bool) or abs(b) >= 2**63:
                        raise fail(f"{field}.{bound}", "must be a whole number")
                    out[bound] = b
            if out.get("min", 0) > out.get("max", out.get("min", 0)):
                raise fail(field, "min is more than max")
        if isinstance(decl.get("description"), str):
            out["description"] = decl["description"][:500]
        if "default" not in decl:
            raise fail(f"{field}.default", "is required (runs nobody gave a value for use it)")
        try:
            out["default"] = coerce_parameter(out, decl["default"])
        except ValueError as e:
            raise fail(f"{field}.default", str(e)) from None
        declared[name] = out
    return declared


def coerce_parameter(decl: dict[str, Any], value: Any) -> str:
    """A parameter value as its environment variable holds it; ValueError says what is wanted.
    JSON values of the right type, or their text (a form sends text)."""
    kind = decl["type"]
    if kind == "boolean":
        if isinstance(value, bool):
            return "true" if value else "false"
        if value in ("true", "false"):
            return value
        raise ValueError("must be true or false")
    if kind == "integer":
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 2**63:
            raise ValueError(f"must be a whole number{_range(decl)}")
        if value < decl.get("min", value) or value > decl.get("max", value):
            raise ValueError(f"must be a whole number{_range(decl)}")
        return str(value)
    if not _plain_text(value):
        raise ValueError(f"must be a string of at most {MAX_PARAMETER_CHARS} characters, no NUL")
    if "choices" in decl and value not in decl["choices"]:
        raise ValueError(f"must be one of {', '.join(decl['choices'])}")
    return value


def parameter_values(declared: dict[str, dict], given: Any) -> dict[str, str]:
    """Every declared parameter's value for one run: the given ones checked, defaults for
    the rest. ValueError('env.NAME: ...') for a value that is not declared or not valid."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ValueError("env: must be an object of parameter names to values")
    values = {name: decl["default"] for name, decl in declared.items()}
    for name, value in given.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ValueError(f"env.{name}: not a parameter of this pipeline (declared: {known})")
        try:
            values[name] = coerce_parameter(declared[name], value)
        except ValueError as e:
            raise ValueError(f"env.{name}: {e}") from None
    return values


def _range(decl: dict[str, Any]) -> str:
    if "min" in decl and "max" in decl:
        return f" from {decl['min']} to {decl['max']}"
    if "min" in decl:
        return f" of at least {decl['min']}"
    if "max" in decl:
        return f" of at most {decl['max']}"
    return ""


def _plain_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_PARAMETER_CHARS and "\x00" not in value
