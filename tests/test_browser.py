"""The web page in a real browser: headless Chromium against a live gunicorn server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from servers import free_port, running_server
from test_gunicorn import serve_command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not Path(CHROMEDRIVER).exists(),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")


def bundled_example() -> Path:
    preferred = EXAMPLES / "star.png"
    if preferred.exists():
        return preferred
    found = sorted(p for p in EXAMPLES.glob("*.png") if not p.name.endswith(".mask.png"))
    if not found:
        pytest.fail(f"no bundled example image in {EXAMPLES}")
    return found[0]


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_an_example_and_compare_methods(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    with running_server(serve_command(port, threads=4), port, tmp_path / "server.log") as url:
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[name=method]")) >= 3)
        # compare three of the methods
        wanted = {"vanilla", "guided", "gradcam"}
        for box in browser.find_elements(By.CSS_SELECTOR, "input[name=method]"):
            if box.is_selected() != (box.get_attribute("value") in wanted):
                box.click()
        chosen = [b.get_attribute("value") for b in browser.find_elements(By.CSS_SELECTOR, "input[name=method]")
                  if b.is_selected()]
        assert set(chosen) == wanted

        browser.find_element(By.ID, "file").send_keys(str(bundled_example()))
        loaded = "return [...document.querySelectorAll('.map-panel img.map')]" \
                 ".filter(i => i.complete && i.naturalWidth > 0).map(i => i.closest('.map-panel').dataset.method)"
        wait.until(lambda d: sorted(d.execute_script(loaded)) == sorted(chosen))
        assert browser.find_element(By.ID, "error").get_attribute("hidden")
        predictions = browser.find_elements(By.CSS_SELECTOR, "#prediction-list li")
        assert 1 <= len(predictions) <= 5

        # click another class: the maps are redrawn for it
        second = predictions[1] if len(predictions) > 1 else predictions[0]
        wanted = second.get_attribute("data-index")
        second.click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prediction-list li.explained")
                   .get_attribute("data-index") == wanted)
        wait.until(lambda d: sorted(d.execute_script(loaded)) == sorted(chosen))

        # the opacity slider reaches every heatmap
        browser.execute_script("const s = document.getElementById('opacity'); s.value = 0.3;"
                               "s.dispatchEvent(new Event('input'));")
        opacities = browser.execute_script(
            "return [...document.querySelectorAll('img.map')].map(i => i.style.opacity)")
        assert opacities == ["0.3"] * len(chosen)

        screenshot = tmp_path / "page.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0

        # an error is shown in the page, not swallowed
        bad = tmp_path / "not-an-image.png"
        bad.write_text("hello")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(ready.visibility_of_element_located((By.ID, "error")))
        assert "not an image" in browser.find_element(By.ID, "error").text


def test_the_page_shows_what_it_says_it_shows(browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wide = tmp_path / "wide.png"
    Image.open(bundled_example()).convert("RGB").resize((192, 128)).save(wide)
    port = free_port()
    with running_server(serve_command(port, threads=4), port, tmp_path / "server.log") as url:
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[name=style]")) >= 2)
        assert not browser.find_element(By.ID, "gallery").is_displayed()    # no empty card before an upload
        icon = browser.execute_script(
            "const r = await fetch(document.querySelector('link[rel=icon]').href);"
            "return [r.status, r.headers.get('content-type')];")
        assert icon[0] == 200 and icon[1].startswith("image/svg")

        shown = "return [...document.querySelectorAll('.map-panel img.map')].filter(i => i.complete && " \
                "i.naturalWidth > 0).length"
        browser.find_element(By.ID, "file").send_keys(str(wide))
        wait.until(lambda d: d.execute_script(shown) >= 1)
        caption = browser.find_element(By.ID, "original-caption").text
        assert "192 × 128" in caption and "centre crop the model saw (128 × 128 px)" in caption
        assert browser.execute_script("return document.getElementById('original').width") == 192
        convention = browser.find_element(By.ID, "convention").text
        assert "shown at 80 % opacity over the centre crop" in convention and "alpha" not in convention

        # overlay: the service blends at the slider's opacity, the page shows its picture as it is
        browser.execute_script("const s = document.getElementById('opacity'); s.value = 0.3;"
                               "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));")
        browser.find_element(By.CSS_SELECTOR, "input[name=style][value=overlay]").click()
        wait.until(lambda d: "alpha 0.3" in d.find_element(By.ID, "convention").text)
        wait.until(lambda d: d.execute_script(shown) >= 1)
        panels = browser.execute_script(
            "return [...document.querySelectorAll('.map-panel .stack')].map(s => "
            "[s.querySelectorAll('canvas').length, s.querySelector('img.map').style.opacity])")
        assert panels and all(p == [0, ""] for p in panels)   # no picture under it, no second blend
        assert "opacity over" not in browser.find_element(By.ID, "convention").text

        bad = tmp_path / "not-an-image.png"
        bad.write_text("hello")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert not browser.find_element(By.ID, "gallery").is_displayed()
        assert not browser.find_element(By.ID, "predictions").is_displayed()
