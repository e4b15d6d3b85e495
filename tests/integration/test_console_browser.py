"""The review console end to end in a real browser (issue 22): Debian's headless chromium through its chromedriver
(deploy/install-tools.sh), driven by selenium, against the real server with the console on.

A Moderate call answered REVIEW opens a case; reviewer A signs in with her own token, leases the case (n),
reveals the blurred greyscale image (r), asks the explainer (a; tiny SmolVLM2 with random weights answers
something valid), and decides (v) with a note holding HTML and a script, shown as text; reviewer B, in a
tab of his own, cannot take A's lease and the console shows the service's refusal; a forged token is
refused at sign-in; the audit has each step. Also the HTTP layer alone: statuses mapped from gRPC with the
service's sentence, the security headers, bad bodies.

Set CONSOLE_SCREENSHOT=docs/images/console.png to refresh the screenshot in the docs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from moderation.v1 import review_pb2 as rpb
from moderation.v1 import review_pb2_grpc as rpb_grpc
from tests import images
from tests.conftest import TINY_CLIP
from tests.integration.server import RunningServer, free_port, running_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="needs chromium and chromium-driver (deploy/install-tools.sh)"),
]

ALICE_TOKEN = "alice-reviewer-token-0123456789"
BOB_TOKEN = "bob-reviewer-token-0123456789ab"
FORGED_TOKEN = "forged-reviewer-token-987654321"
POLICY = """\
id: queue
version: "3"
default: true
benign: ["a cat"]
categories:
  - id: weapons
    clause: {id: W-1, text: "No threatening display of firearms or knives offered for sale."}
    positive: ["a gun"]
    thresholds: {review: 0.0, block: 1.0}
"""
EXPLAINER = ("--explainer", "in-process", "--explainer-model", "tiny-smolvlm", "--explainer-weights", "random")
NOTE = 'Sold, see <b>price tag</b><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
QUESTION = "Is the <i>knife</i> being sold?"


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    root = tmp_path_factory.mktemp("console")
    (root / "policies").mkdir()
    (root / "policies" / "queue.yaml").write_text(POLICY)
    (root / "reviewers").write_text(f"alice:{ALICE_TOKEN}\nbob:{BOB_TOKEN}\n")
    port = free_port()
    env = {
        "MODERATION_EMBEDDING_STORE": str(root / "store.db"),
        "MODERATION_THUMBNAIL_STORE": str(root / "thumbnails"),
        "MODERATION_EMBEDDING_FLUSH_INTERVAL_S": "0.2",
        "MODERATION_REVIEWER_TOKENS_FILE": str(root / "reviewers"),
        "MODERATION_CONSOLE_HOST": "127.0.0.1",
    }
    args = ("--policies", str(root / "policies"), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random", *EXPLAINER)
    with running_server(root, *args, "--console-port", str(port), env=env) as server:
        yield server, f"http://127.0.0.1:{port}"


def api(url: str, method: str, body: object, token: str | None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"{url}/api/{method}", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def open_case(server: RunningServer, request_id: str) -> rpb.Case:
    with server.channel() as channel:
        response = pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(request_id=request_id, image=images.astronaut_jpeg()), timeout=120)
        assert response.action == pb.ACTION_REVIEW
        review = rpb_grpc.ReviewServiceStub(channel)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cases = review.ListCases(rpb.ListCasesRequest(page_size=100), metadata=(("authorization", f"Bearer {ALICE_TOKEN}"),), timeout=10).cases
            found = [c for c in cases if c.request_id == request_id]
            if found:
                return found[0]
            time.sleep(0.1)
    raise AssertionError(f"no case opened for {request_id}")


def test_the_http_layer_forwards_to_review_service_with_its_statuses_and_sentences(console_server: tuple[RunningServer, str]) -> None:
    _, url = console_server
    with urllib.request.urlopen(f"{url}/", timeout=10) as page:
        headers = dict(page.headers)
        assert b'<script src="/console.js"' in page.read()
    assert "script-src 'self'" in headers["Content-Security-Policy"] and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"

    status, body, _ = api(url, "ListCases", {}, FORGED_TOKEN)
    assert status == 401 and body["code"] == "UNAUTHENTICATED"
    status, body, _ = api(url, "ListCases", {}, None)
    assert status == 401 and body["code"] == "UNAUTHENTICATED"
    status, body, _ = api(url, "DropCases", {}, ALICE_TOKEN)
    assert status == 404 and "no ReviewService method 'DropCases'" in body["message"]
    status, body, _ = api(url, "GetCase", b"{not json", ALICE_TOKEN)
    assert status == 400 and "not a GetCaseRequest in JSON" in body["message"]
    status, body, _ = api(url, "GetCase", {"case_id": "no-such-case"}, ALICE_TOKEN)
    assert status == 404 and body["code"] == "NOT_FOUND" and "no case 'no-such-case'" in body["message"]
    status, body, _ = api(url, "ListCases", {"page_size": 501}, ALICE_TOKEN)
    assert status == 400 and "page_size must be between 1 and 500" in body["message"]
    status, body, _ = api(url, "DecideCase", {"case_id": "x", "note": "n" * 70_000}, ALICE_TOKEN)
    assert status == 413 and "over 65536 bytes" in body["message"]
    status, body, _ = api(url, "ListCases", {"page_size": 10}, ALICE_TOKEN)
    assert status == 200 and "open_cases" in body and isinstance(body["cases"], list)


def test_a_reviewer_reveals_asks_and_decides_in_the_browser_and_another_cannot_take_her_lease(
    console_server: tuple[RunningServer, str], tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    server, url = console_server
    case = open_case(server, "console-1")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, 120)

    def status() -> str:
        return driver.find_element(By.ID, "status").text

    def keys(text: str) -> None:
        ActionChains(driver).send_keys(text).perform()

    def sign_in(token: str) -> None:
        driver.get(url)
        field = driver.find_element(By.ID, "token")
        field.send_keys(token)
        field.send_keys(Keys.ENTER)

    def filter_of_image() -> str:
        return driver.execute_script("return getComputedStyle(document.getElementById('thumbnail')).filter")

    try:
        # A forged token is refused with the service's sentence, and nothing is kept.
        sign_in(FORGED_TOKEN)
        wait.until(lambda _: "401" in status())
        assert "UNAUTHENTICATED" in status() and driver.find_element(By.ID, "login").is_displayed()
        assert driver.execute_script("return sessionStorage.length") == 0

        # Reviewer A: sign in, lease the next case (n): the image is blurred and greyscale until revealed (r).
        sign_in(ALICE_TOKEN)
        wait.until(lambda _: "Signed in" in status())
        assert driver.execute_script("return sessionStorage.getItem('moderation-review-token')") == ALICE_TOKEN
        assert driver.execute_script("return localStorage.length") == 0 and driver.get_cookies() == []
        keys("n")
        wait.until(lambda _: f"Leased case {case.case_id}" in status())
        assert "blur" in filter_of_image() and "grayscale" in filter_of_image()
        page = driver.find_element(By.ID, "case").text
        assert "No threatening display of firearms or knives offered for sale." in page, "the clause text"
        assert "queue version 3" in page and "deciding frame 0" in page
        score = f"{case.categories[0].score:.4f}"
        assert f"{score} 0 1 BORDERLINE REVIEW W-1" in driver.find_element(By.ID, "categories").text, "score, thresholds as the policy holds them"
        assert driver.find_element(By.ID, "reveal").text == "Reveal (r)"
        keys("r")
        wait.until(lambda _: filter_of_image() == "none")
        assert driver.find_element(By.ID, "reveal").text == "Hide (r)", "the button says what it does next"
        keys("r")
        wait.until(lambda _: "blur" in filter_of_image())
        keys("r")
        wait.until(lambda _: filter_of_image() == "none")

        # Ask (a): the random tiny SmolVLM2 answers something valid, marked advisory; the question shows as text.
        keys("a")
        assert driver.switch_to.active_element.get_attribute("id") == "question"
        keys(QUESTION + Keys.ENTER)
        wait.until(lambda _: "explainer answered" in status() or "Refused" in status())
        assert "explainer answered" in status(), status()
        (item,) = driver.find_elements(By.CSS_SELECTOR, "#questions li")
        assert item.find_element(By.CLASS_NAME, "question").text == QUESTION
        answer = item.find_element(By.CLASS_NAME, "answer").text
        assert answer.startswith("ADVISORY") or answer.lower().startswith("advisory"), answer
        assert len(answer.split(maxsplit=1)) == 2, "an answer follows the advisory label"
        assert driver.find_elements(By.CSS_SELECTOR, "#questions i") == [], "the question's markup is text, not HTML"
        if os.environ.get("CONSOLE_SCREENSHOT"):
            driver.find_element(By.ID, "note").send_keys("A price tag is visible: for sale.")
            driver.set_window_size(1280, 1700)
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(os.environ["CONSOLE_SCREENSHOT"])
            driver.find_element(By.ID, "note").clear()
        driver.save_screenshot(str(tmp_path / "console.png"))

        # Reviewer B, in a tab of his own (sessionStorage is per tab): the case shows as A's; taking it is refused.
        tab_a = driver.current_window_handle
        driver.switch_to.new_window("tab")
        sign_in(BOB_TOKEN)
        wait.until(lambda _: "Signed in" in status())
        row = driver.find_element(By.CSS_SELECTOR, f'#queue button[data-case-id="{case.case_id}"]')
        assert "leased by token:alice" in row.text
        row.click()
        wait.until(lambda _: "Refused" in status())
        assert "409" in status() and "ABORTED" in status() and "leased by another reviewer" in status()
        assert driver.find_element(By.ID, "case-body").is_displayed() is False
        driver.close()
        driver.switch_to.window(tab_a)

        # A decides (v) with a note holding HTML and a script: shown as text, never run.
        note = driver.find_element(By.ID, "note")
        note.send_keys(NOTE)
        note.send_keys(Keys.ESCAPE)
        keys("v")
        wait.until(lambda _: "Decided: violates" in status())
        decision = driver.find_element(By.ID, "decision")
        assert "Violates clause W-1, decided by token:alice" in decision.text and NOTE in decision.text
        assert decision.find_elements(By.TAG_NAME, "b") == [] and decision.find_elements(By.TAG_NAME, "img") == []
        assert driver.execute_script("return window.pwned === undefined")
        keys("c")  # decided twice: refused with the service's sentence, the first decision kept
        wait.until(lambda _: "Refused" in status())
        assert "400 FAILED_PRECONDITION" in status() and "already decided by token:alice" in status()
        assert "Violates clause W-1" in driver.find_element(By.ID, "decision").text
        audit = driver.find_element(By.ID, "audit").text
        for action in ("open", "lease", "ask", "decide"):
            assert action in audit
    finally:
        driver.quit()

    # The audit, as the service keeps it: each step, by whom, under the case's policy version.
    with server.channel() as channel:
        review = rpb_grpc.ReviewServiceStub(channel)
        entries = review.GetCaseAudit(rpb.GetCaseAuditRequest(case_id=case.case_id), metadata=(("authorization", f"Bearer {BOB_TOKEN}"),), timeout=10).entries
        kept = review.GetCase(rpb.GetCaseRequest(case_id=case.case_id), metadata=(("authorization", f"Bearer {BOB_TOKEN}"),), timeout=10).case
    assert [(e.who, e.action) for e in entries] == [("service", "open"), ("token:alice", "lease"), ("token:alice", "ask"), ("token:alice", "decide")]
    assert {e.policy_version for e in entries} == {"3"}
    assert kept.decision.note == NOTE and kept.decision.violates and [q.question for q in kept.questions] == [QUESTION]
