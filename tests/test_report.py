"""The HTML report: one self-contained page, the metrics of --evaluate, a gallery that sorts and filters itself in a
real headless browser, and clear errors for a path it cannot write, before any evaluation."""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from CAM_Stanford_Cars import report
from CAM_Stanford_Cars.evaluation import evaluate_checkpoint
from CAM_Stanford_Cars.report import write_report


class _Cards(HTMLParser):
    """The gallery's cards (their attributes, in document order) and the body's attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cards: list[dict[str, Any]] = []
        self.body: dict[str, Any] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body":
            self.body = values
        elif tag == "div" and "card" in (values.get("class") or "").split():
            self.cards.append(values)


def _iou(card: dict[str, Any]) -> float:
    return float(card["data-iou"]) if card["data-iou"] else math.nan


@pytest.fixture
def checkpoint(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run's best checkpoint."""
    return Path(shutil.copy(trained_run / "best.pt", tmp_path / "best.pt"))


@pytest.fixture
def written(checkpoint: Path, synthetic_root: Path, tmp_path: Path) -> dict[str, Any]:
    return write_report(
        checkpoint, tmp_path / "out" / "report.html", synthetic_root, device="cpu", num_workers=0, progress=False
    )


def test_the_report_is_one_self_contained_page_with_the_metrics_of_evaluate(
    written: dict[str, Any], checkpoint: Path, synthetic_root: Path
) -> None:
    text = Path(written["report"]).read_text(encoding="utf-8")
    cards = _Cards(text).cards
    plain = evaluate_checkpoint(checkpoint, synthetic_root, device="cpu", num_workers=0, progress=False)
    assert written["n_cards"] == len(cards) == plain["n_images"] > 0
    assert [int(card["data-i"]) for card in cards] == list(range(len(cards)))
    for key, value in plain.items():  # the same pass as --evaluate's: every score equal
        same = value == written[key] or (isinstance(value, float) and math.isnan(value) and math.isnan(written[key]))
        assert same, (key, value, written[key])
    # Nothing is fetched: every src/href is inline, and no address appears anywhere.
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", text)
    assert len(links) >= 2 * len(cards) + 2 and all(link.startswith("data:image/") for link in links)
    assert "http://" not in text and "https://" not in text
    first = re.search(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert first is not None and Image.open(io.BytesIO(base64.b64decode(first.group(1)))).size == (96, 96)
    assert text.count('loading="lazy"') == 2 * len(cards)
    # The cards agree with the meter: right classes give top-1, right classes with a hit give Top-1 Loc at t*.
    right = [card["data-right"] == "1" for card in cards]
    assert sum(right) / len(cards) == pytest.approx(written["top1"])
    top1_hits = sum(r and card["data-hit"] == "1" for r, card in zip(right, cards))
    assert top1_hits / written["n_with_box"] == pytest.approx(written["top1_loc_at_cam_threshold"])
    per_class = re.findall(r"<td class=n>(\d+)</td><td class=n>[^<]*</td><td class=n>([\d.]+)% of (\d+)</td>", text)
    assert (
        sum(int(n) for n, _, _ in per_class) == len(cards)
        and sum(int(boxed) for _, _, boxed in per_class) == written["n_with_box"]
    )
    known_hits = sum(round(float(rate) * int(boxed) / 100) for _, rate, boxed in per_class)
    assert known_hits == round(written["gt_known_loc_at_cam_threshold"] * written["n_with_box"])
    for section in (
        "Run",
        "Metrics (test)",
        "Training curves",
        "Box accuracy against the CAM threshold",
        "Per class",
        "Gallery",
    ):
        assert f"<h2>{section}" in text, section
    assert "GT-known Loc*" in text and "best.pt" in text


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless Chromium here (apt-get install chromium)")
    return browser


def _browse(browser: str, tmp_path: Path, *args: str) -> str:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_headless_browser_sorts_and_filters_the_gallery_from_the_url(written: dict[str, Any], tmp_path: Path) -> None:
    browser = _chromium()
    page = Path(written["report"])
    original = _Cards(page.read_text(encoding="utf-8")).cards
    order = {card["data-i"]: index for index, card in enumerate(original)}
    for sort, descending in (("iou", False), ("-iou", True)):
        dom = _Cards(_browse(browser, tmp_path, "--dump-dom", f"{page.as_uri()}?sort={sort}"))
        assert dom.body.get("data-ready") == "1" and dom.body.get("data-sort") == sort, dom.body
        assert not dom.body.get("data-errors"), dom.body.get("data-errors")
        assert len(dom.cards) == written["n_cards"] and not any("hidden" in card for card in dom.cards)
        boxed = sorted(
            (card for card in original if card["data-iou"]),
            key=lambda c: (-_iou(c) if descending else _iou(c), order[c["data-i"]]),
        )
        expected = [card["data-i"] for card in boxed] + [card["data-i"] for card in original if not card["data-iou"]]
        assert [card["data-i"] for card in dom.cards] == expected
        ious = [_iou(card) for card in dom.cards if card["data-iou"]]
        assert ious == sorted(ious, reverse=descending)
    dom = _Cards(_browse(browser, tmp_path, "--dump-dom", f"{page.as_uri()}?filter=wrong"))
    assert not dom.body.get("data-errors") and dom.body.get("data-filter") == "wrong"
    assert [card["data-i"] for card in dom.cards] == [card["data-i"] for card in original]  # filtering keeps the order
    assert [("hidden" in card) for card in dom.cards] == [card["data-right"] == "1" for card in dom.cards]
    assert int(dom.body["data-shown"]) == sum(card["data-right"] == "0" for card in original)
    shot = tmp_path / "report.png"
    _browse(browser, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    artefacts = Path(os.environ.get("CAM_TEST_ARTIFACTS") or tmp_path)
    artefacts.mkdir(parents=True, exist_ok=True)
    kept = artefacts / "report.png"
    if kept.resolve() != shot.resolve():
        shutil.copy(shot, kept)
    assert kept.is_file() and kept.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["folder", "suffix", "file in the way", "unwritable"])
def test_a_path_it_cannot_write_is_refused_before_any_evaluation(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_evaluation(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the checkpoint was loaded before the path was checked")

    monkeypatch.setattr(report, "open_checkpoint", no_evaluation)
    (tmp_path / "folder.html").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    if case == "unwritable":
        monkeypatch.setattr(report, "unwritable_reason", lambda folder: "Read-only file system")
    path = {
        "folder": tmp_path / "folder.html",
        "suffix": tmp_path / "report.txt",
        "file in the way": tmp_path / "a_file" / "report.html",
        "unwritable": tmp_path / "report.html",
    }[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError) as info:
        write_report(tmp_path / "missing.pt", path, device="cpu", progress=False)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and ".html" in message, message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, not even a hidden temporary file


def test_a_failure_mid_evaluation_leaves_the_old_page_whole(
    checkpoint: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "report.html"
    page.write_text("the previous report")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "apply_cam", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_report(checkpoint, page, synthetic_root, device="cpu", num_workers=0, progress=False)
    assert page.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "report.html"]


def test_the_report_flag_of_evaluate(
    cam_checkpoint: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """main.py's --evaluate --report (in process: main.py as a script is run by tests/test_cli.py)."""
    from CAM_Stanford_Cars.main import main

    out = tmp_path / "pages" / "report.html"
    common = [
        "--root_datasets_dir",
        str(synthetic_root),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--progress",
        "false",
    ]
    args = ["--evaluate", str(cam_checkpoint), "--report", str(out), "--methods", "cam,gradcam", *common]
    assert main(args) == 0
    assert "gradcam" in out.read_text(encoding="utf-8") and f"report: {out}" in capsys.readouterr().out
    assert main(["--report", str(out)]) == 2
    assert "--report is an option of --evaluate" in capsys.readouterr().err
    # A report made private stays private when it is written again; a new one follows the umask.
    out.chmod(0o600)
    assert main(["--evaluate", str(cam_checkpoint), "--report", str(out), *common]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    fresh = tmp_path / "pages" / "fresh.html"
    assert main(["--evaluate", str(cam_checkpoint), "--report", str(fresh), *common]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_command_creates_no_folder_and_a_bad_out_fails_before_any_work(
    cam_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from CAM_Stanford_Cars import visualize
    from CAM_Stanford_Cars.main import main

    target = tmp_path / "a" / "b" / "c" / "r.html"
    assert main(["--evaluate", str(tmp_path / "missing.pt"), "--report", str(target)]) == 2
    assert "missing.pt" in capsys.readouterr().err and not (tmp_path / "a").exists()

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint was opened before --out was checked")

    monkeypatch.setattr(visualize, "load_checkpoint", no_work)
    assert visualize.main([str(cam_checkpoint), "--out", "/proc/cams.png"]) == 2  # no file can be made in /proc
    assert "--out '/proc/cams.png' is not writable" in capsys.readouterr().err


def test_shared_files_hold_no_path_of_this_machine(cam_checkpoint: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """The report (written without a data folder: the checkpoint records it, absolute) and the methods JSON and CSV
    name images by their path inside the dataset and the checkpoint by its file name."""
    from CAM_Stanford_Cars.compare import compare_methods

    page = tmp_path / "report.html"
    write_report(cam_checkpoint, page, device="cpu", num_workers=0, progress=False)
    result = compare_methods(cam_checkpoint, methods=["cam"], device="cpu", num_workers=0, progress=False, steps=1)
    shared = [page.read_text(), Path(result["files"]["json"]).read_text(), Path(result["files"]["csv"]).read_text()]
    for text in shared:
        assert str(tmp_path) not in text and str(synthetic_root) not in text
    assert 'title="cars_test/' in shared[0] and cam_checkpoint.name in shared[0]
