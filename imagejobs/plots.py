"""Charts as PNG bytes, drawn with matplotlib's Agg backend in memory.

Each chart has its own Figure (never pyplot's global state), is drawn into a BytesIO and dropped,
so thousands of plots leave memory flat and no two jobs share a figure.
"""

import io
from collections import Counter

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SIZE_INCHES, DPI = (10, 6), 100  # 1000 x 600 pixels
CHANNEL_COLOURS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4", "luminance": "#444444"}


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _figure(title: str):
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    # Fixed margins: matplotlib's constrained layout would double the time to draw a chart.
    figure.subplots_adjust(left=0.09, right=0.97, bottom=0.1, top=0.92)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return figure, axes


def histogram_png(source: str, counts: dict[str, list[int]]) -> bytes:
    """The histogram of one image: counts maps a channel (red, green, blue, or luminance) to 256 counts."""
    figure, axes = _figure(f"Histogram of {source}")
    for channel, values in counts.items():
        axes.fill_between(range(256), values, step="mid", alpha=0.35, color=CHANNEL_COLOURS[channel])
        axes.plot(range(256), values, drawstyle="steps-mid", color=CHANNEL_COLOURS[channel], label=channel, linewidth=1)
    axes.set_xlim(0, 255)
    axes.set_xlabel("pixel value (0-255)")
    axes.set_ylabel("number of pixels")
    if len(counts) > 1:
        axes.legend()
    return _png(figure)


def sizes_png(source: str, sizes: list[dict], unreadable: int) -> bytes:
    """A width x height scatter of images, one colour per format; sizes holds {"width", "height", "format"}."""
    plural = "s" * (len(sizes) != 1)
    figure, axes = _figure(
        f"Sizes of {len(sizes)} image{plural} in {source}"
        + (f" ({unreadable} unreadable file{'s' * (unreadable != 1)} left out)" if unreadable else "")
    )
    by_format = Counter(size["format"] for size in sizes)
    for image_format in sorted(by_format):
        points = [size for size in sizes if size["format"] == image_format]
        axes.scatter(
            [p["width"] for p in points],
            [p["height"] for p in points],
            alpha=0.7,
            label=f"{image_format} ({by_format[image_format]})",
        )
    axes.set_xlabel("width (pixels)")
    axes.set_ylabel("height (pixels)")
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    if len(by_format) > 1:
        axes.legend(title="format")
    return _png(figure)
