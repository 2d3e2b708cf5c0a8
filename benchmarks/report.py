"""Turn the benchmark's measurements into one table of rows, each with its target and verdict.

    python -m benchmarks.report RESULT.json [--markdown] [--targets]

prints the table of a result file that :mod:`benchmarks.throughput` wrote.
The first rows are issue 14's targets, in its order; the rest are the
side-by-side figures (every receiver's sustained rate, ratios, CPU per
metric, peak RSS) they come from.  Every rate is also given as a share of the
recv-only loop's rate on the same transport (the physical limit of one Python
process), and every CPU cost as a multiple of recv-only's CPU per metric;
memory and stalls have no recv-only counterpart.

A ladder's sustained rate is the highest *achieved* send rate of a step that
lost at most the loss threshold.  When the best step fell short of its offered
rate, or every step passed, the true figure may be higher: the value is a lower
bound (shown with ``>=``).  When no step passed it is an upper bound (``<``).
Verdicts on bounds are only given when the bound decides them; otherwise the
row says INCONCLUSIVE.
"""

from __future__ import annotations

import argparse
import json

PASS, FAIL, INFO, INCONCLUSIVE, NA = "PASS", "FAIL", "info", "INCONCLUSIVE", "n/a"
NOT_MEASURED = "not measured"
#: twisted-statsd with ``dogstatsd_workers: 2`` (the Unix rows compare it with one process).
TWO_WORKERS = "twisted-statsd-2w"
RECEIVER_ORDER = ("twisted-statsd", TWO_WORKERS, "etsy-statsd", "ceiling", "recv-only")
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


def _combine(*verdicts: str) -> str:
    """One verdict for a row with several conditions."""
    if FAIL in verdicts:
        return FAIL
    if NOT_MEASURED in verdicts:
        return NOT_MEASURED
    if NA in verdicts:
        return NA
    return PASS if all(v == PASS for v in verdicts) else INCONCLUSIVE


def _us(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f} us"


def _ms(seconds: float | None) -> str:
    return "not measured" if seconds is None else f"{seconds * 1000:.0f} ms"


def _cost_vs_recv_only(us: float | None, recv_only_us: float | None) -> str:
    """A CPU cost as a multiple of what recv-only spends on one metric."""
    if us is None or not recv_only_us:
        return ""
    return f"{us / recv_only_us:.1f}x its CPU/metric"


def build_rows(results: dict) -> list[dict]:
    """Issue 14's target table, then the side-by-side figures it is read from.

    ``results`` holds what :func:`benchmarks.throughput.run_all` measured:
    ``runs`` maps (receiver, transport, contexts) to {"summary", "steps"} or
    None (not available in this checkout); ``cpu`` maps a receiver to its
    200,000/s step; ``memory``, ``stall``, ``backlog`` (with
    ``backlog_contexts``), ``million``, and, from the benchmarks that measure
    them, ``flush_cost`` (``{sink: {"us_per_context": float, ...}}``, counter
    contexts) and ``burst`` (``{"us_per_line": float, "max_stall_seconds":
    float, "contexts": int}``).  A missing or None key makes its rows read
    "not measured".
    """
    runs = results.get("runs") or {}
    cpu = results.get("cpu") or {}
    low, high = min(results.get("contexts") or [1000]), max(results.get("contexts") or [100_000])
    rows: list[dict] = []

    def run(receiver, transport="udp", contexts=low):
        found = runs.get((receiver, transport, contexts))
        return (found["summary"], found["steps"]) if found else (None, [])

    def add(measure, value, text, target="", verdict=INFO, notes="", vs_recv_only=""):
        rows.append(
            {
                "measure": measure,
                "value": value,
                "text": text,
                "target": target,
                "verdict": verdict,
                "vs_recv_only": vs_recv_only,
                "notes": notes,
            }
        )

    def recv_only_rate(transport: str, contexts: int) -> dict | None:
        """recv-only's rate on the transport: it does not parse, so its one run (low size) stands in for any."""
        return run("recv-only", transport, contexts)[0] or run("recv-only", transport, low)[0]

    def vs_recv_only(summary: dict | None, transport: str = "udp", contexts: int = low) -> str:
        value, bound = _ratio(summary, recv_only_rate(transport, contexts))
        return _ratio_text(value, bound, percent=True) if value is not None else ""

    recv_only_cpu = cpu.get("recv-only")
    recv_only_us = recv_only_cpu and recv_only_cpu.get("cpu_us_per_metric")

    # -- issue 14's targets, in its order ---------------------------------------------------
    ours, ours_steps = run("twisted-statsd", "udp", high)
    etsy, _ = run("etsy-statsd", "udp", high)
    versus_etsy, versus_bound = _ratio(ours, etsy)
    verdict = _combine(
        _verdict_at_least(ours["sustained"], ours["bound"], 400_000) if ours else NOT_MEASURED,
        _verdict_at_least(versus_etsy, versus_bound, 2.0) if etsy else NOT_MEASURED,
    )
    add(
        f"sustained UDP, {high:,} contexts, one process" + _smaller(high, 100_000),
        ours and ours["sustained"],
        rate_text(ours) if ours else "not measured",
        ">= 400,000/s and >= 2x Etsy statsd",
        verdict if high >= 100_000 or verdict == NOT_MEASURED else INFO,
        "; ".join(
            part
            for part in (
                f"{_ratio_text(versus_etsy, versus_bound)} Etsy statsd's {rate_text(etsy)}" if etsy else "",
                _notes(ours, ours_steps),
            )
            if part
        ),
        vs_recv_only(ours, "udp", high),
    )
    ours_1k, ours_1k_steps = run("twisted-statsd", "udp", low)
    add(
        f"sustained UDP, {low:,} contexts, mixed",
        ours_1k and ours_1k["sustained"],
        rate_text(ours_1k) if ours_1k else "not measured",
        ">= 1,000,000/s",
        _verdict_at_least(ours_1k["sustained"], ours_1k["bound"], 1_000_000) if ours_1k else NOT_MEASURED,
        _notes(ours_1k, ours_1k_steps),
        vs_recv_only(ours_1k),
    )
    flush_cost = results.get("flush_cost") or {}
    jsonl_us = (flush_cost.get("jsonl") or {}).get("us_per_context")
    add(
        "flush CPU per context (counter, jsonl sink)",
        jsonl_us,
        _us(jsonl_us),
        "<= 4 us",
        _verdict_at_most(jsonl_us, 4.0) if jsonl_us is not None else NOT_MEASURED,
        "",
        _cost_vs_recv_only(jsonl_us, recv_only_us),
    )
    for sink, measured in sorted(flush_cost.items()):
        if sink != "jsonl":
            us = (measured or {}).get("us_per_context")
            add(
                f"flush CPU per context (counter, {sink} sink)",
                us,
                _us(us),
                "reported",
                INFO,
                "",
                _cost_vs_recv_only(us, recv_only_us),
            )
    memory = results.get("memory")
    per_context = memory and memory.get("bytes_per_context")
    add(
        f"RSS per live 4-tag counter context ({memory['contexts']:,} loaded)"
        if memory
        else "RSS per live 4-tag counter context",
        per_context,
        f"{per_context:.0f} B" if per_context is not None else "not measured",
        "<= 450 B",
        _verdict_at_most(per_context, 450) if per_context is not None else NOT_MEASURED,
        memory["note"] if memory else "",
    )
    _million_rows(results.get("million"), add)
    burst = results.get("burst")
    learning = burst and burst.get("us_per_line")
    add(
        "learning a new context",
        learning,
        f"{learning:.1f} us/line" if learning is not None else "not measured",
        "<= 8 us/line",
        _verdict_at_most(learning, 8.0) if learning is not None else NOT_MEASURED,
        "",
        _cost_vs_recv_only(learning, recv_only_us),
    )
    burst_stall = burst and burst.get("max_stall_seconds")
    burst_size = burst and burst.get("contexts")
    add(
        "longest intake stall, burst of 100,000 new contexts",
        burst_stall,
        _ms(burst_stall),
        "<= 50 ms",
        (
            NOT_MEASURED
            if burst_stall is None
            else _verdict_at_most(burst_stall, 0.05)
            if (burst_size or 0) >= 100_000
            else INFO
        ),
        f"a burst of {burst_size:,} (smaller than the target's)" if burst_size and burst_size < 100_000 else "",
    )
    _processes_rows(results.get("backlog"), results.get("backlog_contexts", 1000), add)
    for transport, label in (("unixgram", "Unix datagram"), ("unixstream", "Unix stream")):
        one, _ = run("twisted-statsd", transport)
        two, two_steps = run(TWO_WORKERS, transport)
        value, bound = _ratio(two, one)
        # What the worker processes handled (twisted_statsd.worker_metrics): none means one process did it all.
        handled = sum(s.get("worker_metrics") or 0 for s in two_steps)
        accepted = sum(s.get("accepted") or 0 for s in two_steps)
        verdict = _verdict_at_least(value, bound, 1.3) if value is not None else NOT_MEASURED
        add(
            f"{label}, dogstatsd_workers 2 / 1 ({low:,} contexts)",
            value,
            _ratio_text(value, bound) if value is not None else "not measured",
            ">= 1.3x, the workers taking part",
            FAIL if value is not None and not handled else verdict,
            (
                f"1 process {rate_text(one)}, 2 processes {rate_text(two)}; the worker handled "
                f"{handled:,} of {accepted:,} metrics" + (" (so the ratio is noise)" if not handled else "")
            )
            if value is not None
            else "",
            vs_recv_only(two, transport) if two else "",
        )

    # -- the side-by-side they come from ----------------------------------------------------
    for receiver, transport, contexts in sorted(runs, key=_run_order):
        summary, steps = run(receiver, transport, contexts)
        add(
            f"{receiver}, {transport}, {contexts:,} contexts",
            summary and summary["sustained"],
            rate_text(summary),
            "",
            INFO if summary else NA,
            _notes(summary, steps) if summary else "not available in this checkout",
            vs_recv_only(summary, transport, contexts) if summary and receiver != "recv-only" else "",
        )
    for contexts in (low, high):
        theirs, ceiling = run("twisted-statsd", "udp", contexts)[0], run("ceiling", "udp", contexts)[0]
        etsy_rate = run("etsy-statsd", "udp", contexts)[0]
        for other, name in ((etsy_rate, "Etsy statsd"), (ceiling, "ceiling")):
            value, bound = _ratio(theirs, other)
            if value is not None:
                add(
                    f"twisted-statsd / {name} (UDP, {contexts:,} contexts)",
                    value,
                    _ratio_text(value, bound),
                    notes=f"{rate_text(theirs)} vs {rate_text(other)}",
                )
    for receiver, measured in cpu.items():
        us = measured and measured["cpu_us_per_metric"]
        add(
            f"CPU per metric at 200,000/s, {receiver} (UDP, {low:,} contexts)",
            us,
            f"{us:.2f} us" if us is not None else "n/a",
            "",
            INFO,
            f"achieved {measured['achieved_rate']:,.0f}/s, loss {measured['loss']:.2%}" if measured else "",
            _cost_vs_recv_only(us, recv_only_us) if receiver != "recv-only" else "",
        )
    for (receiver, transport, contexts), found in sorted(runs.items(), key=lambda item: _run_order(item[0])):
        if found and transport == "udp":
            peak = max(s["peak_rss"] for s in found["steps"])
            add(f"peak RSS (VmHWM), {receiver}, {contexts:,} contexts", peak, f"{peak / 2**20:.1f} MiB")
    stall = results.get("stall")
    if stall:
        worst = max(stall[k]["max_stall_seconds"] for k in ("periodic", "final"))
        add(
            f"longest intake stall flushing {stall['contexts']:,} contexts (in-process)",
            worst,
            f"{worst * 1000:.1f} ms",
            notes=(
                f"bucket flush {stall['final']['max_stall_seconds'] * 1000:.0f} ms "
                f"(took {stall['final']['flush_seconds']:.2f} s), idle periodic flush "
                f"{stall['periodic']['max_stall_seconds'] * 1000:.0f} ms"
            ),
        )
    return rows


def _smaller(size: int, target: int) -> str:
    """What a row's label says when it measured less than its target's size (no verdict then)."""
    return "" if size >= target else f" (target's size: {target:,})"


def _million_rows(million: dict | None, add) -> None:
    """Three rows for the million-context run: it runs, its memory, its longest stall."""
    if not million:
        for measure, target in (
            ("1,000,000 live contexts: runs", "all live, none dropped"),
            ("1,000,000 live contexts: peak RSS", "<= 700 MB"),
            ("1,000,000 live contexts: longest stall", "<= 100 ms"),
        ):
            add(measure, None, "not measured", target, NOT_MEASURED)
        return
    size = million["contexts"]
    full = size >= 1_000_000
    label = f"{size:,} live contexts" + _smaller(size, 1_000_000)
    add(
        f"{label}: runs",
        million["runs"],
        f"{million['live_contexts']:,} live" + ("" if million["runs"] else " (FAILED)"),
        "all live, none dropped",
        (PASS if million["runs"] else FAIL) if full else INFO,
        f"dropped {million['dropped'] or 'nothing'}, kernel drops {million['kernel_drops']}; loaded in "
        f"{million['load_seconds']:.0f} s ({million['load_rate']:,.0f} new contexts/s), the full bucket flushed "
        f"{million['flush_seconds']:.0f} s after it closed",
    )
    peak = million["peak_rss"]
    add(
        f"{label}: peak RSS",
        peak,
        f"{peak / 1e6:,.0f} MB",
        "<= 700 MB",
        _verdict_at_most(peak, 700e6) if full else INFO,
        f"{million['rss_loaded'] / 1e6:,.0f} MB once loaded, {million['rss_start'] / 1e6:,.0f} MB at start "
        f"({(million['rss_loaded'] - million['rss_start']) / size:.0f} B per context)",
    )
    stall = million["max_stall_seconds"]
    load_stall = million.get("max_stall_load_seconds")
    add(
        f"{label}: longest stall",
        stall,
        _ms(stall),
        "<= 100 ms",
        _verdict_at_most(stall, 0.1) if full and stall is not None else INFO if stall is not None else NOT_MEASURED,
        f"while the full bucket flushed (HTTP probe every {million['probe_interval_seconds'] * 1000:.0f} ms); "
        f"while loading new contexts at full speed {_ms(load_stall)}",
    )


def _processes_rows(backlog: dict | None, contexts: int, add) -> None:
    """Two rows for 2 intake processes against 1: the drain speed-up and the memory held in all."""
    one, two = (backlog or {}).get(1), (backlog or {}).get(2)
    full = contexts >= 100_000
    label = f"2 processes / 1, {contexts:,} contexts" + _smaller(contexts, 100_000)
    speedup = one and two and two["median"] / one["median"]
    add(
        f"{label}: queue drain",
        speedup,
        f"{speedup:.2f}x" if speedup else "not measured",
        ">= 1.7x",
        (_verdict_at_least(speedup, None, 1.7) if full else INFO) if speedup else NOT_MEASURED,
        (
            "; ".join(
                f"{n} process(es) {b['median']:,.0f}/s (rounds {b['low']:,.0f}..{b['high']:,.0f})"
                for n, b in sorted(backlog.items())
            )
            if speedup
            else ""
        ),
    )
    memory = one and two and two.get("rss_total") and one.get("rss_total") and two["rss_total"] / one["rss_total"]
    add(
        f"{label}: total RSS",
        memory,
        f"{memory:.2f}x" if memory else "not measured",
        "<= 1.3x",
        (_verdict_at_most(memory, 1.3) if full else INFO) if memory else NOT_MEASURED,
        (
            f"1 process {one['rss_total'] / 2**20:.0f} MiB; 2 processes "
            + " + ".join(f"{r / 2**20:.0f}" for r in two["rss"])
            + f" = {two['rss_total'] / 2**20:.0f} MiB (VmRSS of the process tree)"
        )
        if memory
        else "",
    )


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


COLUMNS = (
    ("measure", "measure"),
    ("result", "text"),
    ("target", "target"),
    ("verdict", "verdict"),
    ("vs recv-only", "vs_recv_only"),
    ("notes", "notes"),
)


def format_table(rows: list[dict]) -> str:
    """The rows as aligned plain text (the last column, notes, is not padded)."""
    headers = [h for h, _ in COLUMNS]
    cells = [[r.get(key, "") for _, key in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers[:-1])] + [0]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths[:-1]) + "  -----")
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table, as the README shows them."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r.get(key, "").replace("|", "\\|") for _, key in COLUMNS]
        cells[3] = f"**{cells[3]}**" if cells[3] in (PASS, FAIL) else cells[3]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Print the table of a benchmarks.throughput JSON result.")
    parser.add_argument("path", help="the JSON file benchmarks.throughput wrote")
    parser.add_argument("--markdown", action="store_true", help="as a Markdown table (for the README)")
    parser.add_argument("--targets", action="store_true", help="only the rows with a target")
    args = parser.parse_args(argv)
    with open(args.path) as f:
        rows = json.load(f)["rows"]
    if args.targets:
        rows = [r for r in rows if r["target"]]
    print(format_markdown(rows) if args.markdown else format_table(rows))


if __name__ == "__main__":
    main()
