"""What GitHub, GitLab and Gitea / Forgejo send: which forge and event a delivery is, its
signature, and a push event's fields. Pure functions of headers and bytes.

- GitHub: `X-GitHub-Event`, `X-GitHub-Delivery`, `X-Hub-Signature-256: sha256=HEX`
  (HMAC-SHA256 of the body with the hook secret); `ping` when a hook is made.
- GitLab: `X-Gitlab-Event` (`Push Hook`, `Tag Push Hook`), `X-Gitlab-Event-UUID`,
  `X-Gitlab-Token`: the secret itself (GitLab signs nothing), compared in constant time.
- Gitea and Forgejo: `X-Gitea-Event` / `X-Forgejo-Event`, `X-Gitea-Delivery`,
  `X-Gitea-Signature: HEX` (HMAC-SHA256). They also send GitHub's headers, so they are
  recognised first.
"""

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from primary.pipelines.source_spec import valid_ref

ZERO_SHA = re.compile(r"^0+$")
SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
DELIVERY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class NotAWebhook(ValueError):
    """The request is not a delivery of a forge we know, or lacks what it must carry."""


@dataclass(frozen=True)
class Delivery:
    forge: str  # github, gitlab, gitea
    event: str  # as the forge names it
    delivery: str  # the forge's id for this delivery (the same when it is redelivered)

    @property
    def kind(self) -> str:
        """ping, push, or other."""
        if self.forge == "github" and self.event == "ping":
            return "ping"
        if self.event in ("push", "Push Hook", "Tag Push Hook"):
            return "push"
        return "other"


@dataclass(frozen=True)
class Push:
    ref: str
    after: str  # the commit the ref points to now (all zeros: the ref was deleted)
    forced: bool
    repository_urls: frozenset[str]  # every URL the payload gives for the repository
    repository: str  # its name as the forge shows it, for messages
    subject: str
    author: str
    pusher: str

    @property
    def deleted(self) -> bool:
        return bool(ZERO_SHA.match(self.after))


def identify(headers: Mapping[str, str]) -> Delivery:
    """The forge, event and delivery id of a webhook request; NotAWebhook if none."""
    for forge, event_header, delivery_headers in (
        ("gitea", "X-Gitea-Event", ("X-Gitea-Delivery",)),
        ("gitea", "X-Forgejo-Event", ("X-Forgejo-Delivery", "X-Gitea-Delivery")),
        ("gitlab", "X-Gitlab-Event", ("X-Gitlab-Event-UUID", "X-Gitlab-Webhook-UUID")),
        ("github", "X-GitHub-Event", ("X-GitHub-Delivery",)),
    ):
        event = headers.get(event_header)
        if event is None:
            continue
        delivery = next((headers[h] for h in delivery_headers if headers.get(h)), None)
        if not event or len(event) > 64 or not event.isprintable():
            raise NotAWebhook(f"{event_header}: not an event name")
        if delivery is None or not DELIVERY_RE.match(delivery):
            raise NotAWebhook(f"{delivery_headers[0]}: a delivery id is required")
        return Delivery(forge, event, delivery)
    raise NotAWebhook(
        "not a webhook of GitHub, GitLab, Gitea or Forgejo (no X-GitHub-Event,"
        " X-Gitlab-Event or X-Gitea-Event header)"
    )


def verify(forge: str, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """Whether the delivery carries the hook secret's signature (or, for GitLab, the
    secret). Every comparison takes the same time whatever it compares."""
    key = secret.encode()
    if forge == "gitlab":
        return hmac.compare_digest((headers.get("X-Gitlab-Token") or "").encode(), key)
    digest = hmac.new(key, body, hashlib.sha256).hexdigest()
    if forge == "gitea":
        given = headers.get("X-Gitea-Signature") or headers.get("X-Forgejo-Signature") or ""
        return hmac.compare_digest(given.strip().lower().encode(), digest.encode())
    given = headers.get("X-Hub-Signature-256") or ""
    return hmac.compare_digest(given.strip().lower().encode(), f"sha256={digest}".encode())


def parse_push(forge: str, payload: Any) -> Push:
    """The fields of a push event we use; NotAWebhook names what is missing."""
    if not isinstance(payload, dict):
        raise NotAWebhook("the payload is not a JSON object")
    ref, after = payload.get("ref"), payload.get("after")
    if not isinstance(ref, str) or not ref.startswith("refs/") or not valid_ref(ref):
        raise NotAWebhook("ref: missing from the push event, or not a valid ref name")
    if not isinstance(after, str) or not (SHA_RE.match(after) or ZERO_SHA.match(after)):
        raise NotAWebhook("after: not a commit id")
    urls: set[str] = set()
    names: list[str] = []
    for holder in ("repository", "project"):
        info = payload.get(holder)
        if not isinstance(info, dict):
            continue
        for field in ("clone_url", "ssh_url", "git_url", "html_url", "url", "git_http_url",
                      "git_ssh_url", "http_url", "web_url", "homepage"):  # fmt: skip
            if isinstance(info.get(field), str):
                urls.add(normalise_url(info[field]))
        for field in ("full_name", "path_with_namespace", "name"):
            if isinstance(info.get(field), str):
                names.append(info[field])
    head = _head_commit(forge, payload, after)
    author = head.get("author") if isinstance(head.get("author"), dict) else {}
    who = f"{_text(author.get('name'))} <{_text(author.get('email'))}>" if author else ""
    who = who.replace("\n", " ")
    return Push(
        ref=ref,
        after=after,
        forced=payload.get("forced") is True,
        repository_urls=frozenset(urls),
        repository=_text(names[0]).replace("\n", " ")[:200] if names else "(unnamed)",
        subject=_text(head.get("message")).split("\n", 1)[0][:500],
        author=who[:500],
        pusher=_pusher(forge, payload).replace("\n", " ")[:200],
    )


def _head_commit(forge: str, payload: dict, after: str) -> dict:
    head = payload.get("head_commit")
    if isinstance(head, dict):
        return head
    commits = payload.get("commits")
    if isinstance(commits, list):  # GitLab: the pushed commits; the last is `after`
        for commit in commits:
            if isinstance(commit, dict) and commit.get("id") == after:
                return commit
    return {}


def _pusher(forge: str, payload: dict) -> str:
    if forge == "gitlab":
        return _text(payload.get("user_username") or payload.get("user_name"))
    pusher = payload.get("pusher")
    if isinstance(pusher, dict):
        return _text(pusher.get("login") or pusher.get("username") or pusher.get("name"))
    return ""


def _text(value: Any) -> str:
    """A string of the payload as one line of valid text: these end up in the run log and
    the UI, where a newline would forge a line and a lone surrogate cannot be encoded."""
    if not isinstance(value, str):
        return ""
    value = value.encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c.isprintable() or c == "\n" else " " for c in value)


def normalise_url(url: str) -> str:
    """A repository URL in one form, so that the pipeline's source and a payload's URLs
    compare: scheme and host lowercase, no user or password, no trailing '/' or '.git';
    `user@host:path` as ssh://host/path."""
    url = url.strip()
    if "://" not in url and "@" in url.split(":", 1)[0]:  # git@host:team/app.git
        user_host, _, path = url.partition(":")
        url = f"ssh://{user_host}/{path.lstrip('/')}"
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:  # not a port number: compares equal to nothing but itself
        return url
    path = parts.path.rstrip("/").removesuffix(".git")
    return f"{parts.scheme.lower()}://{netloc}{path}"
