package pubsubqueue

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
)

const topic, subName = "projects/p/topics/t", "projects/p/subscriptions/s"

func start(t *testing.T) (*Server, *pubsub.Client) {
	t.Helper()
	srv, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	t.Setenv("PUBSUB_EMULATOR_HOST", srv.Addr)
	c, err := pubsub.NewClient(context.Background(), "p")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	if _, err := c.TopicAdminClient.CreateTopic(ctx, &pb.Topic{Name: topic}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubscriptionAdminClient.CreateSubscription(ctx, &pb.Subscription{Name: subName, Topic: topic}); err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func pull(t *testing.T, c *pubsub.Client, max int) []*pb.ReceivedMessage {
	t.Helper()
	resp, err := c.SubscriptionAdminClient.Pull(context.Background(), &pb.PullRequest{Subscription: subName, MaxMessages: int32(max), ReturnImmediately: true})
	if err != nil {
		t.Fatal(err)
	}
	return resp.ReceivedMessages
}

func data(msgs []*pb.ReceivedMessage) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.Message.Data))
	}
	sort.Strings(out)
	return out
}

// Through the real client: FIFO delivery, acks, stale acks ignored, nacks redelivered.
func TestPublishPullAckNack(t *testing.T) {
	srv, c := start(t)
	ctx := context.Background()
	pub := c.Publisher(topic)
	defer pub.Stop()
	for i := range 4 {
		if _, err := pub.Publish(ctx, &pubsub.Message{Data: fmt.Appendf(nil, "m%d", i), Attributes: map[string]string{"i": fmt.Sprint(i)}}).Get(ctx); err != nil {
			t.Fatal(err)
		}
	}
	first := pull(t, c, 3)
	if got := fmt.Sprint(data(first)); got != "[m0 m1 m2]" {
		t.Fatalf("first pull = %v, want the three oldest", got)
	}
	if first[0].Message.Attributes["i"] != "0" || first[0].Message.PublishTime == nil || first[0].Message.MessageId == "" {
		t.Errorf("message lost its attributes, id or publish time: %v", first[0].Message)
	}
	sa := c.SubscriptionAdminClient
	if err := sa.Acknowledge(ctx, &pb.AcknowledgeRequest{Subscription: subName, AckIds: []string{first[0].AckId}}); err != nil {
		t.Fatal(err)
	}
	if err := sa.ModifyAckDeadline(ctx, &pb.ModifyAckDeadlineRequest{Subscription: subName, AckIds: []string{first[1].AckId}, AckDeadlineSeconds: 0}); err != nil {
		t.Fatal(err)
	}
	second := pull(t, c, 10)
	if got := fmt.Sprint(data(second)); got != "[m1 m3]" {
		t.Fatalf("second pull = %v, want the nacked m1 and the unread m3", got)
	}
	for _, m := range second {
		if string(m.Message.Data) == "m1" && (m.DeliveryAttempt != 2 || m.AckId == first[1].AckId) {
			t.Errorf("redelivery of m1: attempt %d, ack id %s (first %s)", m.DeliveryAttempt, m.AckId, first[1].AckId)
		}
	}
	// The first delivery's ack id of m1 is stale now: acking with it does nothing.
	if err := sa.Acknowledge(ctx, &pb.AcknowledgeRequest{Subscription: subName, AckIds: []string{first[0].AckId, first[1].AckId}}); err != nil {
		t.Fatal(err)
	}
	if srv.Acks() != 1 {
		t.Errorf("acks = %d, want 1 (duplicate and stale acks ignored)", srv.Acks())
	}
}

// A delivery whose deadline lapses is delivered again; one extended is not.
func TestLapsedDeadlineRedelivers(t *testing.T) {
	srv, _ := start(t)
	for i := range 2 {
		if err := srv.PublishDirect(topic, fmt.Appendf(nil, "m%d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := srv.subscription(subName)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	got, _ := sub.pull(10, t0)
	if len(got) != 2 {
		t.Fatalf("pulled %d, want 2", len(got))
	}
	sub.modify([]string{got[1].AckId}, time.Minute, t0)
	again, _ := sub.pull(10, t0.Add(11*time.Second)) // past the 10 s default deadline
	if len(again) != 1 || string(again[0].Message.Data) != "m0" {
		t.Fatalf("after the deadline: pulled %v, want m0 only (m1 was extended)", data(again))
	}
	if n := sub.ack([]string{got[0].AckId, again[0].AckId, got[1].AckId}); n != 2 {
		t.Errorf("ack counted %d, want 2 (m0's lapsed ack id is stale)", n)
	}
	if left, _ := sub.pull(10, t0.Add(time.Hour)); len(left) != 0 {
		t.Errorf("after acking everything, pulled %v", data(left))
	}
}

// A pull that finds nothing waits for the next publish instead of its full wait.
func TestPullWaitsForPublish(t *testing.T) {
	srv, c := start(t)
	done := make(chan []*pb.ReceivedMessage)
	go func() {
		resp, err := c.SubscriptionAdminClient.Pull(context.Background(), &pb.PullRequest{Subscription: subName, MaxMessages: 5})
		if err != nil {
			t.Error(err)
		}
		done <- resp.GetReceivedMessages()
	}()
	// The pull may start before or after this publish; either way it returns m.
	if err := srv.PublishDirect(topic, []byte("m"), nil); err != nil {
		t.Fatal(err)
	}
	got := <-done
	if len(got) == 0 {
		got = pull(t, c, 5) // the pull ran out its wait before the publish reached it
	}
	if fmt.Sprint(data(got)) != "[m]" {
		t.Errorf("pulled %v, want [m]", data(got))
	}
}

func TestUnknownNames(t *testing.T) {
	srv, c := start(t)
	if err := srv.PublishDirect("projects/p/topics/nope", nil, nil); err == nil {
		t.Error("publish to an unknown topic accepted")
	}
	_, err := c.SubscriptionAdminClient.Pull(context.Background(), &pb.PullRequest{Subscription: "projects/p/subscriptions/nope", MaxMessages: 1})
	if err == nil {
		t.Error("pull from an unknown subscription accepted")
	}
}
