"""A camera and three analysers: 1080p RGB frames broadcast to subscriber processes.

The publisher writes each frame once, in place (``reserve``), into two
topics:

* ``frames`` ("block"): read by a subscriber that sums every frame, and by
  one that writes every tenth frame to a file.  Neither loses a frame: the
  publisher waits for the slower of them.
* ``preview`` ("overwrite"): read by a deliberately slow subscriber.  The
  publisher never waits for it; it skips what it could not keep up with and
  says how many frames it ``missed``.

Subscribers read frames in place with ``view()``: a NumPy array over the
shared memory, no copy.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time

import numpy as np

import pyipc

FRAMES = 60
SHAPE = (1080, 1920, 3)
FRAME_BYTES = int(np.prod(SHAPE))


def paint(buf: memoryview, k: int) -> None:
    """Frame k: every pixel k % 251, and the frame number in its first 8 bytes."""
    frame = np.frombuffer(buf, dtype=np.uint8)
    frame.fill(k % 251)
    frame[:8] = np.frombuffer(k.to_bytes(8, "little"), dtype=np.uint8)
    del frame


def expected_sum(k: int) -> int:
    return (FRAME_BYTES - 8) * (k % 251) + sum(k.to_bytes(8, "little"))


def summer(name: str, ready: "mp.synchronize.Barrier", out: "mp.Queue[object]") -> None:
    sub = pyipc.Subscriber(name)
    ready.wait()
    ok, k = True, 0
    try:
        while True:
            with sub.view() as buf:
                frame = np.frombuffer(buf, dtype=np.uint8).reshape(SHAPE)
                ok &= int(frame.sum(dtype=np.uint64)) == expected_sum(k)
                del frame
            k += 1
    except pyipc.ShutDown:
        pass
    out.put(("summer", k, ok))


def writer(name: str, folder: str, ready: "mp.synchronize.Barrier", out: "mp.Queue[object]") -> None:
    sub = pyipc.Subscriber(name)
    ready.wait()
    written = k = 0
    try:
        while True:
            with sub.view() as buf:
                if k % 10 == 0:
                    with open(os.path.join(folder, f"frame-{k:04d}.rgb"), "wb") as f:
                        f.write(buf)
                    written += 1
            k += 1
    except pyipc.ShutDown:
        pass
    out.put(("writer", written, len(os.listdir(folder))))


def slow(name: str, ready: "mp.synchronize.Barrier", out: "mp.Queue[object]") -> None:
    sub = pyipc.Subscriber(name)
    ready.wait()
    got, last, in_order = 0, -1, True
    try:
        while True:
            with sub.view() as buf:
                k = int.from_bytes(bytes(buf[:8]), "little")
            in_order &= k > last
            last = k
            got += 1
            time.sleep(0.02)  # an expensive analysis
    except pyipc.ShutDown:
        pass
    out.put(("slow", got, sub.missed, in_order))


def main() -> None:
    ctx = mp.get_context()
    tag = f"{os.getpid()}-{time.monotonic_ns() % 10**6}"
    frames = pyipc.Publisher(f"pyipc-frames-{tag}", create=True, capacity=4 * FRAME_BYTES)
    preview = pyipc.Publisher(f"pyipc-frames-preview-{tag}", create=True, capacity=2 * FRAME_BYTES,
                              overflow="overwrite")
    with frames, preview, tempfile.TemporaryDirectory() as folder:
        try:
            ready = ctx.Barrier(4)
            out = ctx.Queue()
            procs = [
                ctx.Process(target=summer, args=(frames.name, ready, out)),
                ctx.Process(target=writer, args=(frames.name, folder, ready, out)),
                ctx.Process(target=slow, args=(preview.name, ready, out)),
            ]
            for p in procs:
                p.start()
            ready.wait()  # every subscriber is attached: none misses the first frame
            for k in range(FRAMES):
                for topic in (frames, preview):
                    with topic.reserve(FRAME_BYTES) as buf:
                        paint(buf, k)
            frames.shutdown()
            preview.shutdown()
            results = {r[0]: r[1:] for r in (out.get(timeout=60) for _ in procs)}
            for p in procs:
                p.join(30)
        finally:
            frames.unlink()
            preview.unlink()
    n, ok = results["summer"]
    written, files = results["writer"]
    got, missed, in_order = results["slow"]
    print(f"topic_frames: {FRAMES} frames of 1920x1080 RGB published")
    print(f"topic_frames: summer checked {n} frames, sums ok: {ok}")
    print(f"topic_frames: writer wrote {written} frames ({files} files)")
    print(f"topic_frames: slow subscriber got {got}, missed {missed}, "
          f"got + missed == published: {got + missed == FRAMES}, in order: {in_order}")


if __name__ == "__main__":
    main()
