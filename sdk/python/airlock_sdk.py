"""The Airlock SDK for plugins written in Python: standard library only, one module.

A plugin is a function of (hook, payload, host) that returns the hook's output or raises; the
SDK reads the shim's requests on stdin, calls it, and writes the answers on stdout
(sdk/PROTOCOL.md). ``host`` makes host calls while a request is handled: log through the router,
the plugin's own key-value storage, events::

    import airlock_sdk

    def handle(hook, payload, host):
        if hook == "transform":
            return {"upper": payload["text"].upper()}
        if hook == "onEvent":
            seen = (host.get("seen") or 0) + 1
            host.put("seen", seen)
            return {"seen": seen}
        raise airlock_sdk.UnknownHook(hook)

    airlock_sdk.run(handle)

An exception becomes an error answer with its message (the caller sees gRPC ABORTED) and the
plugin keeps serving. Log with ``print(..., file=sys.stderr)`` or ``host.log``; never print to
stdout, which carries the answers and host calls. Ship this file in the bundle beside your code.
"""

import json
import sys

NAME = "airlock-sdk-python"
"""This SDK's name, for ``sdk: {name: ..., version: ...}`` in plugin.yaml."""
VERSION = "0.1.0"
"""This SDK's version, for plugin.yaml's ``sdk.version``."""

MAX_HOST_CALLS = 64
"""Host calls one request may make (the shim ends a request that makes more)."""


class HostError(Exception):
    """A host call the host refused: ``code`` is the gRPC code name (PERMISSION_DENIED,
    INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, ...), the message says what to do."""

    def __init__(self, call, code, message):
        super().__init__(f"{call}: {code}: {message}")
        self.call = call
        self.code = code
        self.message = message


class UnknownHook(Exception):
    """Raise it for a hook the plugin does not handle."""

    def __init__(self, hook):
        super().__init__(f"this plugin does not implement hook {hook}")


class Host:
    """Host calls for the request being handled (sdk/PROTOCOL.md, "Host calls"): one at a time,
    each answered on stdin before the next."""

    def __init__(self, stdin, stdout):
        self._in = stdin
        self._out = stdout
        self._calls = 0

    def call(self, call, args=None):
        """Makes one host call; its result, or raises HostError."""
        if self._calls >= MAX_HOST_CALLS:
            raise HostError(call, "RESOURCE_EXHAUSTED",
                            f"a request may make at most {MAX_HOST_CALLS} host calls")
        self._calls += 1
        call_id = f"c{self._calls}"
        line = {"call": call, "callId": call_id}
        if args is not None:
            line["args"] = args
        _write(self._out, line)
        text = self._in.readline()
        if not text:
            raise HostError(call, "UNAVAILABLE", "the shim closed stdin")
        result = json.loads(text)
        if result.get("callId") != call_id:
            raise HostError(call, "INTERNAL", f"a result for {result.get('callId')!r}, not {call_id!r}")
        if not result.get("ok"):
            raise HostError(call, result.get("code", "UNKNOWN"), result.get("error", ""))
        return result.get("result", {})

    def log(self, level, message):
        """A log line through the router (needs ``log``): True when kept, False when dropped
        over the rate limit."""
        return self.call("log", {"level": level, "message": message}).get("kept", False)

    def get(self, key, default=None):
        """The value stored under ``key``, or ``default`` (needs ``storage:read``)."""
        result = self.call("storage.get", {"key": key})
        return result.get("value") if result.get("found") else default

    def put(self, key, value):
        """Stores ``value`` (any JSON value) under ``key`` (needs ``storage:write``)."""
        self.call("storage.put", {"key": key, "value": value})

    def delete(self, key):
        """Removes ``key``; whether it was there (needs ``storage:write``)."""
        return self.call("storage.delete", {"key": key}).get("existed", False)

    def list(self, prefix=""):
        """Every key with ``prefix``, in ascending order, all pages (needs ``storage:read``)."""
        keys, token = [], ""
        while True:
            page = self.call("storage.list", {"prefix": prefix, "pageToken": token})
            keys.extend(page.get("keys", []))
            token = page.get("nextPageToken", "")
            if not token:
                return keys

    def written_by(self):
        """The plugin version that last wrote the storage, or None."""
        return self.call("storage.writtenBy").get("writtenBy")

    def emit(self, event_type, payload=None):
        """Emits one event on the plugin's events stream (needs ``events:emit``)."""
        self.call("emit", {"type": event_type, "payload": payload})


def _write(out, line):
    # One line, flushed at once: an answer left in a buffer is a timeout (PROTOCOL.md, rule 3).
    # Strict JSON only: NaN and Infinity are not JSON, and the shim would end the process.
    out.write(json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n")
    out.flush()


def _write_answer(out, line):
    """Writes an answer; an output that is not JSON (a set, NaN, ...) becomes an error answer
    instead of ending the plugin."""
    try:
        text = json.dumps(line, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        text = json.dumps({"id": line.get("id"), "ok": False,
                           "error": f"the output is not JSON: {e}"})
    out.write(text + "\n")
    out.flush()


def answer(line, handler, stdin, stdout):
    """The answer to one request line, calling ``handler(hook, payload, host)``."""
    try:
        request = json.loads(line)
    except ValueError as e:
        return {"id": None, "ok": False, "error": f"the request is not JSON: {e}"}
    request_id = request.get("id")
    try:
        output = handler(request.get("hook"), request.get("payload"), Host(stdin, stdout))
        return {"id": request_id, "ok": True, "output": output}
    except Exception as e:  # every failure is an answer: the plugin keeps serving
        return {"id": request_id, "ok": False, "error": str(e) or type(e).__name__}


def run(handler, stdin=None, stdout=None):
    """Answers the shim's requests until it closes stdin."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    for line in iter(stdin.readline, ""):
        if line.strip():
            _write_answer(stdout, answer(line, handler, stdin, stdout))
