package airlock

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
)

// serve runs the SDK over lines on stdin and returns the JSON lines it wrote.
func serve(t *testing.T, handler Handler, lines ...string) []map[string]any {
	t.Helper()
	var out bytes.Buffer
	if err := Serve(strings.NewReader(strings.Join(lines, "\n")+"\n"), &out, handler); err != nil {
		t.Fatal(err)
	}
	var written []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		written = append(written, v)
	}
	return written
}

func TestAnOutputAndAnErrorAreAnswersWithTheRequestID(t *testing.T) {
	out := serve(t, func(hook string, payload json.RawMessage, host *Host) (any, error) {
		if hook == "transform" {
			return map[string]string{"got": string(payload)}, nil
		}
		return nil, UnknownHook(hook)
	}, `{"id":"a","hook":"transform","payload":{"x":1},"deadlineMs":200}`, ``, `{"id":"b","hook":"onEvent","payload":{}}`)
	if fmt.Sprint(out[0]) != `map[id:a ok:true output:map[got:{"x":1}]]` {
		t.Errorf("first answer: %v", out[0])
	}
	if out[1]["id"] != "b" || out[1]["ok"] != false || out[1]["error"] != "this plugin does not implement hook onEvent" {
		t.Errorf("second answer: %v", out[1])
	}
}

func TestHostCallsAreLinesAndTheirResultsAreReadBack(t *testing.T) {
	out := serve(t, func(hook string, payload json.RawMessage, host *Host) (any, error) {
		var seen int
		if _, err := host.Get("seen", &seen); err != nil {
			return nil, err
		}
		if err := host.Put("seen", seen+1); err != nil {
			return nil, err
		}
		return map[string]int{"seen": seen + 1}, nil
	}, `{"id":"r1","hook":"onEvent","payload":{}}`,
		`{"callId":"c1","ok":true,"result":{"found":true,"value":4}}`,
		`{"callId":"c2","ok":true,"result":{}}`)
	if fmt.Sprint(out[0]) != "map[args:map[key:seen] call:storage.get callId:c1]" {
		t.Errorf("get: %v", out[0])
	}
	if fmt.Sprint(out[1]) != "map[args:map[key:seen value:5] call:storage.put callId:c2]" {
		t.Errorf("put: %v", out[1])
	}
	if fmt.Sprint(out[2]) != "map[id:r1 ok:true output:map[seen:5]]" {
		t.Errorf("answer: %v", out[2])
	}
}

func TestARefusedHostCallIsAHostErrorWithItsCode(t *testing.T) {
	out := serve(t, func(hook string, payload json.RawMessage, host *Host) (any, error) {
		err := host.Emit("x", nil)
		if he, ok := err.(*HostError); ok {
			return he.Code, nil
		}
		return nil, fmt.Errorf("not a HostError: %v", err)
	}, `{"id":"r1","hook":"onEvent","payload":{}}`,
		`{"callId":"c1","ok":false,"code":"PERMISSION_DENIED","error":"needs events:emit"}`)
	if out[1]["output"] != "PERMISSION_DENIED" {
		t.Errorf("answer: %v", out[1])
	}
}

func TestAtMost64HostCallsAreSentAndAPanicIsAnAnswer(t *testing.T) {
	results := []string{`{"id":"r1","hook":"onEvent","payload":{}}`}
	for i := 1; i <= 64; i++ {
		results = append(results, fmt.Sprintf(`{"callId":"c%d","ok":true,"result":{"kept":true}}`, i))
	}
	results = append(results, `{"id":"r2","hook":"transform","payload":null}`)
	out := serve(t, func(hook string, payload json.RawMessage, host *Host) (any, error) {
		if hook == "transform" {
			panic("boom")
		}
		for i := 0; i < 65; i++ {
			if _, err := host.Log("info", "x"); err != nil {
				return nil, err
			}
		}
		return nil, nil
	}, results...)
	if len(out) != 66 || out[64]["ok"] != false || !strings.Contains(out[64]["error"].(string), "RESOURCE_EXHAUSTED") {
		t.Errorf("the 65th call: %v", out[64])
	}
	if out[65]["id"] != "r2" || out[65]["error"] != "panic: boom" {
		t.Errorf("a panic: %v", out[65])
	}
}

func TestAnOutputThatIsNotJSONIsAnErrorAnswer(t *testing.T) {
	out := serve(t, func(hook string, payload json.RawMessage, host *Host) (any, error) {
		return map[string]float64{"x": math.NaN()}, nil
	}, `{"id":"a","hook":"transform","payload":{}}`, `{"id":"b","hook":"transform","payload":{}}`)
	if len(out) != 2 || out[0]["ok"] != false || !strings.Contains(out[0]["error"].(string), "not JSON") || out[1]["id"] != "b" {
		t.Errorf("answers: %v", out)
	}
}
