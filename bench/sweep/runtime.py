"""The Ray runtime of a sweep: a private one bound to loopback or a cluster's, and what a trial
holds of it."""

from __future__ import annotations

import logging
import os

import ray
from rich.console import Console

from bench.spec import SpecError, SweepSpec
from bench.sweep.trial import TRIAL_DRIVER_CPU


def trial_footprint(spec: SweepSpec) -> dict[str, float]:
    """What one trial holds in all: the spec's ``resources``, or with ``workers_per_trial: N >
    1`` N times them (its workers) plus its own actor's :data:`TRIAL_DRIVER_CPU`."""
    workers = spec.workers_per_trial
    if workers == 1:
        return dict(spec.resources)
    return {"cpu": workers * spec.resources["cpu"] + TRIAL_DRIVER_CPU,
            "gpu": workers * spec.resources["gpu"]}


def trial_capacity(spec: SweepSpec) -> int | None:
    """How many trials on Ray Train workers the runtime fits at once (None: one-process
    trials, which Tune itself schedules by their resources)."""
    if spec.workers_per_trial == 1:
        return None
    available, need = ray.cluster_resources(), trial_footprint(spec)
    return max(1, min(int(available.get(name, 0.0) // need[resource])
                      for resource, name in (("cpu", "CPU"), ("gpu", "GPU"))
                      if need[resource] > 0))


def check_resources(spec: SweepSpec) -> None:
    """A trial must fit the Ray runtime: Tune would otherwise wait for resources forever."""
    available = ray.cluster_resources()
    need = trial_footprint(spec)
    workers = spec.workers_per_trial
    for resource, name in (("cpu", "CPU"), ("gpu", "GPU")):
        have = available.get(name, 0.0)
        if need[resource] > have:
            asks = (f"{need[resource]:g} {name}s" if workers == 1 else
                    f"{need[resource]:g} {name}s ({workers} workers at "
                    f"{spec.resources[resource]:g}"
                    + (f", plus {TRIAL_DRIVER_CPU:g} for the trial)" if resource == "cpu"
                       else ")"))
            raise SpecError(f"{spec.path}: resources.{resource}: a trial asks for {asks} but "
                            f"the Ray runtime has {have:g}; lower it (or join a cluster that "
                            f"has them)")


# Ray 2.60 rewrites a loopback node address to the host's network address (and its servers
# then listen on every interface) unless this setting is 0; with it, every listener of a
# private runtime (GCS, raylet, driver, workers, the runtime-env agent) binds 127.0.0.1. Ray
# reads it into ray._private.ray_constants.ENABLE_RAY_CLUSTER when it is imported, so a private
# runtime sets both: the variable for the processes it starts, the constant for this one.
LOOPBACK_SETTING = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_ray(address: str | None, num_cpus: int | None,
              console: Console | None = None) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a private, quiet runtime that only
    this machine can reach: every listener on 127.0.0.1. Should a Ray version listen elsewhere
    anyway, one line on ``console`` names the exposed ports."""
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR,
             "configure_logging": True}
    if address:
        host = check_reachable(address)
        if is_loopback(host):  # a cluster on this machine's loopback: join it there
            keep_loopback()
            ray.init(address=address, _node_ip_address="127.0.0.1", **quiet)
        else:
            ray.init(address=address, **quiet)
        return
    keep_loopback()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", **quiet)
    exposed = exposed_listeners()
    if exposed and console is not None:
        console.print(f"warning: the private Ray runtime listens beyond loopback: "
                      f"{', '.join(exposed)}; firewall these ports", highlight=False)


def keep_loopback() -> None:
    """Ray's cluster mode off (:data:`LOOPBACK_SETTING`): for the processes Ray starts from
    here, and for this one."""
    from ray._private import ray_constants

    os.environ[LOOPBACK_SETTING] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    import ipaddress
    import socket

    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


CONNECT_TIMEOUT_S = 5.0


def check_reachable(address: str) -> str:
    """The host of a Ray cluster's ``HOST:PORT`` (its GCS), after one TCP connection to it;
    ``ray.init`` itself would retry an unreachable address for minutes.

    Raises:
        ClusterUnreachable: ``address`` is not ``HOST:PORT`` (``auto`` and ``ray://`` are
            Ray's to resolve and pass through unchecked), or nothing answers there within
            :data:`CONNECT_TIMEOUT_S` seconds.
    """
    import socket

    if address == "auto" or "://" in address:
        return ""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(f"--address {address!r}: expected HOST:PORT of a Ray "
                                 f"cluster's head (e.g. 127.0.0.1:6379), 'auto', or ray://...")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S)\
            .close()
    except OSError as err:
        raise ClusterUnreachable(
            f"no Ray cluster answers at {address} ({err.strerror or err}); start one with "
            f"`ray start --head --port {port}` (on this machine's loopback, with "
            f"{LOOPBACK_SETTING}=0 and --node-ip-address 127.0.0.1), or leave out --address "
            f"for a private runtime") from None
    return host.strip("[]")


class ClusterUnreachable(ConnectionError):
    """``bench sweep --address`` names no reachable Ray cluster."""


def exposed_listeners() -> list[str]:
    """``name address:port`` of every listening socket of this process and its descendants
    (the private Ray runtime) that is not on a loopback address."""
    import ipaddress

    import psutil

    me = psutil.Process()
    pids = {me.pid, *(child.pid for child in me.children(recursive=True))}
    found = []
    for connection in psutil.net_connections(kind="inet"):
        if connection.status != psutil.CONN_LISTEN or connection.pid not in pids:
            continue
        address = ipaddress.ip_address(connection.laddr.ip)
        mapped = getattr(address, "ipv4_mapped", None)
        if not (mapped or address).is_loopback:
            try:
                name = psutil.Process(connection.pid).name()
            except psutil.Error:
                name = str(connection.pid)
            found.append(f"{name} {connection.laddr.ip}:{connection.laddr.port}")
    return sorted(found)
