package publisher_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/publisher"
)

func newPublisher(t *testing.T, project string) *publisher.Publisher {
	t.Helper()
	p, err := publisher.New(context.Background(), project)
	if err != nil {
		t.Fatalf("New(%q): %v", project, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestPublishStoresDataAndAttributes(t *testing.T) {
	fake := pubsubtest.Start(t, "proj", "events", "state")
	p := newPublisher(t, "proj")
	ctx := context.Background()

	attrs := map[string]string{"deviceId": "dev1", "subFolder": "alerts"}
	id, err := p.Publish(ctx, "events", []byte(`{"t":1}`), attrs)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// A full topic name works too, and each topic keeps its own messages.
	if _, err := p.Publish(ctx, "projects/proj/topics/state", []byte("s"), nil); err != nil {
		t.Fatalf("Publish by full name: %v", err)
	}

	msgs := fake.Messages("events")
	if len(msgs) != 1 {
		t.Fatalf("events has %d messages, want 1", len(msgs))
	}
	if m := msgs[0]; m.ID != id || string(m.Data) != `{"t":1}` || !maps.Equal(m.Attributes, attrs) {
		t.Errorf("stored message = {ID:%s Data:%s Attributes:%v}, want {ID:%s Data:{\"t\":1} Attributes:%v}",
			m.ID, m.Data, m.Attributes, id, attrs)
	}
	if got := len(fake.Messages("state")); got != 1 {
		t.Errorf("state has %d messages, want 1", got)
	}
}

func TestPublishReportsPubSubFailure(t *testing.T) {
	fake := pubsubtest.Start(t, "proj", "events")
	p := newPublisher(t, "proj")
	fake.FailPublishes(status.Error(codes.PermissionDenied, "injected"))

	_, err := p.Publish(context.Background(), "events", []byte("x"), nil)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "projects/proj/topics/events") {
		t.Fatalf("Publish error = %v, want PermissionDenied naming the topic", err)
	}
	if n := len(fake.Messages("events")); n != 0 {
		t.Errorf("events has %d messages after a failed publish, want 0", n)
	}
}

func TestPublishMissingTopic(t *testing.T) {
	pubsubtest.Start(t, "proj")
	p := newPublisher(t, "proj")
	_, err := p.Publish(context.Background(), "nope", []byte("x"), nil)
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "projects/proj/topics/nope") {
		t.Fatalf("Publish to a missing topic: %v, want NotFound naming the topic", err)
	}
}

func TestPublishReturnsWhenContextEnds(t *testing.T) {
	fake := pubsubtest.Start(t, "proj", "events")
	p := newPublisher(t, "proj")
	arrived, release := fake.HoldPublishes()
	defer release()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := p.Publish(ctx, "events", []byte("x"), nil)
		done <- err
	}()
	<-arrived
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestCloseDrainsInFlightPublishes(t *testing.T) {
	fake := pubsubtest.Start(t, "proj", "events")
	p, err := publisher.New(context.Background(), "proj")
	if err != nil {
		t.Fatal(err)
	}
	arrived, release := fake.HoldPublishes()

	published := make(chan error, 1)
	go func() {
		_, err := p.Publish(context.Background(), "events", []byte("in flight"), nil)
		published <- err
	}()
	<-arrived

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a publish was still in flight", err)
	case err := <-published:
		t.Fatalf("Publish returned (%v) before Pub/Sub answered", err)
	default:
	}
	release()
	if err := <-published; err != nil {
		t.Errorf("in-flight Publish: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if got := len(fake.Messages("events")); got != 1 {
		t.Errorf("events has %d messages, want the in-flight one", got)
	}

	_, err = p.Publish(context.Background(), "events", []byte("late"), nil)
	if !errors.Is(err, publisher.ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestBadArguments(t *testing.T) {
	if _, err := publisher.New(context.Background(), ""); err == nil {
		t.Error("New with an empty project succeeded")
	}
	pubsubtest.Start(t, "proj")
	p := newPublisher(t, "proj")
	if _, err := p.Publish(context.Background(), "", nil, nil); err == nil || !strings.Contains(err.Error(), "empty topic") {
		t.Errorf("Publish to an empty topic id = %v, want an error", err)
	}
}
