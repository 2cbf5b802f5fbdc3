// Package pubsubtest starts an in-process Pub/Sub fake (pstest) for ingress tests,
// with topics made through the real client and publishes that a test can fail or hold.
package pubsubtest

import (
	"context"
	"sync"
	"testing"

	"cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
)

// Fake is a running pstest server that PUBSUB_EMULATOR_HOST points at for
// the rest of the test.
type Fake struct {
	*pstest.Server
	Project string
	gate    *gate
}

// Start starts the fake, points PUBSUB_EMULATOR_HOST at it (so the test
// cannot be parallel) and creates topicIDs in project. Everything is torn
// down when the test ends.
func Start(t testing.TB, project string, topicIDs ...string) *Fake {
	t.Helper()
	g := &gate{}
	srv := pstest.NewServer(pstest.ServerReactorOption{FuncName: "Publish", Reactor: g})
	t.Cleanup(func() { srv.Close() })
	t.Setenv("PUBSUB_EMULATOR_HOST", srv.Addr)

	ctx := context.Background()
	c, err := pubsub.NewClient(ctx, project)
	if err != nil {
		t.Fatalf("pubsubtest: client for %s: %v", srv.Addr, err)
	}
	defer c.Close()
	for _, id := range topicIDs {
		name := "projects/" + project + "/topics/" + id
		if _, err := c.TopicAdminClient.CreateTopic(ctx, &pb.Topic{Name: name}); err != nil {
			t.Fatalf("pubsubtest: create topic %s: %v", name, err)
		}
	}
	return &Fake{Server: srv, Project: project, gate: g}
}

// Messages returns the messages stored in topicID of the fake's project.
// It must not be called while publishes are held.
func (f *Fake) Messages(topicID string) []*pstest.Message {
	name := "projects/" + f.Project + "/topics/" + topicID
	var out []*pstest.Message
	for _, m := range f.Server.Messages() {
		if m.Topic == name {
			out = append(out, m)
		}
	}
	return out
}

// FailPublishes makes every Publish RPC fail with err until it is called
// with nil. Use a status error with a code the client does not retry (such
// as PermissionDenied), or the client retries for a minute.
func (f *Fake) FailPublishes(err error) {
	f.gate.mu.Lock()
	defer f.gate.mu.Unlock()
	f.gate.fail = err
}

// HoldPublishes makes Publish RPCs wait until release is called. arrived
// receives once for every RPC that is being held. While held, pstest's lock is
// taken, so call nothing else on the fake until release.
func (f *Fake) HoldPublishes() (arrived <-chan struct{}, release func()) {
	f.gate.mu.Lock()
	defer f.gate.mu.Unlock()
	held := make(chan struct{})
	arrivals := make(chan struct{}, 100)
	f.gate.held, f.gate.arrived = held, arrivals
	var once sync.Once
	return arrivals, func() {
		once.Do(func() {
			f.gate.mu.Lock()
			f.gate.held, f.gate.arrived = nil, nil
			f.gate.mu.Unlock()
			close(held)
		})
	}
}

// PublishCalls returns how many Publish RPCs reached the fake.
func (f *Fake) PublishCalls() int {
	f.gate.mu.Lock()
	defer f.gate.mu.Unlock()
	return f.gate.calls
}

// gate is a pstest reactor in front of every Publish RPC.
type gate struct {
	mu      sync.Mutex
	calls   int
	fail    error
	held    chan struct{}
	arrived chan struct{}
}

func (g *gate) React(any) (handled bool, ret any, err error) {
	g.mu.Lock()
	g.calls++
	fail, held, arrived := g.fail, g.held, g.arrived
	g.mu.Unlock()
	if held != nil {
		arrived <- struct{}{}
		<-held
	}
	if fail != nil {
		return true, nil, fail
	}
	return false, nil, nil
}
