"""Where generation replicas announce themselves and the ingress finds them.

Serve routes each call to any replica of a deployment and names none of them, but a walk must stay
on the replica that holds its peer and state. So each replica registers its own app URL in one
`ReplicaRegistry` actor when it starts (and unregisters on a graceful stop), and the ingress reads
the list every probe round (`RayDirectory`). The registry only lists; whether a replica is alive is
the ingress's probes' call, because a killed replica cannot unregister.
"""
from __future__ import annotations

from cluster.ingress import ReplicaInfo


class ReplicaRegistry:
    """replica id -> ReplicaInfo fields. Run as a Ray actor (`registry_actor`); the methods are its calls."""

    def __init__(self) -> None:
        self._replicas: dict[str, dict] = {}

    def register(self, replica_id: str, url: str, pid: int, node: str) -> None:
        self._replicas[replica_id] = {"id": replica_id, "url": url, "pid": pid, "node": node}

    def unregister(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def list(self) -> list[dict]:
        return list(self._replicas.values())


def registry_actor(name: str, namespace: str):
    """A new registry actor, named so a replica restarted by Serve can be handed it again. It needs no CPU."""
    import ray

    return ray.remote(num_cpus=0)(ReplicaRegistry).options(name=name, namespace=namespace).remote()


class RayDirectory:
    """The ingress's `Directory` over a registry actor."""

    def __init__(self, registry):
        self.registry = registry

    async def replicas(self) -> list[ReplicaInfo]:
        return [ReplicaInfo(**entry) for entry in await self.registry.list.remote()]

    async def forget(self, replica_id: str) -> None:
        await self.registry.unregister.remote(replica_id)
