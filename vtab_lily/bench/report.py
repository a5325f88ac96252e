"""The benchmark report: sections with tables and target verdicts, rendered as markdown."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tabulate import tabulate

from .. import provenance
from ..fsutil import atomic_write_bytes
from .timing import Stats

VERSIONED = ("torch", "torchvision", "timm", "numpy", "pillow", "peft", "mambapy", "mamba-ssm")


@dataclass
class Verdict:
    """One target: what it asks, what was measured, and whether it is met (None: no target)."""

    target: str
    measured: str
    met: bool | None
    note: str = ""
    within_noise: bool = False  # the measured rounds fall on both sides of the target

    @property
    def status(self) -> str:
        if self.met is None:
            return "reported (no target)"
        if self.within_noise:
            return "WITHIN NOISE"
        return "MET" if self.met else "NOT MET"


def ratio_verdict(target: str, ratio, limit: float, at_most: bool, note: str = "") -> Verdict:
    """A verdict on a paired ratio (``timing.Stats``) against ``limit``: MET or NOT MET only when
    every round agrees, WITHIN NOISE when the rounds straddle the limit. On a shared CPU a step's
    time moves by several percent from round to round and by more between runs, so a 2-round
    median decides nothing near the limit (Lily/LoRA read 1.08x in one run and 1.21x in the next
    against 1.10): such a result is reported as what it is instead of flipping."""
    inside = (lambda r: r <= limit) if at_most else (lambda r: r >= limit)
    agree = {inside(ratio.low), inside(ratio.high)}
    noise = "" if len(agree) == 1 else (f"rounds {ratio.low:.2f}..{ratio.high:.2f} fall on both sides of "
                                        f"{limit:g}; more rounds (the full preset) decide it")
    return Verdict(target, fmt_ratio(ratio), inside(ratio.median), " ".join(filter(None, (note, noise))),
                   within_noise=len(agree) > 1)


@dataclass
class Section:
    """One numbered item of the suite."""

    number: int
    title: str
    setting: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def render(self) -> str:
        lines = [f"## {self.number}. {self.title}", ""]
        if self.setting:
            lines += [self.setting, ""]
        if self.error:
            lines += [f"**ERROR**: {self.error}", ""]
        if self.rows:
            lines += [tabulate(self.rows, headers=self.headers, tablefmt="github", disable_numparse=True), ""]
        for v in self.verdicts:
            note = f" {v.note}" if v.note else ""
            lines.append(f"- Target: {v.target}. Measured: {v.measured}. **{v.status}**.{note}")
        if self.verdicts:
            lines.append("")
        lines += [f"{note}" if note.startswith("- ") else f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        lines.append(f"_(item took {self.seconds:.0f} s)_")
        return "\n".join(lines) + "\n"


def fmt_time(stats: Stats) -> str:
    """Median with the min..max range, in ms or s."""
    if stats.median < 1.0:
        return f"{stats.median * 1e3:.1f} ms ({stats.low * 1e3:.1f}..{stats.high * 1e3:.1f}, n={stats.n})"
    return f"{stats.median:.2f} s ({stats.low:.2f}..{stats.high:.2f}, n={stats.n})"


def fmt_ratio(stats: Stats) -> str:
    return f"{stats.median:.2f}x ({stats.low:.2f}..{stats.high:.2f})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def busy_note(*loads: str) -> str | None:
    """A warning when a 1-minute load average exceeded the number of cores."""
    cores = os.cpu_count() or 1
    peaks = [float(load.split(",")[0]) for load in loads if load != "unknown"]
    if peaks and max(peaks) > cores:
        return (f"- **The machine was busy** (1-minute load up to {max(peaks):.1f} on {cores} cores): other processes "
                "competed for the CPU, so times are pessimistic and noisy; ratios of interleaved runs are more "
                "trustworthy than absolute times.")
    return None


def machine_lines(device: torch.device) -> list[str]:
    """The machine and software the figures were measured on."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}",
        f"- GPU: {gpu}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in provenance.versions(VERSIONED).items()),
        f"- vtab_lily git commit: {provenance.git_commit(short=True) or 'unknown'}",
    ]
    return lines


def render(sections: list[Section], device: torch.device, preset: str, load_start: str, load_end: str,
           started: float, total_s: float) -> str:
    """The whole report as markdown."""
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started))
    lines = [
        f"# vtab-lily performance benchmarks ({device.type})",
        "",
        f"Produced by `python -m vtab_lily.bench` ({preset} sizes) on {when}; the whole run took {total_s:.0f} s.",
        "Times are medians over interleaved repetitions after warm-up, with the min..max range and the",
        "number of repetitions n; ratios are taken per round of side-by-side runs in one process.",
        "",
        *machine_lines(device),
        f"- Load average (1, 5, 15 min) at start: {load_start}; at end: {load_end}"
        f" (other work on this machine slows every figure; ratios are less affected than times)",
        *[note for note in [busy_note(load_start, load_end)] if note],
        "",
        "## Summary",
        "",
    ]
    summary = []
    for s in sections:
        if s.error:
            summary.append([s.number, s.title, "-", f"ERROR: {s.error}", "NOT MET"])
        for v in s.verdicts:
            summary.append([s.number, s.title, v.target, v.measured, v.status])
    lines += [tabulate(summary, headers=["#", "item", "target", "measured", "status"], tablefmt="github",
                       disable_numparse=True), ""]
    for s in sections:
        lines.append(s.render())
    return "\n".join(lines)


def write_report(text: str, out_dir: str | os.PathLike, device_type: str) -> Path:
    """Write ``<out_dir>/bench-cpu.md`` (or ``bench-cuda-suite.md``: ``bench-cuda.md`` is the device
    check's report) atomically; return its path."""
    path = Path(out_dir) / ("bench-cpu.md" if device_type == "cpu" else f"bench-{device_type}-suite.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    return path
