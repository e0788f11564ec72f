"""coati-hf serve: a Gradio web chat that answers gradio_client on /chat and that a real
headless Chromium (Debian's package, installed by tools/setup_browser.sh, which `make test` runs) renders with its chat box."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1200,900", "--virtual-time-budget=20000",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Debian's chromium is missing: run tools/setup_browser.sh (it installs it with apt-get install chromium)")


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir, tmp_path_factory):
    """``coati-hf serve`` on 127.0.0.1 and a free port; its URL once the page answers."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "coati_hf.cli", "serve", tiny_chat_model_dir, "--host", "127.0.0.1", "--port", str(port),
             "--temperature", "0", "--max-new-tokens", "8"],
            stdout=handle, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"coati-hf serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"coati-hf serve did not answer on {url}:\n{log.read_text()}")
            time.sleep(1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_gradio_client_gets_the_whole_answer_from_chat(server, tiny_chat_model_dir):
    from gradio_client import Client

    from coati_hf.chat import GenerationSettings, generate_reply, load_chat_model

    client = Client(server, verbose=False)
    answer = client.predict("Hi", api_name="/chat")
    job = client.submit("Hi", api_name="/chat")  # the same client session: the second turn
    job.result(timeout=120)
    streamed = job.outputs()  # every partial reply the endpoint sent, in order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server (OMP_NUM_THREADS=1): the same greedy choices
    try:
        loaded = load_chat_model(tiny_chat_model_dir, report=None)
        settings = GenerationSettings(8, temperature=0.0, top_p=1.0)
        hi = {"role": "user", "content": "Hi"}
        expected = generate_reply(loaded.model, loaded.tokenizer, [hi], settings)
        second = generate_reply(loaded.model, loaded.tokenizer, [hi, {"role": "assistant", "content": expected}, hi], settings)
    finally:
        torch.set_num_threads(threads)
    assert expected.strip()
    assert answer == expected
    assert second != expected, "the model's reply depends on the context (else the next line proves nothing)"
    assert len(streamed) > 2 and streamed[-1] == second  # streamed in pieces, ending with the reply to both turns
    assert all(later.startswith(earlier) for earlier, later in zip(streamed, streamed[1:]))


def test_headless_chromium_shows_the_chat_box(server, tmp_path):
    from PIL import Image

    browser = chromium()
    profile = tmp_path / "profile"
    profile.mkdir()
    shot = tmp_path / "chat.png"
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    result = subprocess.run([*common, f"--screenshot={shot}", server], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    dom = subprocess.run([*common, "--dump-dom", server], capture_output=True, text=True, timeout=120).stdout

    # the page the browser built: Gradio's chat box (a textarea), the chat log and the title
    assert 'data-testid="textbox"' in dom and "<textarea" in dom, dom[-2000:]
    assert "Chatbot" in dom and "coati_hf chat: policy" in dom

    # the screenshot is the page, not a blank canvas: a white background with enough drawn on it
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 900)
    pixels = list(image.getdata())
    background = max(set(pixels[:: 97]), key=pixels[:: 97].count)
    drawn = sum(1 for pixel in pixels if sum(abs(a - b) for a, b in zip(pixel, background)) > 60)
    assert drawn > 0.002 * len(pixels), f"only {drawn} drawn pixels"
    assert len(set(pixels)) > 20
    # the chat box's border is drawn in the lower part of the page (where Gradio puts the input)
    lower = image.crop((0, 600, 1200, 900))
    assert len(set(lower.getdata())) > 5


def test_serve_without_gradio_says_how_to_install_it(monkeypatch):
    from coati_hf.chat import ChatError
    from coati_hf.chat.web import require_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ChatError, match=r'pip install "coati_hf\[chat\]"'):
        require_gradio()
