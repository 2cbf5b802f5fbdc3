package pipelines_test

import (
	"context"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/runtime/graphx"
	pipepb "github.com/apache/beam/sdks/v2/go/pkg/beam/model/pipeline_v1"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/dataflow/dataflowlib"
	"google.golang.org/protobuf/proto"

	"github.com/iotpipe/iotpipe/pipelines"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

// The Dataflow job is the same graph behind the runner's native Pub/Sub read,
// translated as a streaming job; none of the prism-only read and ack steps.
func TestDataflowStreamingJobGraph(t *testing.T) {
	p, err := pipelines.Streaming(context.Background(), pipelines.StreamingConfig{
		Subscription: "projects/p/subscriptions/iot-events-pipeline",
		Graph: pipelines.GraphConfig{BigtableProject: "p", BigtableInstance: "iotpipe",
			DeadLetterTopic: "projects/p/topics/dl", AlertsTopic: "projects/p/topics/alerts"},
	}, "dataflow")
	if err != nil {
		t.Fatal(err)
	}
	edges, _, err := p.Build()
	if err != nil {
		t.Fatal(err)
	}
	env, err := graphx.CreateEnvironment(context.Background(), "beam:env:docker:v1", func(context.Context) string { return "apache/beam_go_sdk:2.77.0" })
	if err != nil {
		t.Fatal(err)
	}
	model, err := graphx.Marshal(edges, &graphx.Options{Environment: env})
	if err != nil {
		t.Fatal(err)
	}

	var names []string
	var nativeRead *pipepb.PTransform
	for _, tr := range model.GetComponents().GetTransforms() {
		names = append(names, tr.GetUniqueName())
		if tr.GetSpec().GetUrn() == pubsubsource.NativeReadURN {
			nativeRead = tr
		}
	}
	all := strings.Join(names, "\n")
	if nativeRead == nil {
		t.Fatalf("no native Pub/Sub read (%s) in the Dataflow graph:\n%s", pubsubsource.NativeReadURN, all)
	}
	var payload pipepb.PubSubReadPayload
	if err := protoUnmarshal(nativeRead.GetSpec().GetPayload(), &payload); err != nil {
		t.Fatal(err)
	}
	if payload.GetSubscription() != "projects/p/subscriptions/iot-events-pipeline" || !payload.GetWithAttributes() {
		t.Errorf("native read payload = %v, want the subscription with attributes", &payload)
	}
	for _, want := range []string{"validate.Validate", "dedupe.Dedupe", "enrich.Enrich", "aggregate.PerMinute", "alerts.Thresholds", "bigtablesink.Write", "pubsubsink.Publish"} {
		if !strings.Contains(all, want) {
			t.Errorf("transform %s missing from the Dataflow graph:\n%s", want, all)
		}
	}
	for _, absent := range []string{"pubsubsource.Read/", "pubsubsource.Ack"} {
		if strings.Contains(all, absent) {
			t.Errorf("prism-only transform %s in the Dataflow graph", absent)
		}
	}
	for _, out := range nativeRead.GetOutputs() {
		if b := model.GetComponents().GetPcollections()[out].GetIsBounded(); b != pipepb.IsBounded_UNBOUNDED {
			t.Errorf("native read output is %v, want UNBOUNDED", b)
		}
	}

	job, err := dataflowlib.Translate(context.Background(), model, &dataflowlib.JobOptions{
		Name: "iotpipe-streaming", Project: "p", Region: "us-central1", Streaming: true,
		TempLocation: "gs://b/tmp",
	}, "gs://b/staging/worker", "gs://b/staging/model", "hash")
	if err != nil {
		t.Fatal(err)
	}
	if job.Type != "JOB_TYPE_STREAMING" {
		t.Errorf("job type = %s, want JOB_TYPE_STREAMING", job.Type)
	}
}

func protoUnmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }
