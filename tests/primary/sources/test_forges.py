"""The forges' headers, signatures and push fields (pure functions)."""

import hashlib
import hmac

import pytest

from primary.sources.forges import NotAWebhook, identify, normalise_url, parse_push, verify

BODY = b'{"ref": "refs/heads/main"}'
SECRET = "s3cret"
SIGNATURE = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def test_each_forge_is_told_apart_gitea_first():
    gitea = {"X-Gitea-Event": "push", "X-Gitea-Delivery": "d1", "X-GitHub-Event": "push"}
    assert (identify(gitea).forge, identify(gitea).kind) == ("gitea", "push")
    forgejo = {"X-Forgejo-Event": "push", "X-Forgejo-Delivery": "d2"}
    assert identify(forgejo).forge == "gitea"
    gitlab = {"X-Gitlab-Event": "Tag Push Hook", "X-Gitlab-Event-UUID": "u-1"}
    assert (identify(gitlab).forge, identify(gitlab).kind) == ("gitlab", "push")
    ping = identify({"X-GitHub-Event": "ping", "X-GitHub-Delivery": "72d3162e"})
    assert (ping.forge, ping.kind, ping.delivery) == ("github", "ping", "72d3162e")
    assert identify({"X-GitHub-Event": "issues", "X-GitHub-Delivery": "x"}).kind == "other"


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-GitHub-Event": "push"}, {"X-GitHub-Event": "push", "X-GitHub-Delivery": "a b"}],
)
def test_not_a_webhook(headers):
    with pytest.raises(NotAWebhook):
        identify(headers)


def test_signatures():
    assert verify("github", {"X-Hub-Signature-256": f"sha256={SIGNATURE}"}, BODY, SECRET)
    assert not verify("github", {"X-Hub-Signature-256": f"sha256={SIGNATURE}"}, BODY + b" ", SECRET)
    assert not verify("github", {"X-Hub-Signature-256": SIGNATURE}, BODY, SECRET)
    assert not verify("github", {}, BODY, SECRET)
    assert verify("gitea", {"X-Gitea-Signature": SIGNATURE}, BODY, SECRET)
    assert not verify("gitea", {"X-Gitea-Signature": SIGNATURE}, BODY, "other")
    assert verify("gitlab", {"X-Gitlab-Token": SECRET}, BODY, SECRET)
    assert not verify("gitlab", {"X-Gitlab-Token": SECRET + "x"}, BODY, SECRET)


def test_a_push_and_its_urls():
    push = parse_push(
        "github",
        {
            "ref": "refs/heads/main",
            "after": "a" * 40,
            "forced": True,
            "repository": {"clone_url": "https://GitHub.com/o/r.git",
                           "ssh_url": "git@github.com:o/r.git", "full_name": "o/r"},
            "head_commit": {"message": "subject\n\nbody", "author": {"name": "A", "email": "a@x"}},
            "pusher": {"name": "p"},
        },
    )  # fmt: skip
    assert (push.subject, push.author, push.pusher, push.forced) == (
        "subject",
        "A <a@x>",
        "p",
        True,
    )
    assert normalise_url("https://github.com/o/r") in push.repository_urls
    assert normalise_url("ssh://git@github.com/o/r.git") in push.repository_urls
    assert not push.deleted
    assert parse_push("github", {"ref": "refs/heads/x", "after": "0" * 40}).deleted
    for bad in ([], {"ref": "main", "after": "a" * 40}, {"ref": "refs/heads/x", "after": "zz"}):
        with pytest.raises(NotAWebhook):
            parse_push("github", bad)


def test_urls_compare_without_user_case_or_suffix():
    assert normalise_url("https://u@Example.COM:8443/a/b.git/") == "https://example.com:8443/a/b"
    assert normalise_url("git@host:team/app.git") == "ssh://host/team/app"
    assert normalise_url("https://h:notaport/x") == "https://h:notaport/x"


def test_payload_text_is_one_line_of_valid_text():
    push = parse_push(
        "gitea",
        {
            "ref": "refs/heads/main",
            "after": "b" * 40,
            "pusher": {"login": "eve\n    source: forged\ud800"},
            "head_commit": {"message": "a\rb\nrest", "author": {"name": "x\ny", "email": "e"}},
        },
    )
    assert push.pusher == "eve     source: forged?"
    assert (push.subject, push.author) == ("a b", "x y <e>")
    with pytest.raises(NotAWebhook):
        parse_push("github", {"ref": "refs/heads/a\nb", "after": "b" * 40})
