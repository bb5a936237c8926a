// go-greeter: an Airlock plugin in Go, with nothing but the standard library. The shim writes one
// JSON request per line to stdin and reads one JSON answer per line from stdout
// (plugin-shim/PROTOCOL.md); stderr is the plugin's log.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type request struct {
	ID      string          `json:"id"`
	Hook    string          `json:"hook"`
	Payload json.RawMessage `json:"payload"`
}

type answer struct {
	ID     string      `json:"id"`
	OK     bool        `json:"ok"`
	Output interface{} `json:"output,omitempty"`
	Error  string      `json:"error,omitempty"`
}

func handle(hook string, payload json.RawMessage) (interface{}, error) {
	switch hook {
	case "transform":
		var in struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(payload, &in); err != nil {
			return nil, fmt.Errorf("payload: %v", err)
		}
		name := strings.TrimSpace(in.Name)
		if name == "" {
			name = "world"
		}
		return map[string]string{"greeting": "hello from Go, " + name, "plugin": "go-greeter"}, nil
	default:
		return nil, fmt.Errorf("go-greeter does not implement hook %s", hook)
	}
}

func main() {
	in := bufio.NewReader(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for {
		line, err := in.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			var req request
			var ans answer
			if jerr := json.Unmarshal(line, &req); jerr != nil {
				ans = answer{ID: req.ID, Error: "request is not JSON: " + jerr.Error()}
			} else if output, herr := handle(req.Hook, req.Payload); herr != nil {
				ans = answer{ID: req.ID, Error: herr.Error()}
			} else {
				ans = answer{ID: req.ID, OK: true, Output: output}
			}
			// Encode writes one line; flush so the shim sees it now, not at exit.
			if werr := enc.Encode(ans); werr != nil {
				fmt.Fprintln(os.Stderr, "go-greeter: writing the answer:", werr)
				return
			}
			out.Flush()
		}
		if err != nil {
			return // stdin closed: the shim is stopping the plugin
		}
	}
}
