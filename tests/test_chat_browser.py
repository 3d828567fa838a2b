"""The chat widget driven as a person drives it: JupyterLab 4 in headless Chromium (playwright).

JupyterLab starts on 127.0.0.1 (a free port, a random token) in a temporary folder, opens a notebook
whose first cell shows `chat_widget` over two tiny random models (fine-tuned / base) that take 50 ms
a token, so a reply streams long enough to be stopped. Then, in the page:
  * turn 1 is typed with Shift+Enter for a second line and sent with Enter; turn 2 with the button;
    each ends with a finished, non-empty reply in both panes;
  * turn 3 is stopped after a few tokens: the partial text stays, marked [stopped];
  * the second cell prints both histories (the stopped turn is in them), Clear empties both panes,
    and the cell prints empty histories;
  * no widget error appears in the page or the console.
Screenshots land in the test's tmp folder (MAMBAFT_BROWSER_SHOTS=DIR copies them there too).

Chromium: Debian's package (`.ci/run` installs it); playwright drives it through `executable_path`
(its own browser download needs the internet). Without it the test skips, and fails when CI is set.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
REPLY_TOKENS = 30       # x 50 ms = 1.5 s per full reply and model: long enough to stop one mid-way

SETUP = f'''\
import time, torch
from mambaft.chat import ChatSession, ChatSettings
from mambaft.chat.widgets import chat_widget
from mambaft.model import MambaSWELU, MambaSWELUConfig
from mambaft.tokenizer import load_tokenizer

class Paced(torch.nn.Module):
    """A tiny random MambaSWELU (GPT-2 vocabulary) that takes 50 ms a token."""
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.inner = MambaSWELU(MambaSWELUConfig(vocab_size=50257, d_model=32, n_layers=2, max_seq_len=256,
                                                 dense_hidden_dim=64, dropout=0.0))
        self.config, self.token_embedding = self.inner.config, self.inner.token_embedding
    def prefill(self, rows):
        return self.inner.prefill(rows)
    def step(self, tokens, state):
        time.sleep(0.05)
        return self.inner.step(tokens, state)

tok = load_tokenizer()
S = ChatSettings(max_new_tokens={REPLY_TOKENS})
w = chat_widget(ChatSession(Paced(0), tok, name="fine-tuned"), compare=ChatSession(Paced(1), tok, name="base"),
                settings=S)
w'''
HISTORIES = 'print("histories:", [len(s.history) for s in w.sessions])'


def find_chromium() -> str:
    for name in (os.environ.get("MAMBAFT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    return ""


def need(what: str, hint: str) -> None:
    msg = f"browser test: {what} not found ({hint})"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stray_processes(marker: str) -> list:
    """Pids whose command line names `marker` (our temporary folder): what is left of our processes."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@contextlib.contextmanager
def jupyterlab(root: Path, home: Path):
    """JupyterLab on 127.0.0.1 (a free port, a random token) serving `root`; yields (base url, token);
    every process it started is stopped after, the kernels first."""
    chromium = find_chromium()
    if not chromium:
        need("chromium", "apt-get install chromium, or set MAMBAFT_CHROMIUM")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        need("the playwright package", "pip install playwright")
    settings = home / "settings" / "@jupyterlab"
    news = settings / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')      # no "get notified about Jupyter news?" toast
    # Every cell in the DOM (JupyterLab 4 renders only the cells in view by default): an image further
    # down exists to be checked, and a screenshot shows what a reader scrolls to.
    tracker = settings / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws"),
           "OMP_NUM_THREADS": "1"}
    port, token = free_port(), secrets.token_hex(16)
    log = open(home / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--allow-root", "--LabApp.expose_app_in_browser=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def api(method: str, path: str):
        req = urllib.request.Request(f"{base}{path}", method=method,
                                     headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                api("GET", "/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(home / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield {"base": base, "token": token, "chromium": chromium, "api": api}
    finally:
        try:   # kernels first (they are the server's children), then the server itself
            for k in api("GET", "/api/kernels") or []:
                api("DELETE", f"/api/kernels/{k['id']}")
            api("POST", "/api/shutdown")
            server.wait(20)
        except Exception:
            pass
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
        log.close()
        for marker in {str(root), str(home)}:    # a kernel the shutdown missed
            for pid in stray_processes(marker):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert stray_processes(str(root)) == [] and stray_processes(str(home)) == [], "processes left running"


@pytest.fixture()
def lab(tmp_path):
    """JupyterLab serving tmp_path/chat.ipynb (see `jupyterlab`)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(SETUP, metadata={"jupyter": {"source_hidden": True}}),
                nbformat.v4.new_code_cell(HISTORIES)]
    nbformat.write(nb, tmp_path / "chat.ipynb")
    with jupyterlab(tmp_path, tmp_path / "jupyter") as server:
        yield {"url": f"{server['base']}/lab/tree/chat.ipynb?token={server['token']}",
               "chromium": server["chromium"], "dir": tmp_path}


def test_chat_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    shots = lab["dir"]
    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=lab["chromium"], args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            console = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(lab["url"])
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
            page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=60_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            box = page.locator("textarea.mambaft-chat-input")
            box.wait_for(timeout=90_000)
            panes = page.locator(".mambaft-chat-pane")
            status = page.locator(".mambaft-chat-status")
            send, stop, clear = (page.get_by_role("button", name=n, exact=True) for n in ("Send", "Stop", "Clear"))
            expect(panes).to_have_count(2)
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            expect(cells.nth(1).locator(".jp-OutputArea-output")).to_contain_text("histories: [0, 0]",
                                                                                  timeout=30_000)

            def finished(turns: int) -> None:
                """Both panes hold `turns` finished replies; Send is enabled again."""
                expect(send).to_be_enabled(timeout=30_000)
                expect(status).to_contain_text("fine-tuned:", timeout=5_000)
                for i in range(2):
                    text = panes.nth(i).inner_text()
                    replies = re.findall(r"Assistant:(.*)", text)
                    assert len(replies) == turns and all(r.strip() for r in replies), text
                    assert "\u258c" not in text                # no cursor left: the reply is over

            # Turn 1: Shift+Enter adds a line, Enter sends.
            box.click()
            page.keyboard.type("Hello there")
            page.keyboard.press("Shift+Enter")
            page.keyboard.type("second line")
            assert box.input_value() == "Hello there\nsecond line"
            page.keyboard.press("Enter")
            expect(send).to_be_disabled(timeout=5_000)            # streaming: Send and Clear are off
            expect(clear).to_be_disabled()
            expect(status).to_contain_text("writing\u2026")
            finished(1)
            assert box.input_value() == ""
            for i in range(2):
                assert "You: Hello there\nsecond line" in panes.nth(i).inner_text()
            expect(status).to_contain_text("stopped: max new tokens")

            # Turn 2: the button.
            box.fill("Tell me more")
            send.click()
            expect(send).to_be_disabled(timeout=5_000)
            finished(2)
            cells.nth(0).locator(".jp-OutputArea").screenshot(path=str(shots / "chat_two_turns.png"))

            # Turn 3: Stop after a few tokens keeps the partial reply, marked stopped.
            box.fill("Keep talking")
            send.click()
            expect(send).to_be_disabled(timeout=5_000)
            page.wait_for_function(
                "() => { const t = document.querySelectorAll('.mambaft-chat-pane')[0].innerText;"
                " const last = t.split('Assistant:').pop(); return t.includes('Keep talking')"
                " && last.trim().split(/\\s+/).length >= 4; }", timeout=30_000)
            expect(stop).to_be_enabled()
            stop.click()
            expect(send).to_be_enabled(timeout=10_000)
            tuned = panes.nth(0).inner_text()
            partial = tuned.split("Assistant:")[-1]
            assert partial.strip().endswith("[stopped]") and len(partial.split()) >= 4, tuned
            expect(status).to_contain_text("stopped: cancelled")
            expect(status).to_contain_text("base: not asked (stopped)")
            cells.nth(0).locator(".jp-OutputArea").screenshot(path=str(shots / "chat_stopped.png"))

            # The histories hold the stopped turn (fine-tuned: 3 turns; base: 2); Clear empties both.
            cells.nth(1).locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            expect(cells.nth(1).locator(".jp-OutputArea-output")).to_contain_text("histories: [6, 4]",
                                                                                  timeout=30_000)
            clear.click()
            for i in range(2):
                expect(panes.nth(i)).to_contain_text("(no messages yet)")
                expect(panes.nth(i)).not_to_contain_text("You:")
            cells.nth(1).locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            expect(cells.nth(1).locator(".jp-OutputArea-output")).to_contain_text("histories: [0, 0]",
                                                                                  timeout=30_000)
            page.screenshot(path=str(shots / "chat_cleared.png"))

            assert page.get_by_text("Error displaying widget").count() == 0
            widget_errors = [m for m in console if m.startswith(("error", "pageerror"))
                             and re.search(r"widget|anywidget|comm", m, re.I)]
            assert not widget_errors, widget_errors
        finally:
            browser.close()
    copy_to = os.environ.get("MAMBAFT_BROWSER_SHOTS")
    if copy_to:
        for name in ("chat_two_turns.png", "chat_stopped.png", "chat_cleared.png"):
            shutil.copy(shots / name, Path(copy_to) / name)
    assert time.monotonic() - t0 < 240


# Images of the outputs JupyterLab rendered from image/png (the image mime renderer), in the notebook
# panel on screen.
PANEL_IMAGES = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedImage img"


def test_executed_course_notebooks_show_their_figures_in_jupyterlab(smoke_course, tmp_path):
    """Each executed notebook of the smoke course (tests/conftest.py: smoke_course), opened in
    JupyterLab as a reader opens it: every image/png output is an <img> that decoded (naturalWidth > 0).
    One screenshot per notebook, at its first figure (MAMBAFT_BROWSER_SHOTS=docs/screenshots refreshes
    the committed ones)."""
    import nbformat
    from playwright.sync_api import expect, sync_playwright

    from mambaft import course
    run_dir, _ = smoke_course
    root = tmp_path / "course"
    root.mkdir()
    expected = {}
    for name in course.NOTEBOOKS:
        shutil.copy(run_dir / f"{name}.ipynb", root / f"{name}.ipynb")
        nb = nbformat.read(str(root / f"{name}.ipynb"), as_version=4)
        expected[name] = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                             for o in c.outputs)
    assert expected["00_diagnosis"] >= 1 and expected["02_smoke_test"] >= 1, expected
    shots = []
    with jupyterlab(root, tmp_path / "jupyter") as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=server["chromium"], args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            for name in course.NOTEBOOKS:
                # ?reset: a fresh workspace, so only this notebook is open
                page.goto(f"{server['base']}/lab/tree/{name}.ipynb?reset&token={server['token']}")
                page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell", timeout=90_000)
                images = page.locator(PANEL_IMAGES)
                expect(images).to_have_count(expected[name], timeout=30_000)
                page.wait_for_function(
                    "([sel, n]) => [...document.querySelectorAll(sel)]"
                    ".filter(i => i.complete && i.naturalWidth > 0).length === n",
                    arg=[PANEL_IMAGES, expected[name]], timeout=30_000)
                widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
                assert all(w > 0 for w in widths), (name, widths)
                if expected[name]:
                    images.first.scroll_into_view_if_needed()
                shot = tmp_path / f"course_{name}.png"
                page.screenshot(path=str(shot))
                shots.append(shot)
                for s in server["api"]("GET", "/api/sessions") or []:   # the kernel it started: not needed
                    server["api"]("DELETE", f"/api/sessions/{s['id']}")
        finally:
            browser.close()
    copy_to = os.environ.get("MAMBAFT_BROWSER_SHOTS")
    if copy_to:
        for shot in shots:
            shutil.copy(shot, Path(copy_to) / shot.name)
