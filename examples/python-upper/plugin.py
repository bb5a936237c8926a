"""python-upper: an Airlock plugin in Python, standard library only.

The shim writes one JSON request per line to stdin and reads one JSON answer per line from
stdout (plugin-shim/PROTOCOL.md); stderr is the plugin's log. `transform` upper-cases the
payload's "text" and appends the configured "suffix"; `onEvent` counts the events it has seen.
Its configuration (Plugin.spec.config, checked against configSchema in plugin.yaml) arrives in
`onLoad` and, when it changes, in `onConfigChange`: no restart. With the secret `signingKey`
(Plugin.spec.configSecrets) each answer also carries an HMAC-SHA256 of its text under that key.
`onUpgrade` (sent once, before the first `onLoad`, when an older version wrote the plugin's
storage and the Plugin grants storage:write) shows a migration: it renames the key versions
before 1.0 kept their event count under, `seen`, to `events`, for whoever reads the storage
(this version counts in memory).
"""
import hashlib
import hmac
import itertools
import json
import sys

seen = 0
config = {}
secrets = {}
call_ids = itertools.count(1)


def host(call, args):
    """One host call while handling a request (sdk/PROTOCOL.md, "Host calls"): the call on
    stdout, its result the next line on stdin."""
    print(json.dumps({"call": call, "callId": f"c{next(call_ids)}", "args": args}), flush=True)
    result = json.loads(sys.stdin.readline())
    if not result.get("ok"):
        raise RuntimeError(f"{call}: {result.get('code')}: {result.get('error')}")
    return result["result"]


def upgrade(payload):
    """Moves `seen` to `events`. Idempotent and resumable from the data itself: a pod that died
    half way, or a second new pod doing the same at once, finds `events` already there and only
    removes the old key."""
    old = host("storage.get", {"key": "seen"})
    if old.get("found"):
        if not host("storage.get", {"key": "events"}).get("found"):
            host("storage.put", {"key": "events", "value": old["value"]})
        host("storage.delete", {"key": "seen"})
    host("storage.put", {"key": "upgradedFrom", "value": payload.get("from")})
    print(f"python-upper: onUpgrade from {payload.get('from')} to {payload.get('to')}",
          file=sys.stderr, flush=True)
    return {}


def handle(hook, payload):
    global seen, config, secrets
    if hook in ("onLoad", "onConfigChange"):
        config = payload.get("config") or {}
        secrets = payload.get("secrets") or {}
        # Names only: neither a configuration nor a secret is a log line.
        print(f"python-upper: {hook}: configured {sorted(config)}, secrets {sorted(secrets)}",
              file=sys.stderr, flush=True)
        return {}
    if hook == "onUpgrade":
        return upgrade(payload)
    if hook == "transform":
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise ValueError('payload needs a string "text"')
        out = {"text": text.upper() + config.get("suffix", ""), "plugin": "python-upper"}
        key = secrets.get("signingKey")
        if key:
            out["signature"] = hmac.new(key.encode(), out["text"].encode(), hashlib.sha256).hexdigest()
        return out
    if hook == "onEvent":
        seen += 1
        print(f"python-upper: event #{seen}", file=sys.stderr, flush=True)
        return {"seen": seen}
    raise ValueError(f"python-upper does not implement hook {hook}")


for line in sys.stdin:
    if not line.strip():
        continue
    request = json.loads(line)
    try:
        answer = {"id": request["id"], "ok": True, "output": handle(request["hook"], request["payload"])}
    except Exception as e:  # every failure is an answer: the plugin keeps serving
        answer = {"id": request.get("id"), "ok": False, "error": str(e)}
    print(json.dumps(answer), flush=True)
