"""The explanation viewer in a real browser (Debian's chromium, headless, through Selenium and
Debian's chromedriver, the same version):

1. `bilrp serve` (the real ImageNet VGG-16, 128 x 128, with a bearer token) serves the page; the
   test chooses two photos in it, types the token and clicks Explain. The page's similarity and
   top pairs must equal those of the same request sent straight to the JSON API; hovering a patch
   of the first image must show that patch's row of R over the second image (the status line names
   the patch, and the second image is red where that row's largest value is). Screenshot saved.
   Then the same pair by factor ids (POST /v1/factors first): the same numbers, no image behind.
2. The page `bilrp explain --html` writes opens from disk with the network off and shows the
   numbers of the JSON written by the same command. Screenshot saved.

A missing browser skips the test with a message; under CI (CI=true) it is a failure.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("BIN", os.path.join(ROOT, ".build-omp/release/bilrp"))
OUT = os.path.join(ROOT, "out", "test-viewer")
LEFT = os.path.join(ROOT, "assets/images/motorcycle_left.png")
RIGHT = os.path.join(ROOT, "assets/images/motorcycle_right.png")
MODEL = ["--model", os.path.join(ROOT, "assets/models/vgg16_imagenet.onnx"), "--layer", "31", "--rules", "paper-vgg",
         "--size", "128", "--patch", "8", "--head", "random:100:0"]
TOKEN = "viewer-test-token"


def skip_or_fail(message):
    if os.environ.get("CI"):
        print(f"viewer test: FAILED: {message}", file=sys.stderr)
        sys.exit(1)
    print(f"viewer test: SKIPPED: {message}")
    sys.exit(0)


def find_browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        skip_or_fail("chromium and chromedriver are not installed (make setup installs Debian's chromium and chromium-driver)")
    try:
        from selenium import webdriver  # noqa: F401
    except ImportError:
        skip_or_fail("selenium is not installed in this Python (make setup installs it in .venv-test)")
    return chromium, driver


def browser(chromium, driver, offline=False):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1300",
              "--allow-file-access-from-files"]:
        options.add_argument(a)
    if offline:
        # No network at all: every request but file:// fails.
        options.add_argument("--proxy-server=http://127.0.0.1:9")
        options.add_argument("--proxy-bypass-list=<-loopback>")
    d = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    d.set_page_load_timeout(60)
    return d


def wait(d, condition, what, seconds=120):
    end = time.time() + seconds
    while time.time() < end:
        v = d.execute_script(condition)
        if v:
            return v
        time.sleep(0.2)
    status = d.execute_script("return document.getElementById('status').textContent")
    raise AssertionError(f"timed out waiting for {what} (page status: {status!r})")


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def start_server():
    log = tempfile.NamedTemporaryFile("w+", delete=False)
    p = subprocess.Popen([BIN, "serve", "--port", "0", "--token", TOKEN] + MODEL, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        text = open(log.name).read()
        m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", text)
        if m:
            return p, m.group(1), log.name
        if p.poll() is not None:
            raise AssertionError("the server stopped:\n" + text)
        time.sleep(0.2)
    raise AssertionError("the server did not start:\n" + open(log.name).read())


def api_explain(url):
    body = json.dumps({"first": {"image": base64.b64encode(open(LEFT, "rb").read()).decode()},
                       "second": {"image": base64.b64encode(open(RIGHT, "rb").read()).decode()},
                       "settings": {"top_k": 10}}).encode()
    req = urllib.request.Request(url + "/v1/explain", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer " + TOKEN})
    return json.load(urllib.request.urlopen(req, timeout=120))


def api_factors(url, path):
    body = json.dumps({"image": base64.b64encode(open(path, "rb").read()).decode()}).encode()
    req = urllib.request.Request(url + "/v1/factors", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer " + TOKEN})
    return json.load(urllib.request.urlopen(req, timeout=120))["id"]


def factor_ids(d, url, expected):
    """The page given factor ids instead of images: the same numbers, the pair drawn on a plain grey
    backdrop (the page has no image to show)."""
    first, second = api_factors(url, LEFT), api_factors(url, RIGHT)
    d.get(url + "/")
    d.find_element("id", "first-id").send_keys(first)
    d.find_element("id", "second-id").send_keys(second)
    d.find_element("id", "token").clear()
    d.find_element("id", "token").send_keys(TOKEN)
    d.find_element("id", "explain").click()
    y = float(wait(d, "return document.getElementById('similarity').dataset.value", "the explanation from factor ids"))
    check(close(y, expected["similarity"]), f"page y {y} from factor ids != API y {expected['similarity']}")
    rows = d.execute_script("return document.querySelectorAll('#top-pairs tbody tr').length")
    check(rows == len(expected["top_positive"]), f"{rows} table rows from factor ids")
    # Away from the curves the backdrop is the plain grey of no image: sample every pixel of the
    # second view that no drawn curve reaches and find them all one grey.
    grey = d.execute_script("""
        const c = document.getElementById('view-second'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Map();
        for (let i = 0; i < d.length; i += 4) {
          if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) continue;
          seen.set(d[i], (seen.get(d[i]) || 0) + 1);
        }
        let best = 0, count = 0;
        for (const [v, n] of seen) if (n > count) { best = v; count = n; }
        return [best, count / (d.length / 4)];""")
    check(grey[1] > 0.5, f"the backdrop without images is mostly one grey (most common grey {grey[0]} on {grey[1]:.0%})")
    d.save_screenshot(os.path.join(OUT, "viewer_factor_ids.png"))


def served_page(chromium, driver):
    server, url, log = start_server()
    d = None
    try:
        expected = api_explain(url)
        d = browser(chromium, driver)
        d.get(url + "/")
        check(d.title == "BiLRP viewer", f"title {d.title!r}")
        d.find_element("id", "first-file").send_keys(LEFT)
        d.find_element("id", "second-file").send_keys(RIGHT)
        d.find_element("id", "token").send_keys(TOKEN)
        d.find_element("id", "explain").click()
        y = float(wait(d, "return document.getElementById('similarity').dataset.value", "the explanation"))
        check(close(y, expected["similarity"]), f"page y {y} != API y {expected['similarity']}")
        rows = d.execute_script("return Array.from(document.querySelectorAll('#top-pairs tbody tr'))"
                                ".map(r => Array.from(r.cells).map(c => c.textContent))")
        check(len(rows) == len(expected["top_positive"]) == 10, f"{len(rows)} table rows")
        first = expected["top_positive"][0]
        check(rows[0][3] == "({x0}, {y0})-({x1}, {y1})".format(**first["first"]), f"first row {rows[0]} vs {first}")
        drawn = d.execute_script("return document.getElementById('pairs-count').value")
        check(re.match(r"^\d+ of \d+$", drawn), f"pairs count {drawn!r}")
        # Hover the top pair's first patch: the status names it and the second image turns red
        # where that patch's row of R is largest.
        from selenium.webdriver.common.action_chains import ActionChains
        canvas = d.find_element("id", "view-first")
        size = canvas.size
        p = first["first"]
        cx = (p["x0"] + p["x1"]) / 2 / 128 * size["width"] - size["width"] / 2
        cy = (p["y0"] + p["y1"]) / 2 / 128 * size["height"] - size["height"] / 2
        ActionChains(d).move_to_element_with_offset(canvas, int(cx), int(cy)).perform()
        patch = wait(d, "return document.getElementById('heat-status').dataset.patch", "the hover heatmap", 10)
        check(int(patch) == p["index"], f"hovered patch {patch}, expected {p['index']}")
        color = d.execute_script("""
            const st = window.bilrpViewer.state, p = Number(arguments[0]), Q = st.Q;
            let best = 0;
            for (let q = 1; q < Q; q++) if (st.R[p * Q + q] > st.R[p * Q + best]) best = q;
            const g = st.grids[1], s = st.scale, r = Math.floor(best / g.cols), c = best % g.cols;
            const ctx = document.getElementById('view-second').getContext('2d');
            return Array.from(ctx.getImageData((c + 0.5) * g.patch * s, (r + 0.5) * g.patch * s, 1, 1).data);""", patch)
        check(color[0] > color[1] + 80 and color[0] > color[2] + 80, f"the row's strongest patch is {color}, not red")
        os.makedirs(OUT, exist_ok=True)
        d.save_screenshot(os.path.join(OUT, "viewer_served.png"))
        factor_ids(d, url, expected)
        # The server keeps serving.
        urllib.request.urlopen(url + "/health", timeout=10).read()
    finally:
        if d:
            d.quit()
        server.terminate()
        server.wait(timeout=30)
        os.unlink(log)


def html_file(chromium, driver):
    os.makedirs(OUT, exist_ok=True)
    page, report = os.path.join(OUT, "motorcycle.html"), os.path.join(OUT, "motorcycle.json")
    r = subprocess.run([BIN, "explain", LEFT, RIGHT, "--quiet", "--html", page, "--json", report] + MODEL,
                       capture_output=True, text=True)
    check(r.returncode == 0, r.stderr)
    expected = json.load(open(report))
    d = browser(chromium, driver, offline=True)
    try:
        d.get("file://" + page)
        y = float(wait(d, "return document.getElementById('similarity').dataset.value", "the embedded explanation", 30))
        check(close(y, expected["similarity"]), f"page y {y} != JSON y {expected['similarity']}")
        values = d.execute_script("return Array.from(document.querySelectorAll('#top-pairs tbody tr')).map(r => r.cells[1].textContent)")
        check(len(values) == len(expected["top_positive"]), f"{len(values)} rows")
        for shown, pair in zip(values, expected["top_positive"]):
            check(abs(float(shown) - pair["value"]) <= 5e-4 * abs(pair["value"]), f"{shown} vs {pair['value']}")
        # R in the page is the NPY: its sum is the JSON's sum of R.
        total = d.execute_script("return window.bilrpViewer.state.R.reduce((a, b) => a + b, 0)")
        check(close(total, expected["conservation"]["relevance_sum"], 1e-4), f"sum R {total} vs {expected['conservation']['relevance_sum']}")
        check(d.execute_script("return document.getElementById('form').hidden"), "the form is hidden in a file")
        d.save_screenshot(os.path.join(OUT, "viewer_file.png"))
    finally:
        d.quit()


def main():
    chromium, driver = find_browser()
    served_page(chromium, driver)
    print("viewer test: served page ok (similarity and top pairs equal the API's, hover shows the row of R, factor ids)")
    html_file(chromium, driver)
    print(f"viewer test: --html file ok (numbers equal the JSON, offline); screenshots in {OUT}")


if __name__ == "__main__":
    main()
