"""{{name}}: an Airlock plugin in Python (sdk/python, standard library only).

transform greets the name in its payload; onEvent counts events in the plugin's storage and
emits one "counted" event each time. Test it without a cluster:
    kubectl airlock run bundle --test cases.yaml
"""

import sys

import airlock_sdk


def handle(hook, payload, host):
    if hook == "transform":
        name = (payload or {}).get("name", "").strip()
        if not name:
            raise ValueError('the payload needs a "name"')
        return {"greeting": f"hello, {name}", "plugin": "{{name}}"}
    if hook == "onEvent":
        count = host.get("count", 0) + 1
        host.put("count", count)
        host.emit("counted", {"count": count})
        host.log("info", f"event #{count}")
        return {"count": count}
    raise airlock_sdk.UnknownHook(hook)


if __name__ == "__main__":
    print("{{name}}: ready", file=sys.stderr, flush=True)
    airlock_sdk.run(handle)
