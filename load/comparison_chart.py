"""The service against raw vLLM per workload, over all interleaved rounds of a bench.py run.

One bar per workload and measure: the median of the per-round service / raw ratios, with a
whisker from the lowest to the highest round, so a slow round shows as spread, not as a
result. A round where either target had errors at a workload and level is left out of that
bar (its label then says "2 of 3"): in round 1 of load/results-six-workloads-morning.json
the service's engine died mid-run, and figures taken while requests failed measure
failure, not speed.
Drawn with matplotlib, or Pillow when matplotlib is missing (as bench.py's latency chart
is); the ratios are computed apart from the drawing so they can be tested.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

TARGETS = ("vllm", "service")


@dataclass(frozen=True)
class Measure:
    """A closed-loop metric at the highest or the lowest concurrency, and its target ratio."""

    key: str
    name: str
    at_highest_concurrency: bool
    color: tuple[int, int, int]


MEASURES = (
    Measure("req_per_s", "throughput", True, (31, 119, 180)),
    Measure("lat_p50_ms", "latency p50", False, (255, 127, 14)),
    Measure("ttft_p50_ms", "TTFT p50", False, (44, 160, 44)),
)
THROUGHPUT_TARGET = 1.0  # the service serves at least as many requests/s as raw vLLM
LATENCY_TARGET = 1.05  # and adds at most 5% to the latency and the time to first token


@dataclass(frozen=True)
class Spread:
    """The per-round service / raw ratios of one measure: median, range, how many rounds."""

    median: float
    low: float
    high: float
    rounds: int


def workloads_chart_path(latency_chart: Path) -> Path:
    """docs/benchmarks-latency.png -> docs/benchmarks-workloads.png, in the same folder."""
    stem = latency_chart.stem.removesuffix("-latency")
    return latency_chart.with_name(f"{stem}-workloads{latency_chart.suffix}")


def complete_rounds(results: dict) -> list[dict]:
    """The rounds that measured both targets (a run with --only has none)."""
    return [one for one in results["rounds"] if all(t in one for t in TARGETS)]


def concurrency_levels(rounds: list[dict]) -> tuple[str, str]:
    """The lowest and the highest closed-loop concurrency, as the results' keys."""
    levels = {c for one in rounds for t in TARGETS
              for per_level in one[t]["closed"].values() for c in per_level}
    ordered = sorted(levels, key=int)
    return ordered[0], ordered[-1]


def ratio_spread(rounds: list[dict], workload: str, level: str, key: str) -> Spread | None:
    """Rounds where a target has no value, or had errors at that level, are left out."""
    ratios = []
    for one in rounds:
        raw, ours = (one[t]["closed"].get(workload, {}).get(level) or {} for t in TARGETS)
        if raw.get("errors") or ours.get("errors"):
            continue
        if raw.get(key) and ours.get(key):
            ratios.append(ours[key] / raw[key])
    if not ratios:
        return None
    return Spread(statistics.median(ratios), min(ratios), max(ratios), len(ratios))


def workload_ratios(results: dict) -> dict[str, dict[str, Spread]]:
    """workload -> measure key -> spread, workloads in the order the run listed them."""
    rounds = complete_rounds(results)
    if not rounds:
        return {}
    lowest, highest = concurrency_levels(rounds)
    names = dict.fromkeys(name for one in rounds for name in one["vllm"]["closed"])
    ratios = {}
    for name in names:
        spreads = {m.key: ratio_spread(rounds, name, highest if m.at_highest_concurrency
                                       else lowest, m.key) for m in MEASURES}
        ratios[name] = {key: s for key, s in spreads.items() if s is not None}
    return ratios


def measure_labels(rounds: list[dict]) -> dict[str, str]:
    lowest, highest = concurrency_levels(rounds)
    return {m.key: f"{m.name}, c={highest if m.at_highest_concurrency else lowest}"
            for m in MEASURES}


def describe_machine(machine: dict | None) -> str:
    """'host, cpus=2, omp_bind=0' from whatever results["machine"] holds."""
    if not machine:
        return ""
    return ", ".join(str(v) if k == "host" else f"{k}={v}" for k, v in machine.items())


@dataclass(frozen=True)
class Comparison:
    """What the chart shows, whichever library draws it."""

    ratios: dict[str, dict[str, Spread]]
    labels: dict[str, str]  # measure key -> legend text
    rounds: int
    machine: str

    @property
    def title(self) -> str:
        title = (f"Service / raw vLLM per workload: median of {self.rounds} interleaved "
                 "rounds, whiskers min-max")
        return f"{title}\n{self.machine}" if self.machine else title

    def value_label(self, spread: Spread) -> str:
        """The median; and how many rounds it rests on when some had no value."""
        text = f"{spread.median:.2f}"
        return text if spread.rounds == self.rounds else f"{text}\n{spread.rounds} of {self.rounds}"


def draw_workloads_chart(results: dict, path: Path) -> str | None:
    """The chart at path; the library that drew it, or None (no data or no library)."""
    ratios = workload_ratios(results)
    if not any(ratios.values()):
        return None
    rounds = complete_rounds(results)
    comparison = Comparison(ratios, measure_labels(rounds), len(rounds),
                            describe_machine(results.get("machine")))
    for draw, library in ((_draw_with_matplotlib, "matplotlib"), (_draw_with_pillow, "Pillow")):
        try:
            draw(comparison, path)
        except ImportError:
            continue
        return library
    return None


def _bar_offsets(width: float) -> list[float]:
    """Where each measure's bar sits from its workload's centre, in the same unit as width."""
    return [(i - (len(MEASURES) - 1) / 2) * width for i in range(len(MEASURES))]


def _draw_with_matplotlib(chart: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(chart.ratios)
    width = 0.8 / len(MEASURES)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(names) + 2), 4.8))
    for m, offset in zip(MEASURES, _bar_offsets(width)):
        shown = [(x, chart.ratios[name][m.key]) for x, name in enumerate(names)
                 if m.key in chart.ratios[name]]
        whiskers = [[s.median - s.low for _, s in shown], [s.high - s.median for _, s in shown]]
        bars = ax.bar([x + offset for x, _ in shown], [s.median for _, s in shown], width,
                      label=chart.labels[m.key], color=[c / 255 for c in m.color],
                      yerr=whiskers, capsize=3, error_kw={"elinewidth": 1})
        # above the whisker, not the bar: the label would sit on the whisker line
        for (_, s), bar in zip(shown, bars):
            ax.annotate(chart.value_label(s), (bar.get_x() + bar.get_width() / 2, s.high),
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.axhline(THROUGHPUT_TARGET, color="black", lw=1,
               label=f"1.0 = parity; throughput target >= {THROUGHPUT_TARGET:.1f}")
    ax.axhline(LATENCY_TARGET, color="grey", ls="--", lw=1,
               label=f"latency and TTFT target <= {LATENCY_TARGET:g}")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("service / raw vLLM")
    ax.set_ylim(0, _axis_top(chart))
    ax.set_title(chart.title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: bars stay clear
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _axis_top(chart: Comparison) -> float:
    """Room above the highest whisker for its label."""
    highs = [s.high for per in chart.ratios.values() for s in per.values()]
    return 1.15 * max([LATENCY_TARGET, *highs])


def _draw_with_pillow(chart: Comparison, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    names = list(chart.ratios)
    W, H, L, R, T, B = max(760, 90 + 140 * len(names)), 560, 60, 20, 130, 40
    ymax = _axis_top(chart)
    step = next(s for s in (0.1, 0.2, 0.25, 0.5, 1, 2, 5) if ymax / s <= 10)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=10)

    def y_px(ratio: float) -> float:
        return H - B - ratio / ymax * (H - T - B)

    d.rectangle([L, T, W - R, H - B], outline="black")
    for i in range(int(ymax / step) + 1):
        y = y_px(i * step)
        d.line([L, y, W - R, y], fill=(230, 230, 230))
        d.text((L - 6, y), f"{i * step:g}", fill="black", font=small, anchor="rm")
    d.text((L, T - 6), "service / raw vLLM", fill="black", font=small, anchor="ld")
    slot = (W - L - R) / len(names)
    width = 0.8 * slot / len(MEASURES)
    bars = [(L + (x + 0.5) * slot + offset, m, chart.ratios[name][m.key])
            for x, name in enumerate(names)
            for m, offset in zip(MEASURES, _bar_offsets(width)) if m.key in chart.ratios[name]]
    for x, name in enumerate(names):
        d.text((L + (x + 0.5) * slot, H - B + 8), name, fill="black", font=font, anchor="mt")
    for centre, m, spread in bars:
        _pillow_bar(d, centre, width, spread, m.color, y_px)
    # reference lines over the bars, value labels over the lines: each stays readable
    d.line([L, y_px(THROUGHPUT_TARGET), W - R, y_px(THROUGHPUT_TARGET)], fill="black")
    for x0 in range(L, W - R, 10):
        y = y_px(LATENCY_TARGET)
        d.line([x0, y, min(x0 + 5, W - R), y], fill=(90, 90, 90))
    for centre, _, spread in bars:
        where, text = (centre, y_px(spread.high) - 3), chart.value_label(spread)
        d.rectangle(d.multiline_textbbox(where, text, font=small, anchor="md", align="center"),
                    fill="white")
        d.multiline_text(where, text, fill="black", font=small, anchor="md", align="center")
    d.multiline_text((W / 2, 10), chart.title, fill="black", font=font, anchor="ma", align="center")
    _pillow_legend(d, font, chart.labels, L, 52)
    img.save(path)


def _pillow_bar(d, x: float, width: float, spread: Spread, color, y_px) -> None:
    d.rectangle([x - width / 2 + 1, y_px(spread.median), x + width / 2 - 1, y_px(0)], fill=color)
    top, bottom = y_px(spread.high), y_px(spread.low)
    d.line([x, top, x, bottom], fill="black")
    for y in (top, bottom):
        d.line([x - 4, y, x + 4, y], fill="black")


def _pillow_legend(d, font, labels: dict, left: int, top: int) -> None:
    x = left
    for m in MEASURES:
        d.rectangle([x, top + 2, x + 12, top + 14], fill=m.color)
        d.text((x + 18, top), labels[m.key], fill="black", font=font)
        x += 40 + d.textlength(labels[m.key], font=font)
    y = top + 24
    d.line([left, y + 8, left + 24, y + 8], fill="black")
    parity = f"1.0 = parity; throughput target >= {THROUGHPUT_TARGET:.1f}"
    d.text((left + 30, y), parity, fill="black", font=font)
    x = left + 70 + d.textlength(parity, font=font)
    for x0 in (x, x + 10, x + 20):
        d.line([x0, y + 8, x0 + 5, y + 8], fill=(90, 90, 90))
    d.text((x + 30, y), f"latency and TTFT target <= {LATENCY_TARGET:g}", fill="black", font=font)
