"""Label Studio 1.23.2's labeling editor in headless Chromium (shared by the e2e tests that open a page)."""
from __future__ import annotations

from e2e_support import ADMIN


def open_task(page, ls, project_id: int, task_id: int) -> None:
    """Log in as the admin and open the task in the editor; returns once the picture is loaded (the editor
    draws it from a blob: copy) and the drawing stage over it has its size."""
    page.goto(ls.url + "/user/login/")
    page.fill("input[name=email]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "/user/login" not in page.url, "login failed"
    page.goto(f"{ls.url}/projects/{project_id}/data?task={task_id}")
    page.wait_for_function("""() => {
        const img = document.querySelector('.lsf-image img');
        const stage = document.querySelector('.konvajs-content');
        return img && img.complete && img.naturalWidth > 0 && stage && stage.clientWidth > 100;
    }""", timeout=60_000)
    page.wait_for_load_state("networkidle")
