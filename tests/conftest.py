"""Shared fixtures: real reports (the demo, a tiny pair with hostile names) and headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
)

EVIL = "<script>alert(1)</script>"
EVIL_IMG = '<img src=x onerror="alert(2)">'


def chromium_binary() -> str | None:
    """The Chromium/Chrome executable to drive (``DASH_TEST_CHROMEPATH`` wins)."""
    if os.environ.get("DASH_TEST_CHROMEPATH"):
        return os.environ["DASH_TEST_CHROMEPATH"]
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chrome_options():
    """Selenium options for headless Chromium with the flags CI needs."""
    from selenium.webdriver.chrome.options import Options

    opts = Options()
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument("--window-size=1500,1100")
    binary = chromium_binary()
    if binary:
        opts.binary_location = binary
    return opts


@pytest.hookimpl(optionalhook=True)  # the hook exists only where dash[testing] is installed
def pytest_setup_options():
    """dash.testing hook: the webdriver options ``dash_duo`` starts Chromium with."""
    return chrome_options()


def pytest_collection_modifyitems(config, items):
    if chromium_binary() and shutil.which("chromedriver"):
        return
    skip = pytest.mark.skip(reason="needs Chromium and chromedriver on PATH")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    """A TCP port nothing listens on right now (tests run beside other servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    """A plain headless Chromium (selenium) for pages that are not Dash apps; one per test module."""
    from selenium import webdriver

    opts = chrome_options()
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def demo_report():
    """The built-in demo compared once per session (a real torch model and Flax port)."""
    from xfdiff.demo import demo_report as build

    return build()


@pytest.fixture(scope="session")
def demo_file(demo_report, tmp_path_factory):
    """The demo report saved as a .xfd file."""
    return demo_report.save(tmp_path_factory.mktemp("reports") / "demo.xfd")


@pytest.fixture(scope="session")
def evil_report():
    """A real comparison whose torch module names are HTML, plus hand-made findings quoting them."""
    return make_evil_report()


def make_evil_report():
    """Compare a tiny torch model with HTML module names against its Flax port (scale bug in ``inp``)."""
    import jax
    import numpy as np
    import torch
    from flax import linen as nn

    import xfdiff
    from xfdiff.report import Finding

    torch.manual_seed(0)
    ref = torch.nn.Sequential()
    ref.add_module(EVIL, torch.nn.Linear(8, 16))
    ref.add_module(EVIL_IMG, torch.nn.Identity())
    ref.add_module("out", torch.nn.Linear(16, 4))
    ref.eval()

    class Port(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="out")(nn.Dense(16, name="inp")(x))

    w = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    bias = w[f"{EVIL}.bias"].copy()
    bias[3] += 1e-3  # the port's bug: one wrong bias element in the layer with the hostile name
    params = {
        "inp": {"kernel": w[f"{EVIL}.weight"].T, "bias": bias},
        "out": {"kernel": w["out.weight"].T, "bias": w["out.bias"]},
    }
    variables = {"params": jax.tree_util.tree_map(np.asarray, params)}
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    report = xfdiff.compare(ref, (Port(), variables), x, progress=False)
    culprit = report.first_divergence
    report.findings.append(
        Finding(
            pitfall="gelu_approximate",
            torch_path=culprit.torch_path,
            flax_path=culprit.flax_path,
            message=f"The layer {EVIL} computes {EVIL_IMG}",
            evidence={"explained": 0.99, "note": EVIL},
            fix=f"use approximate=False in {EVIL}",
        )
    )
    report.meta.setdefault("notes", []).append(f"note {EVIL}")
    return report


@pytest.hookimpl(hookwrapper=True)
def pytest_collect_file(file_path, parent):
    """Doctests come from xfdiff/ only: modules here (e.g. the TensorFlow subprocess scripts) are not imported for them."""
    outcome = yield
    outcome.force_result([c for c in outcome.get_result() if type(c).__name__ != "DoctestModule"])
