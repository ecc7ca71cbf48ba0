"""What running a site costs the cameras: the 8-source fps of one pipeline's `stream_many`, plain against the same with
`--serve` (the site's server, metrics and events, scraped each second as Prometheus would, /api/state polled twice a
second as the live page does), and with a viewer on every MJPEG tile too; interleaved over rounds, in one run. The
fps ratio is noisy on a shared box, so it also says what the site takes directly: the frame loop's time in its
`observe` calls and its own threads' CPU, as shares of the run.

    python -m fusionrt.benchmarks.site_cost BUNDLE [--sources 8] [--rounds 5] [--seconds 5] [--out DIR]

Goal: --serve costs under 5 % of the aggregate fps (the ratio's median over the rounds, with its spread)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from fusionrt.benchmarks.report import machine_info
from fusionrt.benchmarks.stream_fps import TEXT, paced_frames, write_pan_video
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.video import VideoSource

__all__ = ["site_cost", "GOAL_COST"]

GOAL_COST = 0.05
MODES = ("plain", "serve (scraped)", "serve + live view of every tile")


class _Clients:
    """Prometheus's scrape each second, the live page's /api/state twice a second, and (with `view`) a reader of
    every source's MJPEG stream: on threads of another process (as Prometheus and a browser are), until `stop()`."""

    def __init__(self, url: str, sources: int, view: bool):
        self.stop_event, self.threads = threading.Event(), []
        self._every(f"{url}/metrics", 1.0)
        self._every(f"{url}/api/state", 0.5)
        for n in range(sources if view else 0):
            self._start(self._watch, url, n)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _every(self, url: str, period_s: float) -> None:
        def poll():
            while not self.stop_event.wait(period_s):
                urllib.request.urlopen(url, timeout=5).read()
        self._start(poll)

    def _watch(self, url: str, n: int) -> None:
        with urllib.request.urlopen(f"{url}/mjpeg/{n}", timeout=5) as stream:
            while not self.stop_event.is_set() and stream.read(65536):
                pass

    def stop(self) -> None:
        self.stop_event.set()


def _clients_main(url: str, sources: int, view: bool, seconds: float) -> None:
    clients = _Clients(url, sources, view)
    time.sleep(seconds)
    clients.stop()


def _site_threads_cpu_s() -> float:
    """CPU seconds the site's own threads (its HTTP server and the executor threads that encode frames and metrics)
    have used so far, from /proc (Linux)."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith(("fusionrt-site", "asyncio_")) and thread.native_id is not None:
            try:
                fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def _run(pipe, decoded: list, n: int, seconds: float, mode: str) -> dict:
    """Aggregate fps of `n` paced cameras for `seconds` under `mode`, and what the site cost the frame loop (its
    observe calls) and the machine (its threads' CPU)."""
    from fusionrt.monitor import Site, SiteOptions

    sources = {f"cam{i}": paced_frames(decoded, 60.0, seconds) for i in range(n)}
    site = Site(pipe, SiteOptions(serve="127.0.0.1:0")) if mode != "plain" else None
    spent = [0.0]
    if site is not None:
        observe = site.observe

        def timed(results, timings):
            began = time.perf_counter()
            observe(results, timings)
            spent[0] += time.perf_counter() - began
        site.observe = timed
    clients = None
    try:
        count, start = 0, time.perf_counter()
        with pipe.stream_many(sources, TEXT, policy="latest", monitor=site) as streams:
            for _ in streams:
                count += 1
                if site is not None and clients is None:  # the tiles exist once the stream runs
                    clients = subprocess.Popen([sys.executable, "-m", "fusionrt.benchmarks.site_cost", "--clients",
                                                site.url, str(n), str(int(mode == MODES[2])), str(seconds + 2)])
        wall = time.perf_counter() - start
        cpu = _site_threads_cpu_s() if site is not None else 0.0
        return {"fps": count / wall, "observe_share": spent[0] / wall, "site_threads_cpu_share": cpu / wall}
    finally:
        if clients is not None:
            clients.kill()
            clients.wait()
        if site is not None:
            site.close()


def site_cost(bundle, video: Path, n: int = 8, rounds: int = 5, seconds: float = 5.0, precision: str = "auto") -> dict:
    with VideoSource(str(video)) as source:
        decoded = [f for _, f in zip(range(60), source)]
    runs = {mode: [] for mode in MODES}
    with Pipeline.load(bundle, precision=precision) as pipe:
        pipe.classify(decoded[0], TEXT)
        for _ in range(rounds):  # interleaved: each round runs every mode, so drift on a shared box hits all
            for mode in MODES:
                runs[mode].append(_run(pipe, decoded, n, seconds, mode))
        backend, chosen = pipe.backend_name, pipe.precision
    fps = {m: [round(r["fps"], 1) for r in values] for m, values in runs.items()}
    result = {"machine": machine_info(), "backend": backend, "precision": chosen, "sources": n, "rounds": rounds,
              "seconds": seconds, "fps": fps}
    for mode in MODES[1:]:
        ratios = np.asarray(fps[mode]) / np.asarray(fps["plain"])
        result[f"cost: {mode}"] = {
            "fps_median": round(1 - float(np.median(ratios)), 4),
            "fps_spread": [round(1 - float(ratios.max()), 4), round(1 - float(ratios.min()), 4)],
            "frame_loop_share": round(float(np.median([r["observe_share"] for r in runs[mode]])), 5),
            "site_threads_cpu_share": round(float(np.median([r["site_threads_cpu_share"] for r in runs[mode]])), 5)}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?")
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", help="folder for site_cost.json")
    parser.add_argument("--clients", nargs=4, metavar=("URL", "SOURCES", "VIEW", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients:  # the other process: the scraper, the page's poll and the viewers
        url, sources, view, seconds = args.clients
        _clients_main(url, int(sources), view == "1", float(seconds))
        return 0
    if args.bundle is None:
        parser.error("expected a BUNDLE folder")
    with tempfile.TemporaryDirectory() as tmp:
        result = site_cost(args.bundle, write_pan_video(Path(tmp) / "pan.mp4", 60), args.sources, args.rounds,
                           args.seconds, args.precision)
    for mode in MODES:
        values = result["fps"][mode]
        print(f"{mode:34s} aggregate fps median {np.median(values):7.1f}  (rounds: {values})")
    for mode in MODES[1:]:
        cost = result[f"cost: {mode}"]
        print(f"cost of {mode}: fps {cost['fps_median']:.1%} (rounds {cost['fps_spread'][0]:.1%} to "
              f"{cost['fps_spread'][1]:.1%}); the frame loop's time in the site {cost['frame_loop_share']:.2%}; the "
              f"site's threads {cost['site_threads_cpu_share']:.2%} of a core (goal for --serve: < {GOAL_COST:.0%})")
    print(json.dumps(result["machine"]))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "site_cost.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
