"""
Server-sent event streams (docs/web.md, "Live events (SSE)"): a Klein app
of its own, mounted by WebApp for the paths that end in /stream.

    /api/events/stream               every gateway's events as /api/events has them
    /gateways/<key>/events/stream    one gateway's events as its live page's rows
    /live/stream                     every gateway's events as rows (the live page of all)
    /dashboard/stream                what changes the dashboard: events (a gateway
                                     heard), log entries (login, logout, bad
                                     packets, restarts) and ended calls

Each stream resumes after `after` or Last-Event-ID (events only), is paced
by its connection (cdrd.web.feed.Subscriber) and kept open by a comment
every HEARTBEAT seconds.
"""

from __future__ import annotations

import json

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from werkzeug.exceptions import NotFound

from cdrd.web.feed import Replay, Subscriber
from cdrd.web.query import BadParameter, arg, parse_gateway, parse_int
from cdrd.web.render import Clocks, event_json, event_row

#: stored events sent per reactor turn to a stream that resumes
REPLAY_PAGE = 500
HEARTBEAT = 15.0  # seconds between SSE comments: keeps proxies and NATs open


def sse(kind: str, data: dict, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}event: {kind}\ndata: {body}\n\n".encode()


def fmt_event(event, clocks: Clocks) -> bytes:
    """The live page's message: the row as shown (local time, text)."""
    return sse("event", event_row(event, clocks), event.id)


def fmt_event_all(event, clocks: Clocks) -> bytes:
    """The all-gateways live page's message: the row and its gateway."""
    return sse("event", {**event_row(event, clocks), "gateway": event.gateway}, event.id)


def event_json_sse(event, clocks: Clocks) -> bytes:
    """The API stream's message: the event as /api/events has it (RFC 3339 UTC)."""
    return sse("event", event_json(event), event.id)


def fmt_dashboard(kind: str, value, clocks: Clocks) -> bytes | None:
    """The dashboard's message: what a gateway's row and the chart need."""
    if kind == "event":
        return sse("heard", {"gateway": value.gateway, "time": clocks.datetime(value.time),
                             "type": value.type})
    if kind == "log":
        return sse("log", {"gateway": value.gateway, "peer": value.peer, "event": value.event,
                           "time": clocks.datetime(value.time), "count": value.count})
    if kind == "call":
        return sse("call", {"gateway": value.gateway, "answered": value.connect is not None,
                            "begin": value.begin, "talk": value.talk})
    return None


class Streams:
    app = Klein()
    log = Logger()

    def __init__(self, web):
        self.web = web
        self._heartbeat = None
        self._producers: set[Subscriber] = set()
        self._rendered: dict[object, tuple[object, bytes]] = {}

    @app.handle_errors(BadParameter)
    def bad_parameter(self, request, failure):
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (str(failure.value) + "\n").encode("utf-8")

    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"no such stream\n"

    @app.route("/api/events/stream", methods=["GET"])
    def api_events_stream(self, request):
        gateway = parse_gateway(arg(request, "gateway"))
        return self.stream(request, gateway, event_json_sse)

    @app.route("/gateways/<string:key>/events/stream", methods=["GET"])
    def gateway_events_stream(self, request, key):
        return self.stream(request, parse_gateway(key), fmt_event)

    @app.route("/live/stream", methods=["GET"])
    def live_stream(self, request):
        return self.stream(request, None, fmt_event_all)

    @app.route("/dashboard/stream", methods=["GET"])
    def dashboard_stream(self, request):
        return self.stream(request, None, fmt_dashboard, kinds=frozenset({"event", "log", "call"}))

    def stream(self, request, gateway: str | None, render, kinds=frozenset({"event"})):
        """
        Server-sent events of one gateway (or all), resuming after `after`
        or Last-Event-ID; `render(event, clocks)` makes one message (the
        API's JSON or the live page's row); with more `kinds` than events,
        `render(kind, value, clocks)`, and no resuming.
        """
        web = self.web
        if web.feed is None:
            raise BadParameter("live events are not available (no feed)")
        after = request.getHeader(b"last-event-id") or arg(request, "after")
        after_id = None
        if after and kinds == {"event"}:
            if isinstance(after, bytes):
                after = after.decode("latin-1")
            after_id = parse_int(after.strip(), "after", 0, 0, 2**62)

        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        events_only = kinds == {"event"}

        def fmt(item):
            kind, value = item
            if kind not in kinds:
                return None
            # the feed hands one item to every subscriber in turn: render it
            # once per format
            cached = self._rendered.get(render)
            if cached is not None and cached[0] is value:
                return cached[1]
            data = render(value, web.clocks) if events_only else render(kind, value, web.clocks)
            self._rendered[render] = (value, data)
            return data

        done: Deferred = Deferred(lambda d: sub.finish())

        def close():
            if sub in self._producers:
                self._producers.discard(sub)
                if request.channel is not None:  # None once the browser is gone
                    request.unregisterProducer()
            self._beat_if_needed()
            if not done.called:
                done.callback(None)

        sub = Subscriber(request.write, close, fmt, kinds=kinds)
        self._producers.add(sub)
        request.registerProducer(sub, True)
        web.feed.subscribe(gateway, sub)
        request.write(b"retry: 3000\n: connected\n\n")
        self._beat_if_needed()
        if after_id is not None:
            self._resume(sub, gateway, after_id, render)
        return done

    def _resume(self, sub, gateway, after_id, render):
        """Replay what the browser missed (every gateway's, for `gateway` None)."""
        web = self.web
        replay = Replay(
            sub,
            [gateway] if gateway is not None else web.gateway_keys,
            after_id,
            web.store.events_after,
            lambda e: render(e, web.clocks),
            web.clock,
        )
        replay.page = REPLAY_PAGE
        replay.start()

    def _beat_if_needed(self):
        feed = self.web.feed
        live = feed.subscribers() if feed else []
        if live and self._heartbeat is None:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self.web.clock
            self._heartbeat.start(HEARTBEAT, now=False)
        elif not live and self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _beat(self):
        for s in self.web.feed.subscribers():
            s.send(b": keep-alive\n\n")
        self._beat_if_needed()
