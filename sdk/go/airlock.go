// Package airlock is the Airlock SDK for plugins written in Go, standard library only.
//
// A plugin is a Handler: a function of (hook, payload, host) that returns the hook's output or
// an error. Run reads the shim's requests on stdin, calls it, and writes the answers on stdout
// (sdk/PROTOCOL.md). The Host makes host calls while a request is handled: log through the
// router, the plugin's own key-value storage, events.
//
//	func main() {
//		airlock.Run(func(hook string, payload json.RawMessage, host *airlock.Host) (any, error) {
//			switch hook {
//			case "transform":
//				var in struct{ Text string `json:"text"` }
//				if err := json.Unmarshal(payload, &in); err != nil {
//					return nil, err
//				}
//				return map[string]string{"upper": strings.ToUpper(in.Text)}, nil
//			}
//			return nil, airlock.UnknownHook(hook)
//		})
//	}
//
// An error becomes an error answer with its message (the caller sees gRPC ABORTED) and the plugin
// keeps serving. Log to stderr or with Host.Log; never write to stdout, which carries the answers
// and host calls.
package airlock

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

const (
	// Name is this SDK's name, for `sdk: {name: ..., version: ...}` in plugin.yaml.
	Name = "airlock-sdk-go"
	// Version is this SDK's version, for plugin.yaml's sdk.version.
	Version = "0.1.0"
	// MaxHostCalls is how many host calls one request may make (the shim ends a request that
	// makes more).
	MaxHostCalls = 64
	// maxLine is the longest line either way (PROTOCOL.md, rule 2), newline excluded.
	maxLine = 1 << 20
)

// Handler answers one request: the hook's output (any value encoding/json can write), or an
// error whose message the caller gets.
type Handler func(hook string, payload json.RawMessage, host *Host) (any, error)

// HostError is a host call the host refused: Code is the gRPC code name (PERMISSION_DENIED,
// INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, ...), Message says what to do.
type HostError struct {
	Call    string
	Code    string
	Message string
}

func (e *HostError) Error() string { return fmt.Sprintf("%s: %s: %s", e.Call, e.Code, e.Message) }

// UnknownHook is the error for a hook the plugin does not handle.
func UnknownHook(hook string) error {
	return fmt.Errorf("this plugin does not implement hook %s", hook)
}

// Host makes host calls for the request being handled (sdk/PROTOCOL.md, "Host calls"): one at a
// time, each answered on stdin before the next.
type Host struct {
	in    *bufio.Reader
	out   io.Writer
	calls int
}

// Call makes one host call with args (nil for none) and returns its result.
func (h *Host) Call(call string, args any) (json.RawMessage, error) {
	if h.calls >= MaxHostCalls {
		return nil, &HostError{call, "RESOURCE_EXHAUSTED", fmt.Sprintf("a request may make at most %d host calls", MaxHostCalls)}
	}
	h.calls++
	id := fmt.Sprintf("c%d", h.calls)
	line := map[string]any{"call": call, "callId": id}
	if args != nil {
		line["args"] = args
	}
	if err := writeLine(h.out, line); err != nil {
		return nil, err
	}
	text, err := readLine(h.in)
	if err != nil {
		return nil, &HostError{call, "UNAVAILABLE", "reading the result: " + err.Error()}
	}
	var result struct {
		CallID string          `json:"callId"`
		OK     bool            `json:"ok"`
		Result json.RawMessage `json:"result"`
		Code   string          `json:"code"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal(text, &result); err != nil {
		return nil, &HostError{call, "INTERNAL", "the result is not JSON: " + err.Error()}
	}
	if result.CallID != id {
		return nil, &HostError{call, "INTERNAL", fmt.Sprintf("a result for %q, not %q", result.CallID, id)}
	}
	if !result.OK {
		return nil, &HostError{call, result.Code, result.Error}
	}
	return result.Result, nil
}

func (h *Host) callInto(call string, args any, into any) error {
	raw, err := h.Call(call, args)
	if err != nil {
		return err
	}
	if into == nil || len(raw) == 0 {
		return nil
	}
	return json.Unmarshal(raw, into)
}

// Log writes a log line through the router (needs log): true when kept, false when dropped over
// the rate limit.
func (h *Host) Log(level, message string) (bool, error) {
	var r struct{ Kept bool }
	err := h.callInto("log", map[string]string{"level": level, "message": message}, &r)
	return r.Kept, err
}

// Get reads the value stored under key into value (needs storage:read); false when there is none.
func (h *Host) Get(key string, value any) (bool, error) {
	var r struct {
		Found bool
		Value json.RawMessage
	}
	if err := h.callInto("storage.get", map[string]string{"key": key}, &r); err != nil || !r.Found {
		return false, err
	}
	return true, json.Unmarshal(r.Value, value)
}

// Put stores value (any JSON value) under key (needs storage:write).
func (h *Host) Put(key string, value any) error {
	return h.callInto("storage.put", map[string]any{"key": key, "value": value}, nil)
}

// Delete removes key and says whether it was there (needs storage:write).
func (h *Host) Delete(key string) (bool, error) {
	var r struct{ Existed bool }
	err := h.callInto("storage.delete", map[string]string{"key": key}, &r)
	return r.Existed, err
}

// List returns every key with prefix, in ascending order, all pages (needs storage:read).
func (h *Host) List(prefix string) ([]string, error) {
	var keys []string
	token := ""
	for {
		var page struct {
			Keys          []string
			NextPageToken string
		}
		if err := h.callInto("storage.list", map[string]string{"prefix": prefix, "pageToken": token}, &page); err != nil {
			return keys, err
		}
		keys = append(keys, page.Keys...)
		if page.NextPageToken == "" {
			return keys, nil
		}
		token = page.NextPageToken
	}
}

// WrittenBy returns the plugin version that last wrote the storage, "" when none is recorded.
func (h *Host) WrittenBy() (string, error) {
	var r struct{ WrittenBy *string }
	err := h.callInto("storage.writtenBy", nil, &r)
	if r.WrittenBy == nil {
		return "", err
	}
	return *r.WrittenBy, err
}

// Emit emits one event on the plugin's events stream (needs events:emit).
func (h *Host) Emit(eventType string, payload any) error {
	return h.callInto("emit", map[string]any{"type": eventType, "payload": payload}, nil)
}

type request struct {
	ID      *string         `json:"id"`
	Hook    string          `json:"hook"`
	Payload json.RawMessage `json:"payload"`
}

type answer struct {
	ID     *string `json:"id"`
	OK     bool    `json:"ok"`
	Output any     `json:"output,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// writeLine writes one JSON line and flushes it: an answer left in a buffer is a timeout.
func writeLine(w io.Writer, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(line, '\n'))
	return err
}

func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine+1 {
			return nil, errors.New("a line longer than 1 MiB")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return bytes.TrimRight(line, "\r\n"), err
	}
}

// Serve answers the requests on r, writing to w, until r ends.
func Serve(r io.Reader, w io.Writer, handler Handler) error {
	in := bufio.NewReaderSize(r, 64*1024)
	for {
		line, err := readLine(in)
		if len(bytes.TrimSpace(line)) > 0 {
			a := answerTo(line, handler, in, w)
			if _, merr := json.Marshal(a); merr != nil {
				// An output encoding/json cannot write (NaN, a channel): an error answer, not the
				// end of the plugin.
				a = answer{ID: a.ID, Error: "the output is not JSON: " + merr.Error()}
			}
			if werr := writeLine(w, a); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func answerTo(line []byte, handler Handler, in *bufio.Reader, out io.Writer) (a answer) {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		return answer{Error: "the request is not JSON: " + err.Error()}
	}
	a.ID = req.ID
	defer func() {
		// A panic is an error answer too: the plugin keeps serving.
		if p := recover(); p != nil {
			a = answer{ID: req.ID, Error: fmt.Sprint("panic: ", p)}
		}
	}()
	output, err := handler(req.Hook, req.Payload, &Host{in: in, out: out})
	if err != nil {
		return answer{ID: req.ID, Error: err.Error()}
	}
	if output == nil {
		output = json.RawMessage("null")
	}
	return answer{ID: req.ID, OK: true, Output: output}
}

// Run answers the shim's requests on stdin until the shim closes it.
func Run(handler Handler) {
	if err := Serve(os.Stdin, os.Stdout, handler); err != nil {
		fmt.Fprintln(os.Stderr, "airlock:", err)
		os.Exit(1)
	}
}
