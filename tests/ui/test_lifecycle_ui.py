"""A pipeline's lifecycle in the browser, at both widths: a Run with an unset secret leads to
the secrets (not to the API), secrets are set and unset (values never shown), a rename in
the editor leaves one pipeline, and Delete asks first, then removes it."""

import re

import pytest
from widths import DESKTOP, PHONE, both_widths, no_sideways_overflow

pytestmark = pytest.mark.e2e

DEFINITION = """\
name: {name}
jobs:
  - name: show
    secrets: [TOKEN]
    steps: ['echo "token=$TOKEN"']
"""
VALUE = "v4lue-never-shown"


@both_widths
def test_secrets_rename_and_delete(new_page, login, primary, start_agent, viewport, shot):
    from playwright.sync_api import expect

    start_agent("life-ui")
    primary.pipeline(DEFINITION.format(name="app"))
    page = new_page(viewport)
    login(page, "admin")
    page.goto("/pipelines/app")
    row = page.locator('tr[data-secret="TOKEN"]')
    expect(row.locator("[data-secret-state]")).to_have_text("not set")
    no_sideways_overflow(page)

    # Run without the secret: back on this page, at the secrets, with what to do.
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/pipelines/app#secrets$"))
    expect(page.locator("#messages .flash-error")).to_have_text(
        "app needs secrets that are not set: TOKEN; set them below"
    )
    assert primary.client.json("GET", "/api/v1/runs")["runs"] == []

    page.get_by_label("Secret name").fill("TOKEN")
    page.get_by_label("Value").fill(VALUE)
    page.get_by_role("button", name="Set secret").click()
    expect(page.locator("#messages")).to_have_text("secret TOKEN of app set")
    expect(row.locator("[data-secret-state]")).to_have_text("set")
    assert VALUE not in page.content()  # write-only
    assert primary.client.json("GET", "/api/v1/pipelines/app/secrets") == {"secrets": ["TOKEN"]}
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    run = primary.wait_run(run_id)
    assert primary.job_log(run_id, "show") == b"token=***\n", run

    # A secret the definition does not name can be set, is listed as unused, and unset.
    page.goto("/pipelines/app")
    page.get_by_label("Secret name").fill("EXTRA")
    page.get_by_label("Value").fill("x")
    page.get_by_role("button", name="Set secret").click()
    extra = page.locator('tr[data-secret="EXTRA"]')
    expect(extra).to_contain_text("no: not named by any job or the source")
    page.on("dialog", lambda dialog: dialog.accept())
    extra.get_by_role("button", name="Unset EXTRA").click()
    expect(page.locator("#messages")).to_have_text("secret EXTRA of app unset")
    expect(extra).to_have_count(0)
    shot(page, f"pipeline-secrets-{'phone' if viewport['width'] < 600 else 'desktop'}")

    # Rename in the editor: one pipeline, under the new name, with its run and secret.
    page.get_by_role("link", name="Edit definition").click()
    page.get_by_label("Definition").fill(DEFINITION.format(name="app2"))
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#messages")).to_have_text("pipeline app renamed to app2 and saved")
    expect(page.get_by_role("heading", name="app2", exact=True)).to_be_visible()
    names = [p["name"] for p in primary.client.json("GET", "/api/v1/pipelines")["pipelines"]]
    assert names == ["app2"]
    expect(page.locator(f'#recent-runs tr[data-run="{run_id}"]')).to_have_count(1)
    expect(row.locator("[data-secret-state]")).to_have_text("set")

    # A rename onto a name taken comes back with the text and the reason.
    primary.pipeline("name: other\njobs:\n  - name: a\n    steps: ['true']\n")
    page.get_by_role("link", name="Edit definition").click()
    page.get_by_label("Definition").fill(DEFINITION.format(name="other"))
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#definition-error")).to_contain_text("a pipeline 'other' exists already")
    expect(page.get_by_label("Definition")).to_have_value(DEFINITION.format(name="other"))
    no_sideways_overflow(page)

    page.goto("/pipelines/app2")
    page.get_by_role("link", name="Delete…", exact=True).click()
    expect(page.get_by_role("heading", name="Delete pipeline app2?")).to_be_visible()
    expect(page.locator("main")).to_contain_text("Its runs (1) stay in Runs")
    no_sideways_overflow(page)
    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_role("heading", name="app2", exact=True)).to_be_visible()
    page.get_by_role("link", name="Delete…", exact=True).click()
    page.get_by_role("button", name="Delete app2").click()
    expect(page).to_have_url(re.compile(r"/pipelines$"))
    expect(page.locator("#messages")).to_have_text(
        "pipeline app2 deleted; its runs stay in Runs (1)"
    )
    expect(page.locator('tr[data-pipeline="app2"]')).to_have_count(0)
    assert primary.client.request("GET", "/api/v1/pipelines/app2")[0] == 404
    page.goto(f"/runs/{run_id}")
    expect(page.locator("#run-state")).to_have_text("success")


@both_widths
def test_a_viewer_sees_secret_names_but_no_controls(
    new_page, viewport, login, primary, session_post, csrf_of
):
    from playwright.sync_api import expect

    primary.pipeline(DEFINITION.format(name="app"))
    page = new_page(viewport)
    login(page, "viewer")
    page.goto("/pipelines/app")
    expect(page.locator('tr[data-secret="TOKEN"] [data-secret-state]')).to_have_text("not set")
    expect(page.get_by_role("button", name="Set secret")).to_have_count(0)
    expect(page.get_by_role("link", name="Delete…", exact=True)).to_have_count(0)
    token = csrf_of(page)
    for path, form in (
        ("/pipelines/app/secrets", {"name": "TOKEN", "value": "x"}),
        ("/pipelines/app/delete", {}),
    ):
        status, _ = session_post(page, path, {**form, "csrf_token": token})
        assert status == 403, path
    assert primary.client.json("GET", "/api/v1/pipelines/app/secrets") == {"secrets": []}
    assert primary.client.json("GET", "/api/v1/pipelines/app")["name"] == "app"


PARAMETERS = """\
name: params
parameters:
  TARGET: {type: string, default: x86, choices: [x86, arm]}
  COUNT: {type: integer, default: 1, min: 1, max: 10}
  DEBUG: {type: boolean, default: false}
jobs:
  - name: show
    steps: ['echo "$TARGET $COUNT $DEBUG"']
"""


def test_run_with_parameters(new_page, login, primary, start_agent):
    from playwright.sync_api import expect

    start_agent("param-host")
    primary.pipeline(PARAMETERS)
    for viewport in (DESKTOP, PHONE):
        page = new_page(viewport)
        login(page, "admin")
        page.goto("/pipelines/params")
        page.get_by_text("Run with parameters…").click()
        expect(page.get_by_label("TARGET")).to_have_value("x86")  # the defaults
        expect(page.get_by_label("COUNT")).to_have_value("1")
        expect(page.get_by_label("DEBUG")).to_have_value("false")
        no_sideways_overflow(page)
        page.get_by_label("TARGET").select_option("arm")
        page.get_by_label("COUNT").fill("3")
        page.get_by_label("DEBUG").select_option("true")
        page.get_by_role("button", name="Run with these").click()
        expect(page).to_have_url(re.compile(r"/runs/\d+$"))
        run_id = int(page.url.rsplit("/", 1)[1])
        expect(page.locator("#log")).to_have_attribute("data-complete", "true")
        assert primary.job_log(run_id, "show") == b"arm 3 true\n"
        expect(page.locator("#run-origin")).to_contain_text("COUNT=3")

        # A value out of range: back at the form with the reason; no run.
        made = [r["id"] for r in primary.client.json("GET", "/api/v1/runs")["runs"]]
        assert made[0] == run_id
        page.goto("/pipelines/params")
        page.get_by_text("Run with parameters…").click()
        page.get_by_label("COUNT").evaluate("el => { el.removeAttribute('max'); el.value = '11'; }")
        page.get_by_role("button", name="Run with these").click()
        expect(page).to_have_url(re.compile(r"/pipelines/params#run-with$"))
        expect(page.locator("#messages .flash-error")).to_have_text(
            "env.COUNT: must be a whole number from 1 to 10"
        )
        assert [r["id"] for r in primary.client.json("GET", "/api/v1/runs")["runs"]] == made
