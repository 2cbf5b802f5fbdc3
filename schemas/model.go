package schemas

// Reference is one row of the static reference data (Dataset B): what the
// business knows about a device. The pipeline joins it onto events.
type Reference struct {
	DeviceID    string
	Site        string
	Location    string
	DeviceClass string
	Owner       string
	// Thresholds are the alerting limits per metric name.
	Thresholds map[string]Threshold
}

// Threshold bounds one metric; a bound applies only when its Has flag is set.
type Threshold struct {
	HasMin bool
	Min    float64
	HasMax bool
	Max    float64
}

// Enrichment is what the reference join adds to an event.
type Enrichment struct {
	// Known is false when the device is missing from the reference data; such
	// events are kept, flagged by this field.
	Known    bool
	Site     string
	Location string
	Owner    string
}

// Aggregate summarizes one metric of one device over one event-time window.
type Aggregate struct {
	DeviceID string
	Metric   string
	// WindowStart and WindowEnd are Unix ms; the window is [start, end).
	WindowStart int64
	WindowEnd   int64
	Count       int64
	Min         float64
	Max         float64
	Sum         float64
	Mean        float64
	// Last is the value with the greatest (ts, seq) in the window.
	Last   float64
	LastTS int64
	// Late is true for a pane fired after the watermark passed the window end.
	Late bool
	// Buffered is true when any reading in the pane was replayed by an edge agent.
	Buffered bool
}

// Alert is a reading outside its device's threshold.
type Alert struct {
	DeviceID  string
	Metric    string
	Value     float64
	TS        int64
	Seq       int64
	Kind      string // "above_max" or "below_min"
	Threshold float64
	Site      string
	Owner     string
}
