"""python-upper: an Airlock plugin in Python, standard library only.

The shim writes one JSON request per line to stdin and reads one JSON answer per line from
stdout (plugin-shim/PROTOCOL.md); stderr is the plugin's log. `transform` upper-cases the
payload's "text" and appends the configured "suffix"; `onEvent` counts the events it has seen.
Its configuration (Plugin.spec.config, checked against configSchema in plugin.yaml) arrives in
`onLoad` and, when it changes, in `onConfigChange`: no restart.
"""
import json
import sys

seen = 0
config = {}


def handle(hook, payload):
    global seen, config
    if hook in ("onLoad", "onConfigChange"):
        config = payload.get("config") or {}
        # The keys only: a configuration is not a log line.
        print(f"python-upper: {hook}: configured {sorted(config)}", file=sys.stderr, flush=True)
        return {}
    if hook == "transform":
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise ValueError('payload needs a string "text"')
        return {"text": text.upper() + config.get("suffix", ""), "plugin": "python-upper"}
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
