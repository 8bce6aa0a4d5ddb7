"""Creates the JetStream streams and KV bucket the bridge writes to, when they are missing.

An existing stream or bucket is never reconfigured: its operator may have tuned it, and a
silent update could shorten retention under a running consumer. Differences from the
bridge's settings are logged so the operator can decide.

A file stream's `max_bytes` is a reservation against the server's JetStream storage, which a
stock nats-server sizes from its free disk (often a few GB in a container). So byte limits
the operator did not set never block a start: the CDC stream asks for 1 GB and settles for the
most the server can reserve (halving down to 64 MiB, logged in one line); the INIT stream has
no byte limit unless one is set (its age and message count bound it). A limit the operator set
explicitly is used as is, and one that cannot be reserved is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError

from pg_nats_bridge import contract
from shared.settings import BridgeSettings

log = logging.getLogger(__name__)

_INSUFFICIENT_RESOURCES = 10047  # JetStream's err_code when a stream's limits cannot be reserved
# JetStream's err_codes when the replicas cannot be placed: a server without clustering
# (10074), a cluster with fewer JetStream servers than replicas (10005 "insufficient
# resources", 10023 "no suitable peers for placement").
_REPLICAS_NOT_PLACEABLE = frozenset({10074, 10005, 10023})
CDC_DEFAULT_MAX_BYTES = 1_000_000_000
_SMALLEST_FITTED_MAX_BYTES = 64 * 1024 * 1024


class ProvisioningError(RuntimeError):
    """The streams cannot be set up as configured; the message says what to change."""


@dataclass(frozen=True, slots=True)
class ProvisioningReport:
    created: tuple[str, ...]
    existing: tuple[str, ...]


def cdc_stream_config(settings: BridgeSettings) -> StreamConfig:
    return StreamConfig(
        name=settings.cdc_stream,
        subjects=[contract.cdc_filter()],
        storage=StorageType.FILE,
        max_age=settings.cdc_max_age_seconds,
        max_msgs=settings.cdc_max_msgs,
        max_bytes=settings.cdc_max_bytes or CDC_DEFAULT_MAX_BYTES,
        duplicate_window=settings.effective_duplicate_window_seconds,
        num_replicas=settings.stream_replicas,
    )


def init_stream_config(settings: BridgeSettings) -> StreamConfig:
    return StreamConfig(
        name=settings.init_stream,
        subjects=[f"{contract.INIT}.>"],
        storage=StorageType.FILE,
        max_age=settings.init_max_age_seconds,
        max_msgs=settings.init_max_msgs,
        max_bytes=settings.init_max_bytes or -1,
        num_replicas=settings.stream_replicas,
    )


def check_duplicate_window(config: StreamConfig) -> None:
    window, max_age = config.duplicate_window or 0, config.max_age or 0
    if max_age and window > max_age:
        raise ProvisioningError(
            f"stream {config.name}: duplicate window {window:g} s is longer than its max age "
            f"{max_age:g} s; JetStream refuses such a stream. Lower the duplicate window "
            "(BRIDGE_DUPLICATE_WINDOW_SECONDS) or raise the max age"
        )


async def ensure_stream(
    js: JetStreamContext, config: StreamConfig, *, fit_max_bytes: bool = False
) -> bool:
    """Create the stream if it does not exist. True when it was created. With `fit_max_bytes`
    (a default limit, not the operator's), a `max_bytes` JetStream cannot reserve is halved
    until it fits."""
    check_duplicate_window(config)
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await _add_stream(js, config, fit_max_bytes)
        return True
    _log_differences(info, config)
    return False


async def _add_stream(js: JetStreamContext, config: StreamConfig, fit_max_bytes: bool) -> None:
    wanted = config.max_bytes
    while True:
        try:
            await js.add_stream(config)
            break
        except APIError as exc:
            if exc.err_code in _REPLICAS_NOT_PLACEABLE or "replica" in str(exc).lower():
                raise _replicas_error(f"stream {config.name}", config.num_replicas, exc) from exc
            if exc.err_code != _INSUFFICIENT_RESOURCES:
                raise ProvisioningError(
                    f"stream {config.name}: JetStream refused it: {exc}"
                ) from exc
            smaller = (config.max_bytes or 0) // 2
            if not fit_max_bytes or smaller < _SMALLEST_FITTED_MAX_BYTES:
                raise ProvisioningError(
                    f"stream {config.name}: JetStream cannot reserve max_bytes={config.max_bytes} "
                    "(insufficient storage resources); lower the stream's max bytes setting or "
                    "raise max_file_store in the nats-server's jetstream block"
                ) from exc
            config.max_bytes = smaller
    limit = "none" if (config.max_bytes or -1) < 0 else str(config.max_bytes)
    if config.max_bytes != wanted:
        limit += f" (JetStream could not reserve {wanted}; set the stream's max bytes to choose)"
    log.info(
        "created stream %s subjects=%s max_age=%gs max_msgs=%s max_bytes=%s replicas=%s",
        config.name,
        config.subjects,
        config.max_age or 0,
        config.max_msgs,
        limit,
        config.num_replicas,
    )


def _replicas_error(name: object, replicas: object, exc: APIError) -> ProvisioningError:
    return ProvisioningError(
        f"{name}: JetStream cannot place {replicas} replicas ({exc.description}, "
        f"err_code {exc.err_code}); a stream with {replicas} replicas needs a JetStream "
        f"cluster of at least {replicas} servers. Lower BRIDGE_STREAM_REPLICAS or add servers"
    )


def _log_differences(info: StreamInfo, wanted: StreamConfig) -> None:
    have = info.config
    fields = ("subjects", "max_age", "max_msgs", "max_bytes", "duplicate_window", "num_replicas")
    for field in fields:
        want_value, have_value = getattr(wanted, field), getattr(have, field)
        if want_value and want_value != have_value:
            log.warning(
                "stream %s exists with %s=%s (settings say %s); left unchanged",
                wanted.name,
                field,
                have_value,
                want_value,
            )


async def ensure_kv(js: JetStreamContext, bucket: str, history: int, replicas: int = 1) -> bool:
    """Create the KV bucket if it does not exist. True when it was created."""
    try:
        await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=bucket, history=history, replicas=replicas)
        try:
            await js.create_key_value(config)
        except APIError as exc:
            if exc.err_code in _REPLICAS_NOT_PLACEABLE or "replica" in str(exc).lower():
                raise _replicas_error(f"KV bucket {bucket}", replicas, exc) from exc
            raise ProvisioningError(f"KV bucket {bucket}: JetStream refused it: {exc}") from exc
        log.info("created KV bucket %s history=%d replicas=%d", bucket, history, replicas)
        return True
    return False


async def ensure_cdc_stream(js: JetStreamContext, settings: BridgeSettings) -> bool:
    """Make sure the CDC stream exists (what the replicator's pipeline needs); True when it
    was created now."""
    return await ensure_stream(
        js, cdc_stream_config(settings), fit_max_bytes=settings.cdc_max_bytes is None
    )


async def provision(js: JetStreamContext, settings: BridgeSettings) -> ProvisioningReport:
    """Make sure the CDC and INIT streams and the schemas bucket exist."""
    created: list[str] = []
    existing: list[str] = []
    streams = (
        (cdc_stream_config(settings), settings.cdc_max_bytes is None),
        (init_stream_config(settings), False),
    )
    for config, fit in streams:
        assert config.name is not None
        created_now = await ensure_stream(js, config, fit_max_bytes=fit)
        (created if created_now else existing).append(config.name)
    kv_name = f"KV_{settings.kv_bucket}"
    if await ensure_kv(js, settings.kv_bucket, settings.kv_history, settings.stream_replicas):
        created.append(kv_name)
    else:
        existing.append(kv_name)
    return ProvisioningReport(tuple(created), tuple(existing))
