"""Screenshots of report.html's embedding explorer in headless Chromium, for the README: ``docs/report-explorer.png``
(the map as the page opens) and ``docs/report-hover.png`` (a clicked point's neighbours and its hover thumbnail).

Give ``--report`` a run's report.html (``vicreg report RUN`` writes ``RUN/report.html``) to take the pictures of
a real run; without it, the page of tests/test_html_browser.py (tests/browser.py: scikit-learn's 8x8 digits,
t-SNE of the raw pixels). The browser is the tests' headless Chromium either way.

    python benchmarks/report_screenshots.py [--report RUN/report.html] [--out docs] [--points 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.browser: the same page and browser as the tests

from tests.browser import chromium, hover, isolated_point, missing_browser, tap, wait_for_plot, write_tiny_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder of the two PNG files")
    parser.add_argument("--report", type=Path, default=None, help="a report.html to show (default: a tiny page)")
    parser.add_argument("--points", type=int, default=600, help="digits shown in the tiny page's explorer")
    args = parser.parse_args()
    reason = missing_browser()
    if reason:
        sys.exit(f"cannot take screenshots: {reason}")
    if args.report is not None and not args.report.is_file():
        sys.exit(f"{args.report} is not a file; give the report.html of vicreg report RUN")
    with tempfile.TemporaryDirectory() as tmp, chromium(width=1100, height=760) as driver:
        if args.report is not None:
            page = args.report.resolve()
            print(f"{page}: {page.stat().st_size / 1e6:.2f} MB")
        else:
            page = write_tiny_report("image", Path(tmp) / "report.html", n=args.points, tsne=True)
            print(f"{page.stat().st_size / 1e6:.2f} MB for {args.points} points")
        driver.get(page.as_uri())
        wait_for_plot(driver)
        args.out.mkdir(parents=True, exist_ok=True)
        show = "document.getElementById('explorer').scrollIntoView()"
        driver.execute_script(show)
        time.sleep(0.5)
        driver.save_screenshot(os.fspath(args.out / "report-explorer.png"))  # the map as it opens
        i = isolated_point(driver)
        tap(driver, i)
        hover(driver, i)  # the pointer stays on the point: its tooltip beside its neighbours
        driver.execute_script(show)
        time.sleep(0.5)
        driver.save_screenshot(os.fspath(args.out / "report-hover.png"))
    print(f"wrote {args.out / 'report-explorer.png'} and {args.out / 'report-hover.png'}")


if __name__ == "__main__":
    main()
