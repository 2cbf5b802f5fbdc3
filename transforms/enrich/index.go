package enrich

import (
	"fmt"

	"github.com/iotpipe/iotpipe/schemas"
)

// Index is the reference data keyed by device id. It is the plain-Go core of
// the join: the Beam transform builds one per DoFn instance from its side
// input and calls Join per event; alerting looks thresholds up in it.
type Index map[string]schemas.Reference

// NewIndex keys refs by device id. A device id given twice is an error: the
// join would otherwise depend on the order rows arrive in.
func NewIndex(refs []schemas.Reference) (Index, error) {
	ix := make(Index, len(refs))
	for _, r := range refs {
		if err := ix.add(r); err != nil {
			return nil, err
		}
	}
	return ix, nil
}

// ReadIndex builds an Index from a side-input iterator of schemas.Reference.
func ReadIndex(next func(*schemas.Reference) bool) (Index, error) {
	ix := Index{}
	var r schemas.Reference
	for next(&r) {
		if err := ix.add(r); err != nil {
			return nil, err
		}
	}
	return ix, nil
}

func (ix Index) add(r schemas.Reference) error {
	if _, dup := ix[r.DeviceID]; dup {
		return fmt.Errorf("reference data has device %q twice", r.DeviceID)
	}
	ix[r.DeviceID] = r
	return nil
}

// Join returns e with its Enrichment filled from the device's reference row,
// and its DeviceClass from the row when the event did not carry one. A device
// missing from the index comes back with Enrichment.Known false and nothing
// else changed.
func (ix Index) Join(e schemas.Event) schemas.Event {
	r, ok := ix[e.DeviceID]
	if !ok {
		e.Enrichment = schemas.Enrichment{}
		return e
	}
	e.Enrichment = schemas.Enrichment{Known: true, Site: r.Site, Location: r.Location, Owner: r.Owner}
	if e.DeviceClass == "" {
		e.DeviceClass = r.DeviceClass
	}
	return e
}
