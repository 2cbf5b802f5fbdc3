package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/golang-jwt/jwt/v5"

	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
	"github.com/iotpipe/iotpipe/testing/pubsubqueue"
)

// process is a broker running as its own OS process.
type process struct {
	cmd  *exec.Cmd
	addr string
	dir  string
	log  *os.File
}

func (p *process) address() string { return p.addr }

func (p *process) usage() (rss, peak int64, cpu time.Duration) {
	return processUsage(p.cmd.Process.Pid)
}

func (p *process) stop() {
	if p.cmd.Process != nil {
		p.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
	}
	p.log.Close()
	os.RemoveAll(p.dir)
}

// start runs cmd with its output in a log file and waits until it accepts
// TCP connections on addr.
func start(cmd *exec.Cmd, addr, dir string) (*process, error) {
	logf, err := os.Create(filepath.Join(dir, "broker.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &process{cmd: cmd, addr: addr, dir: dir, log: logf}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			// cmd.Wait is running: stop() must not call it again.
			p.cmd = &exec.Cmd{Process: cmd.Process, Path: cmd.Path}
			go func() { <-exited }()
			return p, nil
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logf.Name())
			logf.Close()
			return nil, fmt.Errorf("%s exited before listening on %s: %v\n%s", cmd.Path, addr, err, tail(out))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			logf.Close()
			return nil, fmt.Errorf("%s did not listen on %s within 60 s", cmd.Path, addr)
		}
	}
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// processUsage reads a process's resident memory (now and peak) and CPU
// time from /proc.
func processUsage(pid int) (rss, peak int64, cpu time.Duration) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return rss, peak, 0
	}
	// Fields after the command name (which may hold spaces) start at state.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) > 12 {
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		cpu = time.Duration(utime+stime) * time.Second / clockTicks
	}
	return rss, peak, cpu
}

// clockTicks is USER_HZ, the unit of /proc/*/stat times: 100 on Linux.
const clockTicks = 100

// mosquitto is Debian's broker, anonymous, with nothing behind it.
type mosquitto struct{ *process }

func (mosquitto) credentials(i int) (string, string) { return deviceClientID(i), "" }

func startMosquitto(_ Config, logger *slog.Logger) (broker, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr != nil {
			return nil, fmt.Errorf("mosquitto not found (apt-get install mosquitto): %w", err)
		}
		bin = "/usr/sbin/mosquitto"
	}
	dir, err := os.MkdirTemp("", "loadgen-mosquitto-")
	if err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "listener %s %s\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n", port, host), 0o644); err != nil {
		return nil, err
	}
	p, err := start(exec.Command(bin, "-c", conf), addr, dir)
	if err != nil {
		return nil, err
	}
	logger.Info("mosquitto started", "addr", addr, "pid", p.cmd.Process.Pid)
	return mosquitto{p}, nil
}

// bridge is the ingress command with device auth against a registry of the
// simulated fleet, publishing to an in-process Pub/Sub.
type bridge struct {
	*process
	token  string
	queue  *pubsubqueue.Server
	emu    *emulators.Emulators
	closer func()
}

func (b *bridge) credentials(i int) (string, string) { return deviceClientID(i), b.token }

func (b *bridge) stop() {
	b.process.stop()
	b.closer()
}

const eventsTopic = "iot-events"

func startBridge(ctx context.Context, cfg Config, logger *slog.Logger) (_ broker, err error) {
	dir, err := os.MkdirTemp("", "loadgen-bridge-")
	if err != nil {
		return nil, err
	}
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
			os.RemoveAll(dir)
		}
	}()
	queue, err := pubsubqueue.Start("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, queue.Close)
	if _, err := queue.CreateTopic(ctx, &pubsubpb.Topic{Name: fmt.Sprintf("projects/%s/topics/%s", project, eventsTopic)}); err != nil {
		return nil, err
	}
	emu, err := emulators.Start(emulators.Config{WarehousePath: filepath.Join(dir, "unused.duckdb")})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { emu.Close() })
	var families []string
	for _, t := range schemas.BigtableLayout {
		if t.Name == schemas.DevicesTable {
			for _, f := range t.Families {
				families = append(families, f.Name)
			}
		}
	}
	const instance = "iotpipe"
	if err := emu.Provision(ctx, emulators.Resources{Project: project, Instance: instance,
		BigtableTables: map[string][]string{schemas.DevicesTable: families}}); err != nil {
		return nil, err
	}
	os.Setenv("BIGTABLE_EMULATOR_HOST", emu.BigtableAddr)
	token, err := registerFleet(ctx, cfg.Devices, instance, logger)
	if err != nil {
		return nil, err
	}

	bin := cfg.IngressBinary
	if bin == "" {
		bin = filepath.Join(dir, "ingress")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/iotpipe/iotpipe/ingress")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build ingress: %w\n%s", err, out)
		}
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	// -http_addr= turns off the HTTP listener, which would otherwise take
	// 127.0.0.1:8080 (a running sandbox's, say): the load is MQTT only.
	cmd := exec.Command(bin, "-project", project, "-location", location, "-registry", registryID,
		"-events_topic", eventsTopic, "-mqtt_addr", addr, "-bigtable_instance", instance, "-http_addr=")
	cmd.Env = append(os.Environ(), "PUBSUB_EMULATOR_HOST="+queue.Addr, "BIGTABLE_EMULATOR_HOST="+emu.BigtableAddr)
	p, err := start(cmd, addr, dir)
	if err != nil {
		return nil, err
	}
	logger.Info("bridge started", "addr", addr, "pid", p.cmd.Process.Pid, "devices", cfg.Devices)
	return &bridge{process: p, token: token, queue: queue, emu: emu, closer: cleanup}, nil
}

// registerFleet creates the registry and n devices sharing one ES256 key,
// and returns a JWT signed with it (IoT Core's JWTs do not name the device,
// so one token serves every device).
func registerFleet(ctx context.Context, n int, instance string, logger *slog.Logger) (string, error) {
	store, err := registry.New(ctx, registry.Config{Project: project, Instance: instance})
	if err != nil {
		return "", err
	}
	defer store.Close()
	if _, err := store.CreateRegistry(ctx, project, location, registry.Registry{
		ID: registryID,
		EventNotificationConfigs: []registry.EventNotificationConfig{
			{PubsubTopicName: fmt.Sprintf("projects/%s/topics/%s", project, eventsTopic)},
		},
	}); err != nil {
		return "", fmt.Errorf("create registry: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", err
	}
	pub := registry.PublicKey{Format: registry.ES256PEM, Key: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
	start := time.Now()
	path := registry.Path{Project: project, Location: location, Registry: registryID}
	work := make(chan int)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				_, err := store.CreateDevice(ctx, path, registry.Device{ID: deviceID(i), Credentials: []registry.Credential{{PublicKey: pub}}})
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("create device %s: %w", deviceID(i), err))
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		return "", errors.Join(errs[:min(len(errs), 3)]...)
	}
	logger.Info("registered the fleet", "devices", n, "in", time.Since(start).Round(time.Millisecond))
	now := time.Now()
	token, err := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"aud": project, "iat": now.Unix(), "exp": now.Add(12 * time.Hour).Unix(),
	}).SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign device JWT: %w", err)
	}
	return token, nil
}
