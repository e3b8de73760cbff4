#!/usr/bin/python3
"""Plots and a Markdown report from imgstore-bench's results.json.

  /usr/bin/python3 bench/plot_report.py --json results.json --out DIR

Writes into DIR (only the plots whose measurements are present):
  store_many_loglog.png, store_many_linear.png   store time vs N (the tutorial's figures)
  read_many_loglog.png, read_many_linear.png     read time vs N, sequential | shuffled
  disk_usage.png                                 bytes on disk vs N
  epoch_throughput.png                           shuffled-epoch images/s by format, warm vs cold
  thread_scaling.png                             epoch images/s vs loader threads, limits dashed
  report.md                                      machine, libraries, data set, config, cache
                                                 state, headline table, plots, notes
Each line is one (impl, format, variant) series: the median of the runs, error bars min..max.
The statistics are recomputed from "measurements"; "summary" only supplies the limit and peer a
row was compared with, when present. --json also takes the tutorial peer's JSON lines.
"""
import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

FIELDS = ("experiment", "impl", "format", "variant", "n", "threads", "cache", "order", "run",
          "seconds", "images_per_s", "bytes")
KEY = ("experiment", "impl", "format", "variant", "n", "threads", "cache", "order")
FORMATS = ("png", "lmdb", "hdf5", "memory")
OURS = ("imgstore", "prefetch")  # impls that are this project's code
LINESTYLE = {"imgstore": "-", "prefetch": "-", "tutorial": "--", "stock": ":", "limit": "-."}
MARKER = {"imgstore": "o", "prefetch": "o", "tutorial": "s", "stock": "^", "limit": "x"}


def fail(message, status=2):
    print(f"plot_report: error: {message}", file=sys.stderr)
    sys.exit(status)


plt = None  # matplotlib.pyplot, imported once the input has been checked (it is slow to load)


def import_matplotlib():
    global plt
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot
    except ImportError as e:
        fail(f"{e}; install Debian's python3-matplotlib and run with /usr/bin/python3", 3)
    plt = matplotlib.pyplot


# ---- input ----

def load_results(path):
    p = Path(path)
    if not p.is_file():
        fail(f"--json {path}: no such file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"--json {path}: cannot read ({e})")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        # The tutorial peer's output: one measurement object per line.
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            fail(f"--json {path}: not JSON ({e})")
        if not rows or not all(isinstance(r, dict) for r in rows):
            fail(f"--json {path}: not JSON ({e})")
        doc = {"measurements": rows}
    if isinstance(doc, dict) and "measurements" not in doc and "experiment" in doc:
        doc = {"measurements": [doc]}  # a single JSON line
    if not isinstance(doc, dict) or not isinstance(doc.get("measurements"), list):
        fail(f"--json {path}: expected an object with a \"measurements\" list (imgstore-bench "
             f"results.json, schema 1)")
    if doc.get("schema", 1) != 1:
        fail(f"--json {path}: schema {doc.get('schema')!r}, this script reads schema 1")
    rows = []
    for i, r in enumerate(doc["measurements"]):
        if not isinstance(r, dict):
            fail(f"--json {path}: measurements[{i}] is not an object")
        missing = [f for f in FIELDS if f not in r]
        if missing:
            fail(f"--json {path}: measurements[{i}] lacks {', '.join(missing)}")
        try:
            row = {f: r[f] for f in FIELDS}
            for f in ("n", "threads", "run", "bytes"):
                row[f] = int(row[f])
            for f in ("seconds", "images_per_s"):
                row[f] = float(row[f])
            for f in ("experiment", "impl", "format", "variant", "cache", "order"):
                row[f] = str(row[f])
        except (TypeError, ValueError):
            fail(f"--json {path}: measurements[{i}] has a field of the wrong type")
        if row["n"] < 0 or row["seconds"] < 0 or not math.isfinite(row["seconds"]):
            fail(f"--json {path}: measurements[{i}] has a negative or non-finite n or seconds")
        rows.append(row)
    for section in ("machine", "libraries", "dataset", "config"):
        if not isinstance(doc.get(section, {}), dict):
            fail(f"--json {path}: \"{section}\" is not an object")
    if not isinstance(doc.get("summary", []), list):
        fail(f"--json {path}: \"summary\" is not a list")
    return doc, rows


def summarise(rows):
    """Median, min and max of the runs of each measurement key."""
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in KEY)].append(r)
    stats = {}
    for key, rs in groups.items():
        secs = [r["seconds"] for r in rs]
        med = statistics.median(secs)
        n = key[KEY.index("n")]
        # A limit stands for what the machine can do: its fastest run (as imgstore-bench's
        # summary counts it). Everything else: the median.
        typical = min(secs) if key[KEY.index("impl")] == "limit" else med
        stats[key] = {
            **dict(zip(KEY, key)),
            "runs": len(rs), "median_s": med, "min_s": min(secs), "max_s": max(secs),
            "images_per_s": n / typical if typical > 0 else 0.0,
            # images/s at the slowest and the fastest run, for error bars
            "ips_low": n / max(secs) if max(secs) > 0 else 0.0,
            "ips_high": n / min(secs) if min(secs) > 0 else 0.0,
            "bytes": max(r["bytes"] for r in rs),
        }
    return stats


def select(stats, **conds):
    return [s for s in stats.values() if all(s[k] == v for k, v in conds.items())]


def series_label(s, extra=()):
    label = f"{s['impl']} {s['format']}"
    if s["variant"] != "-":
        label += f" {s['variant']}"
    for k in extra:
        label += f" {s[k]}"
    return label


def varying(items, keys):
    """The keys among `keys` that take more than one value in items."""
    return [k for k in keys if len({s[k] for s in items}) > 1]


# ---- plots ----

# One colour per container content, the same in every plot; the line style tells the impl and a
# hollow marker a cold page cache.
KNOWN_CONTENTS = [("png", "png"), ("lmdb", "raw"), ("lmdb", "png"), ("lmdb", "pickle"),
                  ("hdf5", "contiguous"), ("hdf5", "chunked"), ("hdf5", "deflate"),
                  ("memory", "-")]
LIMIT_COLOURS = {"limit_gather": "black", "limit_seqread": "dimgray",
                 "limit_decode": "saddlebrown"}


def colour(fmt, variant, contents=KNOWN_CONTENTS):
    if (fmt, variant) not in contents:
        contents.append((fmt, variant))
    return plt.cm.tab10(contents.index((fmt, variant)) % 10)


def style(s):
    st = {"linestyle": LINESTYLE.get(s["impl"], "-"), "marker": MARKER.get(s["impl"], "o"),
          "color": colour(s["format"], s["variant"]), "markersize": 5, "capsize": 2}
    if s.get("cache", "warm") not in ("warm", "-"):
        st["markerfacecolor"] = "none"
    return st


def legend(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_vs_n(ax, items, value, low, high, scale):
    """One line per series in items (dicts with n), y = value with error bars low..high."""
    extra = varying(items, ("threads", "cache"))
    series = defaultdict(list)
    for s in items:
        series[(s["impl"], s["format"], s["variant"]) + tuple(s[k] for k in extra)].append(s)
    for i, (key, pts) in enumerate(sorted(series.items())):
        pts.sort(key=lambda s: s["n"])
        if scale == "log":
            pts = [s for s in pts if value(s) > 0 and s["n"] > 0]
        if not pts:
            continue
        xs = [s["n"] for s in pts]
        ys = [value(s) for s in pts]
        yerr = [[max(0.0, y - low(s)) for y, s in zip(ys, pts)],
                [max(0.0, high(s) - y) for y, s in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=yerr, label=series_label(pts[0], extra), **style(pts[0]))
    ax.set_xscale(scale)
    ax.set_yscale(scale)
    ax.set_xlabel("number of images N")
    ax.grid(True, which="both", alpha=0.3)
    legend(ax)


def save(fig, out, name, made):
    fig.tight_layout()
    fig.savefig(out / name, dpi=110, bbox_inches="tight",  # legends sit outside the axes
                metadata={"Software": None})  # no tool name or web address in the file
    plt.close(fig)
    made.append(name)


def plot_store_many(stats, out, made, notes):
    items = select(stats, experiment="store_many")
    if not items:
        notes.append("No store_many measurements: the store-time plots were not drawn.")
        return
    for scale, name in (("log", "store_many_loglog.png"), ("linear", "store_many_linear.png")):
        fig, ax = plt.subplots(figsize=(7, 5))
        plot_vs_n(ax, items, lambda s: s["median_s"], lambda s: s["min_s"],
                  lambda s: s["max_s"], scale)
        ax.set_ylabel("seconds to store N images (median, min..max)")
        ax.set_title(f"store_many: time vs N ({'log-log' if scale == 'log' else 'linear'})")
        save(fig, out, name, made)


def plot_read_many(stats, out, made, notes):
    items = select(stats, experiment="read_many")
    if not items:
        notes.append("No read_many measurements: the read-time plots were not drawn.")
        return
    orders = [o for o in ("sequential", "shuffled") if select(stats, experiment="read_many",
                                                              order=o)]
    orders += sorted({s["order"] for s in items} - set(orders))
    for scale, name in (("log", "read_many_loglog.png"), ("linear", "read_many_linear.png")):
        fig, axes = plt.subplots(1, len(orders), figsize=(6.5 * len(orders), 5), squeeze=False,
                                 sharey=True)
        for ax, order in zip(axes[0], orders):
            plot_vs_n(ax, [s for s in items if s["order"] == order], lambda s: s["median_s"],
                      lambda s: s["min_s"], lambda s: s["max_s"], scale)
            ax.set_title(f"read_many, {order} ({'log-log' if scale == 'log' else 'linear'})")
        axes[0][0].set_ylabel("seconds to read N images into memory (median, min..max)")
        save(fig, out, name, made)


def plot_disk_usage(stats, out, made, notes):
    items = select(stats, experiment="disk_usage")
    if not items:
        notes.append("No disk_usage measurements: the disk-usage plot was not drawn.")
        return
    # Every cache state and run of a store has the same size: one point per (series, N).
    unique = {}
    for s in items:
        unique.setdefault((s["impl"], s["format"], s["variant"], s["n"]), dict(s, cache="-"))
    items = list(unique.values())
    fig, ax = plt.subplots(figsize=(7, 5))
    mib = lambda s: s["bytes"] / 2**20
    plot_vs_n(ax, items, mib, mib, mib, "log")
    ax.set_ylabel("MiB on disk")
    ax.set_title("disk usage vs N (log-log)")
    save(fig, out, "disk_usage.png", made)


def epoch_rows(stats):
    """Epoch rows at the largest N measured."""
    items = select(stats, experiment="epoch")
    if not items:
        return []
    n = max(s["n"] for s in items)
    return [s for s in items if s["n"] == n]


def plot_epoch(stats, out, made, notes):
    items = epoch_rows(stats)
    if not items:
        notes.append("No epoch measurements: the epoch-throughput and thread-scaling plots were "
                     "not drawn.")
        return
    # One bar per (format, variant, impl) and cache state, at its largest thread count.
    best = {}
    for s in items:
        k = (s["format"], s["variant"], s["impl"], s["cache"])
        if k not in best or s["threads"] > best[k]["threads"]:
            best[k] = s
    groups = sorted({k[:3] for k in best}, key=lambda k: (fmt_rank(k[0]), k))
    caches = [c for c in ("warm", "cold", "cold_unavailable") if any(k[3] == c for k in best)]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(groups) + 2), 5))
    width = 0.8 / max(1, len(caches))
    for ci, cache in enumerate(caches):
        xs, ys, lo, hi = [], [], [], []
        for gi, g in enumerate(groups):
            s = best.get(g + (cache,))
            if s is None:
                continue
            xs.append(gi + (ci - (len(caches) - 1) / 2) * width)
            ys.append(s["images_per_s"])
            lo.append(max(0.0, s["images_per_s"] - s["ips_low"]))
            hi.append(max(0.0, s["ips_high"] - s["images_per_s"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=cache,
               color=plt.cm.tab10(ci), alpha=0.85)
    threads = {g: max(s["threads"] for k, s in best.items() if k[:3] == g) for g in groups}
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{f} {v}\n{i} ({threads[(f, v, i)]} thr)" if v != "-"
                        else f"{f}\n{i} ({threads[(f, v, i)]} thr)" for f, v, i in groups],
                       fontsize=7)
    values = [s["images_per_s"] for s in best.values() if s["images_per_s"] > 0]
    if values and max(values) > 20 * min(values):
        ax.set_yscale("log")  # PNG and raw stores differ by orders of magnitude
    ax.set_ylabel("images/s (median, min..max)")
    ax.set_title(f"shuffled epoch throughput, N = {items[0]['n']}, batch 256")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="page cache", fontsize=8)
    save(fig, out, "epoch_throughput.png", made)


def fmt_rank(fmt):
    return FORMATS.index(fmt) if fmt in FORMATS else len(FORMATS)


def limit_rows(stats, n=None):
    items = [s for s in stats.values() if s["experiment"].startswith("limit_")]
    if n is not None and any(s["n"] == n for s in items):
        items = [s for s in items if s["n"] == n]
    elif items:
        top = max(s["n"] for s in items)
        items = [s for s in items if s["n"] == top]
    return items


def plot_threads(stats, out, made, notes):
    items = epoch_rows(stats)
    if not items:
        return
    n = items[0]["n"]
    limits = limit_rows(stats, n)
    formats = sorted({s["format"] for s in items}, key=fmt_rank)
    fig, axes = plt.subplots(1, len(formats), figsize=(5.5 * len(formats), 4.8), squeeze=False)
    for ax, fmt in zip(axes[0], formats):
        mine = [s for s in items if s["format"] == fmt]
        series = defaultdict(list)
        for s in mine:
            series[(s["impl"], s["variant"], s["cache"])].append(s)
        for key, pts in sorted(series.items()):
            pts.sort(key=lambda s: s["threads"])
            ys = [s["images_per_s"] for s in pts]
            ax.errorbar([s["threads"] for s in pts], ys,
                        yerr=[[max(0.0, y - s["ips_low"]) for y, s in zip(ys, pts)],
                              [max(0.0, s["ips_high"] - y) for y, s in zip(ys, pts)]],
                        label=series_label(pts[0], ("cache",)), **style(pts[0]))
        # Limits that apply to this format: RAM gather, and those measured on this format.
        # An epoch is shuffled: a gather measured in both orders is drawn shuffled only.
        lim_series = defaultdict(list)
        gather_orders = {s["order"] for s in limits if s["experiment"] == "limit_gather"}
        for s in limits:
            if s["format"] not in (fmt, "memory") or s["images_per_s"] <= 0:
                continue
            if (s["experiment"] == "limit_gather" and "shuffled" in gather_orders
                    and s["order"] != "shuffled"):
                continue
            lim_series[(s["experiment"], s["format"], s["variant"], s["cache"],
                        s["order"])].append(s)
        thread_range = sorted({s["threads"] for s in mine})
        for i, (key, pts) in enumerate(sorted(lim_series.items())):
            pts.sort(key=lambda s: s["threads"])
            xs = [s["threads"] for s in pts]
            ys = [s["images_per_s"] for s in pts]
            if len(pts) == 1:  # one figure: draw it across the threads measured
                xs = [min(thread_range + xs), max(thread_range + xs)]
                ys = ys * 2
            label = " ".join(k for k in key[:3] + key[4:] if k != "-")
            if key[3] != "warm":
                label += f" {key[3]}"
            ax.plot(xs, ys, linestyle=("--", "-.", ":")[i % 3],
                    color=LIMIT_COLOURS.get(key[0], "gray"), label=label)
        ax.set_xlabel("loader threads")
        ax.set_ylabel("images/s")
        ax.set_yscale("log")
        ax.set_xticks(sorted({s["threads"] for s in mine}))
        ax.set_title(f"{fmt}: epoch throughput vs threads (N = {n})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=2,
                  borderaxespad=0)
    save(fig, out, "thread_scaling.png", made)


# ---- report ----

def fmt_ips(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.3g}"


def fmt_ratio(v):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}×"
    return f"{v:.2f}×" if v >= 0.1 else f"{v:.2g}×"


def fmt_bytes(b):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b} B"


def summary_index(doc):
    index = {}
    for s in doc.get("summary", []):
        if isinstance(s, dict) and all(k in s for k in KEY):
            try:
                index[(str(s["experiment"]), str(s["impl"]), str(s["format"]),
                       str(s["variant"]), int(s["n"]), int(s["threads"]), str(s["cache"]),
                       str(s["order"]))] = s
            except (TypeError, ValueError):
                continue
    return index


def find_peer(stats, s, impl):
    """The peer row for s: same experiment, format, N and order; the tutorial's warm reads, the
    stock loader at the same threads and cache state. Same variant preferred."""
    conds = {"experiment": s["experiment"], "impl": impl, "format": s["format"], "n": s["n"],
             "order": s["order"]}
    if impl == "stock":
        conds.update(threads=s["threads"], cache=s["cache"])
    cands = select(stats, **conds)
    if impl == "tutorial" and s["cache"] != "warm":
        return None  # the tutorial's figures are warm only
    same = [c for c in cands if c["variant"] == s["variant"]]
    cands = same or cands
    return cands[0] if cands else None


def find_limit(stats, summary, s):
    """(name, images/s, ratio) of the limit for s: the bench's summary when it names one, else
    the RAM gather of the same N (and threads, when measured per thread count)."""
    row = summary.get(tuple(s[k] for k in KEY))
    if row and row.get("limit") and row.get("ratio_to_limit") is not None:
        try:
            ratio = float(row["ratio_to_limit"])
            return str(row["limit"]), (s["images_per_s"] / ratio if ratio > 0 else None), ratio
        except (TypeError, ValueError):
            pass
    if s["experiment"] not in ("read_many", "epoch"):
        return None
    # PNG payloads are bound by decoding, raw ones by moving bytes.
    kinds = ["limit_decode", "limit_gather"] if s["variant"] == "png" else ["limit_gather"]
    for kind in kinds:
        cands = [c for c in select(stats, experiment=kind, n=s["n"]) if c["images_per_s"] > 0]
        if cands:
            c = min(cands, key=lambda c: (c["order"] not in (s["order"], "-"),
                                          abs(c["threads"] - s["threads"]), c["threads"]))
            return (f"{kind} {c['format']}", c["images_per_s"],
                    s["images_per_s"] / c["images_per_s"])
    return None


def headline(stats, summary):
    """Rows of the headline table: per format, our figures at the largest N, with peers/limits."""
    lines = []
    for fmt in ("png", "lmdb", "hdf5"):
        picks = []
        for exp, order in (("store_many", "-"), ("read_many", "sequential"),
                           ("read_many", "shuffled"), ("epoch", "-")):
            conds = {"experiment": exp, "format": fmt}
            if exp == "read_many":
                conds["order"] = order
            ours = [s for s in select(stats, **conds) if s["impl"] in OURS]
            if not ours:
                continue
            n = max(s["n"] for s in ours)
            ours = [s for s in ours if s["n"] == n]
            if exp != "epoch":  # the tutorial's figures are warm: compare like with like
                ours = [s for s in ours if s["cache"] == "warm"] or ours
            else:  # the most threads, warm and cold
                top = max(s["threads"] for s in ours)
                ours = [s for s in ours if s["threads"] == top]
            picks += sorted(ours, key=lambda s: (s["variant"], s["impl"], s["cache"]))
        for s in picks:
            tut = find_peer(stats, s, "tutorial") if s["experiment"] != "epoch" else None
            stock = find_peer(stats, s, "stock") if s["experiment"] == "epoch" else None
            lim = find_limit(stats, summary, s)
            what = s["experiment"] + (f" {s['order']}" if s["order"] != "-" else "")
            if s["experiment"] == "epoch":
                what += f", {s['threads']} thr"
            cells = [fmt, what, str(s["n"]), s["cache"], f"{s['impl']} {s['variant']}",
                     fmt_ips(s["images_per_s"])]
            for peer in (tut, stock):
                if peer:
                    shown = fmt_ips(peer["images_per_s"])
                    if peer is tut:
                        shown += f" ({peer['variant']})"
                    ratio = (s["images_per_s"] / peer["images_per_s"]
                             if peer["images_per_s"] > 0 else None)
                    cells += [shown, fmt_ratio(ratio)]
                else:
                    cells += ["–", "–"]
            if lim:
                cells += [lim[0] + (f" {fmt_ips(lim[1])}" if lim[1] else ""), fmt_ratio(lim[2])]
            else:
                cells += ["–", "–"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def kv_table(d):
    if not d:
        return ["(not recorded)"]
    lines = ["| | |", "|---|---|"]
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:g}"
        elif isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        lines.append(f"| {k} | {str(v).replace('|', '/')} |")
    return lines


def write_report(doc, stats, summary, made, notes, out):
    machine = dict(doc.get("machine", {}))
    if isinstance(machine.get("ram_bytes"), (int, float)):
        machine["ram_bytes"] = f"{machine['ram_bytes']} ({fmt_bytes(machine['ram_bytes'])})"
    config = doc.get("config", {})
    caches = sorted({s["cache"] for s in stats.values()})
    impls = sorted({s["impl"] for s in stats.values()})
    experiments = sorted({s["experiment"] for s in stats.values()})
    L = ["# imgstore-bench report", "",
         f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
         f"`bench/plot_report.py` from {sum(s['runs'] for s in stats.values())} measurements "
         f"({len(stats)} medians). Figures are medians of the runs, with min..max; "
         f"images/s = N / median seconds (limits: N / their fastest run's seconds).", "",
         "## Machine", ""] + kv_table(machine) + ["", "## Libraries", ""] + \
        kv_table(doc.get("libraries", {})) + ["", "## Data set", ""] + \
        kv_table(doc.get("dataset", {})) + ["", "## Configuration", ""] + \
        kv_table({k: v for k, v in config.items() if k != "notes"}) + [
        "", f"Experiments measured: {', '.join(experiments) or 'none'}. "
            f"Implementations: {', '.join(impls) or 'none'}.", "",
        "## Page cache", ""]
    cold_method = config.get("cold_method", "not recorded")
    L.append(f"- Cache states measured: {', '.join(caches) or 'none'}; cold method: "
             f"`{cold_method}`.")
    if "cold_unavailable" in caches or cold_method == "none":
        L.append("- Eviction was not possible for some rows (`cold_unavailable`): those ran "
                 "with whatever the page cache held.")
    if "tutorial" in impls:
        L.append("- The tutorial's Python reads run right after its writes, nothing evicted: "
                 "its figures are warm only, and are compared with imgstore's warm figures.")
    L += ["", "## Headline", ""]
    rows = headline(stats, summary)
    if rows:
        L += ["Per format, at the largest N measured: this project's figure, the tutorial's "
              "Python code (× > 1: imgstore faster), LibTorch's stock DataLoader over the same "
              "Dataset (epochs, same threads and cache state), and the ratio to the limit "
              "(≤ 1: slower than the limit; PNG payloads against the PNG decode limit, raw "
              "ones against the RAM gather, unless the bench's summary names another). Stores "
              "and reads are warm; cold reads are under All medians.", "",
              "| format | measurement | N | cache | imgstore (impl variant) | images/s | "
              "tutorial images/s | × tutorial | stock images/s | × stock | limit | × limit |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"] + rows
    else:
        L.append("No imgstore measurements to compare (no imgstore or prefetch rows).")
    single = [s for s in stats.values() if s["experiment"] in ("store_one", "read_one")]
    if single:
        L += ["", "## One image", "", "| experiment | impl | format | variant | cache | "
              "median | min..max |", "|---|---|---|---|---|---|---|"]
        for s in sorted(single, key=lambda s: (s["experiment"], fmt_rank(s["format"]),
                                               s["impl"], s["variant"], s["cache"])):
            L.append(f"| {s['experiment']} | {s['impl']} | {s['format']} | {s['variant']} | "
                     f"{s['cache']} | {s['median_s'] * 1e3:.3f} ms | {s['min_s'] * 1e3:.3f}.."
                     f"{s['max_s'] * 1e3:.3f} ms |")
    L += ["", "## Plots", ""]
    titles = {
        "store_many_loglog.png": "Store N images, log-log",
        "store_many_linear.png": "Store N images, linear",
        "read_many_loglog.png": "Read N images, sequential and shuffled, log-log",
        "read_many_linear.png": "Read N images, sequential and shuffled, linear",
        "disk_usage.png": "Bytes on disk vs N",
        "epoch_throughput.png": "Shuffled epoch throughput by format, warm vs cold",
        "thread_scaling.png": "Epoch throughput vs loader threads, limits dashed",
    }
    for name in made:
        L += [f"### {titles.get(name, name)}", "", f"![{titles.get(name, name)}]({name})", ""]
    if not made:
        L.append("No plots: no measurements to plot.")
    L += ["", "## All medians", "", "| experiment | impl | format | variant | N | threads | "
          "cache | order | runs | median s | min..max s | images/s | bytes |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(stats.values(), key=lambda s: (s["experiment"], fmt_rank(s["format"]),
                                                   s["variant"], s["impl"], s["n"],
                                                   s["threads"], s["cache"], s["order"])):
        L.append(f"| {s['experiment']} | {s['impl']} | {s['format']} | {s['variant']} | "
                 f"{s['n']} | {s['threads']} | {s['cache']} | {s['order']} | {s['runs']} | "
                 f"{s['median_s']:.6g} | {s['min_s']:.6g}..{s['max_s']:.6g} | "
                 f"{fmt_ips(s['images_per_s'])} | {s['bytes']} |")
    all_notes = [str(n) for n in config.get("notes", [])] + notes
    L += ["", "## Notes", ""] + ([f"- {n}" for n in all_notes] or ["- none"])
    (out / "report.md").write_text("\n".join(L) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="imgstore-bench results.json")
    p.add_argument("--out", required=True, help="directory for the PNG plots and report.md")
    args = p.parse_args()

    doc, rows = load_results(args.json)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".plot_report_probe"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        fail(f"--out {args.out}: cannot write there ({e.strerror or e})")

    import_matplotlib()
    stats = summarise(rows)
    made, notes = [], []
    if not rows:
        notes.append("results.json holds no measurements.")
    if rows and not any(r["impl"] == "tutorial" for r in rows):
        notes.append("No tutorial rows: the tutorial's Python code did not run (Python "
                     "libraries missing, or skipped).")
    try:
        for plot in (plot_store_many, plot_read_many, plot_disk_usage, plot_epoch, plot_threads):
            plot(stats, out, made, notes)
        write_report(doc, stats, summary_index(doc), made, notes, out)
    except OSError as e:
        fail(f"{e.filename or args.out}: {e.strerror or e}", 1)
    print(f"plot_report: wrote {len(made)} plots and report.md to {out}", file=sys.stderr)
    for name in made + ["report.md"]:
        print(out / name)


if __name__ == "__main__":
    main()
