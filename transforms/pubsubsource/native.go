package pubsubsource

import (
	"fmt"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/typex"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/util/protox"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/util/reflectx"
	pipepb "github.com/apache/beam/sdks/v2/go/pkg/beam/model/pipeline_v1"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"google.golang.org/protobuf/proto"
)

func init() {
	register.Function2x1(fromNative)
}

// NativeReadURN is the runner-native Pub/Sub read (Dataflow's).
const NativeReadURN = "beam:transform:pubsub_read:v1"

// ReadNative reads the subscription with the runner's native Pub/Sub source,
// which only some runners execute (Dataflow; not prism). The runner acks once
// its durable state holds a message, so messages carry no AckID and the
// graph's receipts go nowhere.
//
// It is the SDK's pubsubio.Read, spelled out: that package needs the
// google.golang.org/genproto pubsub/v1 types, which the genproto version this
// module must pin no longer has; the payload is the same
// google.pubsub.v1.PubsubMessage, decoded here with the pubsub v2 types.
func ReadNative(s beam.Scope, subscription string) (beam.PCollection, error) {
	s = s.Scope("pubsubsource.ReadNative")
	if _, err := ValidateSubscription(subscription); err != nil {
		return beam.PCollection{}, err
	}
	payload := &pipepb.PubSubReadPayload{Subscription: subscription, WithAttributes: true}
	raw := beam.External(s, NativeReadURN, protox.MustEncode(payload), nil,
		[]beam.FullType{typex.New(reflectx.ByteSlice)}, false)
	return beam.ParDo(s, fromNative, raw[0]), nil
}

func fromNative(raw []byte, emit func(beam.EventTime, Message)) error {
	var m pubsubpb.PubsubMessage
	if err := proto.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("pubsubsource: native read gave a message that is not a PubsubMessage: %w", err)
	}
	pub := m.GetPublishTime().AsTime().UnixMilli()
	emit(mtime.FromMilliseconds(pub), Message{
		ID:            m.GetMessageId(),
		Data:          m.GetData(),
		Attributes:    m.GetAttributes(),
		PublishMillis: pub,
	})
	return nil
}
