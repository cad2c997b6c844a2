"""Draw bench/results.jsonl as docs/bench.png: the latest run of each bench, its figures as bars of value vs baseline.

    python bench/plot.py [--results bench/results.jsonl] [--out docs/bench.png]

One panel per bench and unit (a bench with figures in ms and in images/s gets two), each a pair of
bars per figure: the value (blue) and its baseline (grey), with the numbers on them; a dashed line
marks a target where the bench has one. Each panel's title names the bench, its date, commit, the
cores and the load average at the end of the run. matplotlib's Agg backend, 2000x1300 pixels.
Benches it does not know (corpus) are left out. It prints one line per panel and writes no results line.
"""

import argparse
import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, log  # noqa: E402

VALUE_COLOUR, BASELINE_COLOUR, TARGET_COLOUR = "#1f6fb4", "#a9a9a9", "#d62728"


def panel(title, unit, pairs, value_name, baseline_name, target=None, note=None):
    """pairs: [(label, value, baseline)]; target: (y, label) or None."""
    return {
        "title": title,
        "unit": unit,
        "pairs": [p for p in pairs if p[1] is not None],
        "names": (value_name, baseline_name),
        "target": target,
        "note": note,
    }


def met(flag) -> str:
    return "met" if flag else "MISSED"


def thumbnails(f):
    return [
        panel(
            "thumbnails: images/s",
            "images/s",
            [
                ("(b) Pool vs (a) one process", f["b_images_per_s"], f["a_images_per_s"]),
                ("(c) service vs (b) Pool", f["c_images_per_s"], f["b_images_per_s"]),
            ],
            "value",
            "baseline",
            note=f"c/b = {f['c_over_b']:.2f}, target >= {f['target_c_over_b']}: {met(f['target_met'])}",
        )
    ]


def job_overhead(f):
    return [
        panel(
            "job_overhead: size job submit->result",
            "ms",
            [(f"p{q}", f[f"service_p{q}_ms"], f[f"bare_p{q}_ms"]) for q in (50, 95, 99)],
            "service",
            "bare RQ",
            target=(f["target_p50_ms"], f"target p50 <= {f['target_p50_ms']:g} ms: {met(f['target_p50_met'])}"),
        ),
        panel(
            "job_overhead: size jobs/s",
            "jobs/s",
            [(f"{f['concurrency']} clients", f["service_jobs_per_s"], f["bare_jobs_per_s"])],
            f"service ({f['service_workers']} workers)",
            f"bare RQ ({f['bare_workers']} worker)",
            note=f"target >= {f['target_jobs_per_s']:g} jobs/s: {met(f['target_jobs_per_s_met'])} "
            f"({f['service_jobs_per_s']:.0f})",
        ),
    ]


def classify(f):
    return [
        panel(
            "classify: one warm job submit->result",
            "ms",
            [
                ("p50", f["service_p50_ms"], f["in_process_p50_ms"]),
                ("p95", f["service_p95_ms"], f["in_process_p95_ms"]),
                ("in the worker (p50)", f["service_execution_to_returned_ms_p50"], f["in_process_p50_ms"]),
            ],
            "service",
            "in-process",
            target=(f["aim_p50_ms"], f"aim p50 <= {f['aim_p50_ms']:g} ms: {met(f['aim_p50_met'])}"),
        ),
        panel(
            f"classify: folder of {f['folder_images']}",
            "images/s",
            [
                (f"median of {f['repeat']}", f["service_images_per_s"], f["in_process_images_per_s"]),
                (f"best of {f['repeat']}", f.get("service_best_images_per_s"), f.get("in_process_best_images_per_s")),
            ],
            "service (1 classify worker)",
            "in-process",
            target=(
                f["aim_images_per_s"],
                f"aim >= {f['aim_images_per_s']:g} images/s: {met(f['aim_images_per_s_met'])}",
            ),
        ),
    ]


def memory(f):
    early, last = f["rss_mb_early"], f["rss_mb_last"]
    labels = [
        k
        for k in last
        if k in early and (k.startswith(("image worker", "classifier", "redis")) or k.startswith("api ("))
    ]
    return [
        panel(
            f"memory: RSS after {f['images']} vs after {f['early_images']} thumbnails",
            "MB",
            [(k.replace(" (master + workers)", "\n(master + workers)"), last[k], early[k]) for k in labels],
            f"after {f['images']}",
            f"after {f['early_images']}",
            note=(
                f"worst growth {f['worst_growth_pct']:+.1f}%, "
                f"target <= {f['target_growth_pct']:g}%: {met(f['target_met'])}"
            ),
        )
    ]


def api_load(f):
    return [
        panel(
            f"api_load: requests/s, {f['clients']} clients ({f['client']})",
            "requests/s",
            [
                ("enqueue\nvs health", f["enqueue_requests_per_s"], f["health_requests_per_s"]),
                ("workers' jobs/s\nvs enqueue", f.get("workers_drain_jobs_per_s"), f["enqueue_requests_per_s"]),
            ],
            "value",
            "baseline",
            note=f"errors: enqueue {sum(f['enqueue_errors'].values())}, health {sum(f['health_errors'].values())}",
        ),
        panel(
            "api_load: latency",
            "ms",
            [("p50", f["enqueue_p50_ms"], f["health_p50_ms"]), ("p99", f["enqueue_p99_ms"], f["health_p99_ms"])],
            "GET /imageapi",
            "GET /health",
        ),
    ]


def stress(f):
    start, end = f["rss_mb_start"], f["rss_mb_end"]
    labels = [k for k in end if k in start and k not in ("api master", "run.py") and not k.startswith("api worker")]
    errors = sum(f["errors"].values())
    return [
        panel(
            f"stress: RSS at end vs start ({f['clients']} clients, {f['seconds']:g} s)",
            "MB",
            [(k.replace(" (master + workers)", "\n(master + workers)"), end[k], start[k]) for k in labels],
            "end",
            "start",
            note=f"{f['requests']} requests, {errors} errors, {f['jobs_lost']} lost jobs",
        ),
        panel(
            "stress: submit->result",
            "ms",
            [("p50", f["single_p50_ms"], f["batch_p50_ms"]), ("p99", f["single_p99_ms"], f["batch_p99_ms"])],
            "single-image job",
            "5-image batch (not a baseline)",
            note=f"{f['jobs_per_s']:.0f} jobs/s; {sum(f['jobs'].values())} jobs ended",
        ),
    ]


def peers(f):
    kinds = (("batch", "service, folder batch"), ("single", f"service, single + wait, {f['clients']} clients"))
    return [
        panel(
            f"peers: images/s, best of {f['rounds']} ({f['images']} x {f['image_size']} -> 100 px)",
            "images/s",
            [(label, f[f"{kind}_best_images_per_s"], f["thumbor_best_images_per_s"]) for kind, label in kinds]
            + [("floor (Pillow, one process a core)", f["floor_best_images_per_s"], None)],
            "value",
            f"thumbor {f['thumbor_version']}",
        ),
        panel(
            "peers: CPU per image, median round (lower is better)",
            "ms",
            [
                (label, f[f"{kind}_median_cpu_ms_per_image"], f["thumbor_median_cpu_ms_per_image"])
                for kind, label in kinds
            ]
            + [("floor", f["floor_median_cpu_ms_per_image"], None)],
            "value",
            f"thumbor {f['thumbor_version']}",
        ),
    ]


def reuse(f):
    return [
        panel(
            f"reuse: a folder of {f['images']} submitted again",
            "s",
            [
                ("unchanged re-run vs first run", f["again_s"], f["first_s"]),
                (
                    f"{f['new_images']} new vs share of first + re-run",
                    f["new_s"],
                    f["new_images"] / f["images"] * f["first_s"] + f["again_s"],
                ),
            ],
            "value",
            "baseline",
            note=f"first / re-run = {f['first_over_again']:.1f}, target >= {f['target_first_over_again']}: "
            f"{met(f['target_met'])}",
        )
    ]


PANELS = {
    "thumbnails": thumbnails,
    "peers": peers,
    "reuse": reuse,
    "job_overhead": job_overhead,
    "classify": classify,
    "memory": memory,
    "api_load": api_load,
    "stress": stress,
}


def latest(results: Path) -> dict:
    runs = {}
    for line in results.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            runs[record["bench"]] = record  # the file is in time order: the last line of a bench wins
    return runs


def number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def draw(ax, spec, record):
    pairs = spec["pairs"]
    xs = range(len(pairs))
    width = 0.38
    values = [p[1] for p in pairs]
    baselines = [p[2] for p in pairs]
    bars = ax.bar([x - width / 2 for x in xs], values, width, color=VALUE_COLOUR, label=spec["names"][0])
    have_baseline = [b is not None for b in baselines]
    if any(have_baseline):
        base_bars = ax.bar(
            [x + width / 2 for x, b in zip(xs, baselines) if b is not None],
            [b for b in baselines if b is not None],
            width,
            color=BASELINE_COLOUR,
            label=spec["names"][1],
        )
        ax.bar_label(base_bars, labels=[number(b) for b in baselines if b is not None], fontsize=8, padding=2)
    ax.bar_label(bars, labels=[number(v) for v in values], fontsize=8, padding=2)
    if spec["target"]:
        y, text = spec["target"]
        ax.axhline(y, color=TARGET_COLOUR, linestyle="--", linewidth=1.2, label=text)
    top = max([v for v in values + baselines if v is not None] + [spec["target"][0] if spec["target"] else 0])
    ax.set_ylim(0, top * 1.4 or 1)  # room for the legend and the note above the bars
    ax.set_xticks(
        list(xs), ["\n".join(textwrap.fill(part, 11) for part in p[0].split("\n")) for p in pairs], fontsize=8
    )
    ax.set_ylabel(spec["unit"])
    when = record["date"][:16].replace("T", " ")
    load = record["figures"].get("loadavg_1m_at_end")
    ax.set_title(
        "\n".join(
            [
                textwrap.fill(spec["title"], 48),
                f"{when} UTC, {record['commit']}{'+' if record.get('worktree_dirty') else ''}, "
                f"{record['cores']} cores, load {load:.1f}"
                if load is not None
                else when,
            ]
        ),
        fontsize=9.5,
    )
    ax.legend(fontsize=7.5, loc="upper right", framealpha=0.9)
    if spec["note"]:
        ax.text(
            0.02,
            0.97,
            textwrap.fill(spec["note"], 50),
            transform=ax.transAxes,
            fontsize=8,
            va="top",
            bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9},
        )
    ax.grid(axis="y", alpha=0.3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results log (default bench/results.jsonl)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "bench.png", help="the PNG (default docs/bench.png)"
    )
    args = parser.parse_args(argv)
    runs = latest(args.results)
    specs = []
    for bench, make in PANELS.items():
        if bench in runs:
            try:
                specs += [(spec, runs[bench]) for spec in make(runs[bench]["figures"]) if spec["pairs"]]
            except (KeyError, TypeError) as exc:  # an older record without a figure this draws
                log(f"{bench}: left out, its latest record lacks {exc}")
    skipped = sorted(set(runs) - set(PANELS))
    if skipped:
        log(f"not drawn (no panel for them): {', '.join(skipped)}")
    if not specs:
        log("nothing to draw")
        return 1
    columns = 4
    rows = -(-len(specs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(20, 4.6 * rows + 0.6), dpi=100, squeeze=False)
    for ax, (spec, record) in zip(axes.flat, specs):
        draw(ax, spec, record)
        print(
            f"{spec['title']}: "
            + ", ".join(
                f"{label.replace(chr(10), ' ')} {number(value)}"
                + (f" vs {number(baseline)}" if baseline is not None else "")
                for label, value, baseline in spec["pairs"]
            )
        )
    for ax in list(axes.flat)[len(specs) :]:
        ax.axis("off")
    fig.suptitle("Benchmarks of the image job service: the latest run of each (bench/results.jsonl)", fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)
    log(f"wrote {args.out} ({fig.get_figwidth() * fig.dpi:.0f}x{fig.get_figheight() * fig.dpi:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
