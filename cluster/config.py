"""Configuration of a Ray-served roam: how many generation replicas, what each one holds, how the
ingress watches them. A frozen dataclass validated on construction, like `app.config`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# `--ray local` starts a private single-machine Ray inside the command; anything else is a Ray address.
LOCAL = "local"


@dataclass(frozen=True)
class ClusterConfig:
    """Replicas and the ingress's watch over them.

    Each replica owns `max_sessions` sessions (ServerConfig.max_sessions), so the cluster holds
    `replicas * max_sessions`. A replica is placed with `replica_cpus` CPUs and `replica_gpus` GPUs
    (1 per replica on a GPU cluster: one replica per GPU); `max_replicas_per_node` 0 means no limit.
    """

    # "local", "auto" (a cluster started with `ray start --head`), or a Ray address ("host:6379", "ray://host:10001").
    address: str = LOCAL
    replicas: int = 2
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    max_replicas_per_node: int = 0
    # The address a replica's HTTP server binds and the ingress connects to; None = the node's IP as Ray sees it.
    replica_host: str | None = None
    # How often the ingress asks each replica's /healthz, and how long it waits for an answer.
    probe_interval_s: float = 0.5
    probe_timeout_s: float = 2.0
    # Probes that time out in a row before a replica counts as dead (a refused connection counts at once:
    # nothing listens there any more, while a busy 2-core box can be slow to answer).
    probe_failures: int = 3
    # Serve's own health check of each replica (`GenerationReplica.check_health`); a failed one is replaced.
    health_check_period_s: float = 2.0
    health_check_timeout_s: float = 30.0
    # A dead replica stays listed in /healthz this long before the ingress forgets it.
    forget_dead_after_s: float = 60.0
    # Object store of a `--ray local` cluster (MB): sessions pass nothing through it, so a little is enough.
    local_object_store_mb: int = 150

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must be 'local', 'auto' or a Ray address, got ''")
        if not 1 <= self.replicas <= 1024:
            raise ValueError(f"replicas must be in [1, 1024], got {self.replicas}")
        if not (math.isfinite(self.replica_cpus) and self.replica_cpus >= 0 and math.isfinite(self.replica_gpus) and self.replica_gpus >= 0):
            raise ValueError(f"replica_cpus and replica_gpus must be >= 0, got {self.replica_cpus}, {self.replica_gpus}")
        if self.max_replicas_per_node < 0:
            raise ValueError(f"max_replicas_per_node must be >= 0, got {self.max_replicas_per_node}")
        if not (0.05 <= self.probe_interval_s <= 60 and 0.05 <= self.probe_timeout_s <= 60):
            raise ValueError(f"probe_interval_s and probe_timeout_s must be in [0.05, 60], got {self.probe_interval_s}, {self.probe_timeout_s}")
        if self.probe_failures < 1:
            raise ValueError(f"probe_failures must be >= 1, got {self.probe_failures}")
        if not (0.1 <= self.health_check_period_s <= 600 and 0.1 <= self.health_check_timeout_s <= 600):
            raise ValueError(f"health check period and timeout must be in [0.1, 600] s, got {self.health_check_period_s}, {self.health_check_timeout_s}")
        if self.forget_dead_after_s < 0:
            raise ValueError(f"forget_dead_after_s must be >= 0, got {self.forget_dead_after_s}")
        if self.local_object_store_mb < 75:
            raise ValueError(f"local_object_store_mb must be >= 75 (Ray's minimum), got {self.local_object_store_mb}")
