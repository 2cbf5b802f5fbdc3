package registry_test

import (
	"errors"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

func TestPresence(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	p := func(instance, gen string, config, commands bool) registry.Presence {
		return registry.Presence{Instance: instance, Generation: gen, ConnectedAt: at, Config: config, Commands: commands}
	}
	type step struct {
		op      string // set, clear
		p       registry.Presence
		gen     string // for clear
		wantOK  bool   // written / cleared
		wantNow *registry.Presence
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"set then clear", []step{
			{op: "set", p: p("a", "001", true, false), wantOK: true, wantNow: new(p("a", "001", true, false))},
			{op: "set", p: p("a", "001", true, true), wantOK: true, wantNow: new(p("a", "001", true, true))},
			{op: "clear", gen: "001", wantOK: true},
		}},
		{"a newer connection replaces an older one", []step{
			{op: "set", p: p("a", "001", true, true), wantOK: true},
			{op: "set", p: p("b", "002", false, true), wantOK: true, wantNow: new(p("b", "002", false, true))},
		}},
		{"an older connection cannot replace a newer one", []step{
			{op: "set", p: p("b", "002", false, true), wantOK: true},
			{op: "set", p: p("a", "001", true, true), wantOK: false, wantNow: new(p("b", "002", false, true))},
		}},
		{"an older connection cannot clear a newer one", []step{
			{op: "set", p: p("a", "001", true, true), wantOK: true},
			{op: "set", p: p("b", "002", true, false), wantOK: true},
			{op: "clear", gen: "001", wantOK: false, wantNow: new(p("b", "002", true, false))},
			{op: "clear", gen: "002", wantOK: true},
		}},
		{"a longer generation with the same prefix is later", []step{
			{op: "set", p: p("a", "001", true, true), wantOK: true},
			{op: "set", p: p("b", "0010", true, true), wantOK: true, wantNow: new(p("b", "0010", true, true))},
		}},
		{"clearing nothing", []step{
			{op: "clear", gen: "001", wantOK: false},
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dp := reg.Device("dev" + string(rune('a'+i)))
			for j, st := range tt.steps {
				var ok bool
				var err error
				switch st.op {
				case "set":
					ok, err = s.SetPresence(ctx, dp, st.p)
				case "clear":
					ok, err = s.ClearPresence(ctx, dp, st.gen)
				}
				if err != nil || ok != st.wantOK {
					t.Fatalf("step %d %s: ok = %v, %v; want %v", j, st.op, ok, err, st.wantOK)
				}
				got, err := s.GetPresence(ctx, dp)
				switch {
				case st.wantNow != nil && (err != nil || got != *st.wantNow):
					t.Fatalf("step %d: GetPresence = %+v, %v; want %+v", j, got, err, *st.wantNow)
				case st.op == "clear" && st.wantOK && !errors.Is(err, registry.ErrNotFound):
					t.Fatalf("step %d: GetPresence after clear = %+v, %v; want ErrNotFound", j, got, err)
				}
			}
		})
	}
}

// Presence has rows of its own: a connected device that is not (or no
// longer) in the registry does not make its device row exist, and listing
// devices does not see presence.
func TestPresenceLeavesDevicesAlone(t *testing.T) {
	s := start(t, registry.Config{})
	ctx := t.Context()
	dp := reg.Device("dev1")
	if ok, err := s.SetPresence(ctx, dp, registry.Presence{Instance: "a", Generation: "1", Commands: true}); err != nil || !ok {
		t.Fatalf("SetPresence = %v, %v", ok, err)
	}
	if _, err := s.GetDevice(ctx, dp); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetDevice of a device with presence only = %v, want ErrNotFound", err)
	}
	mustCreate(t, s, registry.Device{ID: "dev1"})
	devices, _, err := s.ListDevices(ctx, reg, 0, "")
	if err != nil || len(devices) != 1 {
		t.Errorf("ListDevices = %d devices, %v; want 1", len(devices), err)
	}
	if err := s.DeleteDevice(ctx, dp); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPresence(ctx, dp); err != nil {
		t.Errorf("GetPresence after DeleteDevice = %v: the connection is still there until it ends", err)
	}
}

func TestPresenceRefuses(t *testing.T) {
	s := registrytest.Start(t, registry.Config{})
	ctx := t.Context()
	long := make([]byte, 300)
	for i := range long {
		long[i] = '1'
	}
	tests := []struct {
		name string
		dp   iotcore.DevicePath
		p    registry.Presence
	}{
		{"bad path", iotcore.DevicePath{Project: "p", Location: "l", Registry: "r/x", Device: "d"}, registry.Presence{Instance: "a", Generation: "1"}},
		{"no instance", reg.Device("d1"), registry.Presence{Generation: "1"}},
		{"no generation", reg.Device("d1"), registry.Presence{Instance: "a"}},
		{"long generation", reg.Device("d1"), registry.Presence{Instance: "a", Generation: string(long)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.SetPresence(ctx, tt.dp, tt.p); !errors.Is(err, registry.ErrInvalidArgument) {
				t.Errorf("SetPresence = %v, want ErrInvalidArgument", err)
			}
		})
	}
	if _, err := s.ClearPresence(ctx, reg.Device("d1"), ""); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("ClearPresence with no generation = %v, want ErrInvalidArgument", err)
	}
	if _, err := s.GetPresence(ctx, iotcore.DevicePath{}); !errors.Is(err, registry.ErrInvalidArgument) {
		t.Errorf("GetPresence of an empty path = %v, want ErrInvalidArgument", err)
	}
}
