"""One self-contained HTML page about a checkpoint on a split: the run, its metrics, curves, per-class scores and a
gallery of every image with its CAM and boxes, sorted and filtered in the page itself (no server, no network).
The cards go to a temporary file while the split is evaluated (one pass), then the page is assembled atomically.
:class:`PhotoReport` builds the same page from your own photos' explanations, which have no true class or box."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from .atomic_files import atomic_file, file_in_the_way, unwritable_reason
from .checkpoint import PAPER_THRESHOLD, THRESHOLD_SOURCES, cam_threshold_of
from .compare import methods_table_rows
from .data.images import resize_pixels
from .data.names import FILTER_NAMES
from .evaluation import open_checkpoint
from .figures import plot_training_curves
from .localization import IOU_THRESHOLD, LocalizationMeter, box_iou, metrics_table_rows
from .overlay import apply_cam
from .photos import PhotoExplanation
from .saved_maps import MapFolder, image_ids, score_map_folder
from .scoring import BoxScores, ScoredBatch, model_cam, score
from .wsolevaluation import WsolevaluationMeter

__all__ = [
    "PhotoReport",
    "card",
    "check_report_path",
    "gallery_controls",
    "page_start",
    "photo_report",
    "write_maps_report",
    "write_page",
    "write_report",
]

TRUE_COLOR, PRED_COLOR = (0, 230, 0), (255, 0, 255)  # the true box green, the predicted box magenta
esc = html.escape

CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h2{margin-top:1.4em}
table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}pre{color:#555}
img.fig{max-width:min(100%%,1000px);height:auto}#controls{margin:.5em 0}
#gallery{display:flex;flex-wrap:wrap;gap:6px}.card{border:1px solid #ccc;border-radius:4px;padding:3px;font-size:11px;
width:%(w)dpx;content-visibility:auto;contain-intrinsic-size:%(w)dpx 170px}
.card[hidden]{display:none}.card img{vertical-align:top}
.ok{color:#080;font-weight:bold}.no{color:#c00;font-weight:bold}
.f{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;color:#666}"""

ERROR_JS = """(function(){var E=[];
function rec(m){E.push(String(m));if(document.body)document.body.dataset.errors=E.join(' | ');}
window.onerror=function(m,s,l){rec(m+' (line '+l+')');};
window.addEventListener('unhandledrejection',
function(e){rec('unhandled rejection: '+e.reason);});
var ce=console.error;
console.error=function(){rec(Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments);};
document.addEventListener('DOMContentLoaded',
function(){if(E.length)document.body.dataset.errors=E.join(' | ');});})();"""

GALLERY_JS = """(function(){var g=document.getElementById('gallery'),S=document.getElementById('sort'),
F=document.getElementById('filter'),K=document.getElementById('cls'),cards=Array.prototype.slice.call(g.children);
function num(c,k){var v=c.dataset[k];return v===''?NaN:+v;}
function cmp(a,b,k,desc){var x=num(a,k),y=num(b,k);if(isNaN(x)!==isNaN(y))return isNaN(x)?1:-1;
if(isNaN(x)||x===y)return num(a,'i')-num(b,'i');return desc?y-x:x-y;}
function apply(){var s=S.value,desc=s.charAt(0)==='-',k=desc?s.slice(1):s,f=F.value,cl=K.value,n=0;
var sorted=cards.slice().sort(function(a,b){return cmp(a,b,k,desc);}),frag=document.createDocumentFragment();
sorted.forEach(function(c){var d=c.dataset,
hide=(f==='wrong'&&d.right==='1')||(f==='missed'&&d.hit!=='0')||(f==='unsure'&&+d.conf>=0.5)||(cl!==''&&d.cls!==cl);
c.hidden=hide;if(!hide)n++;frag.appendChild(c);});g.appendChild(frag);
document.getElementById('shown').textContent=n+' of '+cards.length+' shown';
document.body.dataset.sort=s;document.body.dataset.filter=f;document.body.dataset.shown=n;}
var p=new URLSearchParams(location.search);
function pick(sel,v){if(v!==null&&Array.prototype.some.call(sel.options,function(o){return o.value===v;}))sel.value=v;}
pick(S,p.get('sort'));pick(F,p.get('filter'));pick(K,p.get('class'));
[S,F,K].forEach(function(e){e.addEventListener('change',apply);});apply();document.body.dataset.ready='1';})();"""


def check_report_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or one ValueError naming it and the fix: a folder, a suffix other than .html, unwritable."""
    out, fix = Path(path), "give a file name ending in .html in a writable folder, such as 'report.html'"
    if out.is_dir():
        raise ValueError(f"the report path {str(out)!r} is a folder; {fix}")
    if out.suffix.lower() != ".html":
        raise ValueError(f"the report path {str(out)!r} does not end in .html; {fix}")
    if blocker := file_in_the_way(out):
        raise ValueError(
            f"the report path {str(out)!r} cannot be written: {str(blocker)!r} is a file, not a folder; {fix}"
        )
    if (reason := unwritable_reason(out.parent)) is not None:
        raise ValueError(f"the report path {str(out)!r} is not writable ({reason}); {fix}")
    return out


def _uri(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _jpeg(pixels: np.ndarray, boxes: list[tuple[np.ndarray, tuple[int, int, int]]], size: int) -> str:
    """An (S, S, 3) uint8 image shrunk to ``size`` with ``boxes`` (in its S x S pixels) drawn, as a JPEG data URI."""
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
    draw, scale = ImageDraw.Draw(image), size / pixels.shape[0]
    for box, color in boxes:
        if np.isfinite(box).all():
            x1, y1, x2, y2 = (float(v) * scale for v in box)
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=2)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70, optimize=True)
    return _uri(buffer.getvalue(), "jpeg")


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return _uri(buffer.getvalue(), "png")


def mark(ok: bool) -> str:
    return f"<span class={'ok' if ok else 'no'}>{'&#10003;' if ok else '&#10007;'}</span>"


def rate(hits: int, total: int) -> str:
    return f"{100 * hits / total:.1f}%" if total else "n/a"


def options(pairs: Any) -> str:
    """``<option>`` elements of ``(value, text)`` pairs."""
    return "".join(f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in pairs)


def _table(header: list[str] | None, rows: list[list[Any]], numeric: tuple[int, ...] = ()) -> str:
    """An HTML table of escaped cells, the columns ``numeric`` right-aligned."""

    def cells(row: list[Any], tag: str) -> str:
        return "".join(
            f"<{tag}{' class=n' if tag == 'td' and i in numeric else ''}>{esc(str(c))}</{tag}>"
            for i, c in enumerate(row)
        )

    head = f"<tr>{cells(header, 'th')}</tr>" if header else ""
    return f"<table>{head}" + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows) + "</table>"


def _metrics_html(metrics: dict[str, Any]) -> str:
    """format_metrics_table's rows as an HTML table, the lines after them below."""
    rows, after = metrics_table_rows(metrics)
    notes = "\n".join(after)
    return _table(
        ["metric", "value", "definition"], [[label.strip(), text, note] for label, text, note in rows], numeric=(1,)
    ) + (f"<pre>{esc(notes)}</pre>" if notes else "")


def _methods_html(result: dict[str, Any]) -> str:
    """format_methods_table's rows as an HTML table, its caption below."""
    header, rows, caption = methods_table_rows(result)
    return _table(header, rows, tuple(range(1, len(header)))) + f"<pre>{esc(caption)}</pre>"


def _threshold_figure(
    val_curve: dict[str, Any] | None, meter: LocalizationMeter, split: str, threshold: float, source: str
) -> str:
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    if val_curve:
        ax.plot(val_curve["threshold"], val_curve["accuracy"], "--", color="tab:blue", label="validation (checkpoint)")
    ax.plot(meter.thresholds, meter.box_accuracy_curve(), color="tab:orange", label=f"{split} (this report)")
    ax.axvline(threshold, color="magenta", linestyle=":", label=f"t* = {threshold:.2f} ({source})")
    ax.set(xlabel="CAM threshold", ylabel=f"box accuracy (IoU >= {IOU_THRESHOLD})", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def card(
    i: int,
    path: str,
    image: str,
    overlay: str,
    pred: str,
    conf: float,
    cls: int,
    size: int,
    label: str | None = None,
    iou: float = math.nan,
    note: str = "",
) -> str:
    """A gallery card: the image and its overlay (data URIs), the predicted class and its confidence; with the true
    class ``label``, a mark and the box's IoU (NaN: no true box). ``cls`` is what the class filter and sort use (the
    true class, or the predicted one where there is none); ``note`` is one more line of text."""
    right, boxed = label == pred, not math.isnan(iou)
    hit = boxed and iou >= IOU_THRESHOLD
    lines = [f"pred: {esc(pred)} ({100 * conf:.1f}%)"]
    if label is not None:
        lines = [
            f"{mark(right)} true: {esc(label)}",
            *lines,
            f"{mark(hit)} box IoU {iou:.2f}" if boxed else "no true box",
        ]
    lines += [esc(note)] if note else []
    img = '<img loading="lazy" decoding="async" width=%d height=%d alt="%s" src="%s">'
    return (
        f'<div class="card" data-i="{i}" data-iou="{f"{iou:.4f}" if boxed else ""}" data-conf="{conf:.4f}" '
        f'data-cls="{cls}" data-right="{"" if label is None else int(right)}" data-hit="{int(hit) if boxed else ""}">'
        + img % (size, size, "image", image)
        + img % (size, size, "CAM", overlay)
        + f"<div>{'<br>'.join(lines)}</div>"
        f'<div class="f" title="{esc(path)}">{esc(os.path.basename(path))}</div></div>\n'
    )


def _bytes(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) floats in [0, 1] as (B, S, S, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class Cards:
    """The scoring pass's sink of the gallery: a card per image (the image and its predicted class's CAM, both
    with the true and the predicted box at the pass's CAM threshold), written to ``handle``; and per class the
    images, right top-1, images with a box and GT-known hits at that threshold (``counts``, (4, C))."""

    def __init__(self, handle: IO[str], classes: list[str], paths: list[str], thumb: int) -> None:
        self.handle, self.classes, self.paths, self.thumb = handle, list(classes), paths, thumb
        self.counts = np.zeros((4, len(self.classes)), dtype=np.int64)
        self.n = 0

    def update(self, batch: ScoredBatch) -> None:
        conf, pred = batch.logits.softmax(dim=1).max(dim=1)
        pred, conf, labels = pred.cpu().numpy(), conf.cpu().numpy(), batch.labels_cpu.numpy()
        true_boxes, pred_boxes = batch.true_boxes, batch.boxes("predicted")
        ious = box_iou(pred_boxes.double(), true_boxes.double()).numpy()
        known_iou = ious.copy()  # the true class's box: the predicted one where the class is right
        if (wrong := pred != labels).any():
            known_iou[wrong] = box_iou(batch.boxes("cam")[wrong].double(), true_boxes[wrong].double()).numpy()
        hits = (np.ones_like(labels), pred == labels, ~np.isnan(known_iou), known_iou >= IOU_THRESHOLD)
        for row, values in enumerate(hits):
            np.add.at(self.counts[row], labels, values.astype(np.int64))
        images = batch.images.float().cpu()
        pixels, overlays = _bytes(images), _bytes(apply_cam(images, batch.maps["predicted"]))
        for b in range(images.shape[0]):
            drawn = [(true_boxes[b].numpy(), TRUE_COLOR), (pred_boxes[b].numpy(), PRED_COLOR)]
            image, overlay = _jpeg(pixels[b], drawn, self.thumb), _jpeg(overlays[b], drawn, self.thumb)
            label, guess = self.classes[labels[b]], self.classes[pred[b]]
            text = card(
                self.n,
                self.paths[self.n],
                image,
                overlay,
                guess,
                float(conf[b]),
                int(labels[b]),
                self.thumb,
                label=label,
                iou=float(ious[b]),
            )
            self.handle.write(text)
            self.n += 1


class PhotoReport:
    """The page of explained photos: a card per photo (:meth:`add`, a consumer of
    :class:`~.photos.PhotoExplainer`'s records) kept in a temporary file beside the page, then the page assembled
    atomically (:meth:`write`). A photo has no true class or box: its card shows the predicted class and its
    confidence, which the gallery sorts and filters by.

    Example::

        with photo_report("cams/index.html", class_names) as page:
            write_explanations(model, class_names, 224, photos, Path("cams"), consumers=[page.add])
            page.write([["model", "best.pt"]], threshold=0.2)
    """

    def __init__(self, out: Path, handle: IO[str], class_names: list[str], thumb: int = 96) -> None:
        self.out, self.handle, self.thumb = out, handle, int(thumb)
        self.index = {name: k for k, name in enumerate(class_names)}
        self.confidences: dict[str, list[float]] = {}  # per predicted class, its photos' confidences
        self.n = 0

    def add(self, record: PhotoExplanation) -> None:
        """The card of ``record``: the whole photo as the network sees it (squeezed to a square) and its map, both
        with the map's box."""
        thumb = self.thumb
        small = resize_pixels(record.pixels, thumb)  # (t, t, 3)
        image = torch.from_numpy(small.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255))
        overlay = _bytes(apply_cam(image[None], torch.from_numpy(record.map)[None]))[0]
        box = [(np.asarray(record.box) * np.array([thumb / record.width, thumb / record.height] * 2), PRED_COLOR)]
        pred, conf = record.classes[0], record.probabilities[0]
        note = "" if record.explained == pred else f"map of {record.explained} ({100 * record.probability:.1f}%)"
        self.handle.write(
            card(
                self.n,
                record.output.with_name(Path(record.file).name).as_posix(),  # inside the folders given, not the machine
                _jpeg(small, box, thumb),
                _jpeg(overlay, box, thumb),
                pred,
                conf,
                self.index[pred],
                thumb,
                note=note,
            )
        )
        self.confidences.setdefault(pred, []).append(conf)
        self.n += 1

    def write(self, about: list[list[Any]], threshold: float, explained: str | None = None) -> Path:
        """Assemble the page: ``about`` (rows of the table at its top: the model, the method...), a table of the
        predicted classes, and the gallery; boxes at ``threshold``; ``explained``: the class ``--class`` chose."""
        title = f"CAM explanations of {self.n} photo{'s' * (self.n != 1)}"
        ranked = sorted(self.confidences.items(), key=lambda item: (-len(item[1]), item[0]))
        per_class = [[name, len(confs), f"{100 * sum(confs) / len(confs):.1f}%"] for name, confs in ranked]
        sorts = [
            ("i", "input order"),
            ("-conf", "confidence, highest first"),
            ("conf", "confidence, lowest first"),
            ("cls", "predicted class"),
        ]
        shows = [("all", "all photos"), ("unsure", "confidence under 50% only")]
        class_choices = [("", "all predicted classes")] + [
            (str(self.index[name]), f"{name} ({len(confs)})") for name, confs in sorted(self.confidences.items())
        ]
        whose = f"of {esc(explained)}" if explained is not None else "of the predicted class"
        caption = (
            f"Left: the photo, squeezed to a square as the network sees it; right: the map {whose}. Magenta: the box "
            f"of the map at t={threshold:.2f}."
        )
        head = "".join(
            [
                page_start(title, self.thumb),
                f"<h1>{esc(title)}</h1><h2>Run</h2>{_table(None, about)}",
                "<h2>Predicted classes</h2>"
                + _table(["class", "photos", "mean confidence"], per_class, numeric=(1, 2)),
                gallery_controls(caption, sorts, shows, class_choices),
            ]
        )
        write_page(self.out, head, self.handle)
        return self.out


@contextlib.contextmanager
def photo_report(path: str | os.PathLike, class_names: list[str], thumb: int = 96) -> Iterator[PhotoReport]:
    """A :class:`PhotoReport` for the page at ``path``, its cards in a temporary file beside it while it lasts.

    Raises:
        ValueError: If ``path`` is a folder, does not end in .html or cannot be written.
    """
    out = check_report_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)  # now that the work is about to write
    with tempfile.TemporaryFile("w+", encoding="utf-8", dir=out.parent) as handle:
        yield PhotoReport(out, handle, class_names, thumb)


def write_report(
    checkpoint_path: str | os.PathLike,
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    split: str = "test",
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    methods: dict[str, Any] | None = None,
    thumb_size: int = 96,
) -> dict[str, Any]:
    """Evaluate the checkpoint on ``split`` in one pass and write one self-contained HTML page at ``path``.

    Returns:
        The metrics as :func:`evaluation.evaluate_checkpoint` gives them (boxes at the checkpoint's CAM threshold), plus
        ``report`` (the page's path) and ``n_cards`` (one per image of the split).

    Raises:
        ValueError: Before any evaluation, if ``path`` is a folder, does not end in .html or cannot be written.
    """
    out = check_report_path(path)
    opened = open_checkpoint(checkpoint_path, None, root, device, num_workers)
    model, checkpoint, dataset = opened.model, opened.checkpoint, opened.data(split)
    threshold, source = cam_threshold_of(checkpoint)
    loader = opened.loader(dataset, range(len(dataset)), batch_size)
    meter, thumb = LocalizationMeter(), int(thumb_size)
    out.parent.mkdir(parents=True, exist_ok=True)  # now that the work is about to write
    with tempfile.TemporaryFile("w+", encoding="utf-8", dir=out.parent) as handle:
        cards = Cards(handle, dataset.classes, image_ids(dataset), thumb)  # paths inside the dataset, not the machine's
        score(
            model,
            loader,
            {"cam": model_cam("true"), "predicted": model_cam("predicted")},
            [BoxScores(meter), cards],
            opened.device,
            threshold=threshold,
            progress=progress,
            desc=f"report {split}",
        )
        metrics: dict[str, Any] = meter.compute(threshold)
        metrics.update(cam_threshold_source=source, protocol="cam", split=split, checkpoint=Path(checkpoint_path).name)
        head = _page_head(
            checkpoint,
            checkpoint_path,
            split,
            dataset.classes,
            cards.counts,
            threshold,
            source,
            metrics,
            meter,
            methods,
            thumb,
        )
        write_page(out, head, handle)
    return {**metrics, "report": str(out), "n_cards": cards.n}


def write_maps_report(
    path: str | os.PathLike,
    maps: MapFolder,
    protocol: str = "cam",
    threshold: float | None = None,
    thumb_size: int = 96,
    cam_curve_interval: float = 0.01,
    **scoring: Any,
) -> dict[str, Any]:
    """The page of a folder of maps scored on the split's boxes (``--score_maps DIR --report``): a card per image with
    its map and the true and predicted boxes, at ``threshold`` (the paper's 0.2 when None), the class a
    ``--predictions`` file names. ``scoring``: :func:`~.saved_maps.score_map_folder`'s other arguments.

    Returns:
        The metrics, plus ``report`` (the page's path) and ``n_cards``.
    """
    out, thumb = check_report_path(path), int(thumb_size)
    box_threshold, source = (PAPER_THRESHOLD, "paper") if threshold is None else (threshold, "--threshold")
    classes = [*maps.dataset.classes, "(no prediction)"]
    out.parent.mkdir(parents=True, exist_ok=True)  # now that the work is about to write
    with tempfile.TemporaryFile("w+", encoding="utf-8", dir=out.parent) as handle:
        cards = Cards(handle, classes, maps.ids, thumb)
        meter = LocalizationMeter() if protocol == "cam" else WsolevaluationMeter(cam_curve_interval)
        metrics = score_map_folder(
            maps,
            protocol,
            cam_curve_interval,
            threshold,
            sinks=[cards],
            box_threshold=box_threshold,
            meter=meter,
            **scoring,
        )
        about = {
            "arch": f"maps from files ({protocol} protocol)",
            "image_size": maps.dataset.image_size,
            "history": [],
            "epoch": "-",
            **maps.dataset.filters,
        }
        head = _page_head(
            about,
            maps.folder,
            maps.dataset.split,
            maps.dataset.classes,
            cards.counts[:, :-1],  # the images of each true class
            box_threshold,
            source,
            metrics,
            meter,
            None,
            thumb,
        )
        write_page(out, head, handle)
    return {**metrics, "report": str(out), "n_cards": cards.n}


def write_page(out: Path, head: str, cards: IO[str]) -> None:
    """The page at ``out``, atomically: ``head`` (from :func:`page_start` to :func:`gallery_controls`), the cards
    written to ``cards`` (a file read from its start), and the gallery's script."""
    with atomic_file(out, "w") as page:
        page.write(head)
        cards.seek(0)
        shutil.copyfileobj(cards, page, 1 << 20)
        page.write(f"</div>\n<script>{GALLERY_JS}</script>\n</body></html>\n")


def page_start(title: str, thumb: int) -> str:
    """The page's head (its title, style and error recorder) and the opening of its body."""
    return (
        f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{esc(title)}</title>"
        f'<style>{CSS % {"w": 2 * thumb + 10}}</style><script>{ERROR_JS}</script></head><body data-errors="">'
    )


def gallery_controls(caption: str, sorts: Any, shows: Any, class_choices: Any) -> str:
    """The gallery's heading, ``caption`` (HTML), its sort, filter and class menus (``(value, text)`` pairs), and the
    opening of the gallery the cards go into."""
    return (
        f"<h2>Gallery</h2><p>{caption}</p><div id=controls>sort <select id=sort>{options(sorts)}</select> show "
        f"<select id=filter>{options(shows)}</select> class <select id=cls>{options(class_choices)}"
        f"</select> <span id=shown></span></div>\n<div id=gallery>\n"
    )


def _page_head(
    checkpoint: dict[str, Any],
    checkpoint_path: str | os.PathLike,
    split: str,
    classes: list[str],
    counts: np.ndarray,
    threshold: float,
    source: str,
    metrics: dict[str, Any],
    meter: LocalizationMeter,
    methods: dict[str, Any] | None,
    thumb: int,
) -> str:
    """Everything before the cards: the run, the metrics, the figures, the per-class table, the gallery's controls."""
    filters = ", ".join(f"{name}={checkpoint.get(name)!r}" for name in FILTER_NAMES if checkpoint.get(name) is not None)
    history = checkpoint.get("history") or []
    class_list = "<br>".join(f"{esc(name)} ({n})" for name, n in zip(classes, counts[0]))
    run = _table(
        None,
        [
            ["checkpoint", Path(checkpoint_path).name],
            ["architecture", checkpoint.get("arch", "?")],
            ["filters", filters or "none"],
            ["image size", checkpoint["image_size"]],
            ["split", f"{split}: {int(counts[0].sum())} images"],
            ["epochs trained", f"{checkpoint.get('epoch', '?')} ({len(history)} in the history)"],
            ["CAM threshold for boxes", f"{threshold:.2f}: {THRESHOLD_SOURCES.get(source, source)}"],
        ],
    ).replace(
        "</table>",
        f"<tr><td>classes</td><td><details><summary>{len(classes)} classes (images in this split)</summary>"
        f"{class_list}</details></td></tr></table>",
    )
    parts = [
        page_start(f"CAM report: {Path(checkpoint_path).name} on {split}", thumb),
        f"<h1>CAM report: {esc(Path(checkpoint_path).name)}</h1><h2>Run</h2>{run}",
        f"<h2>Metrics ({esc(split)})</h2>{_metrics_html(metrics)}",
    ]
    if methods:
        parts.append(f"<h2>CAM methods</h2>{_methods_html(methods)}")
    try:
        parts.append(
            f'<h2>Training curves</h2><img class=fig alt="training curves" src="{_png(plot_training_curves(history))}">'
        )
    except ValueError as err:  # no history, or nothing in it to plot
        parts.append(f"<h2>Training curves</h2><p>none: {esc(str(err))}</p>")
    curve = _threshold_figure(checkpoint.get("cam_threshold_curve"), meter, split, threshold, source)
    parts.append(
        f'<h2>Box accuracy against the CAM threshold</h2><img class=fig alt="box accuracy curve" src="{curve}">'
    )
    per_class = [
        [name, n, rate(right, n), f"{rate(hit, boxed)} of {boxed}"]
        for name, (n, right, boxed, hit) in zip(classes, counts.T)
    ]
    parts.append(
        "<h2>Per class</h2>"
        + _table(["class", "images", "top-1", f"GT-known Loc at t*={threshold:.2f}"], per_class, (1, 2, 3))
    )
    sorts = [
        ("i", "split order"),
        ("iou", "IoU, lowest first"),
        ("-iou", "IoU, highest first"),
        ("conf", "confidence, lowest first"),
        ("-conf", "confidence, highest first"),
        ("cls", "true class"),
    ]
    shows = [("all", "all images"), ("wrong", "wrong class only"), ("missed", "missed box only (IoU < 0.5)")]
    class_choices = [("", "all classes"), *((str(i), c) for i, c in enumerate(classes))]
    caption = (
        "Left: the image; right: the predicted class's CAM. Green: the true box; magenta: the box "
        f"of the CAM at t*={threshold:.2f}."
    )
    parts.append(gallery_controls(caption, sorts, shows, class_choices))
    return "".join(parts)
