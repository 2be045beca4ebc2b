"""The web console in a real browser: Debian's headless Chromium driven through chromium-driver
(Selenium), against a real `quantledger up` (embedded chain and registry) over loopback HTTP.

Every page is read the way a user reads it (the text and elements shown), and each test writes a
screenshot of what it saw under its tmp dir (docs/console.png is one of them)."""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Models, RunningServer, free_port, start_server
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from test_http_api import Http

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DESKTOP = (1280, 800)
PHONE = (390, 844)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[tuple[RunningServer, Http]]:
    home = tmp_path_factory.mktemp("console-home")
    port, http_port, chain_port = free_port(), free_port(), free_port()
    command = [sys.executable, "-m", "quantledger.cli.main", "up", "--port", str(port)]
    command += ["--chain-port", str(chain_port), "--http-port", str(http_port)]
    running = start_server(home, [models.root], port=port, command=command, extra_env={"HF_HUB_OFFLINE": "1"})
    yield running, Http(f"http://127.0.0.1:{http_port}")
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for program in (CHROMIUM, CHROMEDRIVER):
        if not pathlib.Path(program).exists():
            pytest.fail(
                f"{program} is missing: the README's test command installs Debian's chromium and chromium-driver"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


class Console:
    """One browser on the console of one server."""

    def __init__(self, driver: WebDriver, base: str, shots: pathlib.Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots
        driver.set_window_size(*DESKTOP)

    def open(self, page: str) -> None:
        """Go to a page (``new``, ``jobs``, ``jobs/<id>/compare`` …) and wait until it has drawn."""
        self.driver.get("about:blank")  # a fresh document even when only the #fragment would change
        self.driver.get(f"{self.base}/#/{page}")
        ready = "compare" if page.endswith("/compare") else page
        self.wait(lambda: self.driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == ready)

    def wait(self, condition: Callable[[], Any], timeout: float = 30) -> Any:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda _: condition())

    def find(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def shot(self, name: str) -> pathlib.Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def errors(self) -> list[str]:
        """What the page wrote to the browser console at level SEVERE (script errors, failed loads)."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def click(self, selector: str) -> None:
        """Click what ``selector`` finds, found again should a live update redraw it in between."""

        def clicked() -> bool:
            try:
                self.find(selector).click()
            except (StaleElementReferenceException, NoSuchElementException):
                return False
            return True

        self.wait(clicked)

    def card(self, name: str) -> WebElement:
        return self.find(f'article.card[data-name="{name}"]')

    def card_state(self, name: str) -> str:
        try:
            return self.card(name).get_attribute("data-state") or ""
        except WebDriverException:
            return ""


@pytest.fixture()
def page(browser: WebDriver, console: tuple[RunningServer, Http], tmp_path: pathlib.Path) -> Console:
    browser.get_log("browser")  # drop what an earlier test left
    return Console(browser, console[1].base, tmp_path)


def wizard_job(page: Console, source: str, types: list[str]) -> None:
    """Fill the wizard: a server path and these types (Q4_K_M is ticked by default)."""
    page.open("new")
    page.find("#source").send_keys(source)
    for box in page.all('input[name="quant_type"]'):
        if (box.get_attribute("value") in types) != box.is_selected():
            box.click()


@pytest.fixture(scope="module")
def finished_job(browser: WebDriver, console: tuple[RunningServer, Http], models: Models) -> dict[str, Any]:
    """A job made in the wizard, followed on its card until it ended; its final state from the API."""
    shots = console[0].home / "shots"
    shots.mkdir()
    page = Console(browser, console[1].base, shots)
    wizard_job(page, str(models.f16), ["Q4_K_M", "Q8_0"])
    page.find("#estimate").click()
    page.wait(lambda: page.find("#create").is_enabled())
    estimate_rows = page.all("#estimate-table tbody tr")
    assert sorted(r.get_attribute("data-quant-type") or "" for r in estimate_rows) == ["Q4_K_M", "Q8_0"]
    assert "fits" in page.find("#estimate-disk").text
    page.shot("estimate")
    page.find("#create").click()
    page.wait(lambda: page.find("body").get_attribute("data-ready") == "jobs")
    card = page.find("article.card.fresh")
    name = card.get_attribute("data-name")
    assert name
    seen = set()
    deadline = time.monotonic() + 240
    while page.card_state(name) not in ("STATE_SUCCEEDED", "STATE_FAILED") and time.monotonic() < deadline:
        seen.add(page.card_state(name))  # the card follows the job's stream: no reload
        time.sleep(0.05)
    page.shot("jobs")
    job = console[1].ok("GET", f"/api/v1/quantize/{name}")
    return {"job": job, "states": seen, "card_text": page.card(name).text}


def test_the_wizard_creates_a_job_whose_card_reaches_succeeded_with_its_outputs(finished_job: dict[str, Any]) -> None:
    job = finished_job["job"]
    assert job["state"] == "STATE_SUCCEEDED", job
    assert finished_job["states"] & {"STATE_QUEUED", "STATE_RUNNING"}  # the card was live before the end
    text = finished_job["card_text"]
    assert "SUCCEEDED" in text
    for output in job["outputs"]:
        assert output["quant_type"] in text
        assert output["sha256"][:16] in text
        assert f"{output['bits_per_weight']:.2f}" in text
        assert "REGISTERED" in text and output["registry"]["tx_hash"][:10] in text


def test_a_job_cancelled_from_its_card_shows_cancelled(
    page: Console, console: tuple[RunningServer, Http], models: Models
) -> None:
    job = console[1].ok("POST", "/api/v1/quantize/jobs", {"source": str(models.large), "quant_types": ["Q4_K_M"]})
    page.open("jobs")
    page.click(f'article.card[data-name="{job["name"]}"] button.cancel')  # the card redraws as the job moves
    page.wait(lambda: page.card_state(job["name"]) == "STATE_CANCELLED")
    assert "CANCELLED" in page.card(job["name"]).text
    assert console[1].ok("GET", f"/api/v1/quantize/{job['name']}")["state"] == "STATE_CANCELLED"
    assert not page.all(f'article.card[data-name="{job["name"]}"] button.cancel')  # nothing left to cancel
    page.shot("cancelled")


def test_a_missing_source_shows_source_not_found_beside_the_source_field(page: Console, models: Models) -> None:
    wizard_job(page, str(models.root / "no-such-model.gguf"), ["Q8_0"])
    page.find("#estimate").click()
    error = page.wait(lambda: page.find("#source-error").is_displayed() and page.find("#source-error"))
    assert error.text.startswith("SOURCE_NOT_FOUND") and "no-such-model.gguf" in error.text
    assert page.find("#source").get_attribute("aria-invalid") == "true"
    assert not page.find("#create").is_enabled()
    page.shot("source-not-found")


def test_compare_draws_one_point_per_output_and_marks_the_recommended_one(
    page: Console, finished_job: dict[str, Any]
) -> None:
    job = finished_job["job"]
    page.open(f"jobs/{job['name'].removeprefix('jobs/')}/compare")
    page.wait(lambda: page.all("#compare-chart circle.point"))
    points = page.all("#compare-chart circle.point")
    assert sorted(p.get_attribute("data-quant-type") for p in points) == sorted(o["quant_type"] for o in job["outputs"])
    marked = page.all("#compare-chart circle.point.recommended")
    assert len(marked) == 1 and marked[0].get_attribute("data-quant-type") in {"Q4_K_M", "Q8_0"}
    assert f"Recommended here: {marked[0].get_attribute('data-quant-type')}" in page.find("#compare-caption").text
    # the smaller file is drawn to the left of the larger one (x is the file size)
    by_type = {p.get_attribute("data-quant-type"): float(p.get_attribute("cx") or 0) for p in points}
    sizes = {o["quant_type"]: int(o["size_bytes"]) for o in job["outputs"]}
    assert (by_type["Q4_K_M"] < by_type["Q8_0"]) == (sizes["Q4_K_M"] < sizes["Q8_0"])
    page.shot("compare")


def test_verify_says_valid_for_an_output_and_unknown_for_a_changed_file(
    page: Console, finished_job: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    output = finished_job["job"]["outputs"][0]
    page.open("verify")
    page.find("#verify-file").send_keys(output["path"])  # the file is hashed in the browser
    page.wait(lambda: page.all("#verdict"))
    assert page.find("#verdict").text == "VALID"
    assert page.find("#verify-sha").get_attribute("value") == output["sha256"]
    assert output["registry"]["attester"].lower() in page.find("#verify-result").text.lower()
    page.shot("verify-valid")
    changed = tmp_path / "changed.gguf"
    data = bytearray(pathlib.Path(output["path"]).read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    page.find("#verify-file").send_keys(str(changed))
    page.wait(lambda: page.find("#verify-sha").get_attribute("value") == hashlib.sha256(data).hexdigest())
    page.wait(lambda: page.find("#verdict").text == "UNKNOWN")
    page.shot("verify-unknown")


def test_the_sliced_sha256_for_large_files_matches_hashlib(page: Console) -> None:
    """Files over 512 MiB are hashed in slices by sha256.js (Web Crypto has no incremental form); the
    padding edge cases (55, 56, 64 bytes) and a file of several slices give hashlib's digests."""
    page.open("verify")
    sizes = [0, 1, 55, 56, 63, 64, 65, 1000, 8 * 1024 * 1024 + 7, 20 * 1024 * 1024 + 3]
    script = """
        const [sizes, done] = arguments;
        Promise.all(sizes.map((n) => {
          const bytes = new Uint8Array(n);
          for (let i = 0; i < n; i++) bytes[i] = (i * 31 + 7) % 251;
          return window.quantledgerSha256(new Blob([bytes]));
        })).then(done, (error) => done(String(error)));
    """
    digests = page.driver.execute_async_script(script, sizes)
    expected = [hashlib.sha256(bytes((i * 31 + 7) % 251 for i in range(n))).hexdigest() for n in sizes]
    assert digests == expected


def test_recommend_shows_ranked_options_with_memory_and_reasons(
    page: Console, console: tuple[RunningServer, Http], models: Models
) -> None:
    page.open("recommend")
    page.find("#rec-model").send_keys(str(models.f16))
    page.find("#rec-ram").clear()
    page.find("#rec-ram").send_keys("8")
    page.find("#recommend").click()
    page.wait(lambda: page.all("#recommend-table tbody tr"))
    rows = page.all("#recommend-table tbody tr")
    answer = console[1].ok(
        "POST",
        "/api/v1/recommend",
        {"model": {"gguf_path": str(models.f16)}, "hardware": {"ram_bytes": str(8 << 30), "cpu_only": True}},
    )
    assert [r.get_attribute("data-quant-type") for r in rows] == [o["quant_type"] for o in answer["options"]]
    first = rows[0].text
    assert "cpu:" in first and "of 8.0 GiB" not in first  # memory per device, out of what is free
    assert answer["options"][0]["reasons"][0] in first
    assert "8 GiB RAM" in page.find("#recommend-result").text
    page.shot("recommend")


def test_the_catalogue_lists_the_installed_types(page: Console, console: tuple[RunningServer, Http]) -> None:
    page.open("catalogue")
    shown = [row.get_attribute("data-quant-type") for row in page.all("#catalogue tbody tr")]
    answer = console[1].ok("GET", "/api/v1/quantize/types?page_size=1000")
    assert shown == [t["name"] for t in answer["quant_types"]]
    q4 = page.find('#catalogue tr[data-quant-type="Q4_K_M"]').text
    assert "usual default" in q4
    page.shot("catalogue")


def test_an_uploaded_gguf_is_estimated_as_a_source(
    page: Console, console: tuple[RunningServer, Http], models: Models
) -> None:
    page.open("new")
    page.find('input[name="source-kind"][value="upload"]').click()
    page.find("#source-file").send_keys(str(models.f16))
    page.find("#estimate").click()
    page.wait(lambda: page.find("#create").is_enabled())
    digest = hashlib.sha256(models.f16.read_bytes()).hexdigest()
    kept = [p for p in (console[0].home / "uploads").rglob("*.gguf") if p.parent.name == digest]
    assert len(kept) == 1 and kept[0].read_bytes() == models.f16.read_bytes()
    assert not [p for p in (console[0].home / "uploads").rglob(".partial-*")]


def test_every_control_has_a_label_and_the_pages_are_keyboard_reachable(page: Console) -> None:
    for name in ("new", "recommend", "verify"):
        page.open(name)
        unlabelled = page.driver.execute_script(
            """return [...document.querySelectorAll('section:not([hidden]) input, section:not([hidden]) select')]
                 .filter((c) => c.type !== 'hidden' && !c.hidden && !c.labels.length && !c.getAttribute('aria-label'))
                 .map((c) => c.id || c.outerHTML);"""
        )
        assert unlabelled == [], name
    page.open("jobs")
    link = page.find('header nav a[data-page="catalogue"]')
    link.send_keys(Keys.ENTER)  # a nav link followed from the keyboard
    page.wait(lambda: page.find("body").get_attribute("data-ready") == "catalogue")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280x800", "phone"])
def test_pages_fit_the_window_without_scrolling_sideways(page: Console, size: tuple[int, int]) -> None:
    page.driver.set_window_size(*size)
    for name in ("new", "jobs", "recommend", "verify"):
        page.open(name)
        overflow = page.driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (name, size, overflow)
        page.shot(f"{name}-{size[0]}")
    assert page.errors() == []


def test_the_registry_routes_answer_for_a_registered_output(
    console: tuple[RunningServer, Http], finished_job: dict[str, Any]
) -> None:
    """Every RegistryService route over plain HTTP, on the record the console's job made."""
    api = console[1]
    output = finished_job["job"]["outputs"][0]
    info = api.ok("GET", "/api/v1/registry/info")
    assert info["contract"].lower() == output["registry"]["contract"].lower()
    [record] = api.ok("GET", f"/api/v1/registry/files/{output['sha256']}/records")["records"]
    assert record["quant_type"] == output["quant_type"] and record["status"] == "STATUS_VALID"
    assert api.ok("GET", f"/api/v1/registry/{record['name']}") == record
    by_source = api.ok("GET", f"/api/v1/registry/sources/{record['source_digest']}/records?page_size=50")["records"]
    assert record["name"] in [r["name"] for r in by_source]
    verdict = api.ok("GET", f"/api/v1/registry/files/{output['sha256']}:verify?size_bytes={output['size_bytes']}")
    assert verdict["verdict"] == "VERDICT_VALID"
    wrong_size = api.ok("GET", f"/api/v1/registry/files/{output['sha256']}:verify?size_bytes=1")
    assert wrong_size["verdict"] == "VERDICT_MISMATCH"
