"""The benchmark harness itself: sizes, cells, counting, size checks, failures and cleanup."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Tuple

import pytest

import pyipc
from pyipc._util import format_size
from pyipc.bench import output, runner, transports

CPUS = runner.pick_cpus()


def _bench_files() -> set[str]:
    """What runs of this process left in /dev/shm (the names carry its pid:
    other runs on the machine do not count)."""
    pid = f"-{os.getpid()}-"
    return {f for f in os.listdir("/dev/shm") if f.startswith("pyipc-bench-") and pid in f}


@pytest.mark.quick
def test_parse_sizes() -> None:
    """Sizes accept plain bytes and binary K/M suffixes, in any case."""
    assert runner.parse_sizes("64,4K,64k,1M,2KiB,3MB") == [64, 4096, 65536, 1 << 20, 2048, 3 << 20]


@pytest.mark.quick
@pytest.mark.parametrize("text", ["", "4G", "K", "-1", "0", "1.5K", "64,,4K"])
def test_parse_sizes_rejects(text: str) -> None:
    """Anything but a positive whole size with a known unit is a ValueError."""
    with pytest.raises(ValueError):
        runner.parse_sizes(text)


@pytest.mark.quick
def test_format_size() -> None:
    """Whole KiB and MiB are written as such, the rest in bytes."""
    assert [format_size(s) for s in (64, 1000, 4096, 1 << 20, 3 << 20, 1500 * 1024)] == [
        "64 B", "1000 B", "4 KiB", "1 MiB", "3 MiB", "1500 KiB"]


@pytest.mark.quick
def test_pick_cpus() -> None:
    """With two or more CPUs, producer and consumer get two different ones we may run on."""
    consumer, producer = CPUS
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        assert (consumer, producer) == (None, None)
    else:
        assert consumer in allowed and producer in allowed and consumer != producer


@pytest.mark.quick
def test_cells_skip_capped_and_object_transports() -> None:
    """Message queues skip sizes above 8 KiB with a reason; object rows run once; latency skips batches."""
    skipped: list[dict[str, Any]] = []
    cells = runner._cells(["posix-ipc", "mp-queue-obj", "ring-batch"], [64, 4096, 65536], "throughput",
                         skipped)
    runnable = [(t.name, s) for t, s in cells]
    if transports.TRANSPORTS["posix-ipc"].unavailable() is None:
        assert ("posix-ipc", 64) in runnable and ("posix-ipc", 4096) in runnable
        assert {"transport": "posix-ipc", "size": 65536,
                "reason": "messages are capped at 8 KiB"} in skipped
    assert runnable.count(("mp-queue-obj", None)) == 1
    assert [s for t, s in cells if t.name == "ring-batch"] == [64, 4096, 65536]

    skipped = []
    cells = runner._cells(["ring", "ring-batch", "mp-queue-obj"], [64], "latency", skipped)
    assert [(t.name, s) for t, s in cells] == [("ring", runner.LATENCY_SIZE)]
    assert {s["transport"] for s in skipped} == {"ring-batch", "mp-queue-obj"}


def test_unknown_transport_raises() -> None:
    """run_bench refuses a name it does not know before running anything."""
    with pytest.raises(KeyError):
        runner.run_bench(["ring", "no-such"], [64], 0.1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(transports.TRANSPORTS))
def test_every_transport_delivers_everything(name: str) -> None:
    """Each available transport carries every message, whole, at 64 B and 64 KiB (or its cap)."""
    t = transports.TRANSPORTS[name]
    reason = t.unavailable()
    if reason is not None:
        pytest.skip(reason)
    before = _bench_files()
    sizes = [64, 65536] if t.max_size is None else [64, t.max_size]
    for size in sizes:
        r = runner.run_throughput(t, size, 0.05, CPUS)
        assert "error" not in r, r
        assert r["messages"] > 0 and r["msg_per_s"] > 0
    assert _bench_files() == before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["ring", "mp-pipe", "raw-socket"])
def test_latency_run(name: str) -> None:
    """A ping-pong run reports ordered percentiles over many rounds."""
    r = runner.run_latency(transports.TRANSPORTS[name], 0.1, CPUS)
    assert "error" not in r, r
    assert r["rounds"] > 0
    assert 0 < r["p50_us"] <= r["p99_us"]


# ---- transports that misbehave on purpose, built from the raw pipe one ----


def _temp_file_state(size: int) -> Tuple[int, int, str]:
    """A raw pipe plus a temporary file that destroy() must remove."""
    fd, path = tempfile.mkstemp(prefix="pyipc-bench-test-")
    os.close(fd)
    r, w = os.pipe()
    return r, w, path


def _temp_file_destroy(state: Tuple[int, int, str]) -> None:
    os.close(state[0])
    os.close(state[1])
    os.unlink(state[2])


def _broken(sender: Callable[[Any, int], Any], name: str = "broken") -> transports.Transport:
    raw = transports.TRANSPORTS["raw-pipe"]
    return transports.Transport(
        name, "bytes", "", (), _temp_file_state, sender,
        lambda s, size: raw.receiver(s[:2], size), _temp_file_destroy,
    )


def _short_sender(state: Any, size: int) -> Any:
    send, close = transports.TRANSPORTS["raw-pipe"].sender(state[:2], size)
    return (lambda msg: send(msg[:-1] if msg else msg)), close


def _garbled_sender(state: Any, size: int) -> Any:
    send, close = transports.TRANSPORTS["raw-pipe"].sender(state[:2], size)
    return (lambda msg: send(bytes(len(msg)))), close


def _lossy_sender(state: Any, size: int) -> Any:
    send, close = transports.TRANSPORTS["raw-pipe"].sender(state[:2], size)
    calls = [0]

    def lossy(msg: bytes) -> None:
        calls[0] += 1
        if calls[0] % 2 or not msg:
            send(msg)

    return lossy, close


def _failing_sender(state: Any, size: int) -> Any:
    def fail(msg: bytes) -> None:
        raise RuntimeError("the wire is cut")

    return fail, lambda: None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sender,words", [
    (_short_sender, "wrong size"),
    (_garbled_sender, "contents"),
    (_lossy_sender, "received"),
    (_failing_sender, "producer: RuntimeError: the wire is cut"),
])
def test_misbehaving_transport_is_reported_and_cleaned_up(sender: Any, words: str) -> None:
    """Truncated, garbled or lost messages and a crashing producer become a cell error, and destroy() still runs."""
    made: list[str] = []
    t = _broken(sender)
    create = t.create

    def tracking_create(size: int) -> Any:
        state = create(size)
        made.append(state[2])
        return state

    t.create = tracking_create
    # A crashing producer leaves the consumer waiting for a stop message that
    # never comes: the parent must stop it rather than wait for its timeout.
    r = runner.run_throughput(t, 64, 0.05, CPUS)
    assert words in r["error"]
    assert made and not os.path.exists(made[0])


@pytest.mark.timeout(60)
def test_report_table_and_json() -> None:
    """run_bench keeps the median of the runs, computes ratios to mp-queue, and renders table and JSON."""
    report = runner.run_bench(["ring", "mp-queue", "mp-queue-obj", "posix-ipc"], [64, 16384], 0.15,
                             repeat=3)
    rows = {(r["transport"], r["size"]): r for r in report.results}
    for key in [("ring", 64), ("ring", 16384), ("mp-queue", 64), ("mp-queue-obj", None)]:
        row = rows[key]
        assert "error" not in row, row
        assert row["msg_per_s"] == sorted(r["msg_per_s"] for r in row["runs"])[1]
    assert rows[("mp-queue", 16384)]["vs_mp_queue"] == 1.0
    assert rows[("mp-queue-obj", None)]["vs_mp_queue"] == 1.0
    assert rows[("mp-queue-obj", None)]["mb_per_s"] is None
    table = output.format_table(report)
    assert "messages of 64 B" in table and "messages of 16 KiB" in table
    assert "Python objects" in table
    if transports.TRANSPORTS["posix-ipc"].unavailable() is None:
        assert "posix-ipc at 16 KiB: messages are capped at 8 KiB" in table
    data = report.to_json()
    assert data["mode"] == "throughput" and data["repeat"] == 3
    assert len(data["results"]) == len(report.results)


def _too_large_sender(state: Any, size: int) -> Any:
    send, close = transports.TRANSPORTS["raw-pipe"].sender(state[:2], size)

    def limited(msg: bytes) -> None:
        if len(msg) > 1024:
            raise pyipc.MessageTooLarge("over this transport's limit")
        send(msg)

    return limited, close


@pytest.mark.timeout(60)
def test_message_too_large_is_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transport that cannot carry a size is listed as skipped at that size, not as failed."""
    monkeypatch.setitem(transports.TRANSPORTS, "limited", _broken(_too_large_sender, "limited"))
    report = runner.run_bench(["limited"], [64, 4096], 0.1, repeat=2)
    assert [(r["transport"], r["size"]) for r in report.results] == [("limited", 64)]
    assert "error" not in report.results[0]
    assert report.skipped == [{"transport": "limited", "size": 4096,
                               "reason": "a 4 KiB message is too large for it"}]


@pytest.mark.timeout(60)
def test_channel_rows_get_their_baseline_ratio() -> None:
    """A channel row is compared with its baseline measured in the same run, in the table's last section."""
    report = runner.run_bench(["pipe", "pipe-batch", "raw-pipe", "mqueue"], [64], 0.1, repeat=1)
    rows = {r["transport"]: r for r in report.results}
    for name in ("pipe", "pipe-batch"):
        assert rows[name]["baseline"] == "raw-pipe"
        assert rows[name]["vs_baseline"] == pytest.approx(
            rows[name]["msg_per_s"] / rows["raw-pipe"]["msg_per_s"])
    assert "vs_baseline" not in rows["raw-pipe"]
    assert "vs_baseline" not in rows["mqueue"]  # posix-ipc did not run
    table = output.format_table(report)
    assert "against the same kernel primitive" in table
    assert "pipe-batch" in table.split("against the same kernel primitive")[1]


@pytest.mark.timeout(300)
def test_lease_bench_moves_whole_messages() -> None:
    """pyipc bench --leases: every contender that runs delivers whole, checked messages, and the table shows them against the limit."""
    pytest.importorskip("numpy")
    from pyipc.bench import leases

    sizes = [64 << 10]
    report = leases.run_lease_bench(sizes, names=["lease", "put/get_into", "queue", "shared_memory"], repeat=1)
    for name in ("lease", "put/get_into", "queue", "shared_memory"):
        cell = report["cells"][f"{name}@{sizes[0]}"]
        assert cell["ok"] and cell["rate"] > 0, (name, cell)
    table = leases.format_lease_table(report)
    assert "lease/copy" in table and "own cost per leased message" in table
    assert report["lease_cost_us"] > 0


@pytest.mark.timeout(60)
def test_bench_modes_reject_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """--async needs --latency, --leases needs whole 8-byte sizes: one-line usage errors."""
    from pyipc.cli import main

    assert main(["bench", "--async"]) == 2
    assert main(["bench", "--leases", "--sizes", "3"]) == 2
    assert main(["bench", "--leases", "--transports", "nope"]) == 2
    assert main(["bench", "--tcp"]) == 2
    assert main(["bench", "--rpc", "--transports", "nope"]) == 2
    assert main(["bench", "--rpc", "--tcp", "--transports", "mp.managers"]) == 2
    assert main(["bench", "--rpc", "--topic"]) == 2
    assert main(["bench", "--rpc", "--sizes", "64", "--latency"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 8 and all(line.startswith("pyipc: ") for line in err)


@pytest.mark.timeout(120)
def test_bench_rpc_prints_its_table(tmp_path: Any) -> None:
    """`pyipc bench --rpc` (run outside the source tree) measures pyipc.rpc
    beside a baseline: sequential, submit and acall rows with figures (not
    "skipped: failed"), the idle cost, and the same rows in --json."""
    import json
    import subprocess
    import sys

    out_json = tmp_path / "rpc.json"
    out = subprocess.run([sys.executable, "-m", "pyipc", "bench", "--rpc", "--transports",
                          "pyipc.rpc,mp.connection", "--duration", "0.2", "--quiet",
                          "--json", str(out_json)],
                         capture_output=True, text=True, timeout=110, check=False, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # --quiet
    assert "skipped" not in out.stdout, out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    measured = {}
    for r in rows[1:]:
        if r[0] == "idle":
            continue
        label = " ".join(r[: 3 if r[1] in ("submit", "acall") else 2])
        number = r[3 if r[1] in ("submit", "acall") else 2]
        measured[label] = float(number.replace(",", ""))
    for payload in ("int", "1KiB"):
        for label in ("pyipc.rpc", "mp.connection", "pyipc.rpc submit", "pyipc.rpc acall"):
            assert measured[f"{label} {payload}"] > 0, (label, payload, out.stdout)
    assert "idle pyipc.rpc server:" in out.stdout
    report = json.loads(out_json.read_text())
    assert len(report["rows"]) == 8 and all("skipped" not in r for r in report["rows"])
    assert {"server_pct", "client_pct"} <= set(report["idle"])


@pytest.mark.timeout(120)
def test_rpc_bench_large_payload() -> None:
    """The 64 MiB round trips (benches/bench_rpc.py --payloads 64MiB) measure pyipc.rpc and a
    baseline, give back what they sent (each cell checks), skip contenders not made for it, and
    run no pipelined rows."""
    from pyipc.bench.rpc import run_rpc_bench

    rows = run_rpc_bench(0.2, ["pyipc.rpc", "mp.connection", "grpc"], ["64MiB"])
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"pyipc.rpc", "mp.connection", "grpc"}, rows
    for name in ("pyipc.rpc", "mp.connection"):
        assert "skipped" not in by_name[name] and by_name[name]["calls"] >= 1, rows
    assert by_name["grpc"]["skipped"].startswith(("not run with 64MiB", "grpc is not installed")), rows


@pytest.mark.timeout(120)
def test_benches_directory_collects() -> None:
    """Every module in benches/ imports and pytest collects it (a moved helper
    once broke `python benches/bench_rpc.py` with nothing else noticing)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    benches = os.path.join(root, "benches")
    if not os.path.isdir(benches):
        pytest.skip("benches/ is not beside the tests (an installed copy is tested)")
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", benches],
                         capture_output=True, text=True, timeout=100, cwd=root, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for module in sorted(os.listdir(benches)):
        if module.startswith("bench_") and module.endswith(".py"):
            assert f"benches/{module}::" in out.stdout, f"{module} collected nothing"
