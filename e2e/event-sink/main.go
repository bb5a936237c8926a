// event-sink: the e2e's receiver of Airlock's audit sink, built on the CloudEvents Go SDK (so an
// event that is not a valid CloudEvent 1.0 is refused by the reference implementation, not by a
// check of ours). POST /events takes events in any HTTP binding (Airlock sends structured JSON);
// GET /events answers every valid event received so far as a JSON array (the newest -max kept).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"sync"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8099", "address to listen on")
	max := flag.Int("max", 50000, "events kept (oldest dropped)")
	flag.Parse()

	var mu sync.Mutex
	events := []json.RawMessage{}
	ctx := context.Background()
	p, err := cloudevents.NewHTTP()
	if err != nil {
		log.Fatalf("http protocol: %v", err)
	}
	receive, err := cloudevents.NewHTTPReceiveHandler(ctx, p, func(_ context.Context, e cloudevents.Event) protocol.Result {
		if err := e.Validate(); err != nil {
			log.Printf("refused an invalid event: %v", err)
			return cehttp.NewResult(http.StatusBadRequest, "invalid CloudEvent: %v", err)
		}
		b, err := json.Marshal(e)
		if err != nil {
			return cehttp.NewResult(http.StatusBadRequest, "%v", err)
		}
		mu.Lock()
		events = append(events, b)
		if len(events) > *max {
			events = events[len(events)-*max:]
		}
		mu.Unlock()
		return nil
	})
	if err != nil {
		log.Fatalf("receive handler: %v", err)
	}
	http.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			mu.Lock()
			out, _ := json.Marshal(events)
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(out)
			return
		}
		receive.ServeHTTP(w, r)
	})
	log.Printf("CloudEvents sink on http://%s/events", *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
