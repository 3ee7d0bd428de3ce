"""A generation replica: the single-process app (`app.server.create_app`) inside one Ray Serve
replica, so each replica owns its walks, their generation worker and their WebRTC peers.

`AppServer` runs the app on its own event loop in a thread of the replica's process (Serve keeps its
own loop for its calls; the app's loop must never wait on them). The app listens on the node's
address with a token only the ingress knows, so nothing but the ingress can place walks there;
its aiortc peers gather the node's own ICE candidates, so the media flows replica -> browser.

`GenerationReplica` is the Serve deployment's class: its constructor starts the app and registers
its URL in the `ReplicaRegistry` actor, where the ingress finds it; Serve's health check asks that
the app's thread runs and answers, and replaces a replica that fails it or dies.
Ray is imported inside functions, so `AppServer` runs (and is tested) without it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading

from app.config import AppConfig

log = logging.getLogger("roam.replica")

# Building the runtime (the model, the scenes) takes seconds on a CPU, minutes for a release on a GPU.
START_TIMEOUT_S = 900.0


class AppServer:
    """`create_app(config)` served on `config.server.host`, any free port, from a thread with its own loop.

    Invariant: `url` is set once the app listens and its runtime is built; `alive()` is False once
    the loop has stopped, whatever stopped it."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.url: str | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="roam-replica-app", daemon=True)

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Start serving; the URL once it listens. Raises what start-up raised (port, weights)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the replica's app did not start within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self.url

    def alive(self, timeout: float = 5.0) -> bool:
        """Whether the app's loop runs and answers its own /healthz within `timeout` seconds."""
        if not self._thread.is_alive() or self.url is None:
            return False
        import urllib.request

        request = urllib.request.Request(f"{self.url}/healthz", headers={"Authorization": f"Bearer {self.config.server.token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as error:
            if not self._ready.is_set():
                self._error = error
                self._ready.set()
            else:
                log.exception("the replica's app stopped")
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        from aiohttp import web

        from app.serve_cmd import listen_socket
        from app.server import create_app

        server = self.config.server
        sock = listen_socket(server.host, server.port)
        self._stop = asyncio.Event()
        try:
            app = create_app(self.config)
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
        except BaseException:
            sock.close()
            raise
        try:
            await web.SockSite(runner, sock).start()
            host = server.host if ":" not in server.host else f"[{server.host}]"
            self.url = f"http://{host}:{sock.getsockname()[1]}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


def replica_config(config: AppConfig, host: str, token: str) -> AppConfig:
    """The replica's own app config: the public one bound to `host`, any port, the ingress's token.

    The record dir is made absolute by the launcher, so every replica writes to the same shared folder."""
    server = dataclasses.replace(config.server, host=host, port=0, token=token, allowed_hosts=())
    return dataclasses.replace(config, server=server)


class GenerationReplica:
    """The Serve deployment's class (see the module docstring); `deployment(cluster)` wraps it."""

    def __init__(self, config: AppConfig, host: str | None, token: str, registry) -> None:
        import ray
        from ray import serve

        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.node = ray.util.get_node_ip_address()
        self.server = AppServer(replica_config(config, host or self.node, token))
        url = self.server.start()
        self.registry = registry
        ray.get(registry.register.remote(self.replica_id, url, os.getpid(), self.node))
        log.info("replica %s serving at %s (pid %d)", self.replica_id, url, os.getpid())

    def check_health(self) -> None:
        """Serve's health check: a replica whose app stopped or stopped answering is replaced."""
        if not self.server.alive():
            raise RuntimeError(f"replica {self.replica_id}: its app stopped or does not answer /healthz")

    def info(self) -> dict:
        return {"id": self.replica_id, "url": self.server.url, "pid": os.getpid(), "node": self.node}

    def __del__(self) -> None:
        # Serve calls this on a graceful stop (scale down, `serve.delete`); a killed process never gets
        # here, and the ingress's probes find it dead instead.
        registry = getattr(self, "registry", None)
        if registry is not None:
            registry.unregister.remote(self.replica_id)
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()


def deployment(cluster):
    """The Serve deployment of `cluster.replicas` GenerationReplicas, each with its CPUs and GPUs."""
    from ray import serve

    options = {"num_cpus": cluster.replica_cpus, "num_gpus": cluster.replica_gpus}
    extra = {"max_replicas_per_node": cluster.max_replicas_per_node} if cluster.max_replicas_per_node else {}
    return serve.deployment(
        GenerationReplica,
        name="GenerationReplica",
        num_replicas=cluster.replicas,
        ray_actor_options=options,
        health_check_period_s=cluster.health_check_period_s,
        health_check_timeout_s=cluster.health_check_timeout_s,
        # A replica holds walks for minutes; Serve's request queue is not how they reach it.
        max_ongoing_requests=4,
        graceful_shutdown_timeout_s=10,
        # A replica that cannot build its app (weights, GPU) fails the same way each time: say so soon.
        max_constructor_retry_count=2,
        **extra,
    )
