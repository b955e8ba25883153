"""Pipelines pages in a real browser with a real agent: the list, a pipeline's page (its
definition as submitted, home worker, recent runs), Run, editing the definition, Clear
cache, static files (upload, sha256, delete), and what a viewer may not do."""

import hashlib
import os
import re
import socket
import ssl

import pytest

pytestmark = pytest.mark.e2e

DEFINITION = """\
# Built on any linux worker.
name: build
tags: [linux]
env: {GREETING: hi}
jobs:
  - name: compile
    steps: ["echo $GREETING"]
  - name: test
    needs: [compile]
    steps: ['true']
"""


def _row(page, selector: str, key: str):
    return page.locator(f'tr[{selector}="{key}"]')


def test_the_list_and_a_pipeline_page_and_its_run_button(page, login, primary, start_agent, shot):
    from playwright.sync_api import expect

    start_agent("builder-1", tags="linux")
    primary.pipeline(DEFINITION)
    primary.pipeline("name: idle\njobs:\n  - name: a\n    steps: ['true']\n")
    first = primary.wait_run(primary.trigger("build"))  # builder-1 becomes its home
    assert first["state"] == "success"
    config = b"[app]\nmode = ci\n"
    status, _, _ = primary.client.request(
        "PUT", "/api/v1/pipelines/build/files/conf/app.ini", config, "text/plain"
    )
    assert status == 200
    login(page, "admin")
    page.get_by_role("link", name="Pipelines").click()
    row = _row(page, "data-pipeline", "build")
    cells = row.locator("td")
    expect(cells.nth(0)).to_have_text("linux")
    expect(cells.nth(1)).to_have_text("compile, test")
    expect(cells.nth(2)).to_have_text("builder-1")
    expect(cells.nth(3)).to_have_text(f"#{first['id']} success")
    expect(_row(page, "data-pipeline", "idle").locator("td").nth(3)).to_have_text("never run")
    shot(page, "pipelines")

    row.get_by_role("link", name="build").click()
    expect(page.get_by_role("heading", name="build", exact=True)).to_be_visible()
    assert page.locator("#definition").text_content() == DEFINITION  # as submitted
    expect(page.locator("#home-worker")).to_have_text("builder-1")
    expect(_row(page, "data-run", str(first["id"])).locator("[data-state]")).to_have_text("success")
    uploaded = _row(page, "data-file", "conf/app.ini")  # uploaded with the admin API
    expect(uploaded.locator("code.hash")).to_have_text(hashlib.sha256(config).hexdigest())
    expect(uploaded.locator("[data-size]")).to_have_text(f"{len(config)} B")
    shot(page, "pipeline")

    page.get_by_role("button", name="Run").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    second = int(page.url.rsplit("/", 1)[1])
    assert second > first["id"] and primary.run(second)["pipeline"] == "build"
    expect(page.locator("#messages")).to_have_text(f"run {second} queued")
    expect(page.locator("#run-state")).to_have_text("success")
    page.get_by_role("link", name="build", exact=True).click()
    expect(page.locator("#recent-runs tr[data-run]")).to_have_count(2)


def test_a_definition_is_created_and_edited_in_the_browser_and_mistakes_keep_the_text(
    page, login, primary
):
    from playwright.sync_api import expect

    login(page, "admin")
    page.goto("/pipelines")
    page.get_by_role("link", name="New pipeline").click()
    typo = (
        "name: deploy\njobs:\n  - name: build\n    steps: ['make']\n"
        "  - name: ship\n    needs: [biuld]\n    steps: ['./ship']\n"
    )
    page.get_by_label("Definition").fill(typo)
    page.get_by_role("button", name="Save").click()
    error = page.locator("#definition-error")
    expect(error).to_contain_text("jobs[1].needs: unknown job 'biuld' (line 6)")
    expect(error).to_contain_text("Line 6: needs: [biuld]")
    expect(page.get_by_label("Definition")).to_have_value(typo)  # nothing typed is lost
    assert page.get_by_label("Definition").get_attribute("aria-invalid") == "true"
    status, _, _ = primary.client.request("GET", "/api/v1/pipelines/deploy")
    assert status == 404  # nothing half-stored

    fixed = typo.replace("biuld", "build")
    page.get_by_label("Definition").fill(fixed)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#messages")).to_have_text("pipeline deploy created")
    assert page.locator("#definition").text_content() == fixed
    assert primary.client.json("GET", "/api/v1/pipelines/deploy")["definition"] == fixed

    page.get_by_role("link", name="Edit definition").click()
    expect(page.get_by_label("Definition")).to_have_value(fixed)
    too_big = "# " + "x" * (1 << 20) + "\n" + fixed  # the admin API's limit is 1 MiB too
    page.get_by_label("Definition").fill(too_big)
    page.get_by_role("button", name="Save").click()
    expect(error).to_contain_text("the definition is larger than 1048576 bytes")
    assert page.get_by_label("Definition").input_value() == too_big
    page.get_by_label("Definition").fill(fixed.replace("./ship", "./ship --now"))
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#messages")).to_have_text("pipeline deploy saved")
    assert primary.client.json("GET", "/api/v1/pipelines/deploy")["spec"]["jobs"][1]["steps"] == [
        "./ship --now"
    ]


def test_clear_cache_asks_first_then_forgets_the_home(page, login, primary, start_agent):
    from playwright.sync_api import expect

    start_agent("builder-1", tags="linux")
    primary.pipeline(DEFINITION)
    primary.wait_run(primary.trigger("build"))
    login(page, "admin")
    page.goto("/pipelines/build")
    expect(page.locator("#home-worker")).to_have_text("builder-1")
    page.get_by_role("link", name="Clear cache…").click()
    expect(page.get_by_role("heading", name="Clear the cache of build?")).to_be_visible()
    expect(page.locator("main")).to_contain_text("builder-1 stops being its home")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("#home-worker")).to_have_text("builder-1")
    assert primary.client.json("GET", "/api/v1/pipelines/build")["home_worker_id"] is not None

    page.get_by_role("link", name="Clear cache…").click()
    page.get_by_role("button", name="Clear the cache of build").click()
    expect(page.locator("#messages")).to_contain_text("build: cache cleared")
    expect(page.locator("#home-worker")).to_contain_text("the cache was cleared")
    pipeline = primary.client.json("GET", "/api/v1/pipelines/build")
    assert (pipeline["home_worker_id"], pipeline["cache_cleared"]) == (None, True)


def test_static_files_are_uploaded_listed_with_their_sha256_and_deleted(page, login, primary):
    from playwright.sync_api import expect

    primary.pipeline(DEFINITION)
    content = os.urandom(700_000)  # past the 500 KB Werkzeug keeps in memory: spooled
    login(page, "admin")
    page.goto("/pipelines/build")
    expect(page.locator("tr[data-file]")).to_have_count(0)
    page.get_by_label("File to upload").set_input_files(
        files=[{"name": "blob.bin", "mimeType": "application/octet-stream", "buffer": content}]
    )
    page.get_by_label("Path in the workspace").fill("conf//./data/blob.bin")
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("#messages")).to_have_text("conf/data/blob.bin stored (700000 bytes)")
    row = _row(page, "data-file", "conf/data/blob.bin")
    expect(row.locator("code.hash")).to_have_text(hashlib.sha256(content).hexdigest())
    expect(row.locator("[data-size]")).to_have_attribute("data-size", "700000")
    expect(row.locator("[data-size]")).to_have_text("683.6 KiB")
    status, headers, body = primary.client.request(
        "GET", "/api/v1/pipelines/build/files/conf/data/blob.bin"
    )
    assert (status, body) == (200, content)

    # No path given: the file's own name.
    page.get_by_label("File to upload").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello\n"}]
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(_row(page, "data-file", "notes.txt").locator("code.hash")).to_have_text(
        hashlib.sha256(b"hello\n").hexdigest()
    )

    # A path that leaves the tree is refused; nothing is stored.
    page.get_by_label("File to upload").set_input_files(
        files=[{"name": "x", "mimeType": "text/plain", "buffer": b"x"}]
    )
    page.get_by_label("Path in the workspace").fill("../escape")
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("main")).to_contain_text("path: must not contain '..'")
    page.goto("/pipelines/build")
    expect(page.locator("tr[data-file]")).to_have_count(2)

    _row(page, "data-file", "conf/data/blob.bin").get_by_role(
        "link", name="Delete conf/data/blob.bin"
    ).click()
    expect(page.get_by_role("heading", name="Delete conf/data/blob.bin of build?")).to_be_visible()
    page.get_by_role("button", name="Delete conf/data/blob.bin").click()
    expect(page.locator("#messages")).to_have_text("conf/data/blob.bin deleted")
    expect(page.locator("tr[data-file]")).to_have_count(1)
    files = primary.client.json("GET", "/api/v1/pipelines/build/files")["files"]
    assert [f["path"] for f in files] == ["notes.txt"]


@pytest.mark.parametrize("primary", [("--max-static-file-bytes", "100000")], indirect=True)
def test_an_upload_over_the_size_limit_is_refused_and_nothing_is_stored(page, login, primary):
    from playwright.sync_api import expect

    primary.pipeline(DEFINITION)
    login(page, "admin")
    page.goto("/pipelines/build")
    refused = "file: larger than the limit of 100000 bytes; nothing was stored"
    # Just over (within the form's slack: the whole body is read, then refused), and far
    # over: refused from its Content-Length, before the body is read. The server then
    # reads and discards the rest for a while (aiohttp's lingering close); should it close
    # the connection with the rest unread, the browser shows a reset connection instead.
    for size, shown in ((100_001, refused), (1_000_000, f"{refused}|ERR_CONNECTION_RESET")):
        page.get_by_label("File to upload").set_input_files(
            files=[
                {"name": "big.bin", "mimeType": "application/octet-stream", "buffer": b"x" * size}
            ]
        )
        page.get_by_role("button", name="Upload", exact=True).click()
        expect(page.locator("body")).to_contain_text(re.compile(shown))
        page.goto("/pipelines/build")
    assert primary.client.json("GET", "/api/v1/pipelines/build/files")["files"] == []
    page.get_by_label("File to upload").set_input_files(
        files=[{"name": "ok.bin", "mimeType": "application/octet-stream", "buffer": b"x" * 100_000}]
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("#messages")).to_have_text("ok.bin stored (100000 bytes)")


def test_a_viewer_sees_no_controls_and_their_posts_are_refused(
    new_page, login, primary, start_agent, session_post, csrf_of
):
    from playwright.sync_api import expect

    start_agent("builder-1", tags="linux")
    primary.pipeline(DEFINITION)
    primary.wait_run(primary.trigger("build"))
    primary.client.request("PUT", "/api/v1/pipelines/build/files/conf.ini", b"a=1\n", "text/plain")
    viewer = new_page()
    login(viewer, "viewer")
    viewer.goto("/pipelines")
    expect(viewer.get_by_role("link", name="New pipeline")).to_have_count(0)
    viewer.goto("/pipelines/build")
    expect(_row(viewer, "data-file", "conf.ini")).to_be_visible()
    expect(viewer.locator("main button, main form, main input, main a.button")).to_have_count(0)
    expect(viewer.get_by_role("columnheader", name="Actions")).to_have_count(0)

    token = csrf_of(viewer)
    runs_before = len(primary.client.json("GET", "/api/v1/runs")["runs"])
    for path in [
        "/pipelines/build/runs",
        "/pipelines",
        "/pipelines/build/cache/clear",
        "/pipelines/build/files",
        "/pipelines/build/files/conf.ini/delete",
    ]:
        status, body = session_post(
            viewer, path, {"csrf_token": token, "definition": "name: x\njobs: []\n"}
        )
        assert (status, "only an admin may do this" in body) == (403, True), path
    for path in ["/pipelines/_new", "/pipelines/build/edit", "/pipelines/build/cache/clear"]:
        viewer.goto(path)
        expect(viewer.get_by_role("heading", name="Not allowed")).to_be_visible()
    assert len(primary.client.json("GET", "/api/v1/runs")["runs"]) == runs_before
    pipeline = primary.client.json("GET", "/api/v1/pipelines/build")
    assert pipeline["home_worker_id"] is not None
    files = primary.client.json("GET", "/api/v1/pipelines/build/files")["files"]
    assert [f["path"] for f in files] == ["conf.ini"]


def test_a_viewers_large_upload_is_refused_before_its_body_is_read(page, login, primary):
    # An admin may upload a static file up to --max-static-file-bytes; anyone else gets
    # only the usual request limit, checked against Content-Length before the form (which
    # carries the CSRF token) is parsed and spooled.
    login(page, "viewer")
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    context = ssl.create_default_context(cafile=str(primary.ca_file))
    raw = socket.create_connection(("127.0.0.1", primary.api_port), timeout=30)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(
            (
                "POST /pipelines/build/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Cookie: {cookies}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {100 << 20}\r\n\r\n--b\r\n"
            ).encode()
        )  # ... and nothing more: a server that waited for 100 MiB would time out
        answer = tls.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413 "), answer[:200]
