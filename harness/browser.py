"""A report as a person sees it: opened in headless Chromium (Debian's chromium and chromium-driver packages).

Selenium drives the browser through Debian's chromedriver, which matches the
browser's version; Selenium Manager, which would download a driver, is never
asked (no download here, and none wanted in CI).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

# A common laptop viewport, in CSS pixels.
LAPTOP = (1366, 768)


@dataclass(frozen=True)
class RenderedPage:
    text: str
    broken_images: list[str]
    broken_links: list[str]
    # (src, displayed width, natural width) of every image, in CSS pixels.
    image_widths: list[tuple[str, int, int]]
    scroll_width: int
    viewport_width: int


def chromium_paths() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        raise FileNotFoundError("chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    return browser, driver


def _link_target_missing(href: str) -> bool:
    parsed = urlparse(href)
    return parsed.scheme == "file" and not Path(unquote(parsed.path)).exists()


def open_page(path: Path, screenshot: Path | None = None, size: tuple[int, int] = LAPTOP) -> RenderedPage:
    """Load ``path`` at ``size``, wait for its images and report what a reader would notice; save a full-page PNG."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_window_size(*size)
        driver.get(path.resolve().as_uri())
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => i.onload = i.onerror = r)))"
            ".then(() => done());"
        )
        images = driver.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.clientWidth, i.naturalWidth])"
        )
        links = driver.execute_script("return [...document.links].map(a => a.href)")
        page = RenderedPage(
            text=driver.execute_script("return document.body.innerText"),
            broken_images=[src for src, _, natural in images if natural == 0],
            broken_links=[href for href in links if _link_target_missing(href)],
            image_widths=[(src, shown, natural) for src, shown, natural in images],
            scroll_width=driver.execute_script("return document.documentElement.scrollWidth"),
            viewport_width=driver.execute_script("return window.innerWidth"),
        )
        if screenshot:
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(size[0], height)
            driver.save_screenshot(str(screenshot))
        return page
    finally:
        driver.quit()


def main() -> int:
    """`python -m harness.browser PAGE PNG`: a full-page screenshot of a report at a laptop's width (README)."""
    import sys

    page, png = Path(sys.argv[1]), Path(sys.argv[2])
    rendered = open_page(page, screenshot=png)
    print(
        f"{png}: {page} at {LAPTOP[0]} px wide; broken images {rendered.broken_images}, links {rendered.broken_links}"
    )
    return 0 if not (rendered.broken_images or rendered.broken_links) else 1


if __name__ == "__main__":
    raise SystemExit(main())
