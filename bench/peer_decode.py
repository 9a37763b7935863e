#!/usr/bin/python3
"""PIL peer for `medsearch bench decode`: decode + grayscale + resize, timed.

For each file, the bytes are read once; each run then does what a Python
pipeline would do for one upload: Image.open on the bytes, convert("L"),
resize to size x size. Two resizes are timed:
  lanczos     Image.LANCZOS (the same filter family as MedSearch's Lanczos3)
  bilinear-rg Image.BILINEAR with reducing_gap=3.0 (PIL's fast antialiased path:
              a box reduce first, then bilinear)
Prints one tab-separated line per file: path, then the median wall-clock ms
of lanczos and bilinear-rg, then their median CPU ms of this thread (PIL
decodes and resizes on the calling thread, so CPU time is the same work
without the waits caused by other processes). Exits 77 (skip) when PIL is
missing.
Run with /usr/bin/python3 (Debian's python3-pil).
"""
import argparse
import io
import statistics
import sys
import time


def median_ms(fn, runs):
    """Median wall time and median CPU time of this thread, in ms."""
    fn()  # warm-up: imports, caches
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return statistics.median(wall) * 1000.0, statistics.median(cpu) * 1000.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    try:
        import PIL
        from PIL import Image
    except ImportError:
        print("skip: this python has no PIL (install python3-pil)", file=sys.stderr)
        return 77
    print(f"# PIL {PIL.__version__}, python {sys.version.split()[0]}, 1 thread", flush=True)
    size = (args.size, args.size)
    for path in args.files:
        with open(path, "rb") as f:
            data = f.read()

        def lanczos():
            Image.open(io.BytesIO(data)).convert("L").resize(size, Image.LANCZOS)

        def bilinear_rg():
            Image.open(io.BytesIO(data)).convert("L").resize(size, Image.BILINEAR, reducing_gap=3.0)

        lz_wall, lz_cpu = median_ms(lanczos, args.runs)
        bl_wall, bl_cpu = median_ms(bilinear_rg, args.runs)
        print(f"{path}\t{lz_wall:.3f}\t{bl_wall:.3f}\t{lz_cpu:.3f}\t{bl_cpu:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
