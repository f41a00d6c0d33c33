"""GET /docs and the playground (GET / and /playground): served from the installed package under
a strict Content-Security-Policy, and right in a real browser (Debian's headless Chromium, with
every host name but the server's unresolvable) against real servers and models."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from api.pages import CONTENT_SECURITY_POLICY, STATIC, asset_paths
from tests.conftest import (
    BIN,
    CLIP,
    MINILM,
    RERANKER,
    TEXT_CLASSIFIER,
    TIMM,
    Server,
    copy_tree,
    start_server,
    stop_server,
)

ODD = '<script>alert("x")</script><img src=x onerror=alert(1)>'
KEY = "pages-user-key"
ADMIN_KEY = "pages-admin-key"
PAGES = ("/", "/playground", "/docs")
REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60


@pytest.fixture(scope="module")
def pages_engines(pair_engines, pair_sources, tmp_path_factory) -> Path:
    """The test repository plus a reranker whose name is markup, built with ingrain-build."""
    root = tmp_path_factory.mktemp("pages") / "engines"
    copy_tree(pair_engines, root)
    build = [str(BIN / "ingrain-build"), str(pair_sources[RERANKER]), "--engines", str(root)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([*build, "--name", ODD], check=True, env=env, capture_output=True, timeout=600)
    return root


SERVED = (MINILM, CLIP, TIMM, RERANKER, TEXT_CLASSIFIER, ODD)


@pytest.fixture(scope="module")
def pages_server(pages_engines, tmp_path_factory):
    log = tmp_path_factory.mktemp("pages-server") / "server.log"
    preload = [part for name in SERVED for part in ("--preload", name)]
    server = start_server(pages_engines, log, *preload, "--max-loaded-models", str(len(SERVED)))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def guarded(engines, tmp_path_factory):
    """Keys required, and management on the model port only: the playground on the inference
    port must fall back to the repository's model list."""
    log = tmp_path_factory.mktemp("pages-guarded") / "server.log"
    keys = ("--api-key", KEY, "--admin-key", ADMIN_KEY)
    server = start_server(
        engines, log, *keys, "--preload", MINILM, "--management-on-model-port-only"
    )
    yield server
    stop_server(server)


# Pages over plain HTTP -----------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_html_under_a_strict_policy(pages_server, path):
    answer = requests.get(pages_server.url + path, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    policy = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert policy["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src"):
        assert policy[directive] == "'self'"
    # Every script is a file of this origin; nothing is loaded from another.
    assert re.findall(r"<script(?![^>]*\bsrc=\"/pages/)", answer.text) == []
    assert re.findall(r"(?:src|href)=\"(?!/|data:,)", answer.text) == []


def test_every_page_file_is_served_and_nothing_else(pages_server):
    files = asset_paths()
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "playground.mjs", "logic.mjs"} <= set(files)
    for name, path in files.items():
        answer = requests.get(f"{pages_server.url}/pages/{name}", timeout=10)
        assert answer.status_code == 200 and answer.content == path.read_bytes(), name
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        again = {"If-None-Match": answer.headers["ETag"]}
        unchanged = requests.get(f"{pages_server.url}/pages/{name}", headers=again, timeout=10)
        assert unchanged.status_code == 304 and unchanged.content == b"", name
    assert (
        requests.get(pages_server.url + "/pages/docs.js", timeout=30)
        .headers["Content-Type"]
        .startswith("text/javascript")
    )
    for name in (
        "pages.py",
        "..%2Fpages.py",
        "..%2F..%2Fcli.py",
        "%2Fetc%2Fpasswd",
        "swagger.json",
    ):
        answer = requests.get(f"{pages_server.url}/pages/{name}", timeout=10)
        assert answer.status_code == 404 and "error" in answer.json(), name


@pytest.mark.parametrize("path", (*PAGES, "/pages/docs.js"))
def test_every_answer_of_the_page_routes_carries_the_policy(guarded, path):
    """HEAD answers as GET does without the body (RFC 9110: a server that answers GET answers
    HEAD); `If-None-Match: *` matches; and the 304s, 404s, 405s and OPTIONS answers of these
    routes carry the pages' headers too (POST / answers in them as well)."""
    url = guarded.url + path
    page = requests.get(url, timeout=10)
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(page.content))
    assert head.headers["ETag"] == page.headers["ETag"]
    assert "HEAD" in requests.options(url, timeout=10).headers["Allow"]
    answers = {
        200: requests.get(url, headers={"If-None-Match": '"garbage", W/'}, timeout=10),
        304: requests.get(url, headers={"If-None-Match": "*"}, timeout=10),
    }
    # POST on a page is refused (405), except on "/", where it is TEI's root, an API route: 401
    # without the key.
    refused = 401 if path == "/" else 405
    answers[refused] = requests.post(url, data="<script>", timeout=10)
    answers[404] = requests.get(
        guarded.url + "/pages/%3Cimg%20src=x%20onerror=alert(1)%3E", timeout=30
    )
    for status, answer in [*answers.items(), (200, head), (200, requests.options(url, timeout=30))]:
        assert answer.status_code == status, (status, answer.text)
        assert answer.headers.get("Content-Security-Policy") == CONTENT_SECURITY_POLICY, status
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", status


def test_pages_and_the_api_document_need_no_key_and_give_nothing_without_one(guarded):
    for path in (*PAGES, "/openapi.json", "/pages/playground.mjs", "/pages/swagger-ui-bundle.js"):
        assert requests.get(guarded.url + path, timeout=10).status_code == 200, path
    refused = requests.post(
        guarded.url + "/embed_text", json={"name": MINILM, "text": "a"}, timeout=30
    )
    assert refused.status_code == 401
    # POST / on the playground's path is Text Embeddings Inference's root: an API route.
    root = requests.post(guarded.url + "/", json={"inputs": "a"}, timeout=30)
    assert root.status_code == 401
    keyed = {"Authorization": f"Bearer {KEY}"}
    embedded = requests.post(guarded.url + "/", json={"inputs": "a"}, headers=keyed, timeout=30)
    assert embedded.status_code == 200 and len(embedded.json()) == 1  # MiniLM, the only model


def test_the_build_command_an_error_suggests_is_safe_to_paste(guarded):
    """The pages show the server's errors as copyable text: the `ingrain-build NAME` a 404
    suggests quotes NAME, so pasting it runs ingrain-build on that one name and nothing else."""
    name = 'x\'; touch pwned; echo $(id) `id` "q"\nnext'
    answer = requests.post(
        guarded.url + "/embed_text",
        json={"name": name, "text": "a"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert answer.status_code == 404
    suggested = answer.json()["error"].partition("build it with: ")[2]
    assert shlex.split(suggested) == ["ingrain-build", name]


def test_the_installed_package_ships_the_pages(tmp_path):
    """A non-editable install (Dockerfile, scripts/install-cpu.sh) gets every page file: a
    wheel built from the files the Dockerfile copies holds them all."""
    source = tmp_path / "source"
    for name in ("api", "builder", "runtime"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp_path), str(source)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("ingrain_server-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"api/static/{path.name}" for path in STATIC.iterdir()}
    assert expected and expected <= shipped


def test_the_page_logic_passes_its_unit_tests():
    """api/static/logic.mjs (cosines, ranking, curl quoting, error text) under node's runner."""
    node = shutil.which("node")
    assert node, "node is not installed: it runs the playground's JavaScript unit tests"
    test = REPO / "tests" / "js" / "logic.test.mjs"
    result = subprocess.run(
        [node, "--test", str(test)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^# pass [1-9]", result.stdout, re.MULTILINE)
    assert re.search(r"^# fail 0$", result.stdout, re.MULTILINE)


# In the browser -------------------------------------------------------------------------------


def chromium(resolver_rules: str):
    """Headless Chromium resolving host names by `resolver_rules` only."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(
            "Chromium is not installed (apt-get install chromium chromium-driver): the browser "
            "tests of /docs and the playground did not run"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--host-resolver-rules={resolver_rules}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(WAIT_S)
    return driver


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium that can resolve no host name: any request to another origin fails,
    and each test also checks that none was attempted."""
    driver = chromium("MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
    yield driver
    driver.quit()


class Page:
    """One page in the browser: its requests and console are checked when it is done."""

    def __init__(self, driver, server, path: str, screenshots: Path) -> None:
        self.driver, self.server, self.screenshots = driver, server, screenshots
        driver.get_log("performance"), driver.get_log("browser")  # drop earlier pages' entries
        driver.get(server.url + path)

    def wait(self, condition, message: str):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT_S).until(lambda _: condition(), message)

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, element) -> str:
        """Its text as the DOM holds it (also when inside a closed <details>)."""
        return element.get_attribute("textContent")

    def screenshot(self, name: str) -> Path:
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path = self.screenshots / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def requested(self) -> list[str]:
        """Every URL the page asked for since it was opened."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def check_stayed_home(self) -> list[str]:
        """No request left for another origin, and the policy refused nothing the page does."""
        urls = self.requested()
        assert urls, "the browser's network log is empty"
        elsewhere = [url for url in urls if not url.startswith((self.server.url + "/", "data:"))]
        assert elsewhere == []
        console = [entry["message"] for entry in self.driver.get_log("browser")]
        assert [line for line in console if "Content Security Policy" in line] == []
        assert [line for line in console if "Uncaught" in line] == []
        return urls


@pytest.fixture
def open_page(browser, tmp_path):
    def opener(server, path: str) -> Page:
        return Page(browser, server, path, tmp_path)

    return opener


def rendered_operations(page: Page) -> set[tuple[str, str]]:
    operations = set()
    for block in page.css(".opblock"):
        (path,) = [
            page.text(e) for e in block.find_elements("css selector", ".opblock-summary-path")
        ]
        (method,) = [
            page.text(e) for e in block.find_elements("css selector", ".opblock-summary-method")
        ]
        operations.add((path.replace("\u200b", ""), method.lower()))
    return operations


@pytest.mark.browser
def test_docs_render_every_operation_offline(open_page, pages_server):
    document = requests.get(pages_server.url + "/openapi.json", timeout=10).json()
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    page = open_page(pages_server, "/docs")
    page.wait(lambda: len(page.css(".opblock")) == len(described), "Swagger UI did not render")
    rendered = rendered_operations(page)
    assert rendered == described
    assert {("/embed_text", "post"), ("/v1/embeddings", "post")} <= rendered
    assert page.css("button.authorize"), "no Authorize button: the document declares no key"
    page.screenshot("docs")
    urls = page.check_stayed_home()
    assert pages_server.url + "/openapi.json" in urls


def execute(page: Page, path: str, method: str) -> tuple[str, str]:
    """Opens an operation in Swagger UI, runs it ("Execute") and reads its live answer."""
    (block,) = [
        b
        for b in page.css(f".opblock-{method}")
        if page.text(b.find_element("css selector", ".opblock-summary-path")).replace("\u200b", "")
        == path
    ]
    block.find_element("css selector", ".opblock-summary-control").click()
    page.wait(lambda: block.find_elements("css selector", "button.execute"), "no Execute button")
    block.find_element("css selector", "button.execute").click()
    page.wait(
        lambda: block.find_elements(
            "css selector", ".live-responses-table tbody .response-col_status"
        ),
        f"{method} {path} got no answer",
    )
    status = page.text(
        block.find_element("css selector", ".live-responses-table tbody .response-col_status")
    )
    body = page.text(block.find_element("css selector", ".live-responses-table .microlight"))
    return status.strip(), body


@pytest.mark.browser
def test_docs_try_it_out_sends_the_key_typed_in_authorize(open_page, guarded):
    page = open_page(guarded, "/docs")
    page.wait(lambda: page.css("button.authorize"), "Swagger UI did not render")
    status, body = execute(page, "/v1/embeddings", "post")
    assert status.startswith("401") and "Authorization: Bearer" in body
    page.css("button.authorize")[0].click()
    page.wait(lambda: page.css(".auth-container input"), "no key field in Authorize")
    page.css(".auth-container input")[0].send_keys(KEY)
    page.css(".auth-btn-wrapper button.authorize")[0].click()
    page.css(".auth-btn-wrapper button.btn-done")[0].click()
    status, body = execute(page, "/v1/models", "get")
    assert status.startswith("200") and MINILM in body
    page.screenshot("docs-authorized")
    page.check_stayed_home()


def model_rows(page: Page) -> dict[str, list[str]]:
    rows = page.css("#models tbody tr")
    return {
        page.text(cells[0]): [page.text(cell) for cell in cells[1:]]
        for cells in (row.find_elements("css selector", "td") for row in rows)
    }


def choose(page: Page, name: str) -> None:
    from selenium.webdriver.support.ui import Select

    page.wait(lambda: len(page.css("#model option")) > 0, "the model list did not load")
    Select(page.css("#model")[0]).select_by_value(name)


def fill(element, text: str) -> None:
    element.clear()
    element.send_keys(text)


def run_panel(page: Page, kind: str, result_selector: str) -> None:
    page.css(f"#panel-{kind} button.run")[0].click()
    page.wait(
        lambda: (
            page.css(f"#panel-{kind} {result_selector}")
            or page.css(f"#panel-{kind} .error:not([hidden])")
        ),
        f"the {kind} panel showed nothing",
    )
    errors = page.css(f"#panel-{kind} .error:not([hidden])")
    assert not errors, page.text(errors[0])


def curl_answer(page: Page, kind: str) -> dict:
    """Runs the curl command the panel shows; its JSON answer."""
    command = page.text(page.css(f"#panel-{kind} .curl")[0])
    assert command.startswith("curl ")
    output = subprocess.run(["sh", "-c", command], capture_output=True, timeout=60, check=True)
    return json.loads(output.stdout)


@pytest.mark.browser
def test_the_playground_lists_the_models_and_shows_names_as_text(open_page, pages_server):
    page = open_page(pages_server, "/")
    page.wait(lambda: len(page.css("#models tbody tr")) == len(SERVED), "the models did not load")
    rows = model_rows(page)
    assert set(rows) == set(SERVED)
    assert rows[MINILM][:2] == ["text embedding", "text 384"]
    assert rows[CLIP][0] == "CLIP" and rows[TIMM][0] == "image classifier"
    assert rows[RERANKER][0] == rows[ODD][0] == "reranker"
    assert rows[TEXT_CLASSIFIER][:2] == ["text classifier", "3 classes"]
    # The markup in the name is text in the table and the chooser, never elements.
    assert page.css("#models img, #models script, #model img, #model script") == []
    assert ODD in [page.text(option) for option in page.css("#model option")]
    assert page.driver.execute_script("return document.scripts.length") == 1
    page.screenshot("playground-models")
    page.check_stayed_home()


@pytest.mark.browser
def test_the_playground_similarity_matrix_is_the_embeddings_cosines(open_page, pages_server):
    texts = ["A cat sits on the mat.", "Stocks fell today.", "A kitten on a rug.", "It's raining"]
    page = open_page(pages_server, "/playground")
    choose(page, MINILM)
    fill(page.css("#panel-similarity textarea")[0], "\n".join(texts))
    run_panel(page, "similarity", ".heat")
    cells = page.css("#panel-similarity .heat td")
    shown = np.array([float(c.get_attribute("data-value")) for c in cells]).reshape(4, 4)
    answer = pages_server.post("/embed_text", {"name": MINILM, "text": texts}).json()
    vectors = np.asarray(answer["embeddings"], dtype=np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = unit @ unit.T
    assert np.abs(shown - expected).max() < 1e-9
    nearest = [int(item.get_attribute("data-index")) for item in page.css(".nearest li")]
    assert nearest == [i for i in np.argsort(-expected[0], kind="stable") if i != 0]
    # The curl command shown sends the same request.
    assert np.abs(np.asarray(curl_answer(page, "similarity")["embeddings"]) - vectors).max() < 1e-6
    page.screenshot("playground-similarity")
    page.check_stayed_home()


@pytest.mark.browser
def test_the_playground_ranks_documents_as_rerank_does(open_page, pages_server):
    query = "How do plants make food?"
    documents = ["Plants use light to make sugar.", "The market rose.", "Leaves hold chlorophyll."]
    page = open_page(pages_server, "/playground")
    choose(page, RERANKER)
    fill(page.css("#panel-rerank input.query")[0], query)
    fill(page.css("#panel-rerank textarea")[0], "\n".join(documents))
    run_panel(page, "rerank", ".ranked li")
    shown = [
        (int(item.get_attribute("data-index")), float(item.get_attribute("data-score")))
        for item in page.css("#panel-rerank .ranked li")
    ]
    body = {"name": RERANKER, "query": query, "texts": documents}
    expected = pages_server.post("/rerank", body).json()["results"]
    assert [index for index, _ in shown] == [result["index"] for result in expected]
    assert np.allclose([s for _, s in shown], [r["score"] for r in expected], rtol=0, atol=1e-9)
    assert curl_answer(page, "rerank")["results"] == expected
    page.screenshot("playground-rerank")
    page.check_stayed_home()


@pytest.mark.browser
def test_the_playground_classifies_a_text_as_classify_text_does(open_page, pages_server):
    text = "I loved this film, it was wonderful."
    page = open_page(pages_server, "/playground")
    choose(page, TEXT_CLASSIFIER)
    fill(page.css("#panel-classify-text textarea")[0], text)
    run_panel(page, "classify-text", ".bars li")
    body = {"name": TEXT_CLASSIFIER, "text": [text], "top_k": 5}
    expected = pages_server.post("/classify_text", body).json()["labels"][0]
    shown = shown_bars(page, "classify-text")
    assert [label for label, _ in shown] == [top["label"] for top in expected]
    assert np.allclose([s for _, s in shown], [top["score"] for top in expected], atol=1e-9)
    page.screenshot("playground-classify-text")
    page.check_stayed_home()


def generated_image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def pick_images(page: Page, kind: str, paths: list[Path]) -> None:
    page.css(f"#panel-{kind} input[type=file]")[0].send_keys("\n".join(map(str, paths)))
    page.wait(
        lambda: len(page.css(f"#panel-{kind} .thumbs img")) == len(paths), "no image was read"
    )


def shown_bars(page: Page, kind: str) -> list[tuple[str, float]]:
    items = page.css(f"#panel-{kind} .bars li")
    return [
        (item.get_attribute("data-label"), float(item.get_attribute("data-score")))
        for item in items
    ]


@pytest.mark.browser
def test_the_playground_classifies_a_generated_image(open_page, pages_server, tmp_path):
    image = generated_image(tmp_path / "noise.png", seed=1)
    page = open_page(pages_server, "/playground")
    choose(page, TIMM)
    pick_images(page, "classify-image", [image])
    run_panel(page, "classify-image", ".bars li")
    body = {"name": TIMM, "image": [data_uri(image)]}
    probabilities = pages_server.post("/classify_image", body).json()["probabilities"][0]
    labels = requests.get(
        f"{pages_server.url}/model_classification_labels?name={TIMM}", timeout=30
    ).json()
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:5]
    expected = [(labels["labels"][i], probabilities[i]) for i in order]
    shown = shown_bars(page, "classify-image")
    assert [label for label, _ in shown] == [label for label, _ in expected]
    assert np.allclose([s for _, s in shown], [p for _, p in expected], rtol=0, atol=1e-9)
    page.screenshot("playground-classify-image")
    page.check_stayed_home()


@pytest.mark.browser
def test_the_playground_matches_images_and_labels_with_clip(open_page, pages_server, tmp_path):
    images = [generated_image(tmp_path / f"image-{seed}.png", seed) for seed in (2, 3)]
    labels = ["a photo of a cat", "a red square", "noise"]
    page = open_page(pages_server, "/playground")
    choose(page, CLIP)
    body = {"name": CLIP, "text": labels, "image": [data_uri(path) for path in images]}
    answer = pages_server.post("/embed", body).json()
    text = np.asarray(answer["textEmbeddings"], dtype=np.float64)
    image = np.asarray(answer["imageEmbeddings"], dtype=np.float64)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    cosines = image @ text.T

    pick_images(page, "zero-shot", images[:1])
    fill(page.css("#panel-zero-shot textarea")[0], "\n".join(labels))
    run_panel(page, "zero-shot", ".bars li")
    logits = 100 * cosines[0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    order = np.argsort(-probabilities, kind="stable")
    shown = shown_bars(page, "zero-shot")
    assert [label for label, _ in shown] == [labels[i] for i in order]
    assert np.allclose([s for _, s in shown], probabilities[order], rtol=0, atol=1e-9)

    pick_images(page, "match", images)
    fill(page.css("#panel-match textarea")[0], "\n".join(labels))
    run_panel(page, "match", ".heat")
    cells = page.css("#panel-match .heat td")
    shown_matrix = np.array([float(c.get_attribute("data-value")) for c in cells]).reshape(2, 3)
    assert np.abs(shown_matrix - cosines).max() < 1e-9
    best = [
        row.find_elements("css selector", "td.best") for row in page.css("#panel-match tbody tr")
    ]
    assert [cells.index(b[0]) % 3 for b in best] == list(np.argmax(cosines, axis=1))
    page.screenshot("playground-clip")
    page.check_stayed_home()


@pytest.mark.browser
def test_the_playground_shows_server_errors_as_they_are_and_uses_the_typed_key(open_page, guarded):
    """Without the key the server's own 401 message shows; with it the models list (from the
    repository: management routes answer on the model port only here) and the similarity
    panel's 400 is the server's message. Only public routes are called."""
    page = open_page(guarded, "/")
    page.wait(lambda: page.css("#models-error:not([hidden])"), "no error was shown")
    refused = requests.get(guarded.url + "/v1/models", timeout=10)
    expected = f"HTTP 401: {refused.json()['error']['message']}"
    assert page.text(page.css("#models-error")[0]) == expected
    fill(page.css("#api-key")[0], KEY)
    page.css("#api-key")[0].send_keys("\t")  # the key field's change event
    page.wait(lambda: page.css("#models tbody tr"), "the key typed did not list the models")
    assert "in the repository" in page.text(page.css("#models-status")[0])
    choose(page, MINILM)
    fill(page.css("#panel-similarity textarea")[0], " ")
    page.css("#panel-similarity button.run")[0].click()
    page.wait(lambda: page.css("#panel-similarity .error:not([hidden])"), "no error was shown")
    bad = requests.post(
        guarded.url + "/embed_text",
        json={"name": MINILM, "text": []},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    shown = page.text(page.css("#panel-similarity .error")[0])
    assert shown == f"HTTP {bad.status_code}: {bad.json()['error']}"
    page.screenshot("playground-errors")
    urls = page.check_stayed_home()
    routes = {re.sub(r"\?.*", "", url.removeprefix(guarded.url)) for url in urls}
    public = {"/", "/loaded_models", "/v1/models", "/model_info", "/embed_text"}
    public |= {"/model_classification_labels"}
    assert routes - public <= {f"/pages/{name}" for name in asset_paths()}


@pytest.mark.browser
def test_the_playground_lists_each_model_once_when_the_key_changes_during_a_listing(
    open_page, guarded
):
    """Each key typed starts a listing; one that ends after a newer one started shows nothing,
    so the table and the chooser hold each model once."""
    headers = {"Authorization": f"Bearer {KEY}"}
    listed = requests.get(guarded.url + "/v1/models", headers=headers, timeout=10).json()
    names = sorted(model["id"] for model in listed["data"])
    page = open_page(guarded, "/")
    page.wait(lambda: page.css("#models-error:not([hidden])"), "no error was shown")
    listings = 3
    page.driver.execute_script(
        """const key = document.getElementById("api-key");
        key.value = arguments[0];
        for (let i = 0; i < arguments[1]; i++) key.dispatchEvent(new Event("change"));""",
        KEY,
        listings,
    )
    count_infos = """return performance.getEntriesByType("resource")
        .filter((entry) => new URL(entry.name).pathname === "/model_info").length"""
    page.wait(
        lambda: page.driver.execute_script(count_infos) == listings * len(names),
        "the listings did not end",
    )
    page.wait(
        lambda: "in the repository" in page.text(page.css("#models-status")[0]),
        "the models were not listed",
    )
    rows = [
        page.text(row.find_element("css selector", "td")) for row in page.css("#models tbody tr")
    ]
    assert sorted(rows) == names
    assert sorted(page.text(option) for option in page.css("#model option")) == names
    page.check_stayed_home()


INSECURE_HOST = "ingrain.test"


@pytest.fixture(scope="module")
def lan_browser():
    """Chromium that reaches the server by a name other than localhost, as a person on another
    machine does over plain http: not a secure context, so the page has no clipboard."""
    driver = chromium(f"MAP {INSECURE_HOST} 127.0.0.1 , MAP * ~NOTFOUND")
    yield driver
    driver.quit()


@pytest.mark.browser
def test_copy_curl_selects_the_command_where_the_browser_has_no_clipboard(
    lan_browser, pages_server, tmp_path
):
    port = pages_server.url.rsplit(":", 1)[1]
    url = f"http://{INSECURE_HOST}:{port}"
    server = Server(pages_server.process, url, pages_server.model_url, pages_server.log)
    page = Page(lan_browser, server, "/", tmp_path)
    assert page.driver.execute_script("return window.isSecureContext") is False
    choose(page, MINILM)
    run_panel(page, "similarity", ".heat")
    page.css("#panel-similarity summary")[0].click()
    page.css("#panel-similarity details button")[0].click()
    selection = "return getSelection().toString()"
    page.wait(lambda: page.driver.execute_script(selection), "the command was not selected")
    selected = page.driver.execute_script(selection)
    command = page.text(page.css("#panel-similarity .curl")[0])
    assert "Ctrl+C" in page.text(page.css("#panel-similarity .copied")[0])
    assert selected == command and command.startswith(f"curl -sS -X POST '{server.url}/")
    page.check_stayed_home()
