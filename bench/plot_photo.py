#!/usr/bin/python3
"""Plot of imgstore-photo-throughput's photo_throughput.json: images/s per output size S for the
prefetch loader (per store), the stock DataLoader, the decode limit and torchvision's best.

  /usr/bin/python3 bench/plot_photo.py --json out/photo_throughput/photo_throughput.json \
      --out out/photo_throughput

Writes photo_throughput.png into --out. Uses plot_report.py's matplotlib loading and saving.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plot_report  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    doc = json.load(open(a.json))
    rows = doc["results"]
    sizes = sorted({r["size"] for r in rows}, reverse=True)
    series = {}
    for r in rows:
        series.setdefault(f"{r['format']} prefetch", {})[r["size"]] = r["prefetch"]["median"]
        series.setdefault(f"{r['format']} stock DataLoader", {})[r["size"]] = r["stock"]["median"]
        series.setdefault("decode limit", {})[r["size"]] = r["decode_limit"]
        if r["torchvision_best"] > 0:
            series.setdefault("torchvision best", {})[r["size"]] = r["torchvision_best"]
    plot_report.import_matplotlib()
    plt = plot_report.plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + k * width for i in range(len(sizes))]
        ax.bar(xs, [values.get(s, 0) for s in sizes], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))])
    ax.set_xticklabels([f"S = {s}" for s in sizes])
    ax.set_ylabel("images/s (median)")
    s = doc["settings"]
    ax.set_title(f"RandomResizedCrop + flip + normalise, batch {s['batch_size']}, "
                 f"{s['loader_threads']} loader threads")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    plot_report.save(fig, out, "photo_throughput.png", made)
    print(f"wrote {out / made[0]}")


if __name__ == "__main__":
    main()
