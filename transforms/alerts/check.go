package alerts

import (
	"sort"
	"time"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/enrich"
)

// Alert kinds.
const (
	AboveMax = "above_max"
	BelowMin = "below_min"
)

// Reasons an event is not checked; each is counted as
// iotpipe.alerts/skipped_<reason>.
const (
	// SkipBuffered: an edge agent replayed the reading from its buffer.
	SkipBuffered = "buffered"
	// SkipNoPublishTime: the event has no publish time, so whether it is
	// real-time cannot be told.
	SkipNoPublishTime = "no_publish_time"
	// SkipStale: the reading is older than its publish time by more than MaxAge.
	SkipStale = "stale"
	// SkipUnknownDevice: the device is missing from the reference data, so
	// it has no thresholds.
	SkipUnknownDevice = "unknown_device"
)

// SkipReasons lists every skip reason, for counters and dashboards.
var SkipReasons = []string{SkipBuffered, SkipNoPublishTime, SkipStale, SkipUnknownDevice}

// Checker is the plain-Go core of Thresholds: reference data and the
// real-time horizon.
type Checker struct {
	Index  enrich.Index
	MaxAge time.Duration
}

// Check appends to dst one alert per metric of e outside its device's
// threshold (strictly above Max, strictly below Min), ordered by metric,
// and returns the extended slice. When e is not checked at all it returns
// dst unchanged and the reason (one of the Skip constants); otherwise the
// reason is "".
func (c Checker) Check(dst []schemas.Alert, e schemas.Event) ([]schemas.Alert, string) {
	switch {
	case e.Buffered:
		return dst, SkipBuffered
	case e.PublishMillis <= 0:
		return dst, SkipNoPublishTime
	case e.PublishMillis-e.TS > c.MaxAge.Milliseconds():
		return dst, SkipStale
	}
	ref, ok := c.Index[e.DeviceID]
	if !ok {
		return dst, SkipUnknownDevice
	}
	first := len(dst)
	for metric, th := range ref.Thresholds {
		v, ok := e.Metrics.Get(metric)
		if !ok {
			continue
		}
		a := schemas.Alert{DeviceID: e.DeviceID, Metric: metric, Value: v, TS: e.TS, Seq: e.Seq, Site: ref.Site, Owner: ref.Owner}
		switch {
		case th.HasMax && v > th.Max:
			a.Kind, a.Threshold = AboveMax, th.Max
		case th.HasMin && v < th.Min:
			a.Kind, a.Threshold = BelowMin, th.Min
		default:
			continue
		}
		dst = append(dst, a)
	}
	if raised := dst[first:]; len(raised) > 1 {
		// Map order must not leak into the output.
		sort.Slice(raised, func(i, j int) bool { return raised[i].Metric < raised[j].Metric })
	}
	return dst, ""
}
