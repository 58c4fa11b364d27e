"""The web page end to end in a real browser: Debian's headless Chromium driven by selenium (chromedriver from
the ``chromium-driver`` package, both installed by tools/setup_env.sh). Type a caption and see its image ranked
first (the trained tiny retrieval model), upload an image and see it found, ask a question about it (a tiny
VQA model trained on the same world) and caption it; the run writes a screenshot."""
import os
import shutil
import tempfile

import pytest

from beit3_plugins.search.serve import ServeConfig, create_app, serving

pytestmark = [pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.path.exists(path), f"{path} missing: apt-get install chromium chromium-driver (tools/setup_env.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path_factory.mktemp("chromium"))
    options.add_argument(f"--user-data-dir={profile}")
    # selenium-manager would try to download a driver: name the local one
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, timeout=60):
    """Poll ``condition``; an element the page re-rendered between finding and reading it is polled again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def test_page_search_upload_and_question(browser, indexed_world, world_captions, vqa_spec, caption_spec, tmp_path):
    from selenium.webdriver.common.by import By

    from beit3_plugins.search import SearchIndex, Searcher

    images, texts = indexed_world
    searcher = Searcher(SearchIndex(images))
    # a caption the model ranks its own image first for (most do: test_index checks the rate)
    paths = list(world_captions)
    caption, expected = next((c, p) for p in paths for c in world_captions[p]
                             if searcher.text_to_images([c], k=1)[0][0]["source"] == p)
    cfg = ServeConfig(images=str(images), texts=str(texts), vqa=vqa_spec[0], vqa_answers=vqa_spec[1],
                      caption=caption_spec)
    with serving(create_app(cfg)) as url:
        browser.get(url + "/")
        _wait(browser, lambda d: "images indexed" in d.find_element(By.ID, "status").text)
        box = browser.find_element(By.ID, "query")
        box.send_keys(caption)
        browser.find_element(By.ID, "search-button").click()
        first = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result[data-rank='1']"))[0]
        assert first.get_attribute("data-source") == expected
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert len(cards) == min(12, len(paths))
        scores = [float(c.find_element(By.CLASS_NAME, "score").text.split()[-1]) for c in cards]
        assert scores == sorted(scores, reverse=True)
        # every thumbnail loaded (served from the indexed folder)
        _wait(browser, lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('#results img'))"
            ".every(i => i.complete && i.naturalWidth > 0)"))

        upload = paths[3]
        browser.find_element(By.ID, "image-file").send_keys(upload)
        browser.find_element(By.ID, "image-search").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result[data-rank='1']")
              and d.find_element(By.CSS_SELECTOR, "#results .result[data-rank='1']").get_attribute("data-source")
              == upload)

        browser.find_element(By.ID, "question").send_keys("what colour is the circle?")
        browser.find_element(By.ID, "ask").click()
        answer = _wait(browser, lambda d: (t := d.find_element(By.ID, "answer").text) and t != "..." and t)
        assert answer.split(" (")[0] in vqa_spec[2], answer
        browser.find_element(By.ID, "describe").click()
        caption_text = _wait(browser, lambda d: (t := d.find_element(By.ID, "caption").text) != "..." and t)
        assert caption_text.strip(), caption_text
        assert browser.find_element(By.ID, "error").text == ""

        # a bad upload shows the server's message on the page
        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        browser.find_element(By.ID, "image-file").send_keys(str(bad))
        browser.find_element(By.ID, "image-search").click()
        _wait(browser, lambda d: "not an image" in d.find_element(By.ID, "error").text)
        browser.find_element(By.ID, "image-file").send_keys(upload)
        browser.find_element(By.ID, "image-search").click()
        _wait(browser, lambda d: d.find_element(By.ID, "error").text == "")
        shot = tmp_path / "search_page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        keep = os.environ.get("BEIT3_SCREENSHOT_DIR")
        if keep:
            shutil.copy(shot, os.path.join(keep, "search_page.png"))
        print(f"screenshot: {shot}")
