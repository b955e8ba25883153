"""Settings -> Worker in a real browser: counts, the add-worker commands, revealing and
copying the worker secret, rotating it (and the old one refused at registration)."""

import pytest
from fleet import register_agent

pytestmark = pytest.mark.e2e


def test_counts_and_the_commands_to_add_a_worker(page, login, primary, start_agent, fleet_root):
    from playwright.sync_api import expect

    start_agent("builder-1", tags="linux")
    assert register_agent(primary, fleet_root, "idle-1").returncode == 0  # never started
    primary.pipeline("name: cuda\ntags: [gpu]\njobs:\n  - name: a\n    steps: ['true']\n")
    primary.trigger("cuda")  # no worker has gpu: it waits in the queue
    login(page, "admin")
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Settings → Worker")).to_be_visible()
    expect(page.locator("#count-active")).to_have_text("1")
    expect(page.locator("#count-inactive")).to_have_text("1")
    expect(page.locator("#count-queued")).to_have_text("1")

    inventory = page.locator("#cmd-inventory").inner_text()
    assert f"cifleet_worker_primary_url={primary.url}\n" in inventory
    assert f"cifleet_worker_ca_file={primary.ca_file}\n" in inventory
    assert f"cifleet_worker_admin_token_file={primary.data_dir / 'admin.token'}\n" in inventory
    expect(page.locator("#cmd-ansible")).to_contain_text(
        "ansible-playbook -i inventory playbooks/add-worker.yml"
    )
    expect(page.locator("#cmd-manual")).to_contain_text(
        f"cifleet-agent register --primary {primary.url} --ca-file ca.pem"
    )


def test_the_secret_is_shown_on_request_copied_and_rotated_after_a_confirmation(
    page, login, primary, start_agent, fleet_root, shot
):
    from playwright.sync_api import expect

    start_agent("builder-1")
    old = primary.secret()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    login(page, "admin")
    page.goto("/settings/worker")
    assert old not in page.content()  # not in the page until asked for
    shot(page, "settings")

    with page.expect_response(lambda r: r.url.endswith("/settings/worker/secret")) as reveal:
        page.get_by_role("button", name="Reveal secret").click()
    assert reveal.value.headers["cache-control"] == "no-store"
    expect(page.get_by_label("Current secret")).to_have_value(old)
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == old

    page.get_by_role("link", name="Rotate secret…").click()
    expect(page.get_by_role("heading", name="Rotate the worker secret?")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()
    assert primary.secret() == old  # cancelling changed nothing

    page.get_by_role("link", name="Rotate secret…").click()
    page.get_by_role("button", name="Rotate the secret").click()
    expect(page.locator("#messages")).to_contain_text("The worker secret was rotated.")
    expect(page.get_by_label("Current secret")).to_have_count(0)  # hidden again
    page.get_by_role("button", name="Reveal secret").click()
    new = page.get_by_label("Current secret").input_value()
    assert new != old and new == primary.secret()

    refused = register_agent(primary, fleet_root, "late-1", secret=old)
    assert refused.returncode != 0 and "secret" in refused.stderr
    assert primary.worker("late-1") is None
    accepted = register_agent(primary, fleet_root, "late-2", secret=new)
    assert accepted.returncode == 0, accepted.stderr
    # builder-1 registered with the old secret and stays (it uses its certificate)
    assert primary.worker("builder-1")["state"] == "active"
