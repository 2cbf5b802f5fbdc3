package iotcore

import (
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestParseClientID(t *testing.T) {
	tests := []struct {
		id      string
		want    DevicePath
		wantErr string // substring of the error; "" means success
	}{
		{id: "projects/p1/locations/us-central1/registries/reg/devices/dev-1",
			want: DevicePath{Project: "p1", Location: "us-central1", Registry: "reg", Device: "dev-1"}},
		{id: "projects/example.com:proj/locations/europe-west1/registries/r.1/devices/D~a%b+c_d.e",
			want: DevicePath{Project: "example.com:proj", Location: "europe-west1", Registry: "r.1", Device: "D~a%b+c_d.e"}},
		{id: "", wantErr: `""`},
		{id: "d1", wantErr: `"d1": want projects/`},
		{id: "projects/p/locations/l/registries/r/devices", wantErr: "want projects/"},
		{id: "projects/p/locations/l/registries/r/devices/d1/extra", wantErr: "want projects/"},
		{id: "project/p/locations/l/registries/r/devices/d1", wantErr: "want projects/"},
		{id: "/projects/p/locations/l/registries/r/devices/d1", wantErr: "want projects/"},
		{id: "projects//locations/l/registries/r/devices/d1", wantErr: "empty project"},
		{id: "projects/p/locations//registries/r/devices/d1", wantErr: "empty location"},
		{id: "projects/p/locations/l/registries//devices/d1", wantErr: "empty registry"},
		{id: "projects/p/locations/l/registries/r/devices/", wantErr: "length 0, want 1 to 255"},
		{id: "projects/p/locations/l/registries/r/devices/d#1", wantErr: "character '#'"},
		// Whether such a device exists is the registry's answer, not the parser's:
		// ids IoT Core would not have created still parse.
		{id: "projects/p/locations/l/registries/r/devices/d1",
			want: DevicePath{Project: "p", Location: "l", Registry: "r", Device: "d1"}},
		{id: "projects/p/locations/l/registries/r/devices/1dev",
			want: DevicePath{Project: "p", Location: "l", Registry: "r", Device: "1dev"}},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			got, err := ParseClientID(tt.id)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrBadClientID) {
					t.Fatalf("ParseClientID(%q) = %v, %v; want ErrBadClientID containing %q", tt.id, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseClientID(%q) = %+v, %v; want %+v", tt.id, got, err, tt.want)
			}
			if got.String() != tt.id {
				t.Errorf("String() = %q, want %q", got.String(), tt.id)
			}
		})
	}
}

func TestValidDeviceID(t *testing.T) {
	tests := []struct {
		id      string
		wantErr string
	}{
		{id: "abc"},
		{id: "d1-x_y.z+w~v%u"},
		{id: "Goog1e"}, // only the lower-case prefix is reserved, as the sheet says
		{id: "a" + strings.Repeat("b", 254)},
		{id: "ab", wantErr: "length 2"},
		{id: "a" + strings.Repeat("b", 255), wantErr: "length 256"},
		{id: "-ab", wantErr: "must start with a letter"},
		{id: "9ab", wantErr: "must start with a letter"},
		{id: "ab/c", wantErr: `'/' at 2`},
		{id: "ab#", wantErr: `'#' at 2`},
		{id: "ab c", wantErr: `' ' at 2`},
		{id: "abé", wantErr: "at 2"},
		{id: "googdevice", wantErr: `must not start with "goog"`},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			err := ValidDeviceID(tt.id)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidDeviceID(%q) = %v, want nil", tt.id, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrBadDeviceID) {
				t.Fatalf("ValidDeviceID(%q) = %v, want ErrBadDeviceID containing %q", tt.id, err, tt.wantErr)
			}
		})
	}
}

func TestParseTopic(t *testing.T) {
	tests := []struct {
		topic   string
		want    Topic
		wantErr string
	}{
		{topic: "/devices//events", wantErr: "length 0"},
		{topic: "/devices/d~1/events", want: Topic{Kind: Events, Device: "d~1"}},
		{topic: "/devices/dev/events", want: Topic{Kind: Events, Device: "dev"}},
		{topic: "/devices/dev/events/alerts", want: Topic{Kind: Events, Device: "dev", SubFolder: "alerts"}},
		{topic: "/devices/dev/events/a/b/c", want: Topic{Kind: Events, Device: "dev", SubFolder: "a/b/c"}},
		{topic: "/devices/dev/state", want: Topic{Kind: State, Device: "dev"}},
		{topic: "/devices/dev/config", want: Topic{Kind: Config, Device: "dev"}},
		{topic: "/devices/dev/commands", want: Topic{Kind: Commands, Device: "dev"}},
		{topic: "/devices/dev/commands/#", want: Topic{Kind: Commands, Device: "dev", SubFolder: "#"}},
		{topic: "/devices/dev/commands/reboot", want: Topic{Kind: Commands, Device: "dev", SubFolder: "reboot"}},
		{topic: "", wantErr: `want prefix "/devices/"`},
		{topic: "devices/dev/events", wantErr: `want prefix "/devices/"`},
		{topic: "/devices/dev", wantErr: "want /devices/{id}/"},
		{topic: "/devices/dev/", wantErr: "unknown kind"},
		{topic: "/devices/dev/telemetry", wantErr: `unknown kind "telemetry"`},
		{topic: "/devices/+/events", wantErr: "bad IoT Core device id"},
		{topic: "/devices/#", wantErr: "want /devices/{id}/"},
		{topic: "/devices/dev/events/", wantErr: "empty level"},
		{topic: "/devices/dev/events/a//b", wantErr: "empty level"},
		{topic: "/devices/dev/events/+", wantErr: "wildcard"},
		{topic: "/devices/dev/events/#", wantErr: "wildcard"},
		{topic: "/devices/dev/events/a+b", wantErr: "wildcard"},
		{topic: "/devices/dev/state/x", wantErr: "state takes no subfolder"},
		{topic: "/devices/dev/state/", wantErr: "state takes no subfolder"},
		{topic: "/devices/dev/config/x", wantErr: "config takes no subfolder"},
		{topic: "/devices/dev/commands/a/#", wantErr: "wildcard"},
		{topic: "/devices/dev/commands/", wantErr: "empty level"},
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			got, err := ParseTopic(tt.topic)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrBadTopic) {
					t.Fatalf("ParseTopic(%q) = %+v, %v; want ErrBadTopic containing %q", tt.topic, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseTopic(%q) = %+v, %v; want %+v", tt.topic, got, err, tt.want)
			}
			if got.String() != tt.topic {
				t.Errorf("String() = %q, want %q", got.String(), tt.topic)
			}
		})
	}
}

func TestTopicKindString(t *testing.T) {
	for k, want := range map[TopicKind]string{Events: "events", State: "state", Config: "config", Commands: "commands", 0: "TopicKind(0)", 9: "TopicKind(9)"} {
		if got := k.String(); got != want {
			t.Errorf("TopicKind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}

func TestEventAttributes(t *testing.T) {
	dp := DevicePath{Project: "p", Location: "l", Registry: "r", Device: "d1"}
	base := map[string]string{"deviceId": "d1", "deviceRegistryId": "r", "deviceRegistryLocation": "l", "projectId": "p"}
	with := func(kv ...string) map[string]string {
		m := maps.Clone(base)
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name, numID, subFolder string
		want                   map[string]string
	}{
		{name: "bare", want: base},
		{name: "subfolder", subFolder: "alerts", want: with("subFolder", "alerts")},
		{name: "numId", numID: "2820343243232", want: with("deviceNumId", "2820343243232")},
		{name: "both", numID: "7", subFolder: "a/b", want: with("deviceNumId", "7", "subFolder", "a/b")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EventAttributes(dp, tt.numID, tt.subFolder); !maps.Equal(got, tt.want) {
				t.Errorf("EventAttributes(%+v, %q, %q) = %v, want %v", dp, tt.numID, tt.subFolder, got, tt.want)
			}
		})
	}
}

func TestErrorsClipLongInput(t *testing.T) {
	long := "/devices/" + strings.Repeat("x", 70000)
	_, err := ParseTopic(long)
	if err == nil || len(err.Error()) > 1000 {
		t.Fatalf("ParseTopic(70 KB) error has %d bytes, want a clipped message", len(err.Error()))
	}
}

func FuzzParseClientID(f *testing.F) {
	for _, s := range []string{
		"projects/p/locations/l/registries/r/devices/dev1",
		"projects/example.com:p/locations/us-central1/registries/reg/devices/D~a%b+c",
		"projects//locations/l/registries/r/devices/d1",
		"projects/p/locations/l/registries/r/devices/goog1",
		"", "/", "projects",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		dp, err := ParseClientID(id)
		if err != nil {
			if !errors.Is(err, ErrBadClientID) {
				t.Fatalf("ParseClientID(%q) error %v does not wrap ErrBadClientID", id, err)
			}
			return
		}
		if got := dp.String(); got != id {
			t.Fatalf("ParseClientID(%q).String() = %q", id, got)
		}
		again, err := ParseClientID(dp.String())
		if err != nil || again != dp {
			t.Fatalf("reparse of %q = %+v, %v; want %+v", dp.String(), again, err, dp)
		}
		if err := ValidDeviceRef(dp.Device); err != nil {
			t.Fatalf("ParseClientID(%q) accepted device %q: %v", id, dp.Device, err)
		}
	})
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{
		"/devices/dev1/events", "/devices/dev1/events/alerts", "/devices/dev1/events/a/b",
		"/devices/dev1/state", "/devices/dev1/config", "/devices/dev1/commands/#",
		"/devices/dev1/commands/x", "/devices/dev1/events/", "/devices/+/events", "", "/devices/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		tp, err := ParseTopic(topic)
		if err != nil {
			if !errors.Is(err, ErrBadTopic) {
				t.Fatalf("ParseTopic(%q) error %v does not wrap ErrBadTopic", topic, err)
			}
			return
		}
		if got := tp.String(); got != topic {
			t.Fatalf("ParseTopic(%q).String() = %q", topic, got)
		}
		again, err := ParseTopic(tp.String())
		if err != nil || again != tp {
			t.Fatalf("reparse of %q = %+v, %v; want %+v", tp.String(), again, err, tp)
		}
		if tp.Kind < Events || tp.Kind > Commands {
			t.Fatalf("ParseTopic(%q) returned kind %v", topic, tp.Kind)
		}
	})
}
