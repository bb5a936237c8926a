// kstatus prints what the cli-utils kstatus library (the one Flux's health checks, kpt and
// Config Sync use) computes for each Kubernetes object given as JSON on stdin: one JSON line
// per object, {"name": ..., "status": "Current|InProgress|Failed|...", "message": ...}.
// The e2e runs it on Plugins read from the cluster; Airlock's own status code is not involved.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	dec := json.NewDecoder(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err == io.EOF {
			return
		} else if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: reading an object: %v\n", err)
			os.Exit(2)
		}
		// As the API machinery decodes objects: whole numbers as int64, which kstatus expects.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: not a Kubernetes object: %v\n", err)
			os.Exit(2)
		}
		r, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %s: %v\n", u.GetName(), err)
			os.Exit(1)
		}
		if err := enc.Encode(result{Name: u.GetName(), Status: r.Status.String(), Message: r.Message}); err != nil {
			os.Exit(2)
		}
	}
}
