package pubsubsink_test

import (
	"context"
	"sort"
	"strings"
	"testing"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/iotpipe/iotpipe/transforms/pubsubsink"
)

func TestMain(m *testing.M) { ptest.Main(m) }

const topic = "projects/p/topics/deadletters"

func startPubsub(t *testing.T, topics ...string) *pstest.Server {
	t.Helper()
	srv := pstest.NewServer()
	t.Cleanup(func() { srv.Close() })
	t.Setenv("PUBSUB_EMULATOR_HOST", srv.Addr)
	for _, name := range topics {
		if _, err := srv.GServer.CreateTopic(context.Background(), &pubsubpb.Topic{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	return srv
}

func TestPublishHandsBackReceiptsOfPublishedMessages(t *testing.T) {
	srv := startPubsub(t, topic)
	p, s := beam.NewPipelineWithRoot()
	msgs := beam.Create(s,
		pubsubsink.Message{Data: []byte("a"), Attributes: map[string]string{"k": "1"}, AckID: "ack-a"},
		pubsubsink.Message{Data: []byte("b"), AckID: "ack-b"},
		pubsubsink.Message{Data: []byte("c")}, // no receipt to hand back
	)
	receipts := pubsubsink.Publish(s, pubsubsink.Config{Topic: topic}, msgs)
	passert.Equals(s, receipts, "ack-a", "ack-b")
	if err := ptest.Run(p); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range srv.Messages() {
		if m.Topic != topic {
			t.Errorf("message on %s, want %s", m.Topic, topic)
		}
		got = append(got, string(m.Data)+"/"+m.Attributes["k"])
	}
	sort.Strings(got)
	if strings.Join(got, ",") != "a/1,b/,c/" {
		t.Errorf("published %v, want a/1, b/, c/", got)
	}
}

// A publish Pub/Sub refuses fails the bundle: no receipt is handed back, so
// the source message is not acked and comes back.
func TestPublishFailureFailsTheBundle(t *testing.T) {
	startPubsub(t) // the topic does not exist
	p, s := beam.NewPipelineWithRoot()
	msgs := beam.Create(s, pubsubsink.Message{Data: []byte("a"), AckID: "ack-a"})
	pubsubsink.Publish(s, pubsubsink.Config{Topic: topic}, msgs)
	err := ptest.Run(p)
	if err == nil || !strings.Contains(err.Error(), "publish 1 messages to "+topic) {
		t.Fatalf("run error = %v, want the failed publish", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		topic string
		ok    bool
	}{
		{"projects/p/topics/t", true},
		{"t", false},
		{"projects/p/subscriptions/t", false},
		{"projects//topics/t", false},
		{"projects/p/topics/", false},
	} {
		if err := (pubsubsink.Config{Topic: tc.topic}).Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%q) = %v, want ok=%v", tc.topic, err, tc.ok)
		}
	}
}
