package pubsubsource

import (
	"encoding/json"
	"errors"
	"reflect"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/sdf"
)

func init() {
	beam.RegisterType(reflect.TypeOf((*Restriction)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*tracker)(nil)))
	beam.RegisterCoder(reflect.TypeOf((*Restriction)(nil)).Elem(), encodeRestriction, decodeRestriction)
}

// Restriction is where a reader stands: the number of its next pull.
type Restriction struct {
	Next int64
	// Done marks a restriction with no work left (a checkpoint's primary, or
	// a drained reader).
	Done bool
}

func encodeRestriction(r Restriction) ([]byte, error) { return json.Marshal(r) }

func decodeRestriction(b []byte) (Restriction, error) {
	var r Restriction
	err := json.Unmarshal(b, &r)
	return r, err
}

// tracker claims pull numbers. It never splits a running reader in parts (one
// reader per subscription pulls; prism otherwise halves a slow unbounded
// restriction), only checkpoints it.
type tracker struct {
	rest    Restriction
	claimed bool
	stopped bool
	err     error
}

var _ sdf.RTracker = (*tracker)(nil)

// drainPosition is claimed to finish a reader.
const drainPosition = -1

func (t *tracker) TryClaim(pos any) bool {
	if t.stopped || t.rest.Done {
		return false
	}
	p, ok := pos.(int64)
	switch {
	case !ok:
		t.err = errors.New("pubsubsource: claim position is not an int64")
		t.stopped = true
		return false
	case p == drainPosition:
		t.rest.Done = true
		t.stopped = true
		return false
	case t.claimed || p != t.rest.Next:
		t.err = errors.New("pubsubsource: a reader claims each pull number once, in order")
		t.stopped = true
		return false
	}
	t.claimed = true
	return true
}

func (t *tracker) GetError() error { return t.err }

func (t *tracker) TrySplit(fraction float64) (primary, residual any, err error) {
	if fraction > 0 || t.stopped || t.rest.Done {
		return t.rest, nil, nil
	}
	next := t.rest.Next
	if t.claimed {
		next++
	}
	res := Restriction{Next: next}
	t.rest.Done = true
	t.stopped = true
	return t.rest, res, nil
}

func (t *tracker) GetProgress() (done, remaining float64) { return 0, 1 }

func (t *tracker) IsDone() bool { return t.err == nil && t.rest.Done }

func (t *tracker) GetRestriction() any { return t.rest }

func (t *tracker) IsBounded() bool { return false }
