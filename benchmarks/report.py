"""Turn the benchmark's measurements into one table of rows, each with its target and verdict.

A ladder's sustained rate is the highest *achieved* send rate of a step that
lost at most the loss threshold.  When the best step fell short of its offered
rate, or every step passed, the true figure may be higher: the value is a lower
bound (shown with ``>=``).  When no step passed it is an upper bound (``<``).
Verdicts on bounds are only given when the bound decides them; otherwise the
row says INCONCLUSIVE.
"""

from __future__ import annotations

PASS, FAIL, INFO, INCONCLUSIVE, NA = "PASS", "FAIL", "info", "INCONCLUSIVE", "n/a"
RECEIVER_ORDER = ("twisted-statsd", "etsy-statsd", "ceiling", "recv-only")
TRANSPORT_ORDER = ("udp", "unixgram", "unixstream")


def summarize(steps: list[dict], rates: list[float], transport: str) -> dict:
    """The sustained rate of one ladder, whether it is a bound, and what limited it."""
    passed = [s for s in steps if s["passed"]]
    best = max(passed, key=lambda s: s["achieved_rate"]) if passed else None
    above = [s for s in steps if not s["passed"] and (best is None or s["rate"] > best["rate"])]
    failure = min(above, key=lambda s: s["rate"]) if above else None
    summary = {
        "sustained": best["achieved_rate"] if best else 0.0,
        "bound": None,
        "limited_by": "receiver",
        "first_failure": failure
        and {k: failure[k] for k in ("rate", "achieved_rate", "loss", "dropped", "kernel_drops")},
    }
    if best is None:
        summary.update(bound="upper", sustained=failure["rate"] if failure else 0.0)
    elif any(s["short"] for s in passed):
        summary.update(
            bound="lower" if transport == "udp" else None,
            limited_by="generator" if transport == "udp" else "back-pressure",
        )
    elif failure is None:
        summary.update(bound="lower", limited_by="top step")
    return summary


def rate_text(summary: dict | None) -> str:
    if summary is None:
        return "n/a"
    prefix = {"lower": ">= ", "upper": "< "}.get(summary["bound"], "")
    return f"{prefix}{summary['sustained']:,.0f}/s"


# How the bounds of a and b bound a / b.
_RATIO_BOUNDS = {
    (None, None): None,
    ("lower", None): "lower",
    (None, "upper"): "lower",
    ("lower", "upper"): "lower",
    ("upper", None): "upper",
    (None, "lower"): "upper",
    ("upper", "lower"): "upper",
}


def _ratio(a: dict | None, b: dict | None) -> tuple[float | None, str | None]:
    """a / b and its bound, from the bounds of a and b."""
    if not a or not b or not b["sustained"]:
        return None, None
    return a["sustained"] / b["sustained"], _RATIO_BOUNDS.get((a["bound"], b["bound"]), "unknown")


def _verdict_at_least(value: float | None, bound: str | None, target: float) -> str:
    if value is None:
        return NA
    if bound is None:
        return PASS if value >= target else FAIL
    if bound == "lower" and value >= target:
        return PASS
    if bound == "upper" and value < target:
        return FAIL
    return INCONCLUSIVE


def _verdict_at_most(value: float | None, target: float) -> str:
    if value is None:
        return NA
    return PASS if value <= target else FAIL


def _notes(summary: dict | None, steps: list[dict]) -> str:
    if summary is None:
        return ""
    notes = []
    if summary["limited_by"] in ("generator", "back-pressure", "top step"):
        notes.append(f"limited by {summary['limited_by']}")
    failure = summary["first_failure"]
    if failure:
        reasons = [f"{k} {v:,}" for k, v in sorted(failure["dropped"].items())]
        if failure["kernel_drops"] is not None:
            reasons.append(f"/proc/net/udp drops {failure['kernel_drops']:,} datagrams")
        reasons = ", ".join(reasons) or "no reason counted"
        notes.append(f"fails at {failure['rate']:,.0f}/s: {failure['loss']:.2%} lost ({reasons})")
    granted = {s.get("rcvbuf") for s in steps} - {None}
    if granted:
        notes.append(f"rcvbuf {', '.join(map(str, sorted(granted)))}")
    return "; ".join(notes)


def build_rows(runs: dict, cpu: dict, memory: dict | None, stall: dict | None, backlog: dict | None) -> list[dict]:
    """``runs`` maps (receiver, transport, contexts) to {"summary", "steps"} or None (not available)."""
    rows = []

    def run(receiver, transport="udp", contexts=1000):
        found = runs.get((receiver, transport, contexts))
        return (found["summary"], found["steps"]) if found else (None, [])

    def add(measure, value, text, target, verdict, notes=""):
        rows.append(
            {"measure": measure, "value": value, "text": text, "target": target, "verdict": verdict, "notes": notes}
        )

    ours, ours_steps = run("twisted-statsd")
    add(
        "twisted-statsd, UDP, 1,000 contexts",
        ours and ours["sustained"],
        rate_text(ours),
        ">= 1,000,000/s at <= 0.1% loss",
        _verdict_at_least(ours and ours["sustained"], ours and ours["bound"], 1_000_000) if ours else NA,
        _notes(ours, ours_steps),
    )
    for receiver, transport, contexts in sorted(runs, key=_run_order):
        if (receiver, transport, contexts) == ("twisted-statsd", "udp", 1000):
            continue
        summary, steps = run(receiver, transport, contexts)
        add(
            f"{receiver}, {transport}, {contexts:,} contexts",
            summary and summary["sustained"],
            rate_text(summary),
            "",
            INFO if summary else NA,
            _notes(summary, steps) if summary else "not available in this checkout",
        )
    etsy, _ = run("etsy-statsd")
    value, bound = _ratio(ours, etsy)
    add(
        "twisted-statsd / Etsy statsd (UDP, 1k)",
        value,
        _ratio_text(value, bound),
        ">= 5x",
        _verdict_at_least(value, bound, 5.0),
        f"{rate_text(ours)} vs {rate_text(etsy)}" if value else "",
    )
    ceiling, _ = run("ceiling")
    value, bound = _ratio(ours, ceiling)
    add(
        "twisted-statsd / ceiling (UDP, 1k)",
        value,
        _ratio_text(value, bound, percent=True),
        ">= 60%",
        _verdict_at_least(value, bound, 0.6),
        f"{rate_text(ours)} vs {rate_text(ceiling)}" if value else "",
    )
    limit, _ = run("recv-only")
    for receiver in ("twisted-statsd", "etsy-statsd", "ceiling"):
        theirs, _ = run(receiver)
        value, bound = _ratio(theirs, limit)
        add(
            f"{receiver} / recv-only (UDP, 1k)",
            value,
            _ratio_text(value, bound, percent=True),
            "",
            INFO if value else NA,
            f"{rate_text(theirs)} vs {rate_text(limit)}" if value else "",
        )
    for receiver, measured in cpu.items():
        us = measured and measured["cpu_us_per_metric"]
        mine = receiver == "twisted-statsd"
        add(
            f"CPU per metric at 200,000/s, {receiver}",
            us,
            f"{us:.2f} us" if us is not None else "n/a",
            "<= 1 us" if mine else "",
            _verdict_at_most(us, 1.0) if mine else INFO,
            f"achieved {measured['achieved_rate']:,.0f}/s, loss {measured['loss']:.2%}" if measured else "",
        )
    for (receiver, transport, contexts), found in sorted(runs.items(), key=lambda item: _run_order(item[0])):
        if found and transport == "udp":
            peak = max(s["peak_rss"] for s in found["steps"])
            add(f"peak RSS (VmHWM), {receiver}, {contexts:,} contexts", peak, f"{peak / 2**20:.1f} MiB", "", INFO)
    per_context = memory and memory.get("bytes_per_context")
    add(
        "RSS per live counter context (4 tags), 100k",
        per_context,
        f"{per_context:.0f} B" if per_context is not None else "n/a",
        "<= 600 B",
        _verdict_at_most(per_context, 600),
        memory["note"] if memory else "",
    )
    worst = stall and max(stall[k]["max_stall_seconds"] for k in ("periodic", "final"))
    add(
        "longest intake stall flushing 100k contexts",
        worst,
        f"{worst * 1000:.1f} ms" if worst is not None else "n/a",
        "<= 50 ms",
        _verdict_at_most(worst, 0.05),
        (
            f"bucket flush {stall['final']['max_stall_seconds'] * 1000:.0f} ms "
            f"(took {stall['final']['flush_seconds']:.2f} s), idle periodic flush "
            f"{stall['periodic']['max_stall_seconds'] * 1000:.0f} ms"
        )
        if stall
        else "",
    )
    speedup = backlog and backlog[2]["median"] / backlog[1]["median"]
    add(
        "2 intake processes / 1 (queue drain, no sender)",
        speedup,
        f"{speedup:.2f}x" if speedup is not None else "n/a",
        ">= 1.6x",
        _verdict_at_least(speedup, None, 1.6),
        (
            "; ".join(
                f"{n} process(es) {b['median']:,.0f}/s (rounds {b['low']:,.0f}..{b['high']:,.0f})"
                for n, b in backlog.items()
            )
        )
        if backlog
        else "",
    )
    return rows


def _run_order(key: tuple) -> tuple:
    receiver, transport, contexts = key
    return (
        RECEIVER_ORDER.index(receiver) if receiver in RECEIVER_ORDER else 9,
        TRANSPORT_ORDER.index(transport) if transport in TRANSPORT_ORDER else 9,
        contexts,
    )


def _ratio_text(value: float | None, bound: str | None, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    prefix = {"lower": ">= ", "upper": "<= ", "unknown": "~ "}.get(bound, "")
    return prefix + (f"{value:.0%}" if percent else f"{value:.2f}x")


def format_table(rows: list[dict]) -> str:
    headers = ("measure", "result", "target", "verdict", "notes")
    cells = [(r["measure"], r["text"], r["target"], r["verdict"], r["notes"]) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths + [0], strict=False)).rstrip()]
    lines.append("  ".join("-" * w for w in widths) + "  -----")
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths + [0], strict=False)).rstrip())
    return "\n".join(lines)
