"""The ``xfdiff`` command line: exit codes, files, messages, and a real server process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import free_port

import xfdiff
from xfdiff.cli import EXIT_DIVERGED, EXIT_ERROR, EXIT_OK, main
from xfdiff.report import LayerDiff, Report


@pytest.fixture(scope="module")
def matching_file(tmp_path_factory):
    ok = LayerDiff(torch_path="fc", flax_path="fc", max_abs=1e-8, local_max_abs=0.0, status="ok", local_status="ok")
    return Report(layers=[ok], final=ok).save(tmp_path_factory.mktemp("ok") / "ok.xfd")


def test_summary_exits_nonzero_when_the_port_diverges(demo_file, demo_report, capsys):
    assert main(["summary", demo_file]) == EXIT_DIVERGED
    out = capsys.readouterr().out
    assert f"FIRST DIVERGENCE: {demo_report.first_divergence.label}" in out


def test_summary_exits_zero_when_everything_matches(matching_file, capsys):
    assert main(["summary", matching_file]) == EXIT_OK
    assert "VERDICT: MATCH" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["summary"], ["html", "-o", "out.html"], ["serve"]])
def test_missing_file_is_one_clear_line_not_a_traceback(command, tmp_path, capsys):
    missing = str(tmp_path / "nope.xfd")
    argv = [command[0], missing, *command[1:]]
    assert main(argv) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("xfdiff: error:") and "no such file" in err and "Traceback" not in err


def test_corrupt_file_is_reported_as_unreadable(tmp_path, capsys):
    bad = tmp_path / "bad.xfd"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert main(["summary", str(bad)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "not a readable xfdiff report" in err and "Traceback" not in err


def test_html_writes_a_report_file(demo_file, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["html", demo_file, "-o", str(out)]) == EXIT_OK
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert str(out) in capsys.readouterr().out


def test_html_into_a_missing_folder_says_so(demo_file, tmp_path, capsys):
    assert main(["html", demo_file, "-o", str(tmp_path / "no" / "r.html")]) == EXIT_ERROR
    assert "folder exists" in capsys.readouterr().err


def test_usage_errors_and_version_return_codes(capsys):
    assert main(["bogus"]) == EXIT_ERROR
    assert main([]) == EXIT_ERROR
    assert main(["--version"]) == EXIT_OK
    assert xfdiff.__version__ in capsys.readouterr().out


def test_demo_without_serving_saves_and_writes_html(tmp_path, capsys):
    saved, page = tmp_path / "demo.xfd", tmp_path / "demo.html"
    assert main(["demo", "--no-serve", "--save", str(saved), "--html", str(page)]) == EXIT_OK
    assert "FIRST DIVERGENCE: blocks.2.mlp.act" in capsys.readouterr().out
    assert xfdiff.load(saved).first_divergence.torch_path == "blocks.2.mlp.act"
    assert page.stat().st_size > 0


def test_serve_refuses_a_port_in_use(demo_file, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", demo_file, "--port", str(port)]) == EXIT_ERROR
    assert "--port" in capsys.readouterr().err


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.communicate()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode("utf-8")
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout}s")


def test_serve_prints_url_binds_localhost_and_stops_on_ctrl_c(demo_file):
    import psutil

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xfdiff.cli", "serve", demo_file, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        page = _wait_http(f"http://127.0.0.1:{port}/", proc)
        assert "xfdiff" in page
        listening = [
            c.laddr for c in psutil.Process(proc.pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(a.ip == "127.0.0.1" and a.port == port for a in listening)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_OK, err
    assert f"http://127.0.0.1:{port}/" in out and "stopped" in out
    assert "Traceback" not in err
