"""Work queues shared by replicas: Redis Streams with a consumer group (`RedisWorkQueue`), or
in process (`InProcessQueue`, the embedded default), with one contract (`WorkQueue`):
idempotent request ids, final 4xx errors, retries then a dead letter, timeouts that leave the
work queued. The design is in docs/queues.md."""

from services.common.queues.base import (
    REDIS_UNREACHABLE,
    DeadLetter,
    DeadLettered,
    Handler,
    Payload,
    QueueConfig,
    QueueStats,
    WorkQueue,
    decode_payload,
    default_consumer_name,
    encode_payload,
    make_queue,
    payload_digest,
    redact_url,
)
from services.common.queues.memory import InProcessQueue
from services.common.queues.redis_streams import RedisWorkQueue
from services.common.queues.worker import QueueWorker

__all__ = [
    "REDIS_UNREACHABLE", "DeadLetter", "DeadLettered", "Handler", "InProcessQueue", "Payload",
    "QueueConfig", "QueueStats", "QueueWorker", "RedisWorkQueue", "WorkQueue", "decode_payload",
    "default_consumer_name", "encode_payload", "make_queue", "payload_digest", "redact_url",
]
