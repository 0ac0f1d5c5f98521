"""Live state shared through Redis, so that several ``serve`` replicas answer alike.

One replica, the **leader**, consumes the input; it holds a lease (``SET key replica NX
PX``, renewed every `LEASE_MS` / 3). The leader writes each changed aircraft to a hash
``PREFIX:ac:ID`` (fields ``state``, ``pitr``) with an expiry, the feed time to
``PREFIX:pitr``, and announces every batch of changes on the stream ``PREFIX:changes``
(``XADD``, capped). The others **follow**: at start they note the stream's last entry,
load every hash, then apply the stream from that entry on (an entry seen twice changes
nothing: a state replaces another only if it is not older), and serve from their own
copy, so all replicas give the same answers. When the leader's lease runs out (it died),
a follower takes it over and starts consuming the input itself (for Kafka: the rebuild
from ``--window``). A leader that finds its lease taken stops, so that it can be
restarted as a follower.

Writes to Redis never delay live state: the leader coalesces changes while a write is
in flight. Keys are namespaced by the input (``unifeed:serve:<hash of --input>``), so
replicas of different feeds can share one Redis. Hashes expire a while (wall time) after
their last write (at least an hour), so a stopped deployment leaves nothing behind;
freshness is still judged by feed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any, Final

import msgspec

from unifeed.core.errors import BrokerUnreachableError

from ._state import Aircraft, Changes

log = logging.getLogger("unifeed.serve.shared")

LEASE_MS: Final = 6_000
STREAM_MAXLEN: Final = 100_000

_RENEW: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class _Entry(msgspec.Struct, gc=False):
    pitr: int
    ready: bool
    upsert: list[Aircraft]
    remove: list[str]


_entry_decoder: Final = msgspec.json.Decoder(_Entry)
_aircraft_decoder: Final = msgspec.json.Decoder(Aircraft)


def check_reachable(url: str, timeout_s: float = 5.0) -> None:
    """`BrokerUnreachableError` (exit 3) when Redis does not answer a PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BrokerUnreachableError(f"Redis at {_mask(url)} did not answer ({exc})") from None
    finally:
        client.close()


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


class SharedState:
    def __init__(self, url: str, input_text: str, replica: str, stale_ms: int) -> None:
        self.url = url
        self.replica = replica
        digest = hashlib.sha256(input_text.encode()).hexdigest()[:16]
        self.prefix = f"unifeed:serve:{digest}"
        self.ttl_ms = max(10 * stale_ms, 3_600_000)
        self.leader = False
        self.redis: Any = None
        self.service: Any = None
        self._upserts: dict[str, Aircraft] = {}
        self._removed: set[str] = set()
        self._pitr = 0
        self._ready = False
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.applied = 0

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def start(self, service: Any) -> None:
        import redis.asyncio as aioredis

        self.service = service
        self.redis = aioredis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=10)
        self._renew = self.redis.register_script(_RENEW)
        if await self._acquire():
            await self._lead()
        else:
            log.info("replica %s follows the leader through Redis", self.replica)
            await self._load_snapshot()
            self._tasks.append(asyncio.create_task(self._follow()))
        self._tasks.append(asyncio.create_task(self._elect()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.redis is not None:
            if self.leader:
                with contextlib.suppress(Exception):
                    await self._flush()
                with contextlib.suppress(Exception):
                    if await self.redis.get(self.key("leader")) == self.replica.encode():
                        await self.redis.delete(self.key("leader"))
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def _acquire(self) -> bool:
        return bool(await self.redis.set(self.key("leader"), self.replica, nx=True, px=LEASE_MS))

    async def _lead(self) -> None:
        self.leader = True
        log.info("replica %s consumes the input and publishes to Redis", self.replica)
        for task in self._tasks:
            task.cancel()
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._publisher()))
        await self.service.start_source()

    async def _elect(self) -> None:
        while True:
            await asyncio.sleep(LEASE_MS / 3000)
            try:
                if self.leader:
                    renewed = await self._renew(keys=[self.key("leader")], args=[self.replica, LEASE_MS])
                    if not renewed:
                        log.error("replica %s lost its Redis lease; stopping", self.replica)
                        self.service.failure = RuntimeError("lost the Redis lease to another replica")
                        self.service.stopped.set()
                        return
                elif await self._acquire():
                    await self._lead()
            except Exception as exc:
                log.warning("Redis lease check failed: %s", exc)

    # --- leader ------------------------------------------------------------------

    def publish(self, changes: Changes, pitr: int, ready: bool) -> None:
        """Queue changes for Redis; never waits."""
        if not self.leader:
            return
        for key in changes.removed:
            self._upserts.pop(key, None)
            self._removed.add(key)
        for key, aircraft in changes.upserts.items():
            self._removed.discard(key)
            self._upserts[key] = aircraft
        self._pitr = max(self._pitr, pitr)
        self._ready = self._ready or ready
        self._dirty.set()

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._flush()
            except Exception as exc:
                log.warning("writing to Redis failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def _flush(self) -> None:
        upserts, removed = self._upserts, self._removed
        pitr, ready = self._pitr, self._ready
        self._upserts, self._removed = {}, set()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, aircraft in upserts.items():
                name = self.key(f"ac:{key}")
                pipe.hset(name, mapping={"state": msgspec.json.encode(aircraft), "pitr": aircraft.pitr})
                pipe.pexpire(name, self.ttl_ms)
            for key in removed:
                pipe.delete(self.key(f"ac:{key}"))
            pipe.set(self.key("pitr"), pitr)
            if ready:
                pipe.set(self.key("ready"), 1, px=self.ttl_ms)
            entry = _Entry(pitr, ready, list(upserts.values()), sorted(removed))
            pipe.xadd(self.key("changes"), {"d": msgspec.json.encode(entry)},
                      maxlen=STREAM_MAXLEN, approximate=True)
            await pipe.execute()
            self.published += 1
        except BaseException:
            # Put them back under anything newer that came meanwhile.
            for key, aircraft in upserts.items():
                if key not in self._upserts and key not in self._removed:
                    self._upserts[key] = aircraft
            for key in removed:
                if key not in self._upserts:
                    self._removed.add(key)
            raise

    # --- followers -----------------------------------------------------------------

    async def _load_snapshot(self) -> None:
        redis = self.redis
        last = await redis.xrevrange(self.key("changes"), count=1)
        self._last_id = last[0][0] if last else b"0-0"
        upserts: list[Aircraft] = []
        async for name in redis.scan_iter(match=self.key("ac:*"), count=1000):
            state = await redis.hget(name, "state")
            if state is not None:
                upserts.append(_aircraft_decoder.decode(state))
        pitr = int(await redis.get(self.key("pitr")) or 0)
        ready = bool(await redis.get(self.key("ready")))
        self.service.apply_shared(upserts, [], pitr, ready)

    async def _follow(self) -> None:
        stream = self.key("changes")
        while not self.leader:
            try:
                answer = await self.redis.xread({stream: self._last_id}, count=100, block=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading Redis failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for _name, entries in answer or []:
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    entry = _entry_decoder.decode(fields[b"d"])
                    self.service.apply_shared(entry.upsert, entry.remove, entry.pitr, entry.ready)
                    self.applied += 1
