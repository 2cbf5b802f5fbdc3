package pipelines_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/bigtable"
	btpb "cloud.google.com/go/bigtable/apiv2/bigtablepb"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/textio"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/iotpipe/iotpipe/pipelines"
	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
	"github.com/iotpipe/iotpipe/testing/pubsubqueue"
	"github.com/iotpipe/iotpipe/testing/stack"
	"github.com/iotpipe/iotpipe/transforms/aggregate"
	"github.com/iotpipe/iotpipe/transforms/alerts"
	"github.com/iotpipe/iotpipe/transforms/dedupe"
	"github.com/iotpipe/iotpipe/transforms/enrich"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
	"github.com/iotpipe/iotpipe/transforms/validate"
)

var (
	benchEvents   = flag.Int("bench_events", 200_000, "events per run of BenchmarkBackfill")
	benchBacklog  = flag.Int("bench_backlog", 200_000, "backlog size of BenchmarkStreamingBacklog")
	benchProgress = flag.Bool("bench_progress", false, "print BenchmarkStreamingBacklog's acked count every 100 ms")
	benchPubsub   = flag.String("bench_pubsub", "queue", "Pub/Sub server of BenchmarkStreamingBacklog: queue (testing/pubsubqueue, O(log n) per message) or pstest (rescans the backlog on every pull)")
)

// fleetMessage is the i-th message of a simulated fleet of 1,000 devices
// sending 3 metrics each; every 10th message repeats the one before it (a
// device retry), so the graph deduplicates too.
func fleetMessage(i int) (attrs map[string]string, data []byte) {
	if i%10 == 9 {
		i--
	}
	device := fmt.Sprintf("dev-%04d", i%1000)
	seq := i / 1000
	attrs = map[string]string{schemas.AttrDeviceID: device, schemas.AttrRegistryID: "r", schemas.AttrRegistryRegion: "l", schemas.AttrProjectID: project}
	data = fmt.Appendf(nil, `{"ts":%d,"seq":%d,"metrics":{"temperature":%.1f,"humidity":%d,"battery":%.2f}}`,
		1700000000000+int64(seq)*1000, seq, 20+float64(i%100)/10, 40+i%20, 3.0+float64(i%50)/100)
	return attrs, data
}

// BenchmarkBackfill runs the whole graph in batch on prism over archived
// events: with its Bigtable writes going to the in-process emulator
// (bigtable=emulator), and to a server that counts the rows and keeps
// nothing (bigtable=discard). The emulator shares the two cores with the
// job and costs more per row than the graph does (BenchmarkBigtableEmulator);
// the discard server stands in for a Bigtable that runs elsewhere, as on
// GCP, so that run says what the graph itself costs. Both check what was
// written: every unique reading, and every window the plain-Go summary has.
func BenchmarkBackfill(b *testing.B) {
	n := *benchEvents
	input := writeArchive(b, n)
	readings := uniqueReadings(b, n)
	summary := aggregate.NewSummary(time.Minute)
	for _, e := range readings {
		summary.Add(e)
	}
	want := map[string]int{schemas.TelemetryTable: len(readings), schemas.AggregatesTable: len(summary.Aggregates())}

	for _, sink := range []string{"emulator", "discard"} {
		b.Run("bigtable="+sink, func(b *testing.B) {
			var written func(table string) int
			switch sink {
			case "emulator":
				startEmulators(b)
				written = func(table string) int { return countRows(b, instance, table) }
			case "discard":
				d := startDiscardBigtable(b)
				written = func(table string) int { return d.rows(project, instance, table) / b.N }
			}
			b.StopTimer()
			ref := machineReference(b)
			b.StartTimer()
			cpu0 := cpuTime(b)
			for i := 0; i < b.N; i++ {
				p, err := pipelines.Backfill(context.Background(), pipelines.BackfillConfig{
					Input: input,
					Graph: pipelines.GraphConfig{BigtableProject: project, BigtableInstance: instance},
				})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := prism.Execute(context.Background(), p); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(n*b.N), "cpu-µs/event")
			b.StopTimer()
			b.ReportMetric(ref, "ref-kops/s")
			for table, rows := range want {
				if got := written(table); got != rows {
					b.Errorf("%s has %d rows, want %d", table, got, rows)
				}
			}
		})
	}
}

// BenchmarkBigtableEmulator writes the backfill's telemetry rows (those of
// its unique readings) straight to the in-process emulator, as the sink
// does (ApplyBulk of 1,000 rows) and with no pipeline, from one writer and
// from two at once: the most rows a second any job can write to the
// emulator on this machine.
func BenchmarkBigtableEmulator(b *testing.B) {
	var rows []schemas.Row
	for _, e := range uniqueReadings(b, *benchEvents) {
		rows = append(rows, schemas.TelemetryRow(e))
	}
	for _, writers := range []int{1, 2} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			startEmulators(b)
			c, err := bigtable.NewClient(context.Background(), project, instance)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			tbl := c.Open(schemas.TelemetryTable)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				errs := make(chan error, writers)
				for w := 0; w < writers; w++ {
					go func() { errs <- writeRows(tbl, rows, w*1000, writers*1000) }()
				}
				for w := 0; w < writers; w++ {
					if err := <-errs; err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(len(rows))*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// writeRows writes the runs of 1,000 rows that start at first, first+step,
// first+2*step, ..., one ApplyBulk per run.
func writeRows(tbl *bigtable.Table, rows []schemas.Row, first, step int) error {
	for start := first; start < len(rows); start += step {
		var keys []string
		var muts []*bigtable.Mutation
		for _, row := range rows[start:min(start+1000, len(rows))] {
			m := bigtable.NewMutation()
			for _, c := range row.Cells {
				m.Set(c.Family, c.Column, bigtable.Time(time.UnixMilli(c.Millis)), c.Value)
			}
			keys, muts = append(keys, row.Key), append(muts, m)
		}
		errs, err := tbl.ApplyBulk(context.Background(), keys, muts)
		if err = errors.Join(append(errs, err)...); err != nil {
			return err
		}
	}
	return nil
}

// discardBigtable is a Bigtable data server that accepts every mutation,
// counts the rows per table and keeps nothing. It reads a MutateRows
// request only as far as it needs to (countingCodec), so that it costs the
// two cores it shares with the job as little as a server elsewhere would.
type discardBigtable struct {
	btpb.UnimplementedBigtableServer
	mu     sync.Mutex
	counts map[string]int
}

func startDiscardBigtable(tb testing.TB) *discardBigtable {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	d := &discardBigtable{counts: map[string]int{}}
	srv := grpc.NewServer(grpc.ForceServerCodec(countingCodec{}))
	btpb.RegisterBigtableServer(srv, d)
	go srv.Serve(lis)
	tb.Cleanup(srv.Stop)
	tb.Setenv("BIGTABLE_EMULATOR_HOST", lis.Addr().String())
	return d
}

func (d *discardBigtable) MutateRows(req *btpb.MutateRowsRequest, stream btpb.Bigtable_MutateRowsServer) error {
	d.mu.Lock()
	d.counts[req.GetTableName()] += len(req.GetEntries())
	d.mu.Unlock()
	res := &btpb.MutateRowsResponse{Entries: make([]*btpb.MutateRowsResponse_Entry, len(req.GetEntries()))}
	for i := range res.Entries {
		res.Entries[i] = &btpb.MutateRowsResponse_Entry{Index: int64(i), Status: &rpcstatus.Status{}}
	}
	return stream.Send(res)
}

// countingCodec is the protobuf codec, except that it reads a MutateRows
// request's table name and counts its entries without decoding them: the
// discard server needs nothing else.
type countingCodec struct{}

func (countingCodec) Name() string { return "proto" }

func (countingCodec) Marshal(v any) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }

func (countingCodec) Unmarshal(data []byte, v any) error {
	req, ok := v.(*btpb.MutateRowsRequest)
	if !ok {
		return proto.Unmarshal(data, v.(proto.Message))
	}
	entries := 0
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		if num == 1 && typ == protowire.BytesType { // table_name
			name, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return protowire.ParseError(n)
			}
			req.TableName = string(name)
		}
		if num == 2 { // entries
			entries++
		}
		n = protowire.ConsumeFieldValue(num, typ, data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
	}
	req.Entries = make([]*btpb.MutateRowsRequest_Entry, entries)
	return nil
}

// rows is how many rows were written to the table.
func (d *discardBigtable) rows(project, instance, table string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.counts[fmt.Sprintf("projects/%s/instances/%s/tables/%s", project, instance, table)]
}

// uniqueReadings is the readings of the first n fleet messages, each
// (device, seq) once, as validate reads them.
func uniqueReadings(b *testing.B, n int) []schemas.Event {
	b.Helper()
	checker, err := validate.NewChecker(validate.Config{})
	if err != nil {
		b.Fatal(err)
	}
	readings := make([]schemas.Event, 0, n)
	for i := 0; i < n; i++ {
		if i%10 == 9 { // fleetMessage repeats the one before
			continue
		}
		attrs, data := fleetMessage(i)
		e, rej := checker.Check(pubsubsource.Message{ID: fmt.Sprint(i), Data: data, Attributes: attrs, PublishMillis: 1700000000000 + int64(i)})
		if rej != nil {
			b.Fatalf("message %d rejected: %v", i, rej.Err)
		}
		readings = append(readings, e)
	}
	return readings
}

// cpuTime is the CPU time, user and system, the process has used so far:
// the job, prism and the servers it writes to all run in it, so its growth
// over a run is what the run cost the machine, whatever share of the wall
// time the runner's scheduling kept both cores busy.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineReference is how fast this machine is right now, in thousands of
// operations a second of a fixed piece of work that shares nothing with
// iotpipe's code: encoding/json decoding a telemetry payload into a map,
// on one goroutine, for about 200 ms. The machine's speed changes by more
// than twice from hour to hour (BENCHMARKS.md); a benchmark that reports
// this next to its figure says which phase the figure came from.
func machineReference(b *testing.B) float64 {
	const doc = `{"ts":1700000000000,"seq":42,"metrics":{"temperature":21.5,"humidity":40,"voltage":3.31},"buffered":false}`
	data := []byte(doc)
	start := time.Now()
	ops := 0
	for time.Since(start) < 200*time.Millisecond {
		for range 1000 {
			var v map[string]any
			if err := json.Unmarshal(data, &v); err != nil {
				b.Fatal(err)
			}
		}
		ops += 1000
	}
	return float64(ops) / time.Since(start).Seconds() / 1000
}

// writeArchive writes n fleet messages as one archive file and returns its glob.
func writeArchive(b *testing.B, n int) string {
	b.Helper()
	dir := b.TempDir()
	f, err := os.Create(filepath.Join(dir, "part-0.ndjson"))
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := 0; i < n; i++ {
		attrs, data := fleetMessage(i)
		line, _ := schemas.MarshalArchive(fmt.Sprintf("m%d", i), 1700000000000+int64(i), attrs, data)
		w.Write(append(line, '\n'))
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		b.Fatal(err)
	}
	return filepath.Join(dir, "*.ndjson")
}

// BenchmarkPrismGrouping is the runner's own cost, with none of the
// graph's work, over the archive BenchmarkBackfill reads: reading its lines
// and doing nothing with them (read); the same lines each through one
// GroupByKey over 64 keys (group-each); and the same lines gathered per key
// and bundle into one element each before that GroupByKey (group-batched),
// as dedupe.Dedupe and pubsubsource.Ack move their data.
func BenchmarkPrismGrouping(b *testing.B) {
	input := writeArchive(b, *benchEvents)
	for _, shape := range []string{"read", "group-each", "group-batched"} {
		b.Run(shape, func(b *testing.B) {
			runOnPrism(b, func(s beam.Scope) {
				lines := textio.Read(s, input)
				switch shape {
				case "read":
					pipelines.EndStages(s, lines)
				case "group-each":
					pipelines.EndStages(s, beam.ParDo(s, countGroup, beam.GroupByKey(s, beam.ParDo(s, keyLine, lines))))
				case "group-batched":
					pipelines.EndStages(s, beam.ParDo(s, countBatches, beam.GroupByKey(s, beam.ParDo(s, &batchLinesFn{}, lines))))
				}
			})
		})
	}
}

// BenchmarkBackfillPrefix runs the first transforms of the backfill on
// prism over its archive, each prefix ending as the backfill's sinks do
// (pipelines.EndStages): reading and parsing the archive (parse), then
// validation (validate), then dedupe (dedupe). Against BenchmarkBackfill,
// the whole graph with its sinks, it says where the batch job's time goes.
func BenchmarkBackfillPrefix(b *testing.B) {
	input := writeArchive(b, *benchEvents)
	for _, prefix := range []string{"parse", "validate", "dedupe"} {
		b.Run(prefix, func(b *testing.B) {
			runOnPrism(b, func(s beam.Scope) {
				msgs, bad := pipelines.ReadArchive(s, input)
				if prefix == "parse" {
					pipelines.EndStages(s, msgs, bad)
					return
				}
				readings, dead := validate.Validate(s, msgs, validate.Config{})
				if prefix == "validate" {
					pipelines.EndStages(s, bad, readings, dead)
					return
				}
				unique, repeats := dedupe.Dedupe(s, readings, dedupe.Config{})
				pipelines.EndStages(s, bad, dead, unique, repeats)
			})
		})
	}
}

// runOnPrism runs the pipeline build makes b.N times on prism and reports
// -bench_events over the time taken as events/s.
func runOnPrism(b *testing.B, build func(s beam.Scope)) {
	for i := 0; i < b.N; i++ {
		p, s := beam.NewPipelineWithRoot()
		build(s)
		if _, err := prism.Execute(context.Background(), p); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(*benchEvents)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func keyLine(line string) (int, string) { return len(line) % 64, line }

func countGroup(_ int, lines func(*string) bool) int {
	n := 0
	var l string
	for lines(&l) {
		n++
	}
	return n
}

// batchLinesFn emits a bundle's lines as one []string per key, of at most
// 500 lines (dedupe's cap: elements of megabytes cost prism more than many
// small ones).
type batchLinesFn struct{ open map[int][]string }

func (fn *batchLinesFn) ProcessElement(line string, emit func(int, []string)) {
	if fn.open == nil {
		fn.open = map[int][]string{}
	}
	k, _ := keyLine(line)
	fn.open[k] = append(fn.open[k], line)
	if len(fn.open[k]) == 500 {
		emit(k, fn.open[k])
		delete(fn.open, k)
	}
}

func (fn *batchLinesFn) FinishBundle(emit func(int, []string)) {
	for k, batch := range fn.open {
		emit(k, batch)
	}
	clear(fn.open)
}

func countBatches(_ int, batches func(*[]string) bool) int {
	n := 0
	var b []string
	for batches(&b) {
		n += len(b)
	}
	return n
}

func init() {
	register.Function1x2(keyLine)
	register.Function2x1(countGroup)
	register.Function2x1(countBatches)
	register.DoFn2x0[string, func(int, []string)](&batchLinesFn{})
	register.Emitter2[int, []string]()
	register.Iter1[string]()
	register.Iter1[[]string]()
}

// countRows counts a Bigtable table's rows, reading keys only.
func countRows(tb testing.TB, instance, table string) int {
	tb.Helper()
	c, err := bigtable.NewClient(context.Background(), project, instance)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	n := 0
	err = c.Open(table).ReadRows(context.Background(), bigtable.InfiniteRange(""), func(bigtable.Row) bool {
		n++
		return true
	}, bigtable.RowFilter(bigtable.ChainFilters(bigtable.CellsPerRowLimitFilter(1), bigtable.StripValueFilter())))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// BenchmarkStreamingBacklog publishes a backlog, then starts the streaming
// job and measures until every message is acknowledged, i.e. written.
func BenchmarkStreamingBacklog(b *testing.B) {
	n := *benchBacklog
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		emu := startEmulators(b)
		acks := loadBacklog(b, emu, n)
		sv := streamingJob(b, pipelines.GraphConfig{BigtableProject: project, BigtableInstance: instance})
		b.StartTimer()
		start := time.Now()
		j := runJob(b, sv)
		tick := time.NewTicker(100 * time.Millisecond)
		for acks() < int64(n) {
			select {
			case <-j.done:
				b.Fatalf("streaming job ended early: %v", j.err)
			case <-tick.C:
			}
			if *benchProgress {
				fmt.Fprintf(os.Stderr, "%v acked %d\n", time.Since(start).Round(time.Millisecond), acks())
			}
			if time.Since(start) > 30*time.Minute {
				b.Fatalf("backlog of %d not drained in 30 min (%d acked)", n, acks())
			}
		}
		tick.Stop()
		b.StopTimer()
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
		j.stop()
		emu.Close()
	}
}

// loadBacklog publishes n fleet messages on the events topic of the server
// -bench_pubsub names, points the process's Pub/Sub clients at it, and
// returns its count of acknowledged messages.
func loadBacklog(b *testing.B, emu *emulators.Emulators, n int) (acks func() int64) {
	topic := fmt.Sprintf("projects/%s/topics/%s", project, stack.EventsTopic)
	switch *benchPubsub {
	case "pstest":
		for j := 0; j < n; j++ {
			attrs, data := fleetMessage(j)
			emu.Pubsub.Publish(topic, data, attrs)
		}
		return emu.PubsubAcks
	case "queue":
		srv, err := pubsubqueue.Start("127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(srv.Close)
		b.Setenv("PUBSUB_EMULATOR_HOST", srv.Addr)
		ctx := context.Background()
		if _, err := srv.CreateTopic(ctx, &pubsubpb.Topic{Name: topic}); err != nil {
			b.Fatal(err)
		}
		if _, err := srv.CreateSubscription(ctx, &pubsubpb.Subscription{
			Name: fmt.Sprintf("projects/%s/subscriptions/%s", project, stack.EventsSubscription), Topic: topic, AckDeadlineSeconds: 60,
		}); err != nil {
			b.Fatal(err)
		}
		for j := 0; j < n; j++ {
			attrs, data := fleetMessage(j)
			if err := srv.PublishDirect(topic, data, attrs); err != nil {
				b.Fatal(err)
			}
		}
		return srv.Acks
	}
	b.Fatalf("-bench_pubsub=%q: want queue or pstest", *benchPubsub)
	return nil
}

// BenchmarkKernel is the graph's work as plain Go on one goroutine, no
// runner: validate (JSON decode + schema), exact dedupe, reference join,
// per-minute aggregation and threshold check per message. It is the
// physical-limit reference the Beam figures are compared with.
func BenchmarkKernel(b *testing.B) {
	const n = 100_000
	msgs := make([]pubsubsource.Message, n)
	for i := range msgs {
		attrs, data := fleetMessage(i)
		msgs[i] = pubsubsource.Message{ID: fmt.Sprint(i), Data: data, Attributes: attrs, PublishMillis: 1700000000000 + int64(i)}
	}
	refs := make([]schemas.Reference, 1000)
	for i := range refs {
		refs[i] = schemas.Reference{DeviceID: fmt.Sprintf("dev-%04d", i), Site: "s", Owner: "o",
			Thresholds: map[string]schemas.Threshold{"temperature": {HasMax: true, Max: 29}}}
	}
	index, err := enrich.NewIndex(refs)
	if err != nil {
		b.Fatal(err)
	}
	checker, err := validate.NewChecker(validate.Config{})
	if err != nil {
		b.Fatal(err)
	}
	alert := alerts.Checker{Index: index, MaxAge: time.Hour}
	b.ResetTimer()
	var kept, raised int
	for i := 0; i < b.N; i++ {
		seen := map[string]*dedupe.SeenSet{}
		summary := aggregate.NewSummary(time.Minute)
		var buf []schemas.Alert
		for _, m := range msgs {
			e, rej := checker.Check(m)
			if rej != nil {
				b.Fatalf("message %s rejected: %v", m.ID, rej.Err)
			}
			ss := seen[e.DeviceID]
			if ss == nil {
				ss = &dedupe.SeenSet{}
				seen[e.DeviceID] = ss
			}
			if !ss.Add(e.Seq, e.TS) {
				continue
			}
			kept++
			e = index.Join(e)
			summary.Add(e)
			buf, _ = alert.Check(buf[:0], e)
			raised += len(buf)
		}
	}
	if kept == 0 || raised == 0 {
		b.Fatalf("kept %d, raised %d: the kernel did no work", kept, raised)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
