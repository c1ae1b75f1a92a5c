"""``safestats serve`` and ``safestats doctor``: run the service (one process, or workers on one
port) and check a deployment."""

from __future__ import annotations

import os
from typing import Any

import click

from safestats.__about__ import __version__

__all__ = ["doctor", "serve"]


@click.command()
@click.option("--host", default=None, help="Bind address [default: the host setting, 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: the port setting, 8750].")
@click.option("--tls-cert", default=None, help="TLS certificate (PEM).")
@click.option("--tls-key", default=None, help="TLS private key (PEM).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Service processes on the one port [default: the workers setting, 1].",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    tls_cert: str | None,
    tls_key: str | None,
    workers: int | None,
) -> None:
    """Run the safestats HTTP service (FastAPI on uvicorn) over the configured census and store."""
    from safestats.cli import _settings

    settings = _settings(ctx, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, workers=workers)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        from safestats.errors import ConfigError

        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    scheme = "https" if settings.tls_cert else "http"
    where = f"{settings.data_dir} on {scheme}://{settings.host}:{settings.port}"
    if settings.workers == 1:
        click.echo(f"safestats {__version__} serving {where}", err=True)
        _serve(settings)
        return
    from safestats.service.ops import configure_logging
    from safestats.service.workers import bind, supervise

    configure_logging(settings.log_format)
    sock = bind(settings.host, settings.port)
    click.echo(f"safestats {__version__} serving {where} with {settings.workers} workers", err=True)
    status = supervise(settings.workers, lambda index, ready: _serve(settings, sock=sock, worker=index, ready=ready))
    if status:
        from safestats.errors import ConfigError

        raise ConfigError("a worker failed at its start (its error is above); nothing is served")


def _serve(settings: Any, *, sock: Any = None, worker: int | None = None, ready: Any = None) -> None:
    """One service process: opens the census, the store and the engine, then serves (on ``sock``,
    shared with the other workers, or on the configured address) until it is told to stop;
    ``ready()`` once uvicorn serves (a certificate it cannot load is a failed start, not a
    worker to start again)."""
    import uvicorn

    from safestats.service.app import create_app
    from safestats.service.boundary import check_private
    from safestats.service.ops import configure_logging
    from safestats.service.pipeline import Service

    service = Service(settings)
    check_private(settings, service.dataset)  # only the service may read the census and the keys
    _ = service.engine  # open the engine now: a failing engine fails here, and the first query is not slower
    log = configure_logging(settings.log_format)
    app = create_app(service)
    fields = {"version": __version__, "port": settings.port, "pid": os.getpid()}
    # SIGTERM: stop accepting, finish the requests in flight (up to the grace), log "stopped", then
    # exit by the signal (uvicorn re-raises it, so the exit status says SIGTERM, as systemd expects)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if not self.started:
                return
            # "started" once serving, with uvicorn's signal handlers in place: a Ctrl-C or SIGTERM
            # from then on stops the process gracefully (before, the default handler kills it)
            log.info("started", extra={"fields": fields if worker is None else fields | {"worker": worker}})
            if ready is not None:  # serving (TLS loaded, socket open): ready
                ready()

    server = Server(config)
    server.run(sockets=None if sock is None else [sock])
    if not server.started:  # uvicorn logged why (the port taken, a bad certificate)
        from safestats.errors import ConfigError

        raise ConfigError(f"the service did not start on {settings.host}:{settings.port} (uvicorn's error is above)")


@click.command()
@click.option("--no-engine", is_flag=True, help="Skip opening the query engine (quicker; Spark takes seconds).")
@click.pass_context
def doctor(ctx: click.Context, no_engine: bool) -> None:
    """Check a deployment: user, census and its file modes, keys, store schema, audit log, TLS,
    engine. Prints one line per check; exits 5 if any check FAILs. Reads only; creates nothing."""
    from safestats.cli import _settings
    from safestats.errors import ConfigError
    from safestats.service.doctor import diagnose

    findings = diagnose(_settings(ctx), engine=not no_engine)
    for f in findings:
        click.echo(str(f))
    failed = [f for f in findings if f.level == "FAIL"]
    if failed:
        raise ConfigError(f"{len(failed)} check(s) failed; first: {failed[0].check}: {failed[0].detail}")
