"""Draw ``images/cam_structure.png``: how a class activation map comes out of a GAP network.

Top: the classification path of Zhou et al. 2016 (input -> convolutional layers -> the last
layer's feature maps f_1..f_n -> global average pooling -> weights w_1^c..w_n^c -> class score).
Bottom: the same weights applied to the feature maps instead of their averages, summed into the
class activation map M_c(x, y) = sum_k w_k^c f_k(x, y), and laid over the input.

The feature maps are small synthetic activations placed on a drawn car, and the map shown is their
actual weighted sum, so the picture is consistent with the formula. The output is deterministic::

    python tools/draw_cam_structure.py                 # writes images/cam_structure.png
    python tools/draw_cam_structure.py --out fig.png
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "images" / "cam_structure.png"

GRID = 13  # the GAP-AlexNet's feature map is 13x13 at 224x224 input
FEATURE_CMAP = "viridis"
CAM_CMAP = "jet"
INK = "#24292f"
MUTED = "#57606a"
ACCENT = "#cf222e"
PANEL = "#f6f8fa"
# Units shown, their weight for class c, and where on the car (grid coordinates) each responds.
UNITS = (
    ("1", 0.9, [(3.4, 8.8, 1.4)]),  # front wheel
    ("2", 0.7, [(9.3, 8.8, 1.4)]),  # rear wheel
    ("3", 0.8, [(6.0, 5.4, 1.8), (8.0, 5.6, 1.5)]),  # cabin and roof
    ("n", -0.6, [(6.5, 1.2, 3.0), (1.0, 11.8, 1.6)]),  # sky and road: evidence against the class
)


def feature_map(blobs: list[tuple[float, float, float]]) -> np.ndarray:
    """A (GRID, GRID) activation in [0, 1]: a sum of Gaussian bumps at (x, y, sigma) in grid cells."""
    y, x = np.mgrid[0:GRID, 0:GRID].astype(float)
    activation = sum(np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * s**2)) for bx, by, s in blobs)
    return activation / activation.max()


def draw_car(ax: Axes, x0: float, y0: float, size: float, zorder: float = 2.0) -> None:
    """A side-view car filling the square [x0, x0 + size] x [y0, y0 + size] (y up), on sky and road."""

    def pt(u: float, v: float) -> tuple[float, float]:  # unit square -> axes coordinates
        return x0 + u * size, y0 + v * size

    ax.add_patch(Rectangle(pt(0, 0), size, size, facecolor="#cfe8ff", edgecolor="none", zorder=zorder))
    ax.add_patch(Rectangle(pt(0, 0), size, 0.22 * size, facecolor="#8c959f", edgecolor="none", zorder=zorder))
    body = [
        (0.06, 0.28),
        (0.06, 0.42),
        (0.16, 0.47),
        (0.33, 0.50),
        (0.42, 0.66),
        (0.66, 0.66),
        (0.78, 0.50),
        (0.93, 0.47),
        (0.95, 0.36),
        (0.94, 0.28),
    ]
    ax.add_patch(
        Polygon(
            [pt(u, v) for u, v in body],
            closed=True,
            facecolor="#c0392b",
            edgecolor="#7b241c",
            linewidth=1.0,
            zorder=zorder + 0.1,
        )
    )
    for window in (
        [(0.36, 0.50), (0.44, 0.62), (0.53, 0.62), (0.53, 0.50)],
        [(0.56, 0.50), (0.56, 0.62), (0.64, 0.62), (0.74, 0.50)],
    ):
        ax.add_patch(
            Polygon(
                [pt(u, v) for u, v in window],
                closed=True,
                facecolor="#d0e4f5",
                edgecolor="#7b241c",
                linewidth=0.8,
                zorder=zorder + 0.2,
            )
        )
    for u in (0.26, 0.73):
        ax.add_patch(Circle(pt(u, 0.28), 0.095 * size, facecolor="#24292f", zorder=zorder + 0.3))
        ax.add_patch(Circle(pt(u, 0.28), 0.045 * size, facecolor="#afb8c1", zorder=zorder + 0.4))
    ax.add_patch(Rectangle(pt(0.885, 0.38), 0.05 * size, 0.035 * size, facecolor="#f5d76e", zorder=zorder + 0.2))


def image_tile(
    ax: Axes,
    data: np.ndarray,
    x0: float,
    y0: float,
    size: float,
    cmap: str,
    zorder: float = 3.0,
    alpha: float = 1.0,
    frame: str = INK,
) -> None:
    """Show ``data`` in the square [x0, x0 + size] x [y0, y0 + size], framed."""
    ax.imshow(
        data,
        cmap=cmap,
        extent=(x0, x0 + size, y0, y0 + size),
        interpolation="bicubic",
        zorder=zorder,
        alpha=alpha,
        vmin=0.0,
        vmax=1.0,
    )
    ax.add_patch(
        Rectangle((x0, y0), size, size, facecolor="none", edgecolor=frame, linewidth=1.0, zorder=zorder + 0.01)
    )


def arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    color: str = INK,
    style: str = "-|>",
    linestyle: str = "-",
    width: float = 1.4,
    zorder: float = 4.0,
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=14,
            color=color,
            linewidth=width,
            linestyle=linestyle,
            zorder=zorder,
            shrinkA=0,
            shrinkB=0,
        )
    )


def conv_block(ax: Axes, x: float, y: float, w: float, h: float, depth: float, color: str) -> None:
    """A box seen slightly from above and the right: front face at (x, y), size w x h."""
    front = Rectangle((x, y), w, h, facecolor=color, edgecolor=INK, linewidth=0.9, zorder=3)
    top = Polygon(
        [(x, y + h), (x + depth, y + h + depth * 0.6), (x + w + depth, y + h + depth * 0.6), (x + w, y + h)],
        closed=True,
        facecolor=color,
        edgecolor=INK,
        linewidth=0.9,
        zorder=3,
        alpha=0.75,
    )
    side = Polygon(
        [(x + w, y), (x + w + depth, y + depth * 0.6), (x + w + depth, y + h + depth * 0.6), (x + w, y + h)],
        closed=True,
        facecolor=color,
        edgecolor=INK,
        linewidth=0.9,
        zorder=3,
        alpha=0.55,
    )
    for patch in (front, top, side):
        ax.add_patch(patch)


def weight_label(k: str) -> str:
    return rf"$w_{{{k}}}^{{c}}$"


def draw(out: Path) -> Path:
    maps = [feature_map(blobs) for _, _, blobs in UNITS]
    weights = np.array([w for _, w, _ in UNITS])
    cam = np.tensordot(weights, np.stack(maps), axes=1)  # (GRID, GRID): M_c = sum_k w_k^c f_k
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    pooled = np.array([m.mean() for m in maps])
    feature_colors = plt.get_cmap(FEATURE_CMAP)(pooled / pooled.max() * 0.8 + 0.1)

    fig = plt.figure(figsize=(13.0, 7.6), dpi=150)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 26)
    ax.set_ylim(0, 15.2)
    ax.set_aspect("equal")
    ax.set_axis_off()

    for y0, h, title in (
        (7.9, 7.0, "classification: the network as trained"),
        (0.3, 7.2, "class activation mapping: the same weights, before pooling"),
    ):
        ax.add_patch(
            FancyBboxPatch(
                (0.3, y0),
                25.4,
                h,
                boxstyle="round,pad=0,rounding_size=0.3",
                facecolor=PANEL,
                edgecolor="#d0d7de",
                linewidth=1.0,
                zorder=0,
            )
        )
        ax.text(0.7, y0 + h - 0.45, title, fontsize=11, color=MUTED, va="center", style="italic")

    # ---- top: input -> conv -> feature maps -> GAP -> weights -> class score ----
    draw_car(ax, 0.8, 9.0, 3.8)
    ax.text(2.7, 8.45, "input image", ha="center", fontsize=10.5, color=INK)
    arrow(ax, (4.8, 10.9), (5.6, 10.9))
    for i, (w, h, color) in enumerate(((0.45, 3.6, "#ddf4ff"), (0.55, 3.0, "#b6e3ff"), (0.65, 2.4, "#80ccff"))):
        x = 5.8 + i * 1.35
        conv_block(ax, x, 10.9 - h / 2, w, h, 0.45, color)
        ax.text(x + w / 2, 10.9, "CONV", ha="center", va="center", rotation=90, fontsize=8.5, color=INK, zorder=4)
    ax.text(7.3, 8.45, "convolutional layers", ha="center", fontsize=10.5, color=INK)
    arrow(ax, (9.75, 10.9), (10.55, 10.9))

    tile, step = 2.0, 0.42
    stack_x, stack_y = 10.85, 10.9 - (tile + 3 * step) / 2
    for j in reversed(range(len(UNITS))):  # painter's order: the back map first
        x, y = stack_x + j * step, stack_y + j * step
        image_tile(ax, maps[j][::-1], x, y, tile, FEATURE_CMAP, zorder=3 + 0.1 * (len(UNITS) - j))
        # Just right of the bottom-right corner: the one place no map behind covers.
        ax.text(
            x + tile + 0.06,
            y + 0.02,
            rf"$f_{{{UNITS[j][0]}}}$",
            fontsize=10.5,
            color=INK,
            va="bottom",
            ha="left",
            zorder=6,
        )
    ax.text(
        stack_x + (tile + 3 * step) / 2,
        8.45,
        r"last conv layer: $f_1, \ldots, f_n$",
        ha="center",
        fontsize=10.5,
        color=INK,
    )

    circle_x = 17.7
    circle_ys = (13.5, 12.4, 11.3, 9.4)
    arrow(ax, (15.2, 10.9), (16.9, 10.9))
    ax.text(16.05, 11.2, "GAP", ha="center", fontsize=11, fontweight="bold", color=INK)
    ax.text(16.05, 10.45, "average\nof each map", ha="center", va="top", fontsize=9, color=MUTED)
    ax.text(circle_x, 10.35, r"$\vdots$", ha="center", va="center", fontsize=14, color=INK)
    out_xy = (22.2, 11.15)
    for (k, w, _), y, color in zip(UNITS, circle_ys, feature_colors):
        ax.add_patch(Circle((circle_x, y), 0.33, facecolor=color, edgecolor=INK, linewidth=0.9, zorder=5))
        ax.plot(
            [circle_x + 0.33, out_xy[0] - 0.45],
            [y, out_xy[1]],
            color=ACCENT if w > 0 else MUTED,
            linewidth=0.8 + 1.6 * abs(w),
            zorder=4,
            solid_capstyle="round",
        )
        t = 0.3
        lx, ly = circle_x + 0.33 + t * (out_xy[0] - 0.45 - circle_x - 0.33), y + t * (out_xy[1] - y)
        ax.text(
            lx,
            ly + 0.3,
            weight_label(k),
            fontsize=12,
            ha="center",
            va="center",
            color=INK,
            zorder=6,
            bbox={"boxstyle": "round,pad=0.1", "facecolor": PANEL, "edgecolor": "none"},
        )
    ax.add_patch(Circle(out_xy, 0.45, facecolor="#ffebe9", edgecolor=ACCENT, linewidth=1.4, zorder=5))
    ax.text(*out_xy, r"$y_c$", ha="center", va="center", fontsize=12, zorder=6)
    ax.text(out_xy[0] + 0.7, out_xy[1] + 0.55, "score of class c", fontsize=10.5, color=INK, va="center")
    ax.text(out_xy[0] + 0.7, out_xy[1] - 0.05, '(e.g. "BMW M3\nCoupe 2012")', fontsize=9, color=MUTED, va="top")
    ax.text(19.9, 8.4, r"$y_c = \sum_k w_k^c \,\frac{1}{hw}\sum_{x,y} f_k(x,y)$", ha="center", fontsize=11, color=INK)

    # The weights travel down to the mapping row.
    arrow(ax, (out_xy[0], out_xy[1] - 0.5), (out_xy[0], 6.95), color=ACCENT, linestyle=(0, (4, 3)), width=1.2)
    ax.text(out_xy[0] + 0.15, 7.45, r"weights $w_k^c$ of class c", fontsize=9.5, color=ACCENT, va="center")

    # ---- bottom: w_1^c f_1 + w_2^c f_2 + ... + w_n^c f_n = M_c, laid over the input ----
    small, cam_size, y0 = 1.9, 2.6, 3.2
    term, gap, dots = 1.55, 0.3, 1.3
    row_width = len(UNITS) * (term + small + gap) + dots + 0.8 + cam_size + 1.6 + cam_size
    x = 13.0 - row_width / 2
    middle = y0 + small / 2
    for i, ((k, w, _), fmap) in enumerate(zip(UNITS, maps)):
        if i == len(UNITS) - 1:
            ax.text(x + 0.05, middle, "+", fontsize=17, ha="center", va="center", color=INK)
            ax.text(x + 0.65, middle, r"$\cdots$", fontsize=16, ha="center", va="center", color=INK)
            x += dots
        if i > 0:
            ax.text(x + 0.05, middle, "+", fontsize=17, ha="center", va="center", color=INK)
        ax.text(x + 0.9, middle, weight_label(k) + r"$\,\times$", fontsize=13, ha="center", va="center", color=INK)
        image_tile(ax, fmap[::-1], x + term, y0, small, FEATURE_CMAP)
        ax.text(
            x + term + small / 2,
            y0 - 0.35,
            rf"$f_{{{k}}}$  ($w_{{{k}}}^c={w:+.1f}$)",
            fontsize=10,
            ha="center",
            va="center",
            color=MUTED,
        )
        x += term + small + gap
    ax.text(x + 0.3, middle, "=", fontsize=19, ha="center", va="center", color=INK)
    cam_x = x + 0.8
    cam_y = middle - cam_size / 2
    image_tile(ax, cam[::-1], cam_x, cam_y, cam_size, CAM_CMAP)
    ax.text(
        cam_x + cam_size / 2,
        cam_y - 0.35,
        r"class activation map $M_c$",
        fontsize=10,
        ha="center",
        va="center",
        color=INK,
    )
    arrow(ax, (cam_x + cam_size + 0.3, middle), (cam_x + cam_size + 1.3, middle))
    over_x = cam_x + cam_size + 1.6
    draw_car(ax, over_x, cam_y, cam_size, zorder=2)
    image_tile(ax, cam[::-1], over_x, cam_y, cam_size, CAM_CMAP, zorder=3.5, alpha=0.5)
    ax.text(
        over_x + cam_size / 2,
        cam_y - 0.35,
        "upsampled onto the image",
        fontsize=10,
        ha="center",
        va="center",
        color=INK,
    )

    ax.text(13.0, 1.05, r"$M_c(x, y) = \sum_{k} w^c_k \, f_k(x, y)$", fontsize=17, ha="center", va="center", color=INK)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        # No "Software" entry: the file then depends only on what is drawn.
        fig.savefig(tmp, format=out.suffix[1:] or "png", facecolor="white", metadata={"Software": None})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the figure")
    args = parser.parse_args(argv)
    print(draw(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
