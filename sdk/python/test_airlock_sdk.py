"""Unit tests of the Python SDK: the lines it writes and reads, as sdk/PROTOCOL.md says.
Run: python3 -m unittest discover -s sdk/python"""

import io
import json
import unittest

import airlock_sdk


def serve(handler, *lines):
    """Runs the SDK over ``lines`` on stdin; the JSON lines it wrote."""
    stdin = io.StringIO("".join(line + "\n" for line in lines))
    stdout = io.StringIO()
    airlock_sdk.run(handler, stdin, stdout)
    return [json.loads(line) for line in stdout.getvalue().splitlines()]


class Protocol(unittest.TestCase):
    def test_an_output_and_an_exception_are_answers_with_the_request_id(self):
        def handler(hook, payload, host):
            if hook == "transform":
                return {"upper": payload["text"].upper()}
            raise airlock_sdk.UnknownHook(hook)

        out = serve(handler,
                    '{"id":"a","hook":"transform","payload":{"text":"hi"},"deadlineMs":200}',
                    "",
                    '{"id":"b","hook":"onEvent","payload":{}}')
        self.assertEqual(out, [
            {"id": "a", "ok": True, "output": {"upper": "HI"}},
            {"id": "b", "ok": False, "error": "this plugin does not implement hook onEvent"},
        ])

    def test_host_calls_are_lines_and_their_results_are_read_back(self):
        def handler(hook, payload, host):
            seen = host.get("seen", 0) + 1
            host.put("seen", seen)
            return {"seen": seen}

        out = serve(handler,
                    '{"id":"r1","hook":"onEvent","payload":{}}',
                    '{"callId":"c1","ok":true,"result":{"found":true,"value":4}}',
                    '{"callId":"c2","ok":true,"result":{}}')
        self.assertEqual(out[0], {"call": "storage.get", "callId": "c1", "args": {"key": "seen"}})
        self.assertEqual(out[1], {"call": "storage.put", "callId": "c2",
                                  "args": {"key": "seen", "value": 5}})
        self.assertEqual(out[2], {"id": "r1", "ok": True, "output": {"seen": 5}})

    def test_a_refused_host_call_is_an_exception_with_its_code(self):
        def handler(hook, payload, host):
            try:
                host.emit("x", {})
            except airlock_sdk.HostError as e:
                return {"code": e.code}

        out = serve(handler,
                    '{"id":"r1","hook":"onEvent","payload":{}}',
                    '{"callId":"c1","ok":false,"code":"PERMISSION_DENIED","error":"needs events:emit"}')
        self.assertEqual(out[-1], {"id": "r1", "ok": True, "output": {"code": "PERMISSION_DENIED"}})

    def test_at_most_64_host_calls_are_sent(self):
        def handler(hook, payload, host):
            for _ in range(65):
                host.log("info", "x")

        results = ['{"callId":"c%d","ok":true,"result":{"kept":true}}' % i for i in range(1, 65)]
        out = serve(handler, '{"id":"r1","hook":"onEvent","payload":{}}', *results)
        self.assertEqual(len(out), 65, "64 calls and the answer")
        self.assertFalse(out[-1]["ok"])
        self.assertIn("RESOURCE_EXHAUSTED", out[-1]["error"])

    def test_an_output_that_is_not_json_is_an_error_answer_and_the_plugin_goes_on(self):
        def handler(hook, payload, host):
            return {"nan": float("nan")} if hook == "a" else {1, 2}

        out = serve(handler, '{"id":"a","hook":"a","payload":{}}', '{"id":"b","hook":"b","payload":{}}')
        self.assertEqual([o["ok"] for o in out], [False, False])
        self.assertIn("not JSON", out[0]["error"])
        self.assertEqual(out[1]["id"], "b")

    def test_list_follows_every_page(self):
        def handler(hook, payload, host):
            return host.list("a/")

        out = serve(handler,
                    '{"id":"r1","hook":"transform","payload":null}',
                    '{"callId":"c1","ok":true,"result":{"keys":["a/1"],"nextPageToken":"a/1"}}',
                    '{"callId":"c2","ok":true,"result":{"keys":["a/2"],"nextPageToken":""}}')
        self.assertEqual(out[1]["args"], {"prefix": "a/", "pageToken": "a/1"})
        self.assertEqual(out[-1]["output"], ["a/1", "a/2"])


if __name__ == "__main__":
    unittest.main()
