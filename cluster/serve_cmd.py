"""`python run.py serve --ray ADDRESS --replicas N`: the ingress in this process, N generation
replicas on Ray Serve (docs/serving.md).

Order of start-up: Ray (a private one for `--ray local`, else the cluster at ADDRESS), Serve with
its HTTP proxy off (the ingress is the one public server), the registry actor, the replicas
(`serve.run` returns once each has built its model and registered), then the ingress listens.
Shutdown undoes it in reverse: roam's Serve app and the registry go; a Ray this command started is
stopped with its Serve. Start-up that fails leaves nothing running and says why in one line.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from app.config import AppConfig
from cluster.config import LOCAL, ClusterConfig

log = logging.getLogger("roam.cluster")

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE_APP = "roam"
NAMESPACE = "roam"
REGISTRY_NAME = "roam-replica-registry"
NOT_INSTALLED = "Ray Serve is not installed: pip install -r requirements-cluster.txt"


def cluster_from_args(args: argparse.Namespace, device: str) -> ClusterConfig:
    """The ClusterConfig of `serve --ray` (ValueError names any bad value)."""
    gpus = args.replica_gpus if args.replica_gpus is not None else (1.0 if device.startswith("cuda") else 0.0)
    return ClusterConfig(address=args.ray, replicas=2 if args.replicas is None else args.replicas, replica_gpus=gpus,
                         replica_cpus=1.0 if args.replica_cpus is None else args.replica_cpus)


def shared_paths(config: AppConfig) -> AppConfig:
    """`config` with its paths absolute: replicas may run in another working directory (or on another
    node that mounts the same folders at the same paths), and all record into one shared record dir."""
    server = config.server
    record_dir = None if server.record_dir is None else Path(server.record_dir).resolve()
    return dataclasses.replace(
        config,
        server=dataclasses.replace(server, record_dir=record_dir),
        model_path=None if config.model_path is None else Path(config.model_path).resolve(),
        text_encoder=None if config.text_encoder is None else Path(config.text_encoder).resolve(),
    )


@dataclass
class Replicas:
    """What `start_replicas` started: the registry actor, the token the replicas demand, and whether
    this process started Ray itself (then `stop_replicas` stops it)."""

    registry: object
    token: str
    started_ray: bool


def start_replicas(config: AppConfig, cluster: ClusterConfig) -> Replicas:
    """Join or start Ray, then run `cluster.replicas` GenerationReplicas on Serve; returns once all serve.

    Blocking (Ray's calls are); the replicas' import path is this repository, which must sit at the
    same path on every node."""
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError as error:
        raise ValueError(NOT_INSTALLED) from error

    from cluster.registry import registry_actor
    from cluster.replica import deployment

    runtime_env = {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}
    started_ray = not ray.is_initialized()
    if started_ray:
        try:
            if cluster.address == LOCAL:
                ray.init(num_cpus=max(2, int(cluster.replicas * cluster.replica_cpus + 0.999)), object_store_memory=cluster.local_object_store_mb * 2**20,
                         include_dashboard=False, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=True)
            else:
                ray.init(address=cluster.address, namespace=NAMESPACE, runtime_env=runtime_env)
        except (ConnectionError, RuntimeError) as error:
            raise ValueError(f"cannot start or join Ray at {cluster.address!r}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    registry = None
    try:
        _check_resources(ray.cluster_resources(), cluster)
        serve.start(proxy_location="Disabled")
        registry = registry_actor(REGISTRY_NAME, NAMESPACE)
        token = secrets.token_hex(16)
        replica_app = deployment(cluster).bind(shared_paths(config), cluster.replica_host, token, registry)
        serve.run(replica_app, name=SERVE_APP, route_prefix=None)
    except BaseException as error:
        # Leave nothing running: a replica that cannot start (no weights, no GPU) fails the command.
        _stop(registry, started_ray)
        if isinstance(error, Exception) and not isinstance(error, ValueError):
            raise ValueError(f"the generation replicas did not start: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
        raise
    return Replicas(registry=registry, token=token, started_ray=started_ray)


def _check_resources(resources: dict[str, float], cluster: ClusterConfig) -> None:
    """ValueError when a `--ray local` cluster cannot hold the replicas (Serve would wait forever);
    a warning on a joined cluster, whose autoscaler may still add nodes."""
    short = [f"{cluster.replicas} x {need:g} {name} (it has {resources.get(name, 0.0):g})"
             for name, need in (("GPU", cluster.replica_gpus), ("CPU", cluster.replica_cpus))
             if need > 0 and resources.get(name, 0.0) + 1e-9 < cluster.replicas * need]
    if not short:
        return
    message = f"the Ray cluster cannot hold {cluster.replicas} replicas: they need {' and '.join(short)}"
    if cluster.address == LOCAL:
        raise ValueError(message)
    log.warning("%s; waiting for the cluster to grow", message)


def stop_replicas(replicas: Replicas) -> None:
    """Delete the replicas and the registry; stop Ray if `start_replicas` started it."""
    _stop(replicas.registry, replicas.started_ray)


def _stop(registry, started_ray: bool) -> None:
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        # On a cluster this command joined, other Serve apps may live beside roam's: delete only ours.
        try:
            serve.delete(SERVE_APP)
        except RayServeException:
            # Serve never started (start-up failed before it).
            pass
        if started_ray:
            serve.shutdown()
    finally:
        if registry is not None:
            ray.kill(registry)
        if started_ray:
            ray.shutdown()


async def serve_cluster(config: AppConfig, cluster: ClusterConfig, ready: asyncio.Future | None = None) -> None:
    """Start the replicas, then serve the ingress on `config.server` until SIGINT/SIGTERM."""
    from app.serve_cmd import serve
    from cluster.ingress import create_ingress_app
    from cluster.registry import RayDirectory

    replicas = await asyncio.to_thread(start_replicas, config, cluster)
    try:
        ingress = create_ingress_app(config, cluster, RayDirectory(replicas.registry), replicas.token)
        await serve(config, ready=ready, app=ingress, label=f"{cluster.replicas} generation replicas on Ray ({cluster.address})")
    finally:
        await asyncio.to_thread(stop_replicas, replicas)


def main(args: argparse.Namespace) -> int:
    from app.generate_cmd import check_device
    from app.serve_cmd import config_from_args, configure_logging

    configure_logging(args.log_level)
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ModuleNotFoundError:
        raise SystemExit(f"run.py serve --ray: {NOT_INSTALLED}") from None
    try:
        config = config_from_args(args)
        if config.stream.generator_process == "auto":
            # A replica is its own process already, apart from the ingress; a generator process inside
            # it is not measured there, so replicas compute in-process unless --generator-process on.
            config = dataclasses.replace(config, stream=dataclasses.replace(config.stream, generator_process="off"))
        cluster = cluster_from_args(args, config.device)
        if config.server.campaign is not None:
            # A campaign's desk (who has which task) lives in one process; the replicas would each keep their own.
            raise ValueError("--campaign runs on a single server only (python run.py serve --campaign FILE), not with --ray yet")
        if cluster.replica_gpus == 0:
            check_device(config.device)
        if config.model_path is not None:
            from model.release import preflight

            # What the release needs besides its weights, said before any replica starts loading it.
            preflight(config.model_path, text_encoder_folder=config.text_encoder)
    except ValueError as error:
        raise SystemExit(f"run.py serve --ray: {error}") from None
    try:
        asyncio.run(serve_cluster(config, cluster))
    except KeyboardInterrupt:
        pass
    except ValueError as error:
        raise SystemExit(f"run.py serve --ray: {error}") from None
    return 0
