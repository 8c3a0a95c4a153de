"""The page in a real browser: Playwright drives Debian's chromium against ``visattn serve`` on a free port.

Upload a scene, wait for the caption, hover the second word (the overlay's pixels change, the word is
highlighted), walk the words with the arrow keys, check the n-best list, the classifier's bars and glimpses,
a detector's boxes and query maps, a bad upload's error message, and a phone-width layout. Screenshots go
to the test's temporary folder.

Skips without ``/usr/bin/chromium`` (``apt-get install chromium``) or the ``playwright`` package, unless
``VISATTN_REQUIRE_BROWSER=1`` (``.ci/run`` sets it), which turns the skip into a failure. Never runs
``playwright install``: the browser is the system's.

Also a script, for the README's screenshot of a real model:
``python tests/test_browser.py --checkpoint runs/demo/run/best.safetensors --out docs/serve.png``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
INSTALL_HINT = ("the browser test needs Debian's chromium and the playwright package: apt-get install -y chromium; "
                "pip install playwright (never 'playwright install'); set VISATTN_REQUIRE_BROWSER=1 to fail instead")


def browser_or_skip():
    """The playwright entry point, or skip (fail under VISATTN_REQUIRE_BROWSER=1) saying how to install."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is missing"
    if missing is None and not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing"
    if missing is None:
        import importlib.util

        for module in ("fastapi", "uvicorn", "python_multipart"):
            if importlib.util.find_spec(module) is None:
                missing = f"the server's {module} is missing (pip install -e '.[serve]')"
    if missing:
        if os.environ.get("VISATTN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{missing}; {INSTALL_HINT}")
        pytest.skip(f"{missing}; {INSTALL_HINT}")
    return sync_playwright


@contextmanager
def running_server(checkpoints: list[str], *, threads: int = 1):
    """``visattn serve`` in a subprocess on a free loopback port; yields its URL, stops it with Ctrl-C."""
    command = [sys.executable, "-m", "visattn.cli", "serve", "--port", "0", "--threads", str(threads)]
    for checkpoint in checkpoints:
        command += ["--checkpoint", str(checkpoint)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = None
    try:
        url = None
        while url is None:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("visattn serve exited before saying its URL:\n" + "".join(lines))
            lines.append(line)
            found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        # The rest of its output, read through the same buffered pipe (communicate() would skip the buffer).
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if reader is not None:
            reader.join(10)
        running_server.output = "".join(lines)
        running_server.returncode = process.returncode


def overlay_digest(page) -> int:
    """A checksum of the overlay canvas's pixels (changes whenever the drawn map changes)."""
    return page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let h = 0;
        for (let i = 0; i < d.length; i += 7) h = (h * 31 + d[i]) >>> 0;
        return h;
    }""")


def wait_answered(page) -> None:
    page.wait_for_function("document.getElementById('status').textContent.includes('answered')", timeout=60000)


def pick_model(page, name: str) -> None:
    page.select_option("#model", name)
    page.wait_for_function(f"document.getElementById('model').value === {name!r}")


def open_page(playwright, url: str, *, width: int = 1200, height: int = 900):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    return browser, page, errors


def caption_a_scene(page, scene: Path) -> None:
    """Upload ``scene`` to the page's captioner, wait for the caption, hover its second word."""
    page.set_input_files("#file", str(scene))
    wait_answered(page)
    page.wait_for_selector(".word >> nth=1")
    page.hover(".word >> nth=1")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from serve_checkpoints import train_tiny_checkpoints

    return train_tiny_checkpoints(tmp_path_factory.getbasetemp() / "serve-checkpoints")


@pytest.mark.slow
def test_page_in_a_real_browser(checkpoints, tmp_path):
    sync_playwright = browser_or_skip()
    from visattn.data.scenes import SceneConfig, make_scene

    scene = tmp_path / "scene.png"
    make_scene(SceneConfig(kind="caption", image_size=32, num_objects=(1, 2)), 7, 0)["image"].save(scene)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not pixels")
    with running_server([checkpoints[t] for t in ("caption", "classify", "detect")]) as url, sync_playwright() as p:
        browser, page, errors = open_page(p, url)
        try:
            # --- captioner: hover a word, the map follows it
            pick_model(page, "captioner")
            page.set_input_files("#file", str(scene))
            wait_answered(page)
            words = page.locator(".word")
            assert words.count() >= 3
            assert "active" in words.nth(0).get_attribute("class")
            before = overlay_digest(page)
            words.nth(1).hover()
            assert overlay_digest(page) != before, "hovering the second word did not change the overlay"
            assert "active" in words.nth(1).get_attribute("class")
            assert words.nth(1).get_attribute("aria-pressed") == "true"
            assert "active" not in words.nth(0).get_attribute("class")
            page.screenshot(path=str(tmp_path / "caption.png"), full_page=True)
            # keyboard: the right arrow moves to the third word and its map
            second = overlay_digest(page)
            words.nth(1).focus()
            page.keyboard.press("ArrowRight")
            assert "active" in words.nth(2).get_attribute("class") and overlay_digest(page) != second
            # the opacity slider redraws the same map lighter
            third = overlay_digest(page)
            page.evaluate("() => { const s = document.getElementById('opacity'); s.value = '0.2';"
                          " s.dispatchEvent(new Event('input')); }")
            assert overlay_digest(page) != third
            # the n-best list: three captions (the page asks beam 3, n-best 3), scores, the best selected
            items = page.locator("#nbest li")
            assert items.count() == 3
            assert "selected" in items.nth(0).get_attribute("class")
            scores = [float(items.nth(i).locator(".score").inner_text().split()[0]) for i in range(3)]
            assert scores == sorted(scores, reverse=True)
            # play steps through the words on its own
            page.locator(".word >> nth=0").hover()
            page.click("#play")
            page.wait_for_function("document.querySelector('.word.active') !== document.querySelectorAll('.word')[0]",
                                   timeout=5000)
            page.click("#play")

            # --- classifier: bars and one thumbnail per glimpse, from a sample
            pick_model(page, "classifier")
            page.click("#sample")
            wait_answered(page)
            assert page.locator("#bars li").count() == 5
            assert page.locator("#glimpses .thumb").count() == 2
            assert page.locator("#refs li").count() >= 1  # the sample's label
            page.screenshot(path=str(tmp_path / "classify.png"), full_page=True)

            # --- detector: boxes; hovering one shows its query's map
            pick_model(page, "detector")
            page.evaluate("() => { const s = document.getElementById('threshold'); s.value = '0';"
                          " s.dispatchEvent(new Event('input')); }")
            page.click("#sample")
            wait_answered(page)
            rows = page.locator("#detections li")
            assert rows.count() == 5
            boxes_only = overlay_digest(page)
            rows.nth(0).hover()
            assert overlay_digest(page) != boxes_only and "active" in rows.nth(0).get_attribute("class")
            page.screenshot(path=str(tmp_path / "detect.png"), full_page=True)

            # --- a bad upload: a readable error on the page, and the page keeps working
            pick_model(page, "captioner")
            wait_answered(page)  # the new model ran on the last image
            page.set_input_files("#file", str(not_an_image))
            error = page.locator("#error")
            error.wait_for(state="visible", timeout=30000)
            assert "415" in error.inner_text() and "notes.png: not an image" in error.inner_text()
            page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

            # --- a phone's width: one column, nothing wider than the screen
            page.set_viewport_size({"width": 390, "height": 844})
            caption_a_scene(page, scene)
            assert page.locator("#error").is_hidden()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert running_server.returncode == 0, running_server.output  # Ctrl-C stops it cleanly
    assert "captioner: caption" in running_server.output and "stopped" in running_server.output
    for name in ("caption", "classify", "detect", "error", "phone"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def main(argv: list[str] | None = None) -> int:
    """Screenshot the page captioning a fresh procedural sample with a real checkpoint (the README's picture)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="a captioner checkpoint, e.g. runs/demo/run/best.safetensors")
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    parser.add_argument("--word", type=int, default=2, help="which word to hover (0-based)")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with running_server([args.checkpoint], threads=2) as url, sync_playwright() as p:
        browser, page, _ = open_page(p, url, width=args.width, height=760)
        page.click("#sample")
        wait_answered(page)
        words = page.locator(".word")
        words.nth(min(args.word, words.count() - 1)).hover()
        page.wait_for_timeout(100)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    from PIL import Image

    with Image.open(args.out) as shot:  # 256 dithered colours: a quarter of the bytes, the same picture
        small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                             dither=Image.Dither.FLOYDSTEINBERG)
    small.save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
