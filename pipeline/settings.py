"""One settings object for every Traverz process.

Every variable carries the ``TRAVERZ_`` prefix: faust reads unprefixed variables
such as ``BROKER_URL`` or ``WEB_PORT`` and lets them override code, so our names
must never collide with them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TOPIC_PINGS = "traverz.pings.v1"
TOPIC_REPORTS = "traverz.reports.v1"
TOPIC_CONDITIONS = "traverz.conditions.v1"
TOPIC_ALERTS = "traverz.alerts.v1"
TOPIC_DEADLETTER = "traverz.deadletter.v1"
ALL_TOPICS = (TOPIC_PINGS, TOPIC_REPORTS, TOPIC_CONDITIONS, TOPIC_ALERTS, TOPIC_DEADLETTER)
# Compacted, one partition: the current generation of the ping/report topics (and ingest's acks).
# Internal to operators and ingest (not TOPIC_*: that prefix marks the published contract in AsyncAPI).
CONTROL_TOPIC = "traverz.control.v1"


def generation_topic(base: str, generation: int) -> str:
    """A ping/report topic of ``generation``: generation 1 keeps today's name, later ones get ``.g<N>``.

    A rescale makes a new generation (new topics, new worker app id) because Kafka remaps keys
    when partitions are added and a faust table's partition count is fixed (faust #535).
    """
    return base if generation == 1 else f"{base}.g{generation}"


def generation_app_id(app_id: str, generation: int) -> str:
    """The faust app id (consumer group, changelog prefix) of ``generation``'s workers."""
    return app_id if generation == 1 else f"{app_id}-g{generation}"


def _default_home() -> Path:
    return Path.home() / ".cache" / "traverz"


class Settings(BaseSettings):
    """Settings read from ``TRAVERZ_*`` environment variables (or ``.env``)."""

    model_config = SettingsConfigDict(env_prefix="TRAVERZ_", env_file=".env", extra="ignore")

    # Kafka client side
    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    partitions: int = Field(8, ge=1, description="partitions per topic at creation")
    replication: int = Field(1, ge=1, description="replication factor at creation")

    # Embedded broker (``traverz kafka up``)
    home: Path = Field(default_factory=_default_home, description="cache of jars and data")
    kafka_port: int = Field(9092, description="broker listener port (loopback)")
    kafka_controller_port: int = Field(0, description="KRaft controller port; 0 = port+1")
    kafka_heap: str = Field("768m", description="broker JVM max heap")

    # Ingest proxy
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8080

    ingest_rate: float = Field(2.0, gt=0, description="requests/s per device (token bucket)")
    ingest_burst: float = Field(30.0, ge=1, description="burst size per device")
    ingest_produce_timeout: float = Field(0.9, gt=0, description="s to wait for Kafka acks before 503")
    tls_cert: str = Field("", description="PEM certificate: serve HTTPS when set")
    tls_key: str = Field("", description="PEM private key for tls_cert")

    # Push worker
    push_host: str = "127.0.0.1"
    push_port: int = 8081

    # Stream worker (faust)
    worker_host: str = "127.0.0.1"
    worker_port: int = 6066
    data_dir: Path = Field(Path(".traverz/worker"), description="RocksDB state directory")
    app_id: str = Field("traverz", description="faust application id (consumer group)")

    # Device tokens (HS256 shared secrets keyed by kid; rotate by adding a kid)
    token_secret: str = Field("dev-only-change-me-0123456789abcdef", min_length=16)
    token_kid: str = "k1"
    token_extra_keys: str = Field("", description="more verification keys: kid=secret,kid=secret")
    token_issuer: str = "traverz"
    token_audience: str = "traverz-devices"

    # Spatial model
    key_resolution: int = Field(7, ge=0, le=15, description="H3 res of the Kafka key")
    cell_resolution: int = Field(9, ge=0, le=15, description="H3 res of conditions")
    min_devices: int = Field(3, ge=1, description="k: distinct devices before publishing")

    # Push worker: routing and slow clients (issue 5)
    routing_net: str = Field(
        "DRT", description="road network: DRT or A10KW (eclipse-sumo's Berlin nets), a .net.xml path, '' for none"
    )
    push_stuck_s: float = Field(10.0, gt=0, description="s a socket may take a batch before the driver is dropped")
    push_rate: float = Field(50.0, gt=0, description="messages/s per driver; more coalesce in its outbox")
    push_tick_ms: float = Field(  # 300: a busy driver's ~12 news/s go out in ~3.6 frames per write (bench push)
        300.0, ge=0, le=1000, description="ms a busy driver's news may wait to share one write (0: no wait)"
    )

    # Operations: partition generations (``traverz topics rescale``) and logs
    generation: int = Field(1, ge=1, description="generation of the ping/report topics and worker app id")
    log_format: str = Field("text", pattern="^(text|json)$", description="log lines: text or json")

    @property
    def pings_topic(self) -> str:
        return generation_topic(TOPIC_PINGS, self.generation)

    @property
    def reports_topic(self) -> str:
        return generation_topic(TOPIC_REPORTS, self.generation)

    @property
    def worker_app_id(self) -> str:
        """The faust app id of this generation's workers (``app_id`` itself in generation 1)."""
        return generation_app_id(self.app_id, self.generation)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
