// Command loadgen drives an MQTT broker with a simulated fleet of Cloud IoT
// Core devices and reports what the broker sustained: QoS 1 messages per
// second acknowledged with PUBACK, publish→PUBACK latency, and the broker
// process's memory and CPU.
//
//	go run ./testing/loadgen -broker=bridge -devices=1000 -duration=30s
//	go run ./testing/loadgen -broker=mosquitto -devices=1000 -duration=30s
//	go run ./testing/loadgen -broker=bridge -mode=idle -devices=10000
//
// -broker=bridge builds and starts the ingress command as its own process,
// with device authentication against a Bigtable registry of -devices
// devices (ES256 JWTs) and Pub/Sub behind it: both servers run in this
// process (bttest and testing/pubsubqueue). PUBACK then means the message is
// in Pub/Sub. -broker=mosquitto starts Debian's mosquitto with anonymous
// access and nothing behind it: the peer figure for the MQTT side alone.
// -broker=host:port drives a broker that is already running.
//
// One line of Markdown per run goes to stdout (and is appended to -out), in
// the table BENCHMARKS.md keeps.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is one load run.
type Config struct {
	// Broker is "bridge", "mosquitto" or host:port.
	Broker string
	// Mode is "throughput" (every device publishes QoS 1 back to back) or
	// "idle" (every device connects, then only keeps its connection alive).
	Mode     string
	Devices  int
	Duration time.Duration
	// PayloadBytes is the size of each telemetry message (about).
	PayloadBytes int
	// Connectors is how many devices connect at the same time.
	Connectors int
	// IngressBinary is a built ingress command; empty builds one.
	IngressBinary string
}

// Result is what a run measured.
type Result struct {
	Config
	Connected   int
	Messages    int64
	Errors      int64
	FirstError  string
	Elapsed     time.Duration
	P50, P99    time.Duration
	BrokerRSS   int64 // bytes, at the end of the run
	BrokerPeak  int64 // bytes, the process's high-water mark
	BrokerCPU   time.Duration
	ConnectTime time.Duration
}

func main() {
	var cfg Config
	flag.StringVar(&cfg.Broker, "broker", "bridge", "bridge (the ingress command, with JWT auth and Pub/Sub), mosquitto (Debian's, anonymous), or host:port of a running broker")
	flag.StringVar(&cfg.Mode, "mode", "throughput", "throughput: devices publish QoS 1 back to back; idle: devices connect and keep alive")
	flag.IntVar(&cfg.Devices, "devices", 1000, "concurrent devices, one connection each")
	flag.DurationVar(&cfg.Duration, "duration", 30*time.Second, "how long devices publish (throughput) or stay connected after the last one connected (idle)")
	flag.IntVar(&cfg.PayloadBytes, "payload", 120, "bytes per telemetry message (at least the JSON reading)")
	flag.IntVar(&cfg.Connectors, "connectors", 64, "devices connecting at the same time")
	flag.StringVar(&cfg.IngressBinary, "ingress_binary", "", "a built ingress command (default: go build it)")
	out := flag.String("out", "", "also append the result line to this file")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := Run(ctx, cfg, logger)
	if err != nil {
		logger.Error("load run failed", "error", err)
		os.Exit(1)
	}
	line := res.Markdown()
	fmt.Println(Header)
	fmt.Println(line)
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = fmt.Fprintln(f, line)
			err = errors.Join(err, f.Close())
		}
		if err != nil {
			logger.Error("writing -out", "error", err)
			os.Exit(1)
		}
	}
}

// Header is the Markdown table header of Result.Markdown.
const Header = "| broker | mode | devices connected | msgs/s (PUBACKed) | p50 | p99 | errors | broker RSS (peak) | broker CPU |\n|---|---|---|---|---|---|---|---|---|"

// Markdown is r as one table row.
func (r Result) Markdown() string {
	rate, p50, p99 := "-", "-", "-"
	if r.Mode == "throughput" && r.Elapsed > 0 {
		rate = fmt.Sprintf("%.0f", float64(r.Messages)/r.Elapsed.Seconds())
		p50, p99 = r.P50.Round(10*time.Microsecond).String(), r.P99.Round(10*time.Microsecond).String()
	}
	cpu := "-"
	if r.Elapsed > 0 && r.BrokerCPU > 0 {
		cpu = fmt.Sprintf("%.0f%% of a core", 100*r.BrokerCPU.Seconds()/r.Elapsed.Seconds())
	}
	mem := "-"
	if r.BrokerRSS > 0 {
		mem = fmt.Sprintf("%d MiB (%d MiB)", r.BrokerRSS>>20, r.BrokerPeak>>20)
	}
	return fmt.Sprintf("| %s | %s | %d/%d | %s | %s | %s | %d | %s | %s |",
		r.Broker, r.Mode, r.Connected, r.Devices, rate, p50, p99, r.Errors, mem, cpu)
}

// Run starts the broker cfg names, runs the load and stops the broker.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) (Result, error) {
	if cfg.Devices <= 0 || cfg.Duration <= 0 || cfg.Connectors <= 0 {
		return Result{}, fmt.Errorf("devices (%d), duration (%v) and connectors (%d) must be positive", cfg.Devices, cfg.Duration, cfg.Connectors)
	}
	if cfg.Mode != "throughput" && cfg.Mode != "idle" {
		return Result{}, fmt.Errorf("mode %q: want throughput or idle", cfg.Mode)
	}
	var b broker
	var err error
	switch cfg.Broker {
	case "bridge":
		b, err = startBridge(ctx, cfg, logger)
	case "mosquitto":
		b, err = startMosquitto(cfg, logger)
	default:
		if !strings.Contains(cfg.Broker, ":") {
			return Result{}, fmt.Errorf("broker %q: want bridge, mosquitto or host:port", cfg.Broker)
		}
		b = external{addr: cfg.Broker}
	}
	if err != nil {
		return Result{}, err
	}
	defer b.stop()
	return drive(ctx, cfg, b, logger)
}

// broker is a broker under load.
type broker interface {
	address() string
	// credentials returns device i's client id and password.
	credentials(i int) (clientID, password string)
	// usage reports the broker process's resident memory now and at peak,
	// and its CPU time so far (zeros when unknown).
	usage() (rss, peak int64, cpu time.Duration)
	stop()
}

type external struct{ addr string }

func (e external) address() string { return e.addr }
func (e external) credentials(i int) (string, string) {
	return deviceClientID(i), ""
}
func (external) usage() (int64, int64, time.Duration) { return 0, 0, 0 }
func (external) stop()                                {}

// The simulated fleet's registry, as devices name it in their client ids.
const (
	project    = "p"
	location   = "l"
	registryID = "r"
)

func deviceID(i int) string { return fmt.Sprintf("load-%05d", i) }

func deviceClientID(i int) string {
	return fmt.Sprintf("projects/%s/locations/%s/registries/%s/devices/%s", project, location, registryID, deviceID(i))
}

// drive connects every device, then publishes or idles, and measures.
func drive(ctx context.Context, cfg Config, b broker, logger *slog.Logger) (Result, error) {
	res := Result{Config: cfg}
	devices := make([]*device, cfg.Devices)
	var connectErrs atomic.Int64
	var firstErr atomic.Value
	note := func(err error) {
		firstErr.CompareAndSwap(nil, err.Error())
	}
	start := time.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	for range cfg.Connectors {
		wg.Go(func() {
			for i := range work {
				id, pw := b.credentials(i)
				d, err := dial(b.address(), id, pw, 60*time.Second, 30*time.Second)
				if err != nil {
					connectErrs.Add(1)
					note(fmt.Errorf("connect %s: %w", id, err))
					continue
				}
				devices[i] = d
			}
		})
	}
	for i := range cfg.Devices {
		if ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	res.ConnectTime = time.Since(start)
	for _, d := range devices {
		if d != nil {
			res.Connected++
		}
	}
	logger.Info("devices connected", "connected", res.Connected, "failed", connectErrs.Load(), "in", res.ConnectTime.Round(time.Millisecond))
	defer func() {
		for _, d := range devices {
			if d != nil {
				d.close()
			}
		}
	}()
	if res.Connected == 0 {
		return res, fmt.Errorf("no device connected: %v", firstErr.Load())
	}

	_, _, cpu0 := b.usage()
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var msgs, errs atomic.Int64
	lat := make([][]time.Duration, cfg.Devices)
	runStart := time.Now()
	for i, d := range devices {
		if d == nil {
			continue
		}
		wg.Go(func() {
			if cfg.Mode == "idle" {
				// Keep the connection alive as a device would: a PINGREQ
				// within each keepalive period.
				t := time.NewTicker(30 * time.Second)
				defer t.Stop()
				for {
					select {
					case <-runCtx.Done():
						return
					case <-t.C:
						if err := d.ping(10 * time.Second); err != nil {
							errs.Add(1)
							note(fmt.Errorf("ping %s: %w", deviceID(i), err))
							return
						}
					}
				}
			}
			topic := "/devices/" + deviceID(i) + "/events"
			var samples []time.Duration
			for seq := 1; runCtx.Err() == nil; seq++ {
				payload := reading(seq, cfg.PayloadBytes)
				t0 := time.Now()
				if err := d.publish(topic, payload, 10*time.Second); err != nil {
					errs.Add(1)
					note(fmt.Errorf("publish from %s: %w", deviceID(i), err))
					return
				}
				samples = append(samples, time.Since(t0))
				msgs.Add(1)
			}
			lat[i] = samples
		})
	}
	<-runCtx.Done()
	res.Elapsed = time.Since(runStart)
	// Usage is read while the devices are still connected.
	var cpu1 time.Duration
	res.BrokerRSS, res.BrokerPeak, cpu1 = b.usage()
	res.BrokerCPU = cpu1 - cpu0
	wg.Wait()
	res.Messages, res.Errors = msgs.Load(), errs.Load()+connectErrs.Load()
	if s, ok := firstErr.Load().(string); ok {
		res.FirstError = s
		logger.Warn("first error", "error", s)
	}
	var all []time.Duration
	for _, s := range lat {
		all = append(all, s...)
	}
	if len(all) > 0 {
		slices.Sort(all)
		res.P50, res.P99 = all[len(all)/2], all[len(all)*99/100]
	}
	logger.Info("load run done", "messages", res.Messages, "errors", res.Errors, "elapsed", res.Elapsed.Round(time.Millisecond),
		"gomaxprocs", runtime.GOMAXPROCS(0))
	return res, nil
}

// reading is a telemetry payload of about size bytes.
func reading(seq, size int) []byte {
	p := fmt.Appendf(nil, `{"ts":%d,"seq":%d,"metrics":{"temperature":%.1f,"humidity":%d}`, time.Now().UnixMilli(), seq, 20+float64(seq%100)/10, 40+seq%20)
	if pad := size - len(p) - len(`,"pad":""}`); pad > 0 {
		p = append(p, `,"pad":"`...)
		p = append(p, strings.Repeat("x", pad)...)
		p = append(p, '"')
	}
	return append(p, '}')
}
