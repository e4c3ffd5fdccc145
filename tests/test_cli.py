"""The ``pyipc`` command, run as a real subprocess (``python -m pyipc`` and the script)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

import pyipc

PY_M = [sys.executable, "-m", "pyipc"]


def _script() -> List[str]:
    here = Path(sys.executable).parent / "pyipc"
    if here.exists():
        return [str(here)]
    found = shutil.which("pyipc")
    if found is None:
        pytest.skip("the pyipc console script is not installed")
    return [found]


def run(*args: str, entry: List[str] = PY_M, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*entry, *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_error(p: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert p.returncode == code, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert words in p.stderr


def shm_files() -> set[str]:
    return set(os.listdir("/dev/shm"))


@pytest.fixture
def junk(shm_name: Callable[[], str]) -> str:
    """A file in /dev/shm that is not a ring."""
    name = shm_name()
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"not a ring" * 500)
    return name


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cmd", [[], ["bench"], ["ls"], ["info"], ["rm"]])
@pytest.mark.parametrize("which", ["module", "script"])
def test_help_on_every_command(cmd: List[str], which: str) -> None:
    """Every command (and the top level) answers --help with exit code 0, from both entry points."""
    entry = PY_M if which == "module" else _script()
    p = run(*cmd, "--help", entry=entry)
    assert p.returncode == 0, p.stderr
    assert "usage: pyipc" in p.stdout


@pytest.mark.timeout(60)
def test_no_command_is_a_usage_error() -> None:
    """Running pyipc with no command prints usage and exits 2."""
    assert_clean_error(run(), 2, "usage")


@pytest.mark.timeout(60)
def test_unknown_option_is_a_usage_error() -> None:
    """An unknown option exits 2 without a traceback."""
    assert_clean_error(run("ls", "--bogus"), 2, "unrecognized arguments")


@pytest.mark.timeout(60)
def test_ls_lists_a_ring_with_live_creator(shm_name: Callable[[], str], junk: str) -> None:
    """ls shows a ring's capacity and queued messages, says its creator is alive, and skips non-rings."""
    name = shm_name()
    with pyipc.RingBuffer(name, create=True, capacity=4096) as ring:
        ring.put(b"a")
        ring.put(b"bc")
        for entry in (PY_M, _script()):
            p = run("ls", entry=entry)
            assert p.returncode == 0, p.stderr
            line = next(ln for ln in p.stdout.splitlines() if ln.split()[0] == name)
            fields = line.split()
            assert fields[1] == str(ring.capacity)
            assert fields[2] == "2"
            assert fields[4] == "0"  # no open leases
            assert fields[5] == str(os.getpid())
            assert fields[6] == "yes"
            assert junk not in p.stdout


@pytest.mark.timeout(60)
def test_ls_json_and_dead_creator(shm_name: Callable[[], str]) -> None:
    """A ring whose creator has exited is listed with creator_alive false (and 'no' in the table)."""
    name = shm_name()
    code = f"import pyipc; pyipc.RingBuffer({name!r}, create=True).put(b'x')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    p = run("ls", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert rows[name]["messages"] == 1
    assert rows[name]["creator_alive"] is False
    table = run("ls").stdout
    assert next(ln for ln in table.splitlines() if ln.startswith(name + " ")).split()[-1] == "no"


@pytest.mark.timeout(60)
def test_info_shows_header_and_counters(shm_name: Callable[[], str]) -> None:
    """info prints capacity, version, shutdown state, creator liveness and the stats() counters."""
    name = shm_name()
    with pyipc.RingBuffer(name, create=True, capacity=8192) as ring:
        ring.put(b"hello")
        ring.put(b"world!")
        ring.get()
        ring.shutdown()
        p = run("info", "/" + name)
        assert p.returncode == 0, p.stderr
        fields = dict(ln.split(None, 1) for ln in p.stdout.splitlines() if ln.strip()
                      and not ln.startswith("lock"))
        assert fields["name"] == name
        assert fields["capacity"].startswith(str(ring.capacity))
        assert fields["max_message_size"] == str(ring.max_message_size)
        assert fields["shutdown"] == "shut down"
        assert fields["creator_pid"] == f"{os.getpid()} (alive)"
        assert fields["puts"] == "2" and fields["gets"] == "1"
        assert fields["bytes_put"] == "11" and fields["bytes_got"] == "5"
        assert fields["messages"] == "1"
        assert "lock recoveries" in p.stdout

        j = json.loads(run("info", name, "--json").stdout)
        assert j["stats"] == ring.stats()
        assert j["version"] == ring.info()["version"]
        assert j["creator_alive"] is True


@pytest.mark.timeout(60)
def test_info_errors(shm_name: Callable[[], str], junk: str) -> None:
    """info: a missing ring and a corrupted one exit 1, a malformed name exits 2, all without tracebacks."""
    assert_clean_error(run("info", shm_name()), 1, "no ring named")
    assert_clean_error(run("info", junk), 1, "is not a pyipc segment")
    assert_clean_error(run("info", "a/b"), 2, "invalid ring name")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
@pytest.mark.timeout(60)
def test_info_permission_denied(shm_name: Callable[[], str]) -> None:
    """A ring we may not open is a one-line error with exit code 1."""
    name = shm_name()
    with pyipc.RingBuffer(name, create=True, mode=0o000):
        assert_clean_error(run("info", name), 1, "permission denied")


@pytest.mark.timeout(60)
def test_rm_removes_rings_and_reports_missing(shm_name: Callable[[], str]) -> None:
    """rm removes every ring named; a missing one is reported and makes the exit code 1."""
    a, b, missing = shm_name(), shm_name(), shm_name()
    pyipc.RingBuffer(a, create=True).close()
    pyipc.RingBuffer(b, create=True).close()
    p = run("rm", a, "/" + b)
    assert p.returncode == 0, p.stderr
    assert a not in shm_files() and b not in shm_files()

    c = shm_name()
    pyipc.RingBuffer(c, create=True).close()
    p = run("rm", missing, c, entry=_script())
    assert_clean_error(p, 1, f"no ring named {missing!r}")
    assert c not in shm_files()


@pytest.mark.timeout(60)
def test_rm_refuses_non_rings_unless_forced(junk: str) -> None:
    """rm leaves a file that is not a ring alone (exit 1) unless --force is given."""
    assert_clean_error(run("rm", junk), 1, "--force")
    assert junk in shm_files()
    p = run("rm", "--force", "-v", junk)
    assert p.returncode == 0, p.stderr
    assert f"removed {junk}" in p.stdout
    assert junk not in shm_files()


@pytest.mark.timeout(60)
def test_rm_bad_name_is_usage_error(shm_name: Callable[[], str]) -> None:
    """A malformed name is a usage error (exit 2) and nothing is removed."""
    a = shm_name()
    pyipc.RingBuffer(a, create=True).close()
    assert_clean_error(run("rm", a, "x/y"), 2, "invalid ring name")
    assert a in shm_files()


def _bench_files(pid: int) -> set[str]:
    """The segments and queues a bench run by process ``pid`` left (their
    names carry its pid: other runs on the machine do not count)."""
    return {f for f in shm_files() if f.startswith("pyipc-bench-") and f"-{pid}-" in f}


def run_with_pid(*args: str, timeout: float = 110) -> Tuple[subprocess.CompletedProcess[str], int]:
    p = subprocess.Popen([*PY_M, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        p.kill()
        p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), p.pid


@pytest.mark.timeout(120)
def test_bench_json(tmp_path: Path) -> None:
    """A short bench run prints the table, writes well-formed JSON and leaves no segment behind."""
    out = tmp_path / "out.json"
    p, pid = run_with_pid("bench", "--duration", "0.2", "--sizes", "64", "--transports",
                          "ring,mp-queue", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "msg/s" in p.stdout and "mp-queue" in p.stdout
    assert "] ring 64 B" in p.stderr  # the progress line
    data = json.loads(out.read_text())
    assert data["mode"] == "throughput"
    assert data["sizes"] == [64]
    assert data["repeat"] == 3
    assert data["pinned"] == (len(os.sched_getaffinity(0)) >= 2)
    rows = {r["transport"]: r for r in data["results"]}
    assert set(rows) == {"ring", "mp-queue"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["size"] == 64
        assert len(row["runs"]) == 3
        assert row["msg_per_s"] > 0
        assert row["mb_per_s"] == pytest.approx(row["msg_per_s"] * 64 / 1e6)
        assert sorted(r["msg_per_s"] for r in row["runs"])[1] == row["msg_per_s"]
    assert rows["mp-queue"]["vs_mp_queue"] == 1.0
    assert rows["ring"]["vs_mp_queue"] == pytest.approx(
        rows["ring"]["msg_per_s"] / rows["mp-queue"]["msg_per_s"])
    assert _bench_files(pid) == set()


@pytest.mark.timeout(120)
def test_bench_latency_json(tmp_path: Path) -> None:
    """--latency reports p50/p99 round trips per transport in the table and the JSON."""
    out = tmp_path / "lat.json"
    p = run("bench", "--latency", "--duration", "0.3", "--transports", "ring,mp-pipe,ring-batch",
            "--json", str(out), "--quiet", timeout=110)
    assert p.returncode == 0, p.stderr
    assert "p50" in p.stdout
    assert p.stderr == ""
    data = json.loads(out.read_text())
    assert data["mode"] == "latency"
    rows = {r["transport"]: r for r in data["results"]}
    assert set(rows) == {"ring", "mp-pipe"}
    for row in rows.values():
        assert 0 < row["p50_us"] <= row["p99_us"]
        assert row["rounds"] > 0
    assert [s["transport"] for s in data["skipped"]] == ["ring-batch"]


@pytest.mark.timeout(120)
def test_bench_plot(tmp_path: Path) -> None:
    """--plot writes a PNG when matplotlib is installed."""
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    p = run("bench", "--duration", "0.1", "--repeat", "1", "--sizes", "64,4K",
            "--transports", "ring,mp-pipe", "--plot", str(png), "-q", timeout=110)
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(60)
def test_bench_plot_without_matplotlib(tmp_path: Path) -> None:
    """Without matplotlib, --plot fails at once with an install hint (exit 1), before measuring."""
    code = ("import sys; sys.modules['matplotlib'] = None; from pyipc.cli import main; "
            f"sys.exit(main(['bench', '--transports', 'ring', '--plot', {str(tmp_path / 'x.png')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert_clean_error(p, 1, "pyipc[plot]")
    assert p.stdout == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,words", [
    (["--transports", "ring,nope"], "unknown transport"),
    (["--sizes", "64,12X"], "not a size"),
    (["--duration", "0"], "--duration"),
    (["--repeat", "0"], "--repeat"),
    (["--duration", "soon"], "invalid float"),
])
def test_bench_usage_errors(args: List[str], words: str) -> None:
    """Bad bench options exit 2 with a one-line message."""
    assert_clean_error(run("bench", *args), 2, words)


@pytest.mark.timeout(60)
def test_bench_list() -> None:
    """--list names every transport and says which cannot run here."""
    p = run("bench", "--list")
    assert p.returncode == 0
    names = [ln.split()[0] for ln in p.stdout.splitlines()]
    assert names[:2] == ["ring", "ring-batch"]
    assert {"mp-queue", "mp-pipe", "raw-pipe", "raw-socket", "iceoryx2"} <= set(names)


@pytest.fixture
def shm_dir(shm_name: Callable[[], str]) -> Iterator[str]:
    """A directory in /dev/shm where a segment's name would be, removed after."""
    name = shm_name()
    os.mkdir(f"/dev/shm/{name}")
    try:
        yield name
    finally:
        os.rmdir(f"/dev/shm/{name}")


@pytest.mark.parametrize("cmd", [["rm", "--force"], ["rm"], ["info"]])
def test_directory_is_a_one_line_error(cmd: List[str], shm_dir: str) -> None:
    """A directory where a segment should be is one `pyipc:` line and exit 1, never a traceback."""
    p = run(*cmd, shm_dir)
    assert_clean_error(p, 1, "pyipc: ")
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_commands_other_than_bench_do_not_import_the_harness(shm_name: Callable[[], str]) -> None:
    """`pyipc ls`, `info` and `rm` leave the benchmark harness unimported."""
    code = (
        "import sys; from pyipc.cli import main; "
        f"main(['ls']); main(['info', {shm_name()!r}]); main(['rm', {shm_name()!r}]); "
        "print(sorted(m for m in sys.modules if m.startswith('pyipc.bench.')))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
