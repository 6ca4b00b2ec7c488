"""The stock `ray` CLI, kept on 127.0.0.1, for a multi-node test cluster that lives on one machine.

Ray resolves 127.0.0.1 to the machine's routable address everywhere, so a "local" cluster talks over eth0.
With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in every Ray process's environment, get_node_ip_address() returns
127.0.0.1 in all of them (raylet, dashboard agent, workers, job drivers), but `ray start` then refuses to start
a node that joins a head. This lifts that one CLI check and keeps --node-ip-address as given. Tests only.
Usage: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python ray_cli_loopback.py start ...
"""

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services

ray_constants.ENABLE_RAY_CLUSTER = True  # allow `ray start --address=...` (a second node)
services.resolve_ip_for_localhost = lambda host: host

from ray.scripts.scripts import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "ray"
    sys.exit(main())
