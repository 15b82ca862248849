"""Each key's requests in the last minute: counted by this process, or in the Redis that every
server shares (REDIS_URL)."""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

logger = logging.getLogger(__name__)


WINDOW_SECONDS = 60  # of requests_per_minute


@dataclass(frozen=True)
class WindowCount:
    """A key's requests in the last minute, as a request was counted in (or refused)."""

    used: int  # requests in the window, this one included if it was counted
    frees_in: float  # seconds until the oldest of them leaves the window
    refused: bool


class LocalWindows:
    """Each key's requests in the last minute, counted by this process."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def reserve(self, prefix: str, limit: int) -> WindowCount:
        """Count a request in, unless the window is full."""
        now = time.monotonic()
        with self._lock:
            times = self._times[prefix]
            while times and now - times[0] >= WINDOW_SECONDS:
                times.popleft()
            refused = len(times) >= limit
            if not refused:
                times.append(now)
            return WindowCount(len(times), WINDOW_SECONDS - (now - times[0]), refused)


# One atomic step in Redis, on Redis' clock (servers on several boxes need not agree on time):
# drop the entries older than the window, add this request unless it is full, and return
# {refused (1/0), requests in the window, milliseconds until its oldest entry leaves}.
_RESERVE_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local refused = 1
if redis.call('ZCARD', KEYS[1]) < limit then
    refused = 0
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], window)
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {refused, redis.call('ZCARD', KEYS[1]), tonumber(oldest[2]) + window - now}
"""


class SharedWindows:
    """Each key's requests in the last minute, counted in the Redis that every server process
    shares (REDIS_URL); while it cannot be reached, this process counts alone."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._url = f"{parts.hostname}:{parts.port or 6379}"  # for logs: no password
        self._reserve = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).register_script(
            _RESERVE_SCRIPT
        )
        self._local = LocalWindows()
        self._reachable = True

    def reserve(self, prefix: str, limit: int) -> WindowCount:
        try:
            refused, used, frees_in_ms = self._reserve(
                keys=[f"llamasite:rpm:{prefix}"], args=[WINDOW_SECONDS * 1000, limit, uuid.uuid4().hex]
            )
        except redis.RedisError as error:
            if self._reachable:
                logger.warning(
                    "Redis at %s cannot be reached (%s): requests per minute are counted by this process alone",
                    self._url,
                    error,
                )
                self._reachable = False
            return self._local.reserve(prefix, limit)
        if not self._reachable:
            logger.info("Redis at %s is back: requests per minute are shared again", self._url)
            self._reachable = True
        return WindowCount(int(used), int(frees_in_ms) / 1000, bool(refused))


@functools.cache
def windows_for(redis_url: str | None) -> LocalWindows | SharedWindows:
    return SharedWindows(redis_url) if redis_url else LocalWindows()
