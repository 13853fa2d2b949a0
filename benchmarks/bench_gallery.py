"""The gallery at 10,000 concepts: a fresh build, a rebuild after one change, the first page in a browser.

Usage: python benchmarks/bench_gallery.py [--home LIBRARY] [--size 10000] [--keep DIR]

Without ``--home`` a library of ``--size`` synthesized concepts is made first (the files of
``bench_library.py``: 60 % diffusers, 25 % AUTOMATIC1111, 15 % SDXL, no images, so every card
draws its vectors). Times, in process:

* a fresh build into an empty folder (every thumbnail, download and page written);
* a rebuild with nothing changed, and after one concept is tagged;
* the first page in headless Chromium (Debian's ``chromium`` through Playwright): from the
  navigation to the first cards on screen, and the browser's own ``performance.now()`` then.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="an existing library (default: one of --size made here)")
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--keep", type=Path, help="work folder to keep")
    args = parser.parse_args()

    from conceptlib.gallery import build
    from conceptlib.library import Library

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-gallery-"))
    work.mkdir(parents=True, exist_ok=True)
    home = args.home or work / "home"
    library = Library.open(home)
    have = len(library.list())
    if have < args.size and args.home is None:
        import bench_library

        print(f"making {args.size - have:,} concepts ...", file=sys.stderr)
        for path in bench_library.make_files(work / "files", have, args.size - have):
            library.add(path)
    count = len(library.list())
    site = work / "site"
    shutil.rmtree(site, ignore_errors=True)
    rows = []
    started = time.perf_counter()
    fresh = build(library, site)
    rows.append((f"fresh build of {count:,} concepts ({fresh.written:,} files)", time.perf_counter() - started))
    started = time.perf_counter()
    build(library, site)
    rows.append(("rebuild, nothing changed", time.perf_counter() - started))
    name = library.list()[count // 2].name
    library.tag(name, add=["bench-changed"])
    started = time.perf_counter()
    changed = build(library, site)
    rows.append((f"rebuild after one concept was tagged ({changed.written} files)", time.perf_counter() - started))
    library.tag(name, remove=["bench-changed"])

    browser_rows = []
    executable = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            for run in range(3):
                page = chromium.new_page()
                started = time.perf_counter()
                page.goto((site / "index.html").as_uri(), wait_until="commit")
                page.wait_for_selector(".card")
                wall = time.perf_counter() - started
                inside = page.evaluate("performance.now()") / 1000
                browser_rows.append((f"first page, run {run + 1}: navigation to the first cards (browser's clock)", wall, inside))
                page.close()
            chromium.close()

    print(f"\nMachine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()} ({time.strftime('%Y-%m-%d')})\n")
    print("| measurement | seconds |\n|---|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} |")
    for label, wall, inside in browser_rows:
        print(f"| {label} | {wall:.2f} ({inside:.2f}) |")
    if not browser_rows:
        print("| first page | skipped: no chromium or no playwright |")
    library.close()
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
