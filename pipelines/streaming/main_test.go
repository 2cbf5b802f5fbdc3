package main

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"github.com/iotpipe/iotpipe/pipelines"
)

func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv(childArgsEnv); ok {
		// Re-executed by a test as the streaming command itself.
		os.Args = append([]string{"streaming"}, strings.Split(args, "\n")...)
		main()
		os.Exit(0)
	}
	flag.Parse()
	beam.Init()
	os.Exit(m.Run())
}

// --runner=dataflow --dry_run translates the streaming job offline.
func TestDataflowDryRun(t *testing.T) {
	for k, v := range map[string]string{
		"runner": "dataflow", "dry_run": "true", "project": "p", "region": "us-central1",
		"staging_location": "gs://b/staging", "temp_location": "gs://b/tmp",
	} {
		if err := flag.Set(k, v); err != nil {
			t.Fatalf("flag %s: %v", k, err)
		}
	}
	cfg := pipelines.StreamingConfig{
		Subscription: "projects/p/subscriptions/iot-events-pipeline",
		Graph:        pipelines.GraphConfig{BigtableProject: "p", BigtableInstance: "iotpipe"},
	}
	if err := run(cfg, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("dry run: %v", err)
	}
}

func TestBadFlagsFailBeforeAnyJob(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  pipelines.StreamingConfig
		want string // in the error
	}{
		{"no subscription", pipelines.StreamingConfig{Graph: pipelines.GraphConfig{BigtableProject: "p", BigtableInstance: "i"}}, "--input_subscription"},
		{"topic instead of subscription", pipelines.StreamingConfig{Subscription: "projects/p/topics/t", Graph: pipelines.GraphConfig{BigtableProject: "p", BigtableInstance: "i"}}, "--input_subscription"},
		{"no bigtable instance", pipelines.StreamingConfig{Subscription: "projects/p/subscriptions/s", Graph: pipelines.GraphConfig{BigtableProject: "p"}}, "--bigtable_instance"},
		{"dead-letter topic id without project", pipelines.StreamingConfig{Subscription: "projects/p/subscriptions/s", Graph: pipelines.GraphConfig{BigtableProject: "p", BigtableInstance: "i", DeadLetterTopic: "dl"}}, "--deadletter_topic"},
		{"alerts topic is a subscription", pipelines.StreamingConfig{Subscription: "projects/p/subscriptions/s", Graph: pipelines.GraphConfig{BigtableProject: "p", BigtableInstance: "i", AlertsTopic: "projects/p/subscriptions/a"}}, "--alerts_topic"},
		{"warehouse scheme unknown", pipelines.StreamingConfig{Subscription: "projects/p/subscriptions/s", Graph: pipelines.GraphConfig{BigtableProject: "p", BigtableInstance: "i", Warehouse: "mysql://x"}}, "--warehouse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(tc.cfg, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run error = %v, want one naming %s", err, tc.want)
			}
		})
	}
}
