"""The HTML report opened from disk in headless Chromium: offline, same answer as the dashboard."""

from __future__ import annotations

import pytest
from conftest import EVIL_IMG
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.browser


def _open(browser, path):
    browser.get(f"file://{path}")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def _severe(browser):
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_report_from_disk_shows_first_divergence_and_detail(browser, demo_report, tmp_path):
    path = demo_report.to_html(tmp_path / "demo.html")
    _open(browser, path)
    label = demo_report.first_divergence.label
    assert f"First divergence: {label}" in browser.find_element(By.ID, "xf-verdict").text
    assert label in browser.find_element(By.ID, "xf-detail-title").text
    assert browser.find_elements(By.CSS_SELECTOR, "#xf-depth .scatterlayer .trace")
    assert browser.find_elements(By.CSS_SELECTOR, "#xf-fig-hist .barlayer")
    selected = browser.find_element(By.CSS_SELECTOR, "#xf-tbody tr.sel").text
    assert label in selected
    assert _severe(browser) == []


def test_clicking_a_row_in_the_report_shows_that_layer(browser, demo_report, tmp_path):
    _open(browser, demo_report.to_html(tmp_path / "demo.html"))
    target = demo_report.layers[5]
    row = browser.find_element(By.CSS_SELECTOR, '#xf-tbody tr[data-order="5"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)  # clear of the sticky header
    row.click()
    WebDriverWait(browser, 5).until(lambda d: target.label in d.find_element(By.ID, "xf-detail-title").text)
    assert f"{target.torch_type} / {target.flax_type}" in browser.find_element(By.ID, "xf-facts").text
    # Sorting by own error puts the culprit first.
    header = browser.find_elements(By.CSS_SELECTOR, "#xf-thead th")[6]
    header.click()
    first_row = browser.find_element(By.CSS_SELECTOR, "#xf-tbody tr")
    assert first_row.get_attribute("data-order") == str(demo_report.first_divergence.order)
    search = browser.find_element(By.ID, "xf-search")
    search.send_keys("mlp.act")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#xf-tbody tr")) == 4
    assert _severe(browser) == []


def test_hostile_names_in_the_report_stay_text(browser, evil_report, tmp_path):
    _open(browser, evil_report.to_html(tmp_path / "evil.html"))
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check
    assert browser.find_elements(By.CSS_SELECTOR, "img[src=x]") == []
    assert evil_report.first_divergence.label in browser.find_element(By.ID, "xf-detail-title").text
    assert EVIL_IMG in browser.find_element(By.ID, "xf-unmatched").text
    assert _severe(browser) == []
