"""Pictures of crowdtk's artifacts, as PNG files (the paper's Fig. 4, 5 and 6).

* :func:`show_regions`: an image with its selected (or labeled) regions outlined in red,
  as the paper draws strips (Fig. 5: "labeled regions are enclosed between two red
  lines"); with a warm-up checkpoint, its predicted density under the image.
* :func:`show_prediction`: the image, its ground-truth density and a counter's predicted
  density side by side, with both counts (Fig. 6).
* :func:`show_affinity`: CAP's affinity maps between chosen labeled positions and the
  unlabeled positions of an image (Fig. 5), for a checkpoint trained with ``--cap``.
* :func:`show_budget`: MAE against the labeling budget, one line per method (Fig. 4),
  from a bench ``results.json``.

Each function writes one PNG atomically and returns the id of the image it drew (the
budget plot returns None). Drawing uses matplotlib's object-oriented API on the Agg
canvas (no pyplot, no display, no global state), and never prints. Images are drawn in
their own pixel coordinates (``extent``), so regions, points and density maps at the
model's stride line up whatever the display resolution; large images are shrunk before
drawing, so a 4000×3000 photo costs what a 1600×1200 one does.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.files import StrPath, atomic_path
from crowdtk.formats import (
    BENCH_RESULTS,
    LABELS,
    REGIONS,
    LabelsEntry,
    Region,
    RegionsEntry,
    peek_format,
    read_json,
    read_labels,
    read_manifest,
    read_regions,
)
from crowdtk.predict_config import PredictConfig


def _writable_matplotlib_config() -> None:
    """Give matplotlib a private, writable MPLCONFIGDIR (a temporary folder, removed at exit) when the folders it would
    use are not writable (HOME unwritable or absent, as under some service accounts and containers).

    matplotlib then makes a temporary folder itself, but also prints a warning on stderr, which no crowdtk
    option can silence: ``show -q`` must print nothing. Runs before matplotlib is imported (it reads the
    variable once); a variable the user set is left alone."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    home = Path(os.path.expanduser("~"))
    folders = [
        Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib",
        Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib",
    ]
    if all(_writable_folder(folder) for folder in folders):
        return
    private = tempfile.mkdtemp(prefix="crowdtk-matplotlib-")
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = private


def _writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)  # matplotlib would make it too
    except OSError:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK)


_writable_matplotlib_config()

DPI = 100
PANEL_WIDTH = 8.0  # inches: one picture across
DRAW_SIDE = 1600  # images are shrunk to at most this many pixels on their longer side before drawing
RED = "#ff0000"


# --------------------------------------------------------------------------- drawing helpers


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, out: StrPath) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _save_drawing(fig: Any, out: StrPath, entry: Any) -> str:
    """Save ``fig``, a drawing of one entry's image, and return that image's id (what every show_* returns)."""
    _save(fig, out)
    return entry.id


def _for_drawing(image: np.ndarray, side: int = DRAW_SIDE) -> np.ndarray:
    """The image shrunk (area interpolation) so its longer side is at most ``side``."""
    import cv2

    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    return cv2.resize(
        image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )


def _show_image(ax: Any, image: np.ndarray, width: int, height: int) -> None:
    """Draw an RGB image in its own pixel coordinates (x right, y down)."""
    ax.imshow(_for_drawing(image), extent=(0, width, height, 0), interpolation="antialiased")
    _frame(ax, width, height)


def _frame(ax: Any, width: int, height: int) -> None:
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _show_cells(
    ax: Any, cells: np.ndarray, cell_w: float, cell_h: float, width: int, height: int, cmap: Any, **kwargs: Any
) -> Any:
    """Draw a stride-grid map whose cells are ``cell_w``×``cell_h`` image pixels, cut to the image, smoothed
    (bilinear); its colour scale runs from 0 to the map's maximum unless ``vmin``/``vmax`` say otherwise."""
    rows, cols = cells.shape
    kwargs.setdefault("vmin", 0)
    kwargs.setdefault("vmax", max(float(cells.max()), 1e-6))
    shown = ax.imshow(cells, extent=(0, cols * cell_w, rows * cell_h, 0), cmap=cmap, interpolation="bilinear", **kwargs)
    _frame(ax, width, height)
    return shown


def _colorbar(fig: Any, shown: Any, ax: Any, **kwargs: Any) -> Any:
    """A horizontal colour bar under ``ax`` with a few ticks, so narrow panels stay legible."""
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(shown, ax=ax, location="bottom", **kwargs)
    bar.ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    return bar


def _is_strip(region: Region, height: int) -> bool:
    return region.y0 == 0 and region.y1 == height


def _draw_regions(ax: Any, regions: Sequence[Region], height: int, linewidth: float = 1.6) -> None:
    """Red outlines: two full-height vertical lines per strip (the paper's way), rectangles otherwise."""
    from matplotlib.patches import Rectangle

    for region in regions:
        if _is_strip(region, height):
            for x in (region.x0, region.x1):
                ax.axvline(x, color=RED, linewidth=linewidth)
        else:
            ax.add_patch(
                Rectangle(
                    (region.x0, region.y0),
                    region.x1 - region.x0,
                    region.y1 - region.y0,
                    fill=False,
                    edgecolor=RED,
                    linewidth=linewidth,
                )
            )


def _area_share(regions: Sequence[Region], width: int, height: int) -> float:
    covered = np.zeros((height, width), dtype=bool) if width * height <= 64_000_000 else None
    if covered is None:  # a huge image: regions from crowdtk never overlap, so their areas add up
        return min(1.0, sum(r.area for r in regions) / (width * height))
    for r in regions:
        covered[r.y0 : r.y1, r.x0 : r.x1] = True
    return float(covered.mean())


def _pick(entries: Sequence[Any], image_id: str | None, source: str, default: Any = None) -> Any:
    """The entry with ``image_id``, or ``default`` (the caller's choice) when no id is given."""
    if image_id is None:
        if default is None:
            raise CrowdtkError(f"{source}: no image to draw", "pass a file with at least one image (with regions)")
        return default
    for entry in entries:
        if entry.id == image_id:
            return entry
    known = ", ".join(e.id for e in entries[:5]) + (f", … ({len(entries)} images)" if len(entries) > 5 else "")
    raise CrowdtkError(
        f"{source}: no image '{image_id}'",
        f"pass --image with one of its ids: {known}" if entries else "the file lists no images",
    )


def _read_entry_image(entry: Any) -> np.ndarray:
    from crowdtk.data import read_recorded_image

    return read_recorded_image(entry)


def _panel_width(width: int, height: int, wanted: float, max_height: float = 9.0) -> float:
    """Panel width in inches: ``wanted``, narrower for tall images so a panel is at most ``max_height`` tall."""
    return min(wanted, max_height * width / height)


def _height_for(width: int, height: int, panel_width: float, rows: int = 1, extra: float = 0.5) -> float:
    """Figure height in inches for ``rows`` panels of an image drawn ``panel_width`` inches wide, plus titles."""
    return rows * (panel_width * height / width + extra)


# --------------------------------------------------------------------------- Fig. 5 (regions) and the warm-up density


def show_regions(
    out: StrPath,
    selection: StrPath,
    image_id: str | None = None,
    checkpoint: StrPath | None = None,
    max_side: int = PredictConfig.max_side,
) -> str:
    """Draw one image of a regions or labels file with its regions outlined in red; return the image id.

    Strips (full height) get two red vertical lines at ``x0`` and ``x1``; bands and blocks
    red rectangles. A labels file's head points are small dots. With ``checkpoint``, a
    second panel shows that counter's predicted density (same width, same red lines, the
    predicted count in its title). The default image is the first one with regions.
    """
    kind = peek_format(selection)
    entries: Sequence[RegionsEntry | LabelsEntry]
    if kind == REGIONS:
        _, entries = read_regions(selection)
    elif kind == LABELS:
        _, entries = read_labels(selection)
    else:
        found = f"a '{kind}' artifact" if kind else "not a crowdtk artifact"
        raise CrowdtkError(
            f"{selection}: is {found}, expected regions or labels",
            "pass a regions file from 'crowdtk select' or a labels file from 'crowdtk import'",
        )
    entry = _pick(entries, image_id, str(selection), next((e for e in entries if e.regions), None))
    image = _read_entry_image(entry)
    width, height = entry.width, entry.height
    share = _area_share(entry.regions, width, height)
    title = (
        f"{entry.id}: {len(entry.regions)} "
        f"region{'s' if len(entry.regions) != 1 else ''}, {share:.1%} of the area selected"
    )
    if isinstance(entry, RegionsEntry):
        title += f" ({entry.strategy})"
    if isinstance(entry, LabelsEntry):
        title += f", {len(entry.points)} head{'s' if len(entry.points) != 1 else ''} labeled"

    rows = 2 if checkpoint is not None else 1
    panel = _panel_width(width, height, PANEL_WIDTH)
    fig = _figure(PANEL_WIDTH, _height_for(width, height, panel, rows))
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    _show_image(axes[0], image, width, height)
    _draw_regions(axes[0], entry.regions, height)
    if isinstance(entry, LabelsEntry) and len(entry.points):
        size = 20 if len(entry.points) < 300 else 8
        axes[0].scatter(
            entry.points[:, 0], entry.points[:, 1], s=size, c="#ffff00", edgecolors="black", linewidths=0.4, zorder=3
        )
    axes[0].set_title(title, fontsize=11)

    if checkpoint is not None:
        from crowdtk.geometry import STRIDE
        from crowdtk.predict import Predictor, load_counter

        predictor = Predictor(load_counter(checkpoint), max_side=max_side)
        density, sx, sy = predictor.density(image)
        shown = _show_cells(axes[1], density, STRIDE / sx, STRIDE / sy, width, height, cmap="viridis")
        _draw_regions(axes[1], entry.regions, height)
        # A horizontal colour bar under the map keeps both panels the same width.
        _colorbar(
            fig,
            shown,
            axes[1],
            shrink=0.5,
            aspect=40,
            pad=0.01,
            label=f"predicted heads per {STRIDE / sx:.3g}×{STRIDE / sy:.3g}-pixel cell",
        )
        axes[1].set_title(
            f"{Path(checkpoint).name}: predicted count {float(density.sum(dtype=np.float64)):.1f}", fontsize=11
        )
    return _save_drawing(fig, out, entry)


# --------------------------------------------------------------------------- Fig. 6: ground truth and prediction


def show_prediction(
    out: StrPath,
    checkpoint: StrPath,
    manifest: StrPath,
    image_id: str | None = None,
    max_side: int = PredictConfig.max_side,
) -> str:
    """Draw the image, its ground-truth density and the predicted density side by side; return the image id.

    Both maps are in heads per 8×8 pixels of the original image, so they compare cell for
    cell whatever ``--scale`` the counter was trained at; each has its own colour bar.
    """
    from crowdtk.data import read_points_on_image
    from crowdtk.density import DensityConfig, density_map
    from crowdtk.geometry import STRIDE
    from crowdtk.predict import Predictor, load_counter

    _, entries = read_manifest(manifest)
    entry = _pick(entries, image_id, str(manifest), entries[0] if entries else None)
    image = _read_entry_image(entry)
    width, height = entry.width, entry.height
    points, _ = read_points_on_image(entry.points, width, height, entry.points_sha256)
    truth = density_map(points, height, width, DensityConfig(stride=STRIDE))
    predictor = Predictor(load_counter(checkpoint), max_side=max_side)
    density, sx, sy = predictor.density(image)
    predicted = float(density.sum(dtype=np.float64))
    # A model cell covers (8/sx)×(8/sy) original pixels, so its heads per 8×8 original pixels are its
    # count times sx·sy (dividing, as before, drew a --scale 0.5 counter's map 16× too high).
    density_per_cell = density * (sx * sy)

    panel = _panel_width(width, height, 5.0, max_height=6.0)
    fig = _figure(3 * panel, _height_for(width, height, panel, extra=1.2))
    axes = fig.subplots(1, 3)
    _show_image(axes[0], image, width, height)
    axes[0].set_title(f"{entry.id} ({width}×{height})", fontsize=12)
    maps = (
        (axes[1], truth, float(STRIDE), float(STRIDE), f"Ground truth: {len(points)}"),
        (axes[2], density_per_cell, STRIDE / sx, STRIDE / sy, f"Predicted: {predicted:.1f}"),
    )
    for ax, cells, cell_w, cell_h, title in maps:
        # Each map on its own scale (a count far off would otherwise leave one map black);
        # both in the same unit, so the colour bars compare them.
        shown = _show_cells(ax, cells, cell_w, cell_h, width, height, cmap="jet")
        ax.set_title(title, fontsize=12)
        _colorbar(fig, shown, ax, shrink=0.8, aspect=30, pad=0.02, label="heads per 8×8 pixels")
    # An invisible bar under the image keeps the three panels the same size.
    _colorbar(fig, shown, axes[0], shrink=0.8, aspect=30, pad=0.02, label=" ").ax.set_visible(False)
    return _save_drawing(fig, out, entry)


# --------------------------------------------------------------------------- Fig. 5: CAP's affinity maps


def show_affinity(
    out: StrPath, checkpoint: StrPath, labels: StrPath, image_id: str | None = None, positions: int = 2
) -> str:
    """Draw CAP's affinity maps (Fig. 5) for one partly labeled image; return the image id.

    ``checkpoint`` must carry CAP (written by ``train --cap``, before ``strip-cap``). The
    features are the counter's last feature map of the whole image; ``positions`` labeled
    positions are chosen by :func:`crowdtk.affinity.choose_positions`. Panels: the image with the red
    region lines and the numbered positions, then "Affinity map #k" for each position,
    upsampled to the image (labeled positions have no affinity and are drawn grey). The
    affinities are of the form the checkpoint was trained with; the titles name an extension's
    form and temperature (nothing for the paper's).
    """
    from crowdtk.affinity import image_affinities

    _, entries = read_labels(labels)
    partly = next((e for e in entries if e.regions and _area_share(e.regions, e.width, e.height) < 1.0), None)
    entry = _pick(entries, image_id, str(labels), partly)
    if not entry.regions or _area_share(entry.regions, entry.width, entry.height) >= 1.0:
        raise CrowdtkError(
            f"{labels}: image '{entry.id}' is "
            f"{'not labeled' if not entry.regions else 'fully labeled'}, so CAP has no affinities to show",
            "pass --image with a partly labeled image (strips)",
        )
    found = image_affinities(checkpoint, entry, positions, str(labels))
    chosen, maps = found.positions, found.maps

    image = _read_entry_image(entry)
    width, height = entry.width, entry.height
    cell_w, cell_h = _cell_size(width, height, found.scale)
    marks = [((c + 0.5) * cell_w, (r + 0.5) * cell_h) for r, c in chosen]

    panels = len(chosen) + 1
    cols = min(panels, 3)
    grid_rows = -(-panels // cols)
    panel = _panel_width(width, height, 4.0, max_height=5.0)
    fig = _figure(cols * panel + 0.6, _height_for(width, height, panel, grid_rows, extra=0.6))
    axes = fig.subplots(grid_rows, cols, squeeze=False).ravel()
    _show_image(axes[0], image, width, height)
    _draw_regions(axes[0], entry.regions, height)
    _mark(axes[0], marks, width, height)
    axes[0].set_title(f"{entry.id}: input image", fontsize=11)
    labeled = np.broadcast_to(found.mask, maps.shape[1:])
    # The maps are of the form training used; an extension (not the paper's Eq. 9) says so in the titles.
    form = "" if found.affinity == "paper" else f" ({found.affinity}, τ = {found.temperature:g})"
    for k, (values, mark) in enumerate(zip(maps, marks), start=1):
        ax = axes[k]
        shown = np.ma.masked_where(labeled, values)
        _show_cells(
            ax,
            shown,
            cell_w,
            cell_h,
            width,
            height,
            cmap=_jet_with_grey(),
            vmin=float(shown.min()),
            vmax=float(shown.max()),
        )
        _draw_regions(ax, entry.regions, height, linewidth=1.0)
        _mark(ax, [mark], width, height, first=k)
        ax.set_title(f"Affinity map #{k}{form}", fontsize=11)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return _save_drawing(fig, out, entry)


def _cell_size(width: int, height: int, scale: float) -> tuple[float, float]:
    """One stride-8 cell of the model's map in original pixels (as ``geometry.resize_for_model`` resizes)."""
    from crowdtk.geometry import STRIDE, model_size

    return STRIDE * width / model_size(width, scale), STRIDE * height / model_size(height, scale)


def _jet_with_grey() -> Any:
    from matplotlib import colormaps

    return colormaps["jet"].with_extremes(bad="#b0b0b0")


def _mark(ax: Any, marks: Sequence[tuple[float, float]], width: int, height: int, first: int = 1) -> None:
    """Numbered markers: a white ring with a black edge, the number beside it on the side facing the image's centre."""
    for k, (x, y) in enumerate(marks, start=first):
        for edge, edge_width, zorder in (("white", 2.5, 4), ("black", 1.0, 5)):  # a thin black ring on a wide white one
            ax.plot(
                [x],
                [y],
                marker="o",
                markersize=11,
                markerfacecolor="none",
                markeredgecolor=edge,
                markeredgewidth=edge_width,
                zorder=zorder,
            )
        right, below = x < 0.7 * width, y < 0.5 * height
        ax.annotate(
            f"{k}",
            (x, y),
            xytext=(8 if right else -8, -8 if below else 8),
            textcoords="offset points",
            ha="left" if right else "right",
            va="top" if below else "bottom",
            fontsize=11,
            fontweight="bold",
            color="black",
            zorder=6,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "black", "linewidth": 0.6},
        )


# --------------------------------------------------------------------------- Fig. 4: MAE against the budget


def show_budget(out: StrPath, results: StrPath) -> None:
    """Plot MAE (mean ± std over seeds) against the labeling budget, one line per method (strip rows only).

    Budgets at most 1 are fractions of the pool's area and are shown in percent; larger
    ones are taken as percent already.
    """
    doc = read_json(results, BENCH_RESULTS)
    rows = doc.get("results")
    if not isinstance(rows, list):
        raise CrowdtkError(f"{results}: no 'results' list", "regenerate it with crowdtk bench")
    series: dict[str, list[tuple[float, float, float, int]]] = {}
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CrowdtkError(f"{results}: results[{n}] is not an object", "regenerate it with crowdtk bench")
        if row.get("shape", "strip") != "strip":
            continue
        try:
            method = str(row["method"])
            budget = float(row["budget"])
            mean = float(row["mae"]["mean"])
            std = float(row["mae"].get("std", 0.0) or 0.0)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CrowdtkError(
                f"{results}: results[{n}] lacks method, budget or mae.mean", "regenerate it with crowdtk bench"
            ) from None
        seeds = row.get("seeds")
        series.setdefault(method, []).append((budget, mean, std, len(seeds) if isinstance(seeds, list) else 0))
    if not series:
        raise CrowdtkError(
            f"{results}: no results for strip regions", "run crowdtk bench with --shape strip (the paper's shape)"
        )
    budgets = sorted({b for points in series.values() for b, *_ in points})
    percent = 100.0 if max(budgets) <= 1 else 1.0
    xs = [b * percent for b in budgets]

    fig = _figure(PANEL_WIDTH, 5.0)
    ax = fig.subplots()
    markers = "osD^vP*Xh<>"
    log_x = len(xs) > 1 and xs[-1] / xs[0] >= 4
    for i, (method, points) in enumerate(series.items()):
        points.sort()
        seeds = {s for *_, s in points}
        label = method + (f" ({seeds.pop()} seeds)" if len(seeds) == 1 and min(seeds) > 1 else "")
        # Methods are nudged apart along x (by under 2% of a budget) so their error bars do not overlap.
        nudge = 0.012 * (i - (len(series) - 1) / 2)
        at = [
            b * percent * (1 + nudge) if log_x or len(xs) == 1 else b * percent + nudge * (xs[-1] - xs[0])
            for b, *_ in points
        ]
        ax.errorbar(
            at,
            [m for _, m, _, _ in points],
            yerr=[s for _, _, s, _ in points],
            marker=markers[i % len(markers)],
            markersize=6,
            capsize=4,
            linewidth=1.6,
            label=label,
        )
    if log_x:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}%" for x in xs])
    if len(xs) == 1:
        ax.set_xlim(xs[0] * 0.5, xs[0] * 1.5)
    ax.set_xlabel("labeling budget (% of the training pool's area)")
    ax.set_ylabel("MAE (mean ± std over seeds)")
    ax.set_title(f"MAE against labeling budget, strip regions ({Path(results).name})", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, out)
    return None


__all__ = ["show_affinity", "show_budget", "show_prediction", "show_regions"]
